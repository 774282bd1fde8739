//! Redirect work, as the appliance does it: planned in the same store transaction as the
//! device change that causes it (`State::plan_change`), and delivered by the worker
//! ([`run_worker`], [`App::deliver`]) in queue order per device, with backoff. An item leaves
//! the queue only in the commit that records its outcome, after the service answered: a
//! crash in between sends it again, which every client makes harmless.
//!
//! The mechanisms live below: the clients in [`crate::redirect`], the queue's rules (backoff,
//! batching) in [`crate::redirect::outbox`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use heapless::String as HString;
use tokio::sync::watch;

use super::views::{Delivery, QueueEntry, RedirectStatus, RedirectView, ServiceHolding, ServiceView};
use super::{App, AppError, State};
use crate::clock::{self, now};
use crate::mac::Mac;
use crate::redirect::outbox::{CLOCK_RECHECK, ERROR_PAUSE, IDLE_WAKE, Plan, action_name, backoff, batch_from, is_open};
use crate::redirect::wan::Wan;
use crate::redirect::{
    Client, Failure, FailureKind, Holding, Lookup, Registration, client_for, client_named, redact, service_for_vendor,
};
use crate::settings::Settings;
use crate::store::records::{Device, OutboxAction, OutboxItem, RedirectRecord, RedirectState, Txn, truncated};
use crate::token::TokenKind;

impl State {
    /// Whether the service holds `mac` or is about to, and whether that is settled: the last
    /// queued intent is a registration (in hand: nothing more to queue), or, with nothing
    /// queued, the device is registered or its deregistration failed. An unverified
    /// registration counts as held, and as settled only when the service confirmed it holds
    /// the MAC without being able to show the URL.
    fn held_by_service(&self, mac: &Mac, record: &RedirectRecord) -> Result<(bool, bool), AppError> {
        let last = self.db.outbox()?.into_iter().rev().find(|(_, item)| item.mac == *mac);
        Ok(match last {
            Some((_, item)) => {
                let registering = matches!(item.action, OutboxAction::Register { .. });
                (registering, registering)
            }
            None => match record.state {
                RedirectState::Registered { .. } | RedirectState::Failed { deregistering: true, .. } => (true, true),
                RedirectState::Unverified { held, .. } => (true, held),
                _ => (false, false),
            },
        })
    }

    /// Adds to `txn` the redirect work a device change causes, given the site `settings`
    /// and the device's redirect `record` as it will be:
    /// - a registration of the enrollment URL when the device is new or has a new
    ///   enrollment URL (unlock, rekey), and as `plan` says;
    /// - a deregistration when the service holds it but should not: enrollment closed, the
    ///   device removed or its registration turned off.
    fn plan_redirect(
        &self,
        before: Option<&Device>,
        after: Option<&Device>,
        record: &RedirectRecord,
        settings: &Settings,
        plan: Plan,
        txn: &mut Txn,
    ) -> Result<bool, AppError> {
        let Some(device) = after.or(before) else { return Ok(false) };
        let Some(service) = service_for_vendor(&device.vendor) else { return Ok(false) };
        if client_for(service, settings).is_err() {
            return Ok(false);
        }
        let wanted = after.filter(|d| is_open(d) && record.enabled);
        let (held, settled) = self.held_by_service(&device.mac, record)?;
        let new_url = before.map(|d| d.enrollment_token) != after.map(|d| d.enrollment_token);
        let register = match plan {
            Plan::Change => new_url,
            // Registered again: what the service does not hold, or holds pointing elsewhere.
            Plan::Reconcile => new_url || !settled,
            Plan::Reregister => true,
        };
        let action = match wanted {
            Some(device) if register => OutboxAction::Register { token: device.enrollment_token, take_over: false },
            None if held => OutboxAction::Deregister,
            _ => return Ok(false),
        };
        txn.enqueue(OutboxItem {
            mac: device.mac,
            service: truncated(service.name),
            action,
            attempts: 0,
            not_before: 0,
            last_error: HString::new(),
        });
        Ok(true)
    }

    /// [`State::plan_redirect`] with the device's stored record and the current settings.
    pub(super) fn plan_change(
        &self,
        before: Option<&Device>,
        after: Option<&Device>,
        txn: &mut Txn,
    ) -> Result<bool, AppError> {
        let Some(mac) = after.or(before).map(|d| d.mac) else { return Ok(false) };
        let record = self.db.redirect(&mac)?;
        self.plan_redirect(before, after, &record, &self.settings()?, Plan::Change, txn)
    }
}

/// One sent item (or batch member) and how it went.
type Sent = (u64, OutboxItem, Result<ReadBack, Failure>);

/// What an accepted call turned out to be, once read back from the service.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ReadBack {
    /// The service holds the enrollment URL, or no longer holds the MAC.
    Confirmed,
    /// The API has no lookup: taken on the service's word.
    OnItsWord,
    /// The service confirms it holds the MAC but its API cannot show where it points.
    HeldUnshown,
    /// The service accepted the registration but holds something else; why.
    Unverified(String),
}

/// Why a registration the service confirmed is still unverified.
const UNSHOWN: &str = "the service confirms it holds the MAC, but its API cannot show where it points";

/// Reads back what the service holds after it accepted `registration`.
async fn read_back_registration(client: &Client, wan: &Wan, registration: &Registration) -> ReadBack {
    match client.lookup(wan, &registration.mac).await {
        Ok(None) => ReadBack::OnItsWord,
        Ok(Some(Lookup { holding: Holding::Url(url), .. })) if url == registration.url => ReadBack::Confirmed,
        Ok(Some(Lookup { holding: Holding::Url(_), .. })) => {
            ReadBack::Unverified("the service accepted it but holds another URL for the MAC".into())
        }
        Ok(Some(Lookup { holding: Holding::Held, .. })) => ReadBack::HeldUnshown,
        Ok(Some(Lookup { holding: Holding::Elsewhere, .. })) => {
            ReadBack::Unverified("the service accepted it but says another account holds the MAC".into())
        }
        Ok(Some(Lookup { holding: Holding::Absent, .. })) => {
            ReadBack::Unverified("the service accepted it but does not hold the MAC".into())
        }
        Err(failure) => ReadBack::Unverified(format!("reading it back failed: {}", redact(&failure.message))),
    }
}

/// Removes `mac` and confirms by a lookup that the service no longer holds it. A removal
/// the service accepted but did not carry out stays queued: a phone left pointing at an
/// enrollment URL is what deregistration exists to prevent.
async fn deregister_confirmed(client: &Client, wan: &Wan, mac: &Mac) -> Result<ReadBack, Failure> {
    client.deregister(wan, mac).await?;
    match client.lookup(wan, mac).await {
        Ok(None) => Ok(ReadBack::OnItsWord),
        // Another account's hold is not ours to remove, and not our enrollment URL.
        Ok(Some(Lookup { holding: Holding::Absent | Holding::Elsewhere, .. })) => Ok(ReadBack::Confirmed),
        Ok(Some(_)) => Err(Failure::retry("the service accepted the removal but still holds the MAC")),
        Err(failure) => Err(Failure::retry(format!("the removal could not be confirmed: {}", failure.message))),
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
                .ok_or_else(|| AppError::Refused(format!("no redirect service for {} phones", device.vendor)))?;
            let client = client_for(service, &settings).map_err(AppError::Refused)?;
            if !client.supports_take_over() {
                return Err(AppError::Refused(format!(
                    "this {service} API cannot take a MAC over from another account; release it in the vendor's portal"
                )));
            }
            if !is_open(&device) {
                return Err(AppError::Refused(format!(
                    "enrollment of {mac} is locked; `provbox device unlock {mac}` first"
                )));
            }
            let mut txn = Txn::new();
            txn.enqueue(OutboxItem {
                mac: *mac,
                service: truncated(service.name),
                action: OutboxAction::Register { token: device.enrollment_token, take_over: true },
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

    /// Turns redirect registration on or off for one device, queuing what that implies in
    /// the same transaction.
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
            let settings = state.settings()?;
            state.plan_redirect(Some(&device), Some(&device), &record, &settings, Plan::Reconcile, &mut txn)?;
            state.db.commit(&txn)?;
        }
        self.redirect.wake();
        self.redirect_view(mac)
    }

    /// Brings every device's queued redirect work in line with its state (after the
    /// credentials, the site switch or the base URL changed, or a failure was fixed), as
    /// `plan` says. Returns how many items were queued.
    pub fn reconcile_redirects(&self, plan: Plan) -> Result<usize, AppError> {
        let macs: Vec<Mac> = self.lock().db.devices().map(|d| d.map(|d| d.mac)).collect::<Result<_, _>>()?;
        let settings = self.lock().settings()?;
        let mut queued = 0;
        self.commit_each(
            &macs,
            |state, mac| {
                let mut part = Txn::new();
                let Some(device) = state.db.device(mac)? else { return Ok((part, false)) };
                let record = state.db.redirect(mac)?;
                let planned = state.plan_redirect(Some(&device), Some(&device), &record, &settings, plan, &mut part)?;
                Ok((part, planned))
            },
            |_, planned| queued += usize::from(planned),
        )?;
        if queued > 0 {
            self.redirect.wake();
        }
        Ok(queued)
    }

    /// The redirect state of one device.
    pub fn redirect_view(&self, mac: &Mac) -> Result<RedirectView, AppError> {
        let state = self.lock();
        let device = state.db.device(mac)?.ok_or(AppError::NoDevice(*mac))?;
        let lookup = RedirectLookup::new(&state.db.outbox()?, &state.settings()?);
        redirect_view_of(&state, &device, &lookup)
    }

    /// The queue, the services and every device's state.
    pub fn redirect_status(&self) -> Result<RedirectStatus, AppError> {
        let state = self.lock();
        let settings = state.settings()?;
        let queue = state.db.outbox()?;
        let lookup = RedirectLookup::new(&queue, &settings);
        let devices = state
            .db
            .devices()
            .map(|device| {
                let device = device?;
                Ok((device.mac.to_string(), redirect_view_of(&state, &device, &lookup)?))
            })
            .collect::<Result<_, AppError>>()?;
        let services = crate::redirect::SERVICES
            .iter()
            .map(|service| {
                let api = settings.get(&format!("redirect.{service}.api")).to_string();
                let (reason, warning) = match client_for(service, &settings) {
                    Err(reason) => (reason, String::new()),
                    Ok(client) if client.endpoint().starts_with("http://") => {
                        (String::new(), "plain http: credentials and enrollment URLs cross the WAN unencrypted".into())
                    }
                    Ok(_) => (String::new(), String::new()),
                };
                ServiceView { service: service.to_string(), api, active: reason.is_empty(), reason, warning }
            })
            .collect();
        Ok(RedirectStatus {
            clock: crate::ntp::clock_state(now()),
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

    /// Asks the device's service what it holds for `mac`, next to what provbox expects it
    /// to hold.
    pub async fn redirect_check(&self, mac: &Mac) -> Result<ServiceHolding, AppError> {
        let (service, settings, expected) = {
            let state = self.lock();
            let device = state.db.device(mac)?.ok_or(AppError::NoDevice(*mac))?;
            let service = service_for_vendor(&device.vendor)
                .ok_or_else(|| AppError::Refused(format!("no redirect service for {} phones", device.vendor)))?;
            let record = state.db.redirect(mac)?;
            let base = state.base_url(&self.default_base_url())?;
            let expected =
                (is_open(&device) && record.enabled).then(|| device.enrollment_token.url(TokenKind::Enrollment, &base));
            (service, state.settings()?, expected)
        };
        clock::check(now()).map_err(AppError::Unavailable)?;
        let client = client_for(service, &settings).map_err(AppError::Refused)?;
        let wan = wan_for(&settings).map_err(|f| AppError::Refused(f.message))?;
        let lookup = client.lookup(&wan, mac).await.map_err(|f| AppError::Upstream(redact(&f.message)))?;
        let Some(Lookup { holding, reply }) = lookup else {
            return Err(AppError::Refused(format!(
                "the {service} API in use has no lookup; its registrations are taken on its word"
            )));
        };
        let holds = match &holding {
            Holding::Url(url) if Some(url) == expected.as_ref() => "the enrollment URL".to_string(),
            Holding::Url(url) => format!("another URL: {}", redact(url)),
            Holding::Held => "the MAC, without saying where it points".to_string(),
            Holding::Elsewhere => "nothing for this account: another account holds the MAC".to_string(),
            Holding::Absent => "nothing".to_string(),
        };
        let matches = match (&holding, &expected) {
            (Holding::Url(url), Some(expected)) => url == expected,
            (Holding::Absent | Holding::Elsewhere, None) => true,
            _ => false,
        };
        Ok(ServiceHolding {
            service: service.to_string(),
            mac: mac.to_string(),
            expected: expected.map_or_else(
                || "nothing (enrollment locked or registration off)".into(),
                |_| "the enrollment URL".into(),
            ),
            holds,
            matches,
            reply: serde_json::from_str(&redact(&reply.to_string())).unwrap_or(reply),
        })
    }

    /// Whether each configured service's endpoint accepts a TCP connection now, within 3 s:
    /// (service, endpoint host, "reachable in N ms" or why not).
    pub async fn redirect_reachability(&self) -> Result<Vec<(String, String, String)>, AppError> {
        let settings = self.lock().settings()?;
        let mut report = Vec::new();
        for service in crate::redirect::SERVICES {
            let Ok(client) = client_for(service, &settings) else { continue };
            let Ok(uri) = client.endpoint().parse::<hyper::Uri>() else { continue };
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
            let started = std::time::Instant::now();
            let outcome = match tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::TcpStream::connect((host.as_str(), port)),
            )
            .await
            {
                Ok(Ok(_)) => format!("reachable in {} ms", started.elapsed().as_millis()),
                Ok(Err(error)) => format!("unreachable: {error}"),
                Err(_) => "unreachable: no answer within 3 s".to_string(),
            };
            report.push((service.to_string(), format!("{host}:{port}"), outcome));
        }
        Ok(report)
    }

    /// Seconds until the next item that can be sent is due (0: now): the first queued item
    /// of each device whose service is configured. None when nothing can be sent.
    fn next_sendable(&self) -> Result<Option<u64>, AppError> {
        let state = self.lock();
        let (queue, settings) = (state.db.outbox()?, state.settings()?);
        let mut seen = HashSet::new();
        let at = now();
        Ok(queue
            .iter()
            .filter(|(_, item)| seen.insert(item.mac))
            .filter(|(_, item)| client_named(&item.service, &settings).is_ok())
            .map(|(_, item)| item.not_before.saturating_sub(at))
            .min())
    }

    /// Sends what is due (everything with `all`), in queue order per device. Passes never
    /// overlap. A service that fails for reasons of its own (unreachable, erroring) is not
    /// tried again in the same pass: its remaining items take the same failure.
    pub async fn deliver(&self, all: bool) -> Result<Delivery, AppError> {
        let _pass = self.redirect.pass().await;
        let mut report = Delivery::default();
        if let Err(reason) = clock::check(now()) {
            report.clock = Some(reason);
            return Ok(report);
        }
        let (queue, settings, base) = {
            let state = self.lock();
            (state.db.outbox()?, state.settings()?, state.base_url(&self.default_base_url())?)
        };
        let wan = wan_for(&settings);
        let mut clients: HashMap<String, Result<Client, String>> = HashMap::new();
        // Services that failed in this pass, with the failure their remaining items take.
        let mut down: HashMap<String, Failure> = HashMap::new();
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
            let service = item.service.to_string();
            if let Some(failure) = down.get(&service).or(wan.as_ref().err()) {
                let outcome = vec![(*position, item.clone(), Err(failure.clone()))];
                self.settle(outcome, &mut report, &mut blocked)?;
                continue;
            }
            let client = match clients.entry(service.clone()).or_insert_with(|| client_named(&service, &settings)) {
                Ok(client) => client,
                Err(reason) => {
                    // The service was turned off or lost its credentials: the item waits,
                    // nothing is lost, and the status says why.
                    self.note_waiting(*position, item, reason)?;
                    blocked.insert(item.mac);
                    continue;
                }
            };
            let Ok(wan) = &wan else { continue };
            let outcomes: Vec<Sent> = match &item.action {
                OutboxAction::Register { .. } => {
                    let batch = batch_from(&queue[index..], client.batch_limit(), all, &blocked);
                    let registrations: Vec<Registration> = batch
                        .iter()
                        .filter_map(|(_, item)| match &item.action {
                            OutboxAction::Register { token, take_over } => Some(Registration {
                                mac: item.mac,
                                url: token.url(TokenKind::Enrollment, &base),
                                take_over: *take_over,
                            }),
                            OutboxAction::Deregister => None,
                        })
                        .collect();
                    let results = client.register_batch(wan, &registrations).await;
                    let mut outcomes = Vec::with_capacity(batch.len());
                    for ((position, item), (registration, result)) in
                        batch.into_iter().zip(registrations.iter().zip(results))
                    {
                        let result = match result {
                            Ok(()) => Ok(read_back_registration(client, wan, registration).await),
                            Err(failure) => Err(failure),
                        };
                        outcomes.push((position, item, result));
                    }
                    outcomes
                }
                OutboxAction::Deregister => {
                    vec![(*position, item.clone(), deregister_confirmed(client, wan, &item.mac).await)]
                }
            };
            let retry = outcomes
                .iter()
                .filter_map(|(_, _, result)| result.as_ref().err())
                .find(|f| f.kind == FailureKind::Retry);
            if let Some(failure) = retry {
                down.insert(service, failure.clone());
            }
            taken.extend(outcomes.iter().map(|(position, _, _)| *position));
            self.settle(outcomes, &mut report, &mut blocked)?;
        }
        report.next_due = self.next_sendable()?;
        Ok(report)
    }

    /// Records the outcomes of sent items: done or given up leave the queue and settle the
    /// device's state; a retry is rescheduled. Commits as few transactions as fit.
    fn settle(&self, outcomes: Vec<Sent>, report: &mut Delivery, blocked: &mut HashSet<Mac>) -> Result<(), AppError> {
        self.commit_each(
            &outcomes,
            |state, (position, item, result)| {
                let mut part = Txn::new();
                let at = now();
                let settled = match result {
                    Ok(ReadBack::Unverified(reason)) => {
                        Some(RedirectState::Unverified { at, reason: truncated(&redact(reason)), held: false })
                    }
                    Ok(ReadBack::HeldUnshown) if matches!(item.action, OutboxAction::Register { .. }) => {
                        Some(RedirectState::Unverified { at, reason: truncated(UNSHOWN), held: true })
                    }
                    Ok(_) => Some(match item.action {
                        OutboxAction::Register { .. } => RedirectState::Registered { at },
                        OutboxAction::Deregister => RedirectState::Deregistered { at },
                    }),
                    Err(failure) if failure.kind == FailureKind::Retry => {
                        let mut retry = item.clone();
                        retry.attempts += 1;
                        retry.not_before = at + backoff(retry.attempts);
                        retry.last_error = truncated(&redact(&failure.message));
                        part.update_outbox(*position, &retry);
                        None
                    }
                    Err(failure) => Some(RedirectState::Failed {
                        at,
                        message: truncated(&redact(&failure.message)),
                        deregistering: matches!(item.action, OutboxAction::Deregister),
                    }),
                };
                if let Some(settled) = settled {
                    part.complete_outbox(*position);
                    if state.db.device(&item.mac)?.is_some() {
                        let mut record = state.db.redirect(&item.mac)?;
                        record.state = settled;
                        part.put_redirect(&item.mac, &record);
                    }
                }
                Ok((part, (item.clone(), result.clone())))
            },
            |_, (item, result)| {
                let action = action_name(&item.action);
                match result {
                    Ok(ReadBack::Unverified(reason)) => {
                        report.delivered += 1;
                        let reason = redact(&reason);
                        tracing::warn!(mac = %item.mac, service = %item.service, action, "redirect service accepted, but unverified: {reason}");
                    }
                    Ok(read_back) => {
                        report.delivered += 1;
                        let verified = read_back == ReadBack::Confirmed;
                        tracing::info!(mac = %item.mac, service = %item.service, action, verified, "redirect service accepted");
                    }
                    Err(failure) if failure.kind == FailureKind::Retry => {
                        report.retrying += 1;
                        blocked.insert(item.mac);
                        let message = redact(&failure.message);
                        tracing::warn!(mac = %item.mac, service = %item.service, action, attempts = item.attempts + 1, "redirect attempt failed, will retry: {message}");
                    }
                    Err(failure) => {
                        report.failed += 1;
                        let message = redact(&failure.message);
                        tracing::error!(mac = %item.mac, service = %item.service, action, "redirect service refused: {message}");
                    }
                }
            },
        )
    }

    /// Notes why an item cannot be sent now, writing only when the reason changes.
    fn note_waiting(&self, position: u64, item: &OutboxItem, reason: &str) -> Result<(), AppError> {
        if item.last_error.as_str() == reason {
            return Ok(());
        }
        let mut waiting = item.clone();
        waiting.last_error = truncated(reason);
        let mut txn = Txn::new();
        txn.update_outbox(position, &waiting);
        self.lock().db.commit(&txn)?;
        Ok(())
    }
}

/// What saying a device's redirect state needs, worked out once for a whole listing: the
/// first queued item of each device, and why each service cannot be used, if it cannot.
pub(super) struct RedirectLookup {
    first_queued: HashMap<Mac, OutboxItem>,
    unusable: HashMap<&'static str, Option<String>>,
}

impl RedirectLookup {
    /// The lookup for `queue` under `settings`.
    pub(super) fn new(queue: &[(u64, OutboxItem)], settings: &Settings) -> RedirectLookup {
        let mut first_queued = HashMap::new();
        for (_, item) in queue {
            first_queued.entry(item.mac).or_insert_with(|| item.clone());
        }
        let unusable = crate::redirect::SERVICES
            .iter()
            .map(|service| (service.name, client_for(service, settings).err()))
            .collect();
        RedirectLookup { first_queued, unusable }
    }
}

/// The redirect state of `device`.
pub(super) fn redirect_view_of(
    state: &State,
    device: &Device,
    lookup: &RedirectLookup,
) -> Result<RedirectView, AppError> {
    if let Some(item) = lookup.first_queued.get(&device.mac) {
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
        RedirectState::Failed { at, message, .. } => RedirectView::Failed { at, message: message.to_string() },
        RedirectState::Unverified { at, reason, .. } => RedirectView::Unverified { at, reason: reason.to_string() },
        RedirectState::NotRegistered if !record.enabled => {
            RedirectView::Off { reason: "turned off for this device".into() }
        }
        RedirectState::NotRegistered => match service_for_vendor(&device.vendor) {
            None => RedirectView::Off { reason: format!("no redirect service for {} phones", device.vendor) },
            Some(service) => match lookup.unusable.get(service.name).cloned().flatten() {
                Some(reason) => RedirectView::Off { reason },
                None => RedirectView::NotRegistered,
            },
        },
    })
}

/// The WAN client the settings describe.
fn wan_for(settings: &Settings) -> Result<Wan, Failure> {
    let ca_file = Some(settings.get("redirect.ca_file")).filter(|path| !path.is_empty()).map(std::path::Path::new);
    Wan::new("redirect.ca_file", ca_file, Duration::from_secs(settings.number("redirect.timeout_seconds")))
}

/// Drains the outbox until `stopped`: a pass, then sleep until the next item is due or new
/// work is queued.
pub async fn run_worker(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    let mut clock_said: Option<String> = None;
    loop {
        let wait = match app.deliver(false).await {
            Ok(delivery) => {
                if delivery.clock != clock_said {
                    match &delivery.clock {
                        Some(reason) => tracing::warn!("{reason}"),
                        None if clock_said.is_some() => tracing::info!("clock set; redirect calls resume"),
                        None => {}
                    }
                    clock_said = delivery.clock.clone();
                }
                match (&delivery.clock, delivery.next_due) {
                    (Some(_), _) => CLOCK_RECHECK,
                    (None, Some(seconds)) => Duration::from_secs(seconds.max(1)).min(IDLE_WAKE),
                    (None, None) => IDLE_WAKE,
                }
            }
            Err(error) => {
                tracing::error!("redirect outbox: {error}");
                ERROR_PAUSE
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.redirect.woken() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}
