//! The decision behind every config fetch: who is asking, through which URL, and what they
//! may have. This is where one-time enrollment is enforced.
//!
//! - `/e/<enrollment token>/FILE`: secret-free files always; the device file while
//!   enrollment is open, which the first fetch turns into a grace period.
//! - `/p/<steady token>/FILE`: everything; the first fetch here closes enrollment.
//! - `/FILE` (no token): secret-free files; a device file only inside a LAN enrollment
//!   window, else a blank bootstrap config (or 404), and unknown phones are listed as seen.
//! - Over plain HTTP, the first two and a LAN window serve only a device whose technician
//!   consented to plain HTTP (a Gigaset base, which cannot fetch over HTTPS).
//!
//! What a fetch records lives here too: the contact it leaves (buffered, flushed to spare
//! the flash), enrollment moving from open to grace to locked, and unknown phones.

use std::net::IpAddr;

use super::{App, AppError};
use crate::clock::now;
use crate::mac::Mac;
use crate::provision::templates::Catalog;
use crate::provision::vendor::{FileMatch, UserAgentInfo, Vendor};
use crate::store::records::{Contact, Device, Enrollment, PhoneSeen, SEEN_CAPACITY, Txn, bounded};

/// Unknown phones listed but not yet written, at most (as many as the list holds, so that a
/// new office's phones booting at once are all listed): beyond, more are not listed until
/// some are written.
pub const MAX_PENDING_SEEN: usize = SEEN_CAPACITY;
/// Phones-seen records written per hour, at most: a LAN host walking MACs wears the flash
/// no faster than this (a few KiB an hour).
pub const SEEN_WRITES_PER_HOUR: usize = 256;
use crate::token::{Token, TokenKind};

/// Which URL a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'a> {
    /// `/e/<token>/`.
    Enrollment(&'a str),
    /// `/p/<token>/`.
    Steady(&'a str),
    /// No token.
    Tokenless,
}

/// One config request.
#[derive(Debug, Clone, Copy)]
pub struct FetchRequest<'a> {
    /// The URL kind and token.
    pub access: Access<'a>,
    /// The requested file name (one path segment).
    pub file: &'a str,
    /// The client's address.
    pub ip: IpAddr,
    /// Its User-Agent header.
    pub user_agent: &'a str,
    /// Whether it came over TLS. Plain HTTP carries secrets only for a device whose
    /// technician consented to it (`device plain-http`).
    pub secure: bool,
}

/// What to answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The rendered file.
    File {
        /// Its contents (shared with the cache of rendered files).
        body: bytes::Bytes,
        /// Its Content-Type.
        content_type: String,
    },
    /// The same 404 for every miss, whatever the reason.
    NotFound,
    /// Too many misses from this address.
    Throttled,
    /// A template or store failure; logged, nothing served.
    Failed,
}

/// Decides and renders the answer to `request`.
pub fn fetch(app: &App, request: &FetchRequest<'_>) -> Fetched {
    if app.throttle.is_blocked(request.ip) {
        return Fetched::Throttled;
    }
    let outcome = match request.access {
        Access::Enrollment(token) | Access::Steady(token) if Token::parse(token).is_none() => {
            escaped_link(app, request, token)
        }
        Access::Enrollment(token) => by_token(app, request, token, TokenKind::Enrollment),
        Access::Steady(token) => by_token(app, request, token, TokenKind::Steady),
        Access::Tokenless => tokenless(app, request),
    };
    match outcome {
        Ok(Outcome::Serve(fetched)) => fetched,
        Ok(Outcome::Deny) => Fetched::NotFound,
        Ok(Outcome::Miss) => {
            if app.throttle.record_miss(request.ip) {
                tracing::warn!(ip = %request.ip, "too many unknown URLs from this address; answering 429");
            }
            Fetched::NotFound
        }
        Err(error) => {
            tracing::error!(ip = %request.ip, file = request.file, "cannot serve: {error}");
            Fetched::Failed
        }
    }
}

enum Outcome {
    Serve(Fetched),
    /// A refusal that is not a token guess (unknown file, locked enrollment, wrong phone):
    /// 404, not counted.
    Deny,
    /// An unknown or malformed token: 404, counted towards throttling.
    Miss,
}

/// The phone's own claims from its User-Agent, through `vendor`'s profile.
fn user_agent_of(vendor: &Vendor, user_agent: &str) -> UserAgentInfo {
    vendor.identify(user_agent).unwrap_or_default()
}

/// Refuses a phone whose User-Agent MAC is not `mac`.
fn wrong_phone(request: &FetchRequest<'_>, claimed: &UserAgentInfo, mac: &Mac) -> bool {
    match claimed.mac {
        Some(ua_mac) if ua_mac != *mac => {
            tracing::warn!(ip = %request.ip, requested = %mac, user_agent_mac = %ua_mac, file = request.file,
                "refused: the User-Agent names another phone");
            true
        }
        _ => false,
    }
}

/// `/e/<word>/<file>` where `<word>` is no token: a relative link that climbed above a device
/// URL (a Gigaset base resolves its redirect chain's `../../sifs/...` from the file it read).
/// Only a secret-free file of some vendor, `<word>/<file>`, is served; anything else counts
/// as a miss, like a wrong token.
fn escaped_link(app: &App, request: &FetchRequest<'_>, word: &str) -> Result<Outcome, AppError> {
    let file = format!("{word}/{}", request.file);
    let catalog = app.templates.catalog();
    let secret_free =
        catalog.vendors.values().any(|vendor| vendor.match_file(&file, None).is_some_and(|m| !m.file.secrets));
    if !secret_free {
        return Ok(Outcome::Miss);
    }
    tokenless(app, &FetchRequest { access: Access::Tokenless, file: &file, ..*request })
}

fn by_token(app: &App, request: &FetchRequest<'_>, token: &str, kind: TokenKind) -> Result<Outcome, AppError> {
    let Some(token) = Token::parse(token) else { return Ok(Outcome::Miss) };
    let Some(mut device) = app.device_by_token(&token, kind)? else { return Ok(Outcome::Miss) };
    let catalog = app.templates.catalog();
    let vendor = catalog.vendor(&device.vendor)?;
    // A right token with a file the vendor does not serve (Yealink's `.boot` files) is no
    // guess: a plain 404, not counted against the address.
    let Some(matched) = vendor.match_file(request.file, Some(&device.model)) else { return Ok(Outcome::Deny) };
    if !request.secure && matched.file.secrets && !app.plain_http_allowed(&device.mac)? {
        // The token crossed the LAN in clear text: say so, so that it can be revoked.
        tracing::warn!(ip = %request.ip, mac = %device.mac,
            "refused: a device URL over plain HTTP without consent; `device rekey` replaces an exposed URL");
        return Ok(Outcome::Deny);
    }
    let claimed = user_agent_of(vendor, request.user_agent);
    if matched.mac.is_some_and(|mac| mac != device.mac) {
        tracing::warn!(ip = %request.ip, mac = %device.mac, file = request.file, "refused: file of another phone");
        return Ok(Outcome::Deny);
    }
    if wrong_phone(request, &claimed, &device.mac) {
        return Ok(Outcome::Deny);
    }
    let before = device.enrollment;
    let mut after = before;
    match kind {
        TokenKind::Steady => {
            if let Enrollment::Open { .. } = before {
                after = Enrollment::Locked { since: now() };
                tracing::info!(mac = %device.mac, "enrollment closed: the phone uses its steady URL");
            }
        }
        TokenKind::Enrollment if matched.file.secrets => match before {
            Enrollment::Locked { .. } => {
                crate::metrics::ENROLLMENT.inc("refused");
                tracing::warn!(ip = %request.ip, mac = %device.mac, "refused: enrollment is locked; unlock it to re-enroll");
                return Ok(Outcome::Deny);
            }
            Enrollment::Open { first_fetch: Some(at) } if now() >= at + app.grace_seconds()? => {
                let lock = FetchChange {
                    enrollment: Some((before, Enrollment::Locked { since: now() })),
                    close_window: false,
                };
                app.record_fetch(&device, &lock, None)?;
                tracing::warn!(ip = %request.ip, mac = %device.mac, "refused: enrollment grace period is over");
                return Ok(Outcome::Deny);
            }
            Enrollment::Open { first_fetch: None } => after = Enrollment::Open { first_fetch: Some(now()) },
            Enrollment::Open { .. } => {}
        },
        TokenKind::Enrollment => {}
    }
    let change = FetchChange {
        enrollment: (after != before).then_some((before, after)),
        // The phone is on its steady URL: the LAN window has done its job.
        close_window: kind == TokenKind::Steady,
    };
    device.enrollment = after;
    let shown = matched.file.secrets.then_some(&device);
    serve(app, request, &catalog, vendor, &matched, shown, Some((&device, change, &claimed)))
}

fn tokenless(app: &App, request: &FetchRequest<'_>) -> Result<Outcome, AppError> {
    let catalog = app.templates.catalog();
    // Several vendors may serve a name like `<mac>.cfg`: the vendor whose User-Agent pattern
    // reads this one wins, then a vendor that claims it, then the vendor of the known device
    // with that MAC; when none of these holds, nobody gets it (below).
    let candidates: Vec<(&Vendor, FileMatch<'_>)> =
        catalog.vendors.values().filter_map(|vendor| Some((vendor, vendor.match_file(request.file, None)?))).collect();
    // Every candidate matched the same name, so they agree on the MAC; look it up once.
    let known = match candidates.iter().find_map(|(_, matched)| matched.mac).map(|mac| app.device(&mac)) {
        Some(Ok(device)) => Some(device),
        Some(Err(AppError::NoDevice(_))) | None => None,
        Some(Err(error)) => return Err(error),
    };
    let owner = known.as_ref().map(|device| device.vendor.to_string());
    let several = candidates.len() > 1;
    let rank = |vendor: &Vendor| {
        let owns = owner.as_deref() == Some(vendor.id.as_str());
        (!vendor.reads(request.user_agent), !vendor.claims(request.user_agent), !owns)
    };
    let Some((vendor, matched)) = candidates.into_iter().min_by_key(|(vendor, _)| rank(vendor)) else {
        return Ok(Outcome::Deny);
    };
    if several && rank(vendor) == (true, true, true) {
        // A name several vendors serve, asked by a User-Agent none of them claims, for no
        // known phone: attributing it to any vendor would be a guess.
        tracing::info!(ip = %request.ip, file = request.file, user_agent = ?request.user_agent,
            "refused: no vendor claims this User-Agent");
        return Ok(Outcome::Deny);
    }
    let claimed = user_agent_of(vendor, request.user_agent);
    // The model family's own entry: the known phone's model, else the one its User-Agent says.
    let model = known.as_ref().filter(|d| d.vendor.as_str() == vendor.id).map(|d| d.model.to_string());
    let matched = match model.as_deref().or(claimed.model.as_deref()) {
        Some(model) => vendor.match_file(request.file, Some(model)).unwrap_or(matched),
        None => matched,
    };
    if !matched.file.secrets {
        return serve(app, request, &catalog, vendor, &matched, None, None);
    }
    let Some(mac) = matched.mac else { return Ok(Outcome::Deny) };
    if wrong_phone(request, &claimed, &mac) {
        return Ok(Outcome::Deny);
    }
    if let Some(device) = known.filter(|d| d.mac == mac && d.vendor.as_str() == vendor.id) {
        let window_open = device.lan_window_until.is_some_and(|until| now() < until);
        if window_open && (request.secure || app.plain_http_allowed(&mac)?) {
            // The window, not the enrollment URL, admits this fetch: enrollment is left as
            // it is, and the phone's first steady fetch closes the window.
            tracing::info!(mac = %mac, ip = %request.ip, "serving the full config through the LAN enrollment window");
            let change = FetchChange { enrollment: None, close_window: false };
            return serve(app, request, &catalog, vendor, &matched, Some(&device), Some((&device, change, &claimed)));
        }
        tracing::debug!(mac = %mac, ip = %request.ip, "known phone on the tokenless path; no secrets without a LAN window");
    } else {
        // A real phone asks for its own file a few times per boot; a scanner walking MACs
        // asks for many. Counting these keeps scans (and their phones-seen writes) in check.
        if app.throttle.record_miss(request.ip) {
            tracing::warn!(ip = %request.ip, "too many unknown phones from this address; answering 429");
        }
        app.record_seen(PhoneSeen {
            mac,
            ip: request.ip,
            user_agent: truncated(request.user_agent),
            vendor: bounded("vendor", &vendor.id).unwrap_or_default(),
            model: claimed.model.as_deref().and_then(|m| bounded("model", m).ok()).unwrap_or_default(),
            at: now(),
        })?;
        tracing::info!(mac = %mac, ip = %request.ip, "unknown phone asked for its config; listed under phones seen");
    }
    if app.effective_settings()?.get("provision.bootstrap") == "off" {
        return Ok(Outcome::Deny);
    }
    serve(app, request, &catalog, vendor, &matched, None, None)
}

/// Renders and, for a known device, records the fetch. An enrollment change is committed
/// before the file leaves, so a power cut cannot reopen what a served file closed.
fn serve(
    app: &App,
    request: &FetchRequest<'_>,
    catalog: &Catalog,
    vendor: &Vendor,
    matched: &FileMatch<'_>,
    shown: Option<&Device>,
    contacted: Option<(&Device, FetchChange, &UserAgentInfo)>,
) -> Result<Outcome, AppError> {
    // Only the device file's hash tells whether the phone has its latest account config.
    let is_device_file =
        shown.is_some_and(|device| vendor.is_device_file(&device.mac, &device.model, &matched.requested));
    // What the vendor cannot express shows in `provbox render`, not on every fetch.
    let file = app.served_file(catalog, vendor, shown, matched, is_device_file)?;
    if let Some((device, change, claimed)) = contacted {
        let previous_hash = device.last_contact.as_ref().map_or([0; 8], |c| c.config_hash);
        let contact = Contact {
            at: now(),
            ip: request.ip,
            user_agent: truncated(request.user_agent),
            firmware: claimed.firmware.as_deref().and_then(|f| bounded("firmware", f).ok()).unwrap_or_default(),
            config_hash: if is_device_file { file.hash } else { previous_hash },
        };
        app.record_fetch(device, &change, Some(contact))?;
        // One line per fetch only when asked for: the daemon logs a summary a minute.
        tracing::debug!(mac = %device.mac, ip = %request.ip, file = request.file, "served");
    } else {
        tracing::debug!(ip = %request.ip, file = request.file, "served a secret-free file");
    }
    Ok(Outcome::Serve(Fetched::File { body: file.body, content_type: matched.file.content_type.clone() }))
}

fn truncated<const N: usize>(text: &str) -> heapless::String<N> {
    let mut out = heapless::String::new();
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

/// What one fetch changes on its device besides the last contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchChange {
    /// An enrollment transition, as (state the request saw, new state).
    pub enrollment: Option<(Enrollment, Enrollment)>,
    /// Close the LAN enrollment window (the phone reached its steady URL).
    pub close_window: bool,
}

impl App {
    /// The device owning `token` as a `kind` token, compared in constant time.
    pub fn device_by_token(&self, token: &Token, kind: TokenKind) -> Result<Option<Device>, AppError> {
        let state = self.lock();
        let Some((mac, owner_kind)) = state.tokens.get(token).copied() else { return Ok(None) };
        let Some(device) = state.db.device(&mac)? else { return Ok(None) };
        let stored = match kind {
            TokenKind::Enrollment => &device.enrollment_token,
            TokenKind::Steady => &device.steady_token,
        };
        let matches = stored.matches(token);
        Ok((matches && owner_kind == kind).then_some(device))
    }

    /// How many times `mac` has fetched through its URL since start.
    pub(super) fn fetch_count(&self, mac: &Mac) -> u64 {
        self.lock().fetches.get(mac).copied().unwrap_or(0)
    }

    /// Records an unknown phone: listed at once, written to flash by the next
    /// [`App::flush_seen`]. A phone already listed is noted again at most once a minute, and
    /// once [`MAX_PENDING_SEEN`] wait to be written, more are not listed until they are.
    pub fn record_seen(&self, seen: PhoneSeen) -> Result<(), AppError> {
        let mut state = self.lock();
        if let Some(waiting) = state.pending_seen.get_mut(&seen.mac) {
            *waiting = seen;
            return Ok(());
        }
        if state.db.phones_seen()?.iter().any(|old| old.mac == seen.mac && seen.at < old.at + 60) {
            return Ok(());
        }
        if state.pending_seen.len() >= MAX_PENDING_SEEN {
            return Ok(());
        }
        state.pending_seen.insert(seen.mac, seen);
        Ok(())
    }

    /// Writes the phones seen since the last flush, oldest first, as far as the hour's budget
    /// ([`SEEN_WRITES_PER_HOUR`]) goes, as many to a transaction as one store entry holds;
    /// the rest wait. Returns how many were written.
    pub fn flush_seen(&self) -> Result<usize, AppError> {
        let mut state = self.lock();
        let hour_ago = now().saturating_sub(3600);
        while state.seen_writes.front().is_some_and(|at| *at < hour_ago) {
            state.seen_writes.pop_front();
        }
        let budget = SEEN_WRITES_PER_HOUR.saturating_sub(state.seen_writes.len());
        let mut batch: Vec<PhoneSeen> = state.pending_seen.values().cloned().collect();
        batch.sort_by_key(|seen| (seen.at, seen.mac));
        batch.truncate(budget);
        let mut written = 0;
        // Bounded: each round writes at least one record or stops.
        while written < batch.len() {
            let mut stored = state.db.phones_seen()?;
            let mut txn = Txn::new();
            let mut taken = 0;
            for seen in &batch[written..] {
                let mut next = txn.clone();
                if stored.len() >= SEEN_CAPACITY
                    && !stored.iter().any(|old| old.mac == seen.mac)
                    && let Some(oldest) = stored.iter().min_by_key(|old| old.at).map(|old| old.mac)
                {
                    next.remove_seen(&oldest);
                    stored.retain(|old| old.mac != oldest);
                }
                next.put_seen(seen);
                if taken > 0 && !state.db.fits(&next) {
                    break;
                }
                txn = next;
                stored.retain(|old| old.mac != seen.mac);
                stored.push(seen.clone());
                taken += 1;
            }
            match state.db.commit(&txn) {
                // A nearly full store keeps them listed, unwritten: its room is for technicians.
                Err(crate::store::records::DbError::NearlyFull { .. }) => break,
                result => result?,
            }
            for seen in &batch[written..written + taken] {
                state.pending_seen.remove(&seen.mac);
                state.seen_writes.push_back(now());
            }
            written += taken;
        }
        Ok(written)
    }

    /// Records a fetch of `read` (the device as the request saw it): applies `change` to the
    /// stored device under the lock and commits it durably, or buffers `contact` when nothing
    /// else changes. An enrollment change applies only if the stored device still has the
    /// tokens and enrollment state the request saw, so a concurrent unlock, removal or
    /// competing fetch is never undone by a stale copy.
    pub fn record_fetch(&self, read: &Device, change: &FetchChange, contact: Option<Contact>) -> Result<(), AppError> {
        let mut state = self.lock();
        if change.enrollment.is_none() && !(change.close_window && read.lan_window_until.is_some()) {
            // Nothing to change but the contact (most fetches): buffer it without decoding
            // the device again. A window opened since the read stays open, as one opened
            // just after this fetch would. A device removed meanwhile gets nothing.
            if let Some(contact) = contact
                && state.db.has_device(&read.mac)
            {
                *state.fetches.entry(read.mac).or_default() += 1;
                self.known_peers.prove(contact.ip);
                state.pending_contacts.insert(read.mac, contact);
            }
            return Ok(());
        }
        let Some(mut stored) = state.db.device(&read.mac)? else { return Ok(()) };
        if let Some(contact) = &contact {
            *state.fetches.entry(read.mac).or_default() += 1;
            self.known_peers.prove(contact.ip);
        }
        let before = stored.clone();
        let same_tokens = stored.enrollment_token == read.enrollment_token && stored.steady_token == read.steady_token;
        let mut changed = false;
        if let Some((before, after)) = change.enrollment
            && same_tokens
            && stored.enrollment == before
        {
            stored.enrollment = after;
            changed = true;
        }
        if change.close_window && stored.lan_window_until.is_some() {
            stored.lan_window_until = None;
            changed = true;
        }
        if !changed {
            if let Some(contact) = contact {
                state.pending_contacts.insert(read.mac, contact);
            }
            return Ok(());
        }
        // The newest contact goes into the same commit; a buffered older one is superseded.
        let buffered = state.pending_contacts.remove(&read.mac);
        if let Some(contact) = contact.or(buffered) {
            stored.last_contact = Some(contact);
        }
        let mut txn = Txn::new();
        txn.put_device(&stored);
        let mut queued = false;
        if before.enrollment != stored.enrollment {
            crate::metrics::ENROLLMENT.inc(match stored.enrollment {
                Enrollment::Locked { .. } => "locked",
                Enrollment::Open { .. } => "started",
            });
            queued = state.plan_change(Some(&before), Some(&stored), &mut txn)?;
        }
        state.db.commit(&txn)?;
        if queued {
            self.redirect.wake();
        }
        match stored.enrollment {
            Enrollment::Open { first_fetch: Some(at) } => state.in_grace.insert(stored.mac, at),
            _ => state.in_grace.remove(&stored.mac),
        };
        Ok(())
    }

    /// Writes pending contacts, and locks enrollments whose grace period ended, as many
    /// devices per transaction as fit. Returns how many devices changed.
    pub fn flush_contacts(&self) -> Result<usize, AppError> {
        let grace = self.grace_seconds()?;
        let (contacts, expired): (Vec<(Mac, Contact)>, Vec<Mac>) = {
            let mut state = self.lock();
            let expired = state.in_grace.iter().filter(|(_, at)| now() >= **at + grace).map(|(mac, _)| *mac).collect();
            (state.pending_contacts.drain().collect(), expired)
        };
        let mut macs: Vec<Mac> = contacts.iter().map(|(mac, _)| *mac).chain(expired.iter().copied()).collect();
        macs.sort();
        macs.dedup();
        let mut queued = false;
        self.commit_each(
            &macs,
            |state, mac| {
                let mut txn = Txn::new();
                let Some(mut device) = state.db.device(mac)? else { return Ok((txn, None)) };
                let before = device.clone();
                if let Some((_, contact)) = contacts.iter().find(|(m, _)| m == mac) {
                    // A newer contact may have arrived since the drain; it is flushed next time.
                    if !state.pending_contacts.contains_key(mac) {
                        device.last_contact = Some(contact.clone());
                    }
                }
                let mut closed = None;
                if expired.contains(mac)
                    && let Enrollment::Open { first_fetch: Some(at) } = device.enrollment
                {
                    device.enrollment = Enrollment::Locked { since: at + grace };
                    state.plan_change(Some(&before), Some(&device), &mut txn)?;
                    closed = Some(*mac);
                }
                txn.put_device(&device);
                Ok((txn, closed))
            },
            |state, closed| {
                if let Some(mac) = closed {
                    crate::metrics::ENROLLMENT.inc("locked");
                    state.in_grace.remove(&mac);
                    tracing::info!(%mac, "enrollment closed: grace period over");
                    queued = true;
                }
            },
        )?;
        if queued {
            self.redirect.wake();
        }
        Ok(macs.len())
    }
}
