//! The appliance's side of SIP on the LAN: which URL plug-and-play offers a phone that
//! announces itself, and `device reprovision` (a check-sync NOTIFY). The SIP mechanics are
//! in [`crate::sip`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::views::ReprovisionOutcome;
use super::{App, AppError};
use crate::clock::now;
use crate::mac::Mac;
use crate::sip::checksync::{self, CheckSync};
use crate::sip::pnp::{Announcement, Offers};
use crate::store::records::{Enrollment, PhoneSeen, bounded};
use crate::token::TokenKind;

impl App {
    /// The provisioning URL offered to a phone that announced itself from `ip`, recording an
    /// unknown phone on the phones-seen list. None when nothing is to be offered.
    pub fn pnp_offer(&self, phone: &Announcement, ip: IpAddr) -> Result<Option<String>, AppError> {
        // A source walking through MACs is throttled like one walking through URL tokens:
        // it could otherwise learn which MACs have an open enrollment.
        if self.sip.throttle.is_blocked(ip) {
            tracing::warn!(%ip, "SIP PnP: too many unknown MACs from this address; not answered with a URL");
            return Ok(None);
        }
        let (device, base, bootstrap) = {
            let state = self.lock();
            let base = state.base_url(&self.default_base_url())?;
            let bootstrap = state.settings()?.get("provision.bootstrap").to_string();
            (state.db.device(&phone.mac)?, base, bootstrap)
        };
        match &device {
            Some(device) if !matches!(device.enrollment, Enrollment::Locked { .. }) => {
                return Ok(Some(device.enrollment_token.url(TokenKind::Enrollment, &base)));
            }
            Some(device) if device.lan_window_until.is_some_and(|until| until > now()) => return Ok(Some(base)),
            Some(_) => {}
            None => {
                self.sip.throttle.record_miss(ip);
                let user_agent = format!("SIP PnP {} {} {}", phone.vendor, phone.model, phone.version);
                self.record_seen(PhoneSeen {
                    mac: phone.mac,
                    ip,
                    user_agent: bounded("user agent", &user_agent.chars().take(96).collect::<String>())?,
                    vendor: bounded("vendor", &phone.vendor.to_ascii_lowercase().chars().take(16).collect::<String>())?,
                    model: bounded("model", &phone.model.chars().take(24).collect::<String>())?,
                    at: now(),
                })?;
            }
        }
        Ok((bootstrap != "off").then(|| self.bootstrap_url()))
    }

    /// Sends `mac`'s vendor check-sync NOTIFY and reports what came of it, waiting up to
    /// `wait` for the phone's answer and as long again for the fetch it should make.
    ///
    /// The NOTIFY goes to the address the phone last fetched its configuration from through
    /// its own URL (port 5060, or the port it announced from that address over SIP PnP): an
    /// address a PnP announcement alone gave is anyone's on the LAN, so it is used only for
    /// a phone that has never fetched, and the answer says so. Success is reported only when
    /// the phone then fetches through its URL; an answer alone may come from whoever claimed
    /// the MAC.
    pub async fn reprovision(&self, mac: &Mac, wait: Duration) -> Result<CheckSync, AppError> {
        let device = self.device(mac)?;
        let catalog = self.templates.catalog();
        let event = catalog.vendor(&device.vendor)?.check_sync_event.clone().ok_or_else(|| {
            AppError::Refused(format!(
                "the {} profile names no check-sync event (check_sync_event in vendor.toml)",
                device.vendor
            ))
        })?;
        let announced = self.sip.contact(mac);
        let fetched_from = device.last_contact.as_ref().map(|contact| contact.ip);
        let (target, unauthenticated) = match (fetched_from, announced) {
            (Some(ip), Some(pnp)) if pnp.ip() == ip => (pnp, false),
            (Some(ip), _) => (SocketAddr::new(ip, 5060), false),
            (None, Some(pnp)) => (pnp, true),
            (None, None) => {
                return Err(AppError::Refused(format!(
                    "{mac} has not contacted the appliance yet: its address is unknown"
                )));
            }
        };
        let fetches_before = self.fetch_count(mac);
        let mut sync = checksync::notify(&self.sip, mac, target, &event, wait)
            .await
            .map_err(|e| AppError::Internal(format!("cannot open a SIP socket: {e}")))?;
        if !sync.code.is_some_and(|code| (200..300).contains(&code)) {
            return Ok(sync);
        }
        // Bounded: one look per quarter second for `wait`.
        let looks = (wait.as_millis() / 250).max(1);
        for _ in 0..looks {
            if self.fetch_count(mac) > fetches_before {
                sync.fetched = true;
                sync.result = format!("the phone at {target} fetched its configuration");
                return Ok(sync);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        sync.result = format!(
            "{target} accepted the check-sync, but the phone has not fetched its configuration within {} s",
            wait.as_secs()
        );
        sync.advice = if unauthenticated {
            "this address comes from a SIP plug-and-play announcement, which any host on the LAN can \
             make: check the phone itself"
                .into()
        } else {
            "it may fetch later; if it does not, check the phone".into()
        };
        Ok(sync)
    }
}

/// Phones sent check-sync at once by [`reprovision_each`]: each waits up to its timeout,
/// so many at a time keep a bulk reprovision short without flooding the LAN.
const REPROVISION_AT_ONCE: usize = 16;

/// Sends check-sync to each of `macs` (up to [`REPROVISION_AT_ONCE`] at a time, each waiting
/// up to `wait`), with each phone's outcome in order.
pub async fn reprovision_each(app: &std::sync::Arc<App>, macs: &[Mac], wait: Duration) -> Vec<ReprovisionOutcome> {
    let mut outcomes = Vec::with_capacity(macs.len());
    for batch in macs.chunks(REPROVISION_AT_ONCE) {
        let mut tasks = tokio::task::JoinSet::new();
        for (index, mac) in batch.iter().copied().enumerate() {
            let app = app.clone();
            tasks.spawn(async move { (index, mac, app.reprovision(&mac, wait).await) });
        }
        let mut done: Vec<(usize, ReprovisionOutcome)> = Vec::with_capacity(batch.len());
        while let Some(joined) = tasks.join_next().await {
            // A check-sync task does not panic; a lost one is simply not reported.
            let Ok((index, mac, result)) = joined else { continue };
            let outcome = match result {
                Ok(sync) => ReprovisionOutcome {
                    mac,
                    answered: sync.code.is_some(),
                    fetched: sync.fetched,
                    result: sync.result,
                },
                Err(error) => ReprovisionOutcome { mac, answered: false, fetched: false, result: error.to_string() },
            };
            done.push((index, outcome));
        }
        done.sort_by_key(|(index, _)| *index);
        outcomes.extend(done.into_iter().map(|(_, outcome)| outcome));
    }
    outcomes
}

impl Offers for App {
    fn heard(&self, mac: Mac, address: SocketAddr) {
        self.sip.remember(mac, address);
    }

    fn offer(&self, phone: &Announcement, ip: IpAddr) -> Result<Option<String>, Box<dyn std::error::Error + Send>> {
        self.pnp_offer(phone, ip).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send>)
    }

    fn knows(&self, mac: &Mac) -> bool {
        self.device(mac).is_ok()
    }
}
