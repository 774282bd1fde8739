//! The durable outbox of redirect work, and the worker that drains it.
//!
//! - Register and deregister intents are [`OutboxItem`]s, written in the same store
//!   transaction as the device change that causes them ([`State::plan_redirect`]).
//! - The worker ([`run_worker`], [`App::deliver`]) sends them in queue order per device, with
//!   exponential backoff and jitter capped at an hour. A refusal that will never succeed
//!   settles the device as failed, with the service's words.
//! - An item leaves the queue only in the commit that records its outcome, after the service
//!   answered: a crash in between sends it again, which every client makes harmless.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use heapless::String as HString;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex as AsyncMutex, Notify, watch};

use super::wan::Wan;
use super::{Client, Failure, FailureKind, Registration, client_for, service_for_vendor};
use crate::app::{App, AppError, State, now};
use crate::clock;
use crate::mac::Mac;
use crate::store::check::hex;
use crate::store::records::{Device, Enrollment, OutboxAction, OutboxItem, RedirectRecord, RedirectState, Txn};

/// First retry delay; it doubles per attempt.
const BACKOFF_BASE: u64 = 30;
/// Longest retry delay.
pub const BACKOFF_CAP: u64 = 3600;
/// Longest the worker sleeps with nothing due, in case the clock jumped.
const IDLE_WAKE: Duration = Duration::from_secs(300);
/// Outcomes committed per store transaction (each fits a flash sector).
const OUTCOMES_PER_COMMIT: usize = 5;

/// The worker's shared parts, kept in [`App`].
#[derive(Default)]
pub struct Redirector {
    /// One delivery pass at a time: the worker's and `redirect sync`'s never overlap, so no
    /// item is sent twice at once.
    pass: AsyncMutex<()>,
    /// Wakes the worker when work is queued.
    wake: Notify,
}

impl Redirector {
    /// Tells the worker there is new work.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// The delay before retry number `attempts` (1-based): 30 s doubling up to an hour, with
/// jitter taking it down to half at random so that a fleet does not retry in lockstep.
pub fn backoff(attempts: u32) -> u64 {
    let full = BACKOFF_BASE.saturating_mul(1u64 << attempts.saturating_sub(1).min(20)).min(BACKOFF_CAP);
    full / 2 + rand::random::<u64>() % (full / 2 + 1)
}

/// A device's redirect state as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RedirectView {
    /// Nothing will be registered: no service for the vendor, the service is off or not
    /// configured, or registration is off for this device.
    Off {
        /// Why.
        reason: String,
    },
    /// Not registered, nothing queued.
    NotRegistered,
    /// Queued.
    Pending {
        /// `register` or `deregister`.
        action: String,
        /// Attempts so far.
        attempts: u32,
        /// Unix time of the next try.
        next_try: u64,
        /// Why the last attempt failed, empty before the first.
        last_error: String,
    },
    /// Registered.
    Registered {
        /// When.
        at: u64,
    },
    /// Removed from the service (enrollment closed).
    Deregistered {
        /// When.
        at: u64,
    },
    /// Given up.
    Failed {
        /// When.
        at: u64,
        /// The service's words.
        message: String,
    },
}

/// One queued item as shown by `redirect status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Queue position.
    pub position: u64,
    /// The phone.
    pub mac: String,
    /// The service.
    pub service: String,
    /// `register`, `register (override)` or `deregister`.
    pub action: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Unix time of the next try.
    pub next_try: u64,
    /// Why the last attempt failed.
    pub last_error: String,
}

/// A service's configuration as shown (never its credentials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    /// `yealink`, `snom`, `fanvil`.
    pub service: String,
    /// The API in use, or `off`.
    pub api: String,
    /// Whether registrations are sent.
    pub active: bool,
    /// Why not, when inactive.
    pub reason: String,
}

/// `provbox redirect status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedirectStatus {
    /// `ok`, or why WAN calls wait.
    pub clock: String,
    /// Each service.
    pub services: Vec<ServiceView>,
    /// The queue, in order.
    pub queue: Vec<QueueEntry>,
    /// Each device's state.
    pub devices: Vec<(String, RedirectView)>,
}

/// What a delivery pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Items the services accepted.
    pub delivered: usize,
    /// Items that failed and wait for a retry.
    pub retrying: usize,
    /// Items given up as permanently refused.
    pub failed: usize,
    /// Set when the clock kept the pass from sending anything.
    pub clock: Option<String>,
}

fn action_name(action: &OutboxAction) -> &'static str {
    match action {
        OutboxAction::Register { take_over: false, .. } => "register",
        OutboxAction::Register { take_over: true, .. } => "register (override)",
        OutboxAction::Deregister => "deregister",
    }
}

/// `text` cut to fit a record field, on a character boundary.
fn bounded_text<const N: usize>(text: &str) -> HString<N> {
    let mut out = HString::new();
    for c in text.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

fn is_open(device: &Device) -> bool {
    !matches!(device.enrollment, Enrollment::Locked { .. })
}

impl State {
    /// Whether the service holds `mac` or is about to: the last queued intent is a
    /// registration, or, with nothing queued, the device is registered.
    fn held_by_service(&self, mac: &Mac, record: &RedirectRecord) -> Result<bool, AppError> {
        let last = self.db.outbox()?.into_iter().rev().find(|(_, item)| item.mac == *mac);
        Ok(match last {
            Some((_, item)) => matches!(item.action, OutboxAction::Register { .. }),
            None => matches!(record.state, RedirectState::Registered { .. }),
        })
    }

    /// Adds to `txn` the redirect work a device change causes, given the site `settings` and
    /// the phones' `base_url`:
    /// - a registration of the enrollment URL when the device is new or has a new
    ///   enrollment URL (unlock, rekey), or, with `force`, whenever it is open but not held;
    /// - a deregistration when the service holds it but should not: enrollment closed, the
    ///   device removed or its registration turned off.
    pub(crate) fn plan_redirect(
        &self,
        before: Option<&Device>,
        after: Option<&Device>,
        settings: &BTreeMap<String, String>,
        base_url: &str,
        force: bool,
        txn: &mut Txn,
    ) -> Result<bool, AppError> {
        let Some(device) = after.or(before) else { return Ok(false) };
        let Some(service) = service_for_vendor(&device.vendor) else { return Ok(false) };
        if client_for(service, settings).is_err() {
            return Ok(false);
        }
        let record = self.db.redirect(&device.mac)?;
        let wanted = after.filter(|d| is_open(d) && record.enabled);
        let held = self.held_by_service(&device.mac, &record)?;
        let new_url = before.map(|d| d.enrollment_token) != after.map(|d| d.enrollment_token);
        let action = match wanted {
            Some(device) if new_url || (force && !held) => OutboxAction::Register {
                url: bounded_text(&format!("{base_url}e/{}/", hex(&device.enrollment_token))),
                take_over: false,
            },
            None if held => OutboxAction::Deregister,
            _ => return Ok(false),
        };
        txn.enqueue(OutboxItem {
            mac: device.mac,
            service: bounded_text(service),
            action,
            attempts: 0,
            not_before: 0,
            last_error: HString::new(),
        });
        Ok(true)
    }

    /// The phones' base URL: `provision.base_url`, or `default`.
    pub(crate) fn base_url(&self, default: &str) -> Result<String, AppError> {
        let configured = self.db.setting("provision.base_url")?.unwrap_or_default();
        Ok(if configured.is_empty() { default.to_string() } else { configured })
    }

    /// Every effective setting.
    pub(crate) fn settings(&self) -> Result<BTreeMap<String, String>, AppError> {
        Ok(crate::settings::effective(&self.db.settings()?))
    }
}

impl App {
    /// Queues a registration that takes `mac` over from another account: the explicit
    /// answer to a "belongs to another account" failure.
    pub fn redirect_override(&self, mac: &Mac, actor: &str) -> Result<RedirectView, AppError> {
        {
            let mut state = self.lock();
            let device = state.db.device(mac)?.ok_or(AppError::NoDevice(*mac))?;
            let settings = state.settings()?;
            let service = service_for_vendor(&device.vendor)
                .ok_or_else(|| AppError::Redirect(format!("no redirect service for {} phones", device.vendor)))?;
            client_for(service, &settings).map_err(AppError::Redirect)?;
            if !is_open(&device) {
                return Err(AppError::Redirect(format!(
                    "enrollment of {mac} is locked; `provbox device unlock {mac}` first"
                )));
            }
            let base = state.base_url(&self.site.default_base_url)?;
            let mut txn = Txn::new();
            txn.enqueue(OutboxItem {
                mac: *mac,
                service: bounded_text(service),
                action: OutboxAction::Register {
                    url: bounded_text(&format!("{base}e/{}/", hex(&device.enrollment_token))),
                    take_over: true,
                },
                attempts: 0,
                not_before: 0,
                last_error: HString::new(),
            })
            .audit(
                now(),
                actor,
                &format!("queued a {service} registration of {mac} overriding another account"),
            )?;
            state.db.commit(&txn)?;
        }
        self.redirect.wake();
        self.redirect_view(mac)
    }

    /// Turns redirect registration on or off for one device, queuing what that implies.
    pub fn redirect_enable(&self, mac: &Mac, enabled: bool, actor: &str) -> Result<RedirectView, AppError> {
        {
            let mut state = self.lock();
            let device = state.db.device(mac)?.ok_or(AppError::NoDevice(*mac))?;
            let mut record = state.db.redirect(mac)?;
            record.enabled = enabled;
            let mut txn = Txn::new();
            let word = if enabled { "on" } else { "off" };
            txn.put_redirect(mac, &record).audit(
                now(),
                actor,
                &format!("turned redirect registration {word} for {mac}"),
            )?;
            state.db.commit(&txn)?;
            let settings = state.settings()?;
            let base = state.base_url(&self.site.default_base_url)?;
            let mut txn = Txn::new();
            if state.plan_redirect(Some(&device), Some(&device), &settings, &base, true, &mut txn)? {
                state.db.commit(&txn)?;
            }
        }
        self.redirect.wake();
        self.redirect_view(mac)
    }

    /// Brings every device's queued redirect work in line with its state (after the
    /// credentials or the site switch changed, or a failure was fixed), a few devices per
    /// commit. Returns how many items were queued.
    pub fn reconcile_redirects(&self) -> Result<usize, AppError> {
        let macs: Vec<Mac> = self.lock().db.devices().map(|d| d.map(|d| d.mac)).collect::<Result<_, _>>()?;
        let mut queued = 0;
        for chunk in macs.chunks(OUTCOMES_PER_COMMIT) {
            let mut state = self.lock();
            let settings = state.settings()?;
            let base = state.base_url(&self.site.default_base_url)?;
            let mut txn = Txn::new();
            for mac in chunk {
                if let Some(device) = state.db.device(mac)? {
                    queued += usize::from(state.plan_redirect(
                        Some(&device),
                        Some(&device),
                        &settings,
                        &base,
                        true,
                        &mut txn,
                    )?);
                }
            }
            state.db.commit(&txn)?;
        }
        if queued > 0 {
            self.redirect.wake();
        }
        Ok(queued)
    }

    /// The redirect state of one device.
    pub fn redirect_view(&self, mac: &Mac) -> Result<RedirectView, AppError> {
        let state = self.lock();
        let device = state.db.device(mac)?.ok_or(AppError::NoDevice(*mac))?;
        let queue = state.db.outbox()?;
        redirect_view_of(&state, &device, &queue, &state.settings()?)
    }

    /// The queue, the services and every device's state.
    pub fn redirect_status(&self) -> Result<RedirectStatus, AppError> {
        let state = self.lock();
        let settings = state.settings()?;
        let queue = state.db.outbox()?;
        let devices = state
            .db
            .devices()
            .map(|device| {
                let device = device?;
                Ok((device.mac.to_string(), redirect_view_of(&state, &device, &queue, &settings)?))
            })
            .collect::<Result<_, AppError>>()?;
        let services = super::SERVICES
            .iter()
            .map(|(service, _)| {
                let api = settings.get(&format!("redirect.{service}.api")).cloned().unwrap_or_default();
                let reason = client_for(service, &settings).err().unwrap_or_default();
                ServiceView { service: service.to_string(), api, active: reason.is_empty(), reason }
            })
            .collect();
        Ok(RedirectStatus {
            clock: clock::check(now()).err().unwrap_or_else(|| "ok".into()),
            services,
            queue: queue
                .iter()
                .map(|(position, item)| QueueEntry {
                    position: *position,
                    mac: item.mac.to_string(),
                    service: item.service.to_string(),
                    action: action_name(&item.action).into(),
                    attempts: item.attempts,
                    next_try: item.not_before,
                    last_error: item.last_error.to_string(),
                })
                .collect(),
            devices,
        })
    }

    /// Asks the device's service what it holds for `mac`.
    pub async fn redirect_check(&self, mac: &Mac) -> Result<serde_json::Value, AppError> {
        let (service, settings) = {
            let state = self.lock();
            let device = state.db.device(mac)?.ok_or(AppError::NoDevice(*mac))?;
            let service = service_for_vendor(&device.vendor)
                .ok_or_else(|| AppError::Redirect(format!("no redirect service for {} phones", device.vendor)))?;
            (service, state.settings()?)
        };
        clock::check(now()).map_err(AppError::Redirect)?;
        let client = client_for(service, &settings).map_err(AppError::Redirect)?;
        let wan = wan_for(&settings).map_err(|f| AppError::Redirect(f.message))?;
        let held = client.check(&wan, mac).await.map_err(|f| AppError::Redirect(f.message))?;
        Ok(serde_json::json!({ "service": service, "mac": mac.to_string(), "holds": held }))
    }

    /// Seconds until the earliest queued item is due (0: now), or None with an empty queue.
    pub fn next_redirect_due(&self) -> Result<Option<u64>, AppError> {
        let queue = self.lock().db.outbox()?;
        let at = now();
        Ok(queue.iter().map(|(_, item)| item.not_before.saturating_sub(at)).min())
    }

    /// Sends what is due (everything with `all`), in queue order per device. Passes never
    /// overlap.
    pub async fn deliver(&self, all: bool) -> Result<Delivery, AppError> {
        let _pass = self.redirect.pass.lock().await;
        let mut report = Delivery::default();
        if let Err(reason) = clock::check(now()) {
            report.clock = Some(reason);
            return Ok(report);
        }
        let (queue, settings) = {
            let state = self.lock();
            (state.db.outbox()?, state.settings()?)
        };
        let wan = wan_for(&settings);
        let mut clients: HashMap<String, Result<Client, String>> = HashMap::new();
        // MACs with an earlier item still queued: their later items wait, keeping order.
        let mut blocked: HashSet<Mac> = HashSet::new();
        let mut taken: HashSet<u64> = HashSet::new();
        for (index, (position, item)) in queue.iter().enumerate() {
            if taken.contains(position) {
                continue;
            }
            if blocked.contains(&item.mac) || (!all && item.not_before > now()) {
                blocked.insert(item.mac);
                continue;
            }
            let client =
                clients.entry(item.service.to_string()).or_insert_with(|| client_for(&item.service, &settings));
            let client = match (client, &wan) {
                (Ok(client), Ok(wan)) => (client, wan),
                (Err(reason), _) => {
                    // The service was turned off or lost its credentials: the item waits,
                    // nothing is lost, and the status says why.
                    self.note_waiting(*position, item, reason)?;
                    blocked.insert(item.mac);
                    continue;
                }
                (_, Err(failure)) => {
                    let outcome = vec![(*position, item.clone(), Err(failure.clone()))];
                    self.settle(outcome, &mut report, &mut blocked)?;
                    continue;
                }
            };
            let outcomes = match &item.action {
                OutboxAction::Register { .. } => {
                    // Batch the following due registrations for the same service, one per MAC.
                    let mut batch = vec![(*position, item.clone())];
                    let mut macs: HashSet<Mac> = HashSet::from([item.mac]);
                    for (later_position, later) in &queue[index + 1..] {
                        if batch.len() >= client.0.batch_limit() {
                            break;
                        }
                        let due = all || later.not_before <= now();
                        if later.service == item.service
                            && matches!(later.action, OutboxAction::Register { .. })
                            && due
                            && !blocked.contains(&later.mac)
                            && macs.insert(later.mac)
                        {
                            batch.push((*later_position, later.clone()));
                        } else {
                            macs.insert(later.mac);
                        }
                    }
                    let registrations: Vec<Registration> = batch
                        .iter()
                        .filter_map(|(_, item)| match &item.action {
                            OutboxAction::Register { url, take_over } => {
                                Some(Registration { mac: item.mac, url: url.to_string(), take_over: *take_over })
                            }
                            OutboxAction::Deregister => None,
                        })
                        .collect();
                    let results = client.0.register_batch(client.1, &registrations).await;
                    batch.into_iter().zip(results).map(|((position, item), result)| (position, item, result)).collect()
                }
                OutboxAction::Deregister => {
                    vec![(*position, item.clone(), client.0.deregister(client.1, &item.mac).await)]
                }
            };
            taken.extend(outcomes.iter().map(|(position, _, _)| *position));
            self.settle(outcomes, &mut report, &mut blocked)?;
        }
        Ok(report)
    }

    /// Records the outcomes of sent items: done or given up leave the queue and settle the
    /// device's state; a retry is rescheduled.
    fn settle(
        &self,
        outcomes: Vec<(u64, OutboxItem, Result<(), Failure>)>,
        report: &mut Delivery,
        blocked: &mut HashSet<Mac>,
    ) -> Result<(), AppError> {
        for chunk in outcomes.chunks(OUTCOMES_PER_COMMIT) {
            let mut state = self.lock();
            let mut txn = Txn::new();
            for (position, item, result) in chunk {
                let at = now();
                let action = action_name(&item.action);
                let settled = match result {
                    Ok(()) => {
                        report.delivered += 1;
                        tracing::info!(mac = %item.mac, service = %item.service, action, "redirect service accepted");
                        Some(match item.action {
                            OutboxAction::Register { .. } => RedirectState::Registered { at },
                            OutboxAction::Deregister => RedirectState::Deregistered { at },
                        })
                    }
                    Err(failure) if failure.kind == FailureKind::Retry => {
                        report.retrying += 1;
                        blocked.insert(item.mac);
                        let mut retry = item.clone();
                        retry.attempts += 1;
                        retry.not_before = at + backoff(retry.attempts);
                        retry.last_error = bounded_text(&failure.message);
                        tracing::warn!(mac = %item.mac, service = %item.service, action, attempts = retry.attempts, "redirect attempt failed, will retry: {failure}");
                        txn.update_outbox(*position, &retry);
                        None
                    }
                    Err(failure) => {
                        report.failed += 1;
                        tracing::error!(mac = %item.mac, service = %item.service, action, "redirect service refused: {failure}");
                        Some(RedirectState::Failed { at, message: bounded_text(&failure.message) })
                    }
                };
                if let Some(settled) = settled {
                    txn.complete_outbox(*position);
                    if state.db.device(&item.mac)?.is_some() {
                        let mut record = state.db.redirect(&item.mac)?;
                        record.state = settled;
                        txn.put_redirect(&item.mac, &record);
                    }
                }
            }
            state.db.commit(&txn)?;
        }
        Ok(())
    }

    /// Notes why an item cannot be sent now, writing only when the reason changes.
    fn note_waiting(&self, position: u64, item: &OutboxItem, reason: &str) -> Result<(), AppError> {
        if item.last_error.as_str() == reason {
            return Ok(());
        }
        let mut waiting = item.clone();
        waiting.last_error = bounded_text(reason);
        let mut txn = Txn::new();
        txn.update_outbox(position, &waiting);
        self.lock().db.commit(&txn)?;
        Ok(())
    }
}

/// The redirect state of `device`, given the queue and the settings.
pub(crate) fn redirect_view_of(
    state: &State,
    device: &Device,
    queue: &[(u64, OutboxItem)],
    settings: &BTreeMap<String, String>,
) -> Result<RedirectView, AppError> {
    if let Some((_, item)) = queue.iter().find(|(_, item)| item.mac == device.mac) {
        return Ok(RedirectView::Pending {
            action: action_name(&item.action).into(),
            attempts: item.attempts,
            next_try: item.not_before,
            last_error: item.last_error.to_string(),
        });
    }
    let record = state.db.redirect(&device.mac)?;
    Ok(match record.state {
        RedirectState::Registered { at } => RedirectView::Registered { at },
        RedirectState::Deregistered { at } => RedirectView::Deregistered { at },
        RedirectState::Failed { at, message } => RedirectView::Failed { at, message: message.to_string() },
        RedirectState::NotRegistered if !record.enabled => {
            RedirectView::Off { reason: "turned off for this device".into() }
        }
        RedirectState::NotRegistered => match service_for_vendor(&device.vendor) {
            None => RedirectView::Off { reason: format!("no redirect service for {} phones", device.vendor) },
            Some(service) => match client_for(service, settings) {
                Err(reason) => RedirectView::Off { reason },
                Ok(_) => RedirectView::NotRegistered,
            },
        },
    })
}

/// The WAN client the settings describe.
fn wan_for(settings: &BTreeMap<String, String>) -> Result<Wan, Failure> {
    let ca_file = settings.get("redirect.ca_file").filter(|path| !path.is_empty()).map(std::path::Path::new);
    let timeout = settings.get("redirect.timeout_seconds").and_then(|s| s.parse().ok()).unwrap_or(20);
    Wan::new(ca_file, Duration::from_secs(timeout))
}

/// Drains the outbox until `stopped`: a pass, then sleep until the next item is due or new
/// work is queued.
pub async fn run_worker(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    loop {
        match app.deliver(false).await {
            Ok(Delivery { clock: Some(reason), .. }) => tracing::warn!("{reason}"),
            Ok(_) => {}
            Err(error) => tracing::error!("redirect outbox: {error}"),
        }
        let wait = match app.next_redirect_due() {
            Ok(Some(seconds)) => Duration::from_secs(seconds.max(1)).min(IDLE_WAKE),
            _ => IDLE_WAKE,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.redirect.wake.notified() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_an_hour() {
        for _ in 0..200 {
            let first = backoff(1);
            assert!((15..=30).contains(&first), "{first}");
            let third = backoff(3);
            assert!((60..=120).contains(&third), "{third}");
            let late = backoff(40);
            assert!((BACKOFF_CAP / 2..=BACKOFF_CAP).contains(&late), "{late}");
        }
    }
}
