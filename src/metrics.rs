//! Process counters for `/metrics` (Prometheus text format): phone fetches by result,
//! enrollment events and TLS handshakes. Gauges (outbox depth, store usage, devices) are
//! read from the appliance when scraped and handed in as [`Gauges`].

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sip::Stats;

/// A counter with a fixed set of label values.
pub struct Counter<const N: usize> {
    labels: [&'static str; N],
    values: [AtomicU64; N],
}

impl<const N: usize> Counter<N> {
    const fn new(labels: [&'static str; N]) -> Self {
        Counter { labels, values: [const { AtomicU64::new(0) }; N] }
    }

    /// Adds one to the series labelled `label` (unknown labels are ignored).
    pub fn inc(&self, label: &str) {
        if let Some(index) = self.labels.iter().position(|l| *l == label) {
            self.values[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every series' value, in label order.
    pub fn values(&self) -> [u64; N] {
        std::array::from_fn(|index| self.values[index].load(Ordering::Relaxed))
    }

    fn write(&self, out: &mut String, name: &str, label: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (value, series) in self.values.iter().zip(self.labels) {
            let _ = writeln!(out, "{name}{{{label}=\"{series}\"}} {}", value.load(Ordering::Relaxed));
        }
    }
}

/// Phone configuration requests by result.
pub static FETCHES: Counter<4> = Counter::new(["served", "not_found", "throttled", "failed"]);
/// Enrollment events.
pub static ENROLLMENT: Counter<4> = Counter::new(["started", "locked", "refused", "unlocked"]);
/// TLS handshakes by result.
pub static TLS_HANDSHAKES: Counter<2> = Counter::new(["ok", "failed"]);
/// Static files (firmware, ringtones, logos) served to phones.
pub static STATIC_FILES: Counter<1> = Counter::new(["served"]);
/// Files served to phones by where they came from: rendered, or the cache of rendered files.
pub static SERVED_FROM: Counter<2> = Counter::new(["rendered", "cache"]);

/// What the log's periodic summary counts: phone fetches by result, static files served
/// and failed TLS handshakes (a page visit or a scrape, which only adds handshakes that
/// worked, is not activity worth a line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity([u64; 6]);

impl Activity {
    const NAMES: [&'static str; 6] =
        ["fetches served", "not found", "throttled", "failed", "static files served", "TLS handshakes failed"];

    /// The counters now.
    pub fn now() -> Activity {
        // In the order of the counters' labels above.
        let [served, not_found, throttled, failed] = FETCHES.values();
        let [_, handshakes_failed] = TLS_HANDSHAKES.values();
        let [static_files] = STATIC_FILES.values();
        Activity([served, not_found, throttled, failed, static_files, handshakes_failed])
    }

    /// What happened between `before` and this, in words.
    pub fn since(&self, before: &Activity) -> String {
        let counts = Self::NAMES.iter().zip(self.0.iter().zip(before.0));
        counts.map(|(name, (now, then))| format!("{name} {}", now.saturating_sub(then))).collect::<Vec<_>>().join(", ")
    }
}

/// What the appliance reads for a scrape.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// The SIP endpoint's counters, while it runs.
    pub sip: Option<Stats>,
    /// Redirect-service operations queued.
    pub outbox_depth: usize,
    /// Devices managed.
    pub devices: usize,
    /// Bytes of live records in the store.
    pub store_live_bytes: usize,
    /// Size of the store.
    pub store_capacity_bytes: usize,
    /// Highest erase count of a store sector.
    pub store_erase_count_max: u32,
    /// Store transactions committed since start.
    pub store_commits: u64,
}

/// The Prometheus text exposition of every metric.
pub fn render(gauges: &Gauges) -> String {
    let mut out = String::new();
    FETCHES.write(&mut out, "provbox_fetches_total", "result", "Phone configuration requests by result.");
    ENROLLMENT.write(&mut out, "provbox_enrollment_events_total", "event", "Enrollment events.");
    TLS_HANDSHAKES.write(&mut out, "provbox_tls_handshakes_total", "result", "TLS handshakes by result.");
    STATIC_FILES.write(
        &mut out,
        "provbox_static_files_total",
        "result",
        "Static files (firmware, ringtones, logos) served to phones.",
    );
    SERVED_FROM.write(
        &mut out,
        "provbox_served_files_total",
        "source",
        "Configuration files served to phones, rendered or from the cache of rendered files.",
    );
    let gauge = |out: &mut String, name: &str, help: &str, value: usize| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    if let Some(sip) = &gauges.sip {
        let _ = writeln!(
            out,
            "# HELP provbox_sip_datagrams_total SIP datagrams by what became of them.\n# TYPE provbox_sip_datagrams_total counter\n\
             provbox_sip_datagrams_total{{result=\"pnp_answered\"}} {}\n\
             provbox_sip_datagrams_total{{result=\"malformed\"}} {}\n\
             provbox_sip_datagrams_total{{result=\"rate_limited\"}} {}",
            sip.subscriptions, sip.malformed, sip.rate_limited
        );
    }
    let _ = writeln!(
        out,
        "# HELP provbox_store_commits_total Store transactions committed since start (flash wear).\n\
         # TYPE provbox_store_commits_total counter\nprovbox_store_commits_total {}",
        gauges.store_commits
    );
    gauge(&mut out, "provbox_outbox_depth", "Redirect-service operations queued.", gauges.outbox_depth);
    gauge(&mut out, "provbox_devices", "Devices managed.", gauges.devices);
    gauge(&mut out, "provbox_store_live_bytes", "Bytes of live records in the store.", gauges.store_live_bytes);
    gauge(&mut out, "provbox_store_capacity_bytes", "Size of the store.", gauges.store_capacity_bytes);
    let erases = gauges.store_erase_count_max as usize;
    gauge(&mut out, "provbox_store_erase_count_max", "Highest erase count of a store sector.", erases);
    out
}
