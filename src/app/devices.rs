//! Device operations: add, edit, remove, unlock, rekey, keys and overrides, the LAN window,
//! the plain-HTTP consent, CSV import and export, and the phones-seen list.

use super::policy::SIP_POLICY;
use super::redirect::{RedirectLookup, redirect_view_of};
use super::views::{
    ConfigState, DeviceView, EnrollmentView, ImportReport, LineView, PlainHttpView, RedirectView, Rekeyed,
};
use super::{App, AppError, State};
use crate::clock::now;
use crate::devices::{self, CsvProblem, DeviceError, DeviceSpec, KeySpec};
use crate::mac::Mac;
use crate::store::records::{Device, Enrollment, PhoneSeen, PlainHttpGrant, Txn};
use crate::token::{Token, TokenKind};

/// What every device's view is shown with, read once per listing.
struct Shown {
    base_url: String,
    /// The plain-HTTP base URL.
    bootstrap_url: String,
    /// The enrollment grace period, in seconds.
    grace: u64,
}

impl App {
    /// Adds a device.
    pub fn add_device(&self, spec: &DeviceSpec, actor: &str) -> Result<DeviceView, AppError> {
        let catalog = self.templates.catalog();
        let level = self.lock().password_level(SIP_POLICY)?;
        let device = spec.build(|vendor| catalog.vendors.contains_key(vendor), level)?;
        {
            let mut state = self.lock();
            if state.db.device(&device.mac)?.is_some() {
                return Err(AppError::DeviceExists(device.mac));
            }
            let mut txn = Txn::new();
            txn.put_device(&device).audit(now(), actor, &format!("added device {} ({})", device.mac, device.model))?;
            state.plan_change(None, Some(&device), &mut txn)?;
            state.commit_devices(&txn)?;
        }
        self.site_changed();
        self.redirect.wake();
        tracing::info!(mac = %device.mac, actor, "device added");
        self.device_view(&device.mac, false)
    }

    /// Every device, in MAC order (the whole list at once: [`super::listing`] streams it).
    pub fn devices(&self) -> Result<Vec<DeviceView>, AppError> {
        self.device_views(&self.device_macs())
    }

    /// The devices in `macs` that still exist, as stored (their latest contact included).
    pub fn devices_of(&self, macs: &[Mac]) -> Result<Vec<Device>, AppError> {
        self.lock().stored_devices(macs)
    }

    /// Every device's MAC, in order: what a listing walks, a batch of views at a time.
    pub fn device_macs(&self) -> Vec<Mac> {
        self.lock().db.device_macs()
    }

    /// The views of the devices in `macs` that still exist, in that order.
    pub fn device_views(&self, macs: &[Mac]) -> Result<Vec<DeviceView>, AppError> {
        let (devices, shown): (Vec<(Device, RedirectView, Option<PlainHttpGrant>)>, Shown) = {
            let state = self.lock();
            let settings = state.settings()?;
            let lookup = RedirectLookup::new(&state.db.outbox()?, &settings);
            let devices = state
                .stored_devices(macs)?
                .into_iter()
                .map(|device| {
                    let redirect = redirect_view_of(&state, &device, &lookup)?;
                    let plain_http = state.db.plain_http(&device.mac)?;
                    Ok((device, redirect, plain_http))
                })
                .collect::<Result<_, AppError>>()?;
            (devices, self.shown(&state)?)
        };
        devices
            .into_iter()
            .map(|(device, redirect, plain_http)| self.view_of(&device, false, redirect, plain_http, &shown))
            .collect()
    }

    /// One device, with its static files' checksums.
    pub fn device_view(&self, mac: &Mac, with_files: bool) -> Result<DeviceView, AppError> {
        let device = self.device(mac)?;
        let redirect = self.redirect_view(mac)?;
        let (shown, plain_http) = {
            let state = self.lock();
            (self.shown(&state)?, state.db.plain_http(mac)?)
        };
        self.view_of(&device, with_files, redirect, plain_http, &shown)
    }

    /// What every device's view is shown with.
    fn shown(&self, state: &State) -> Result<Shown, AppError> {
        Ok(Shown {
            base_url: state.base_url(&self.default_base_url())?,
            bootstrap_url: self.bootstrap_url(),
            grace: state.grace_seconds()?,
        })
    }

    /// The stored device with `mac`, with any contact not yet flushed.
    pub fn device(&self, mac: &Mac) -> Result<Device, AppError> {
        let state = self.lock();
        let device = state.db.device(mac)?.ok_or(AppError::NoDevice(*mac))?;
        Ok(state.with_pending_contact(device))
    }

    /// Whether `device` (carrying its newest contact) has fetched the file it would get now.
    pub(super) fn config_state(&self, device: &Device) -> ConfigState {
        match &device.last_contact {
            Some(contact) if contact.config_hash != [0; 8] => match self.current_config_hash(device) {
                Ok(hash) if hash == contact.config_hash => ConfigState::Current,
                _ => ConfigState::Pending,
            },
            _ => ConfigState::NeverFetched,
        }
    }

    /// The view of `device`, which already carries its newest contact.
    fn view_of(
        &self,
        device: &Device,
        with_files: bool,
        redirect: RedirectView,
        plain_http: Option<PlainHttpGrant>,
        shown: &Shown,
    ) -> Result<DeviceView, AppError> {
        let (base, grace) = (&shown.base_url, shown.grace);
        let enrollment = match device.enrollment {
            Enrollment::Open { first_fetch: None } => EnrollmentView::Open,
            Enrollment::Open { first_fetch: Some(at) } if now() < at + grace => {
                EnrollmentView::Grace { until: at + grace }
            }
            Enrollment::Open { first_fetch: Some(at) } => EnrollmentView::Locked { since: at + grace },
            Enrollment::Locked { since } => EnrollmentView::Locked { since },
        };
        let config = self.config_state(device);
        Ok(DeviceView {
            mac: device.mac.to_string(),
            vendor: device.vendor.to_string(),
            model: device.model.to_string(),
            lines: device
                .lines
                .iter()
                .map(|line| LineView {
                    extension: line.extension.to_string(),
                    name: line.display_name.to_string(),
                    sip_user: line.sip_user.to_string(),
                })
                .collect(),
            enrollment,
            enrollment_url: device.enrollment_token.url(TokenKind::Enrollment, base),
            steady_url: device.steady_token.url(TokenKind::Steady, base),
            lan_window_until: device.lan_window_until.filter(|until| *until > now()),
            last_contact: device.last_contact.clone(),
            config,
            keys: device.keys.to_vec(),
            overrides: device.overrides.to_vec(),
            files: if with_files { self.static_files() } else { Vec::new() },
            redirect,
            plain_http: plain_http.map(|grant| PlainHttpView {
                since: grant.since,
                enrollment_url: device.enrollment_token.url(TokenKind::Enrollment, &shown.bootstrap_url),
                steady_url: device.steady_token.url(TokenKind::Steady, &shown.bootstrap_url),
            }),
        })
    }

    /// Removes a device.
    pub fn remove_device(&self, mac: &Mac, actor: &str) -> Result<(), AppError> {
        let mut state = self.lock();
        let device = state.db.device(mac)?.ok_or(AppError::NoDevice(*mac))?;
        let mut txn = Txn::new();
        txn.remove_device(mac).audit(now(), actor, &format!("removed device {mac}"))?;
        state.plan_change(Some(&device), None, &mut txn)?;
        txn.remove_redirect(mac).remove_plain_http(mac);
        state.commit_devices(&txn)?;
        state.pending_contacts.remove(mac);
        state.fetches.remove(mac);
        drop(state);
        self.config_hashes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(mac);
        self.forget_files_of(mac);
        self.site_changed();
        self.redirect.wake();
        tracing::info!(%mac, actor, "device removed");
        Ok(())
    }

    /// Changes one stored device with `change`, commits it with an audit line `what`, and
    /// returns its new view. Token changes re-index the tokens.
    pub(super) fn update_device(
        &self,
        mac: &Mac,
        actor: &str,
        what: &str,
        change: impl FnOnce(&mut Device) -> Result<(), AppError>,
    ) -> Result<DeviceView, AppError> {
        {
            let mut state = self.lock();
            let before = state.db.device(mac)?.ok_or(AppError::NoDevice(*mac))?;
            let mut device = before.clone();
            change(&mut device)?;
            let mut txn = Txn::new();
            txn.put_device(&device).audit(now(), actor, what)?;
            state.plan_change(Some(&before), Some(&device), &mut txn)?;
            if (device.enrollment_token, device.steady_token) == (before.enrollment_token, before.steady_token) {
                state.db.commit(&txn)?;
            } else {
                state.commit_devices(&txn)?;
            }
        }
        self.site_changed();
        self.redirect.wake();
        tracing::info!(%mac, actor, "{what}");
        self.device_view(mac, false)
    }

    /// Changes a device's model and lines as `spec` says (its MAC cannot change). A line
    /// without a SIP user or password keeps those of the current line with the same
    /// extension; tokens, enrollment, keys and overrides stay.
    pub fn edit_device(&self, mac: &Mac, spec: &DeviceSpec, actor: &str) -> Result<DeviceView, AppError> {
        let catalog = self.templates.catalog();
        let current = self.device(mac)?;
        let given: Mac = spec.mac.trim_matches(|c: char| c.is_ascii_whitespace()).parse().map_err(DeviceError::Mac)?;
        if given != *mac {
            let reason = format!("is {given}, but this is device {mac}: a device's MAC cannot change");
            return Err(DeviceError::Field { field: "mac", reason }.into());
        }
        let level = self.lock().password_level(SIP_POLICY)?;
        // Validate with a placeholder password where none is given, then keep the old one.
        let edited = spec.build(|vendor| catalog.vendors.contains_key(vendor), level)?;
        if edited.vendor != current.vendor {
            let reason = "a device's vendor cannot change; remove it and add it again".to_string();
            return Err(DeviceError::Field { field: "vendor", reason }.into());
        }
        self.update_device(mac, actor, &format!("edited device {mac}"), |device| {
            let old_lines = device.lines.clone();
            device.model = edited.model.clone();
            device.lines = edited.lines.clone();
            for (line, given) in device.lines.iter_mut().zip(&spec.lines) {
                let Some(old) = old_lines.iter().find(|old| old.extension == line.extension) else { continue };
                if given.sip_password.is_none() {
                    line.sip_password = old.sip_password.clone();
                }
                if given.sip_user.is_none() {
                    line.sip_user = old.sip_user.clone();
                }
            }
            Ok(())
        })
    }

    /// Re-opens enrollment with a fresh enrollment token; the old enrollment URL is dead.
    pub fn unlock(&self, mac: &Mac, actor: &str) -> Result<DeviceView, AppError> {
        let view = self.update_device(mac, actor, &format!("unlocked enrollment of {mac}"), |device| {
            device.enrollment_token = Token::generate();
            device.enrollment = Enrollment::Open { first_fetch: None };
            Ok(())
        })?;
        crate::metrics::ENROLLMENT.inc("unlocked");
        Ok(view)
    }

    /// Gives (`allow`) or withdraws the consent to serve `mac`'s configuration over plain
    /// HTTP, for phones that cannot use HTTPS. Audited; the page shows it on the device.
    pub fn set_plain_http(&self, mac: &Mac, allow: bool, actor: &str) -> Result<DeviceView, AppError> {
        {
            let mut state = self.lock();
            state.db.device(mac)?.ok_or(AppError::NoDevice(*mac))?;
            let mut txn = Txn::new();
            if allow {
                txn.put_plain_http(mac, &PlainHttpGrant { since: now() }).audit(
                    now(),
                    actor,
                    &format!("allowed {mac}'s configuration over plain HTTP"),
                )?;
            } else {
                txn.remove_plain_http(mac).audit(now(), actor, &format!("withdrew plain HTTP for {mac}"))?;
            }
            state.db.commit(&txn)?;
        }
        tracing::warn!(%mac, actor, allow, "plain-HTTP consent changed");
        self.device_view(mac, false)
    }

    /// Whether `mac`'s configuration may be served over plain HTTP.
    pub fn plain_http_allowed(&self, mac: &Mac) -> Result<bool, AppError> {
        Ok(self.lock().db.plain_http(mac)?.is_some())
    }

    /// Revokes both URLs of a phone that is lost or stolen: new enrollment and steady tokens,
    /// enrollment **locked** (a technician unlocks it once the phone in hand should enroll,
    /// so whoever announces the MAC meanwhile gets nothing), the LAN window closed, and the
    /// redirect service not asked to point at it again. With `new_sip_passwords`, every line
    /// also gets a new generated SIP password, returned this once for the PBX: the old ones
    /// may have left with the phone.
    pub fn rekey(&self, mac: &Mac, new_sip_passwords: bool, actor: &str) -> Result<Rekeyed, AppError> {
        let mut passwords = Vec::new();
        let what = if new_sip_passwords {
            format!("revoked both URLs and the SIP passwords of {mac}; enrollment locked")
        } else {
            format!("revoked both URLs of {mac}; enrollment locked")
        };
        let device = self.update_device(mac, actor, &what, |device| {
            device.enrollment_token = Token::generate();
            device.steady_token = Token::generate();
            device.enrollment = Enrollment::Locked { since: now() };
            device.lan_window_until = None;
            if new_sip_passwords {
                for line in device.lines.iter_mut() {
                    passwords.push(super::policy::renew_sip_password(line, mac)?);
                }
            }
            Ok(())
        })?;
        self.forget_files_of(mac);
        Ok(Rekeyed { device, passwords })
    }

    /// Sets programmable key `number` (1-based) of a device, or clears it with None.
    pub fn set_key(
        &self,
        mac: &Mac,
        number: usize,
        key: Option<&KeySpec>,
        actor: &str,
    ) -> Result<DeviceView, AppError> {
        self.update_device(mac, actor, &format!("set key {number} of {mac}"), |device| {
            Ok(devices::set_key(device, number, key)?)
        })
    }

    /// Sets a per-device vendor key, or removes it when `value` is None.
    pub fn set_override(
        &self,
        mac: &Mac,
        name: &str,
        value: Option<&str>,
        actor: &str,
    ) -> Result<DeviceView, AppError> {
        self.update_device(mac, actor, &format!("set override {name} of {mac}"), |device| {
            Ok(devices::set_override(device, name, value)?)
        })
    }

    /// Lets the tokenless LAN path serve `mac`'s full config for `minutes` (at most a day).
    pub fn open_lan_window(&self, mac: &Mac, minutes: u64, actor: &str) -> Result<DeviceView, AppError> {
        let minutes = minutes.min(24 * 60);
        self.update_device(mac, actor, &format!("opened a {minutes}-minute LAN window for {mac}"), |device| {
            device.lan_window_until = Some(now() + minutes * 60);
            Ok(())
        })
    }

    /// Imports devices from CSV: all valid rows or none (`partial` imports the valid ones and
    /// reports the rest).
    pub fn import(&self, csv_text: &str, partial: bool, actor: &str) -> Result<ImportReport, AppError> {
        let catalog = self.templates.catalog();
        let (specs, mut problems) = devices::parse_csv(csv_text);
        let mut state = self.lock();
        let level = state.password_level(SIP_POLICY)?;
        let mut devices = Vec::new();
        for (line, spec) in specs {
            match spec.build(|vendor| catalog.vendors.contains_key(vendor), level) {
                Ok(device) if state.db.device(&device.mac)?.is_some() => problems
                    .push(CsvProblem { line, reason: format!("a device with MAC {} already exists", device.mac) }),
                Ok(device) => devices.push(device),
                Err(error) => problems.push(CsvProblem { line, reason: error.to_string() }),
            }
        }
        problems.sort_by_key(|p| p.line);
        if !problems.is_empty() && !partial {
            return Err(AppError::Import(problems));
        }
        let audit = format!("imported {} device(s) from CSV", devices.len());
        let part = |state: &mut State, device: &Device| {
            let mut part = Txn::new();
            if state.db.device(&device.mac)?.is_some() {
                // Added meanwhile by someone else: theirs stands.
                return Ok((part, ()));
            }
            part.put_device(device);
            if device.mac == devices[0].mac {
                part.audit(now(), actor, &audit)?;
            }
            state.plan_change(None, Some(device), &mut part)?;
            Ok((part, ()))
        };
        // One decision: the device cap and the store's room are judged for the whole import
        // before its first write, so neither stops it halfway.
        let parts: Vec<Txn> =
            devices.iter().map(|device| part(&mut state, device).map(|(txn, ())| txn)).collect::<Result<_, _>>()?;
        state.db.check_growth(&parts)?;
        // A store transaction fits one flash sector, so a large import commits as many devices
        // (each with its redirect registration) as fit in each, letting phones be served in
        // between. A power cut mid-import leaves a prefix, and re-running the import with
        // --partial adds the rest.
        drop(state);
        self.commit_each(&devices, part, |_, ()| {})?;
        self.lock().rebuild_tokens()?;
        self.site_changed();
        self.redirect.wake();
        Ok(ImportReport { imported: devices.len(), problems })
    }

    /// Every device as CSV; SIP passwords only with `reveal`.
    pub fn export(&self, reveal: bool) -> Result<String, AppError> {
        let devices: Vec<Device> = self.lock().db.devices().collect::<Result<_, _>>()?;
        Ok(devices::write_csv(devices.iter(), reveal))
    }

    /// The phones-seen list.
    pub fn phones_seen(&self) -> Result<Vec<PhoneSeen>, AppError> {
        let state = self.lock();
        let mut seen: Vec<PhoneSeen> =
            state.db.phones_seen()?.into_iter().filter(|old| !state.pending_seen.contains_key(&old.mac)).collect();
        seen.extend(state.pending_seen.values().cloned());
        seen.sort_by_key(|phone| phone.mac);
        Ok(seen)
    }

    /// Adds a phone from the phones-seen list as a device with one line, and opens a
    /// 15-minute LAN window so it can fetch its configuration without its URL.
    pub fn approve_seen(&self, mac: &Mac, extension: &str, name: &str, actor: &str) -> Result<DeviceView, AppError> {
        let seen = self.phones_seen()?.into_iter().find(|p| p.mac == *mac).ok_or(AppError::NoDevice(*mac))?;
        let spec = DeviceSpec {
            mac: mac.to_string(),
            vendor: seen.vendor.to_string(),
            model: seen.model.to_string(),
            lines: vec![devices::LineSpec {
                extension: extension.into(),
                name: name.into(),
                sip_user: None,
                sip_password: None,
            }],
        };
        self.add_device(&spec, actor)?;
        self.dismiss_seen(mac)?;
        self.open_lan_window(mac, 15, actor)
    }

    /// Removes a phone from the phones-seen list.
    pub fn dismiss_seen(&self, mac: &Mac) -> Result<(), AppError> {
        let mut state = self.lock();
        state.pending_seen.remove(mac);
        let mut txn = Txn::new();
        txn.remove_seen(mac);
        Ok(state.db.commit(&txn)?)
    }
}
