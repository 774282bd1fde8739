//! `provbox device reprovision`: a SIP NOTIFY with the vendor's check-sync event to the
//! phone's last known SIP address, and what its answer means.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::message::{Builder, StartLine};
use super::{Endpoint, Outcome, random_token};
use crate::mac::Mac;

/// Phones' SIP addresses remembered at once; beyond it the map starts over.
const MAX_CONTACTS: usize = 10_000;

/// The SIP side of the appliance: the running endpoint, and where phones were last heard.
#[derive(Default)]
pub struct SipState {
    endpoint: OnceLock<Arc<Endpoint>>,
    contacts: Mutex<HashMap<Mac, SocketAddr>>,
    /// PnP's own count of unknown MACs per address, apart from HTTPS token misses: spoofed
    /// SUBSCRIBEs must not get a phone refused on HTTPS.
    pub(crate) throttle: crate::provision::throttle::Throttle,
}

impl SipState {
    /// Uses `endpoint` (the PnP responder's) for check-sync NOTIFYs.
    pub fn attach(&self, endpoint: Arc<Endpoint>) {
        let _ = self.endpoint.set(endpoint);
    }

    /// Notes where `mac` speaks SIP.
    pub fn remember(&self, mac: Mac, address: SocketAddr) {
        if let Ok(mut contacts) = self.contacts.lock() {
            if contacts.len() >= MAX_CONTACTS {
                contacts.clear();
            }
            contacts.insert(mac, address);
        }
    }

    /// The SIP endpoint's counters, while it runs.
    pub fn stats(&self) -> Option<super::Stats> {
        self.endpoint.get().map(|endpoint| endpoint.stats())
    }

    /// Where `mac` was last heard speaking SIP.
    pub fn contact(&self, mac: &Mac) -> Option<SocketAddr> {
        self.contacts.lock().ok()?.get(mac).copied()
    }
}

/// What a check-sync NOTIFY achieved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct CheckSync {
    /// Where it went.
    pub target: String,
    /// The Event header sent.
    pub event: String,
    /// The phone's status code, if it answered.
    pub code: Option<u16>,
    /// What happened, in words.
    pub result: String,
    /// What to do about it, when something is to be done.
    pub advice: String,
    /// Whether the phone then fetched its configuration through its own URL: the only proof
    /// that the NOTIFY reached the real phone.
    #[serde(default)]
    pub fetched: bool,
}

/// Reads a final status into words and advice.
fn explain(code: u16, reason: &str, event: &str) -> (String, String) {
    match code {
        200..=299 => (format!("{code} {reason}: the check-sync was accepted"), String::new()),
        401 | 403 | 407 => (
            format!("{code} {reason}: the phone refused because it trusts only its registrar"),
            "let the phone accept NOTIFY from this appliance (Yealink: sip.trust_ctrl = 0; Snom: \
             filter_registrar off; Grandstream challenges every NOTIFY unless P4428 = 1), or have the PBX \
             send the check-sync"
                .into(),
        ),
        481 => (
            format!("481 {reason}: the phone does not accept a NOTIFY outside a subscription"),
            "have the PBX send the check-sync through the phone's registration".into(),
        ),
        489 => (
            format!("489 {reason}: the phone does not know the event {event:?}"),
            "check check_sync_event in the vendor profile (templates/<vendor>/vendor.toml)".into(),
        ),
        _ => (format!("{code} {reason}"), String::new()),
    }
}

/// Sends `mac`'s check-sync NOTIFY with `event` to `target` through the responder's socket
/// (or a socket of its own when none runs) and waits up to `wait` for the answer.
pub async fn notify(
    sip: &SipState,
    mac: &Mac,
    target: SocketAddr,
    event: &str,
    wait: Duration,
) -> std::io::Result<CheckSync> {
    let (endpoint, stop) = match sip.endpoint.get() {
        Some(endpoint) => (endpoint.clone(), None),
        None => {
            // No responder running (the offline CLI, or --sip off): a socket of our own.
            let any =
                if target.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
            let endpoint = Endpoint::bind(SocketAddr::new(any, 0), &[]).await?;
            let (stop, stopped) = watch::channel(false);
            tokio::spawn(endpoint.clone().run(None, stopped));
            (endpoint, Some(stop))
        }
    };
    let local = endpoint.address_toward(target);
    let branch = random_token("z9hG4bK");
    let notify = Builder::request("NOTIFY", &format!("sip:{mac}@{target}"))
        .header("Via", format!("SIP/2.0/UDP {local};branch={branch};rport"))
        .header("Max-Forwards", 70)
        .header("From", format!("<sip:provbox@{local}>;tag={}", random_token("")))
        .header("To", format!("<sip:{mac}@{target}>"))
        .header("Call-ID", format!("{}@provbox", random_token("")))
        .header("CSeq", "1 NOTIFY")
        .header("Contact", format!("<sip:provbox@{local}>"))
        .header("Event", event)
        .header("Subscription-State", "terminated")
        .body(None, b"");
    let outcome = endpoint.transaction(&notify, &branch, target, wait).await;
    if let Some(stop) = stop {
        let _ = stop.send(true);
    }
    let (code, result, advice) = match outcome {
        Outcome::Answered(response) => match response.start {
            StartLine::Response { code, reason } => {
                let (result, advice) = explain(code, &reason, event);
                (Some(code), result, advice)
            }
            StartLine::Request { .. } => (None, "unexpected request".into(), String::new()),
        },
        Outcome::TimedOut => (
            None,
            format!("no answer within {} s", wait.as_secs()),
            format!("is the phone on, reachable at {target}, and listening for SIP on UDP?"),
        ),
        Outcome::SendFailed(error) => (None, format!("not sent: {error}"), String::new()),
    };
    tracing::info!(%mac, %target, event, "check-sync: {result}");
    Ok(CheckSync { target: target.to_string(), event: event.to_string(), code, result, advice, fetched: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_explained() {
        assert!(explain(200, "OK", "check-sync").0.contains("the check-sync was accepted"));
        assert!(explain(403, "Forbidden", "check-sync").0.contains("trusts only its registrar"));
        assert!(explain(481, "Subscription does not exist", "x").1.contains("through the phone's registration"));
        assert!(explain(489, "Bad Event", "resync").0.contains("\"resync\""));
    }
}
