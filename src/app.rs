//! The appliance's state and every operation on it. The HTTPS server, the control socket
//! and the offline CLI all go through [`App`], so a device added on the command line and one
//! added over the socket are the same code path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::devices::{self, CsvProblem, DeviceError, DeviceSpec, KeySpec};
use crate::mac::Mac;
use crate::provision::context;
use crate::provision::templates::{RenderError, Templates};
use crate::provision::throttle::Throttle;
use crate::redirect::outbox::{Plan, RedirectView, Redirector, redirect_view_of};
use crate::settings::{self, SettingError};
use crate::sip::checksync::SipState;
use crate::store::backend::AnyFlash;
use crate::store::check::hex;
use crate::store::records::{
    Contact, Db, DbError, Device, Enrollment, FunctionKey, Override, PhoneSeen, RecordError, SEEN_CAPACITY, Txn,
};

/// Why an operation failed; every variant reads as advice to the user.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The store refused or failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A stored record is unreadable.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A device field was refused.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A setting was refused.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// A template failed.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// A malformed MAC.
    #[error(transparent)]
    Mac(#[from] crate::mac::MacError),
    /// No such device.
    #[error("no device with MAC {0}; `provbox device list` shows the known ones")]
    NoDevice(Mac),
    /// A device with that MAC exists.
    #[error("a device with MAC {0} already exists; remove it first or unlock it")]
    DeviceExists(Mac),
    /// The device's vendor serves no such file.
    #[error("{vendor} phones are not served a file named {file:?}")]
    NoSuchFile {
        /// The device's vendor.
        vendor: String,
        /// The requested name.
        file: String,
    },
    /// The admin password was refused.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// Something broke inside provbox (a task panicked); logged.
    #[error("internal error: {0}")]
    Internal(String),
    /// A SIP operation could not be done.
    #[error("{0}")]
    Sip(String),
    /// A redirect-service operation could not be done.
    #[error("{0}")]
    Redirect(String),
    /// A CSV import with problems, imported all-or-nothing.
    #[error("import refused, nothing imported: {} problem(s)", .0.len())]
    Import(Vec<CsvProblem>),
}

/// What one fetch changes on its device besides the last contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchChange {
    /// An enrollment transition, as (state the request saw, new state).
    pub enrollment: Option<(Enrollment, Enrollment)>,
    /// Close the LAN enrollment window (the phone reached its steady URL).
    pub close_window: bool,
}

/// Which URL a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// `/e/<token>/`, the one-time enrollment URL.
    Enrollment,
    /// `/p/<token>/`, the steady URL.
    Steady,
}

/// Where the appliance keeps its files, and how phones reach it.
#[derive(Debug, Clone)]
pub struct Site {
    /// The data directory.
    pub data_dir: PathBuf,
    /// Default base URL when `provision.base_url` is empty, e.g. `https://192.0.2.10:8443/`.
    pub default_base_url: String,
    /// The credential-free bootstrap over plain HTTP, e.g. `http://192.0.2.10:8080/`: what
    /// DHCP option 66 and SIP PnP give phones that are not (or no longer) enrolling.
    pub bootstrap_url: String,
}

/// Mutable state under one lock; every critical section is short and never awaits.
pub(crate) struct State {
    pub(crate) db: Db<AnyFlash>,
    tokens: HashMap<[u8; 16], (Mac, TokenKind)>,
    /// Contacts not yet written to flash; flushed periodically to spare the flash.
    pub(crate) pending_contacts: HashMap<Mac, Contact>,
    /// Devices whose enrollment is in its grace period, with the first fetch time.
    in_grace: HashMap<Mac, u64>,
}

/// The appliance.
pub struct App {
    state: Mutex<State>,
    /// Vendor profiles and templates.
    pub templates: Templates,
    /// Token-miss throttling.
    pub throttle: Throttle,
    /// Paths and URLs.
    pub site: Site,
    /// The redirect outbox worker's shared parts.
    pub redirect: Redirector,
    /// The SIP endpoint and the phones' SIP addresses.
    pub sip: SipState,
    /// The first-start setup code.
    pub(crate) admin: crate::admin::SetupCode,
}

/// Enrollment as shown to people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum EnrollmentView {
    /// Never fetched: the enrollment URL serves the full config.
    Open,
    /// Fetched once; open until the grace period ends.
    Grace {
        /// Unix time it closes.
        until: u64,
    },
    /// Closed: the enrollment URL serves nothing until unlocked.
    Locked {
        /// Unix time it closed.
        since: u64,
    },
}

/// Whether the phone has the config it would be served now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigState {
    /// The phone has never fetched its device file.
    NeverFetched,
    /// It fetched exactly what it would get now.
    Current,
    /// The config changed since its last fetch.
    Pending,
}

/// A static file offered under `/p/<steady>/files/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticFile {
    /// Path below `files/`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// A device as shown by `device show` and the page. Passwords are never part of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceView {
    /// MAC, 12 lowercase hex digits.
    pub mac: String,
    /// Vendor id.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// Lines: extension, name, SIP user.
    pub lines: Vec<LineView>,
    /// Enrollment state.
    pub enrollment: EnrollmentView,
    /// The one-time enrollment URL.
    pub enrollment_url: String,
    /// The steady URL.
    pub steady_url: String,
    /// Until when the tokenless LAN path serves the full config, if open.
    pub lan_window_until: Option<u64>,
    /// Last fetch.
    pub last_contact: Option<Contact>,
    /// Whether the phone has its latest config.
    pub config: ConfigState,
    /// Programmable keys.
    pub keys: Vec<FunctionKey>,
    /// Per-device vendor keys.
    pub overrides: Vec<Override>,
    /// Files under `files/`, with checksums (only in `device show`).
    pub files: Vec<StaticFile>,
    /// Where the vendor's redirect service stands for it.
    pub redirect: RedirectView,
}

/// One line without its password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineView {
    /// Extension.
    pub extension: String,
    /// Display name.
    pub name: String,
    /// SIP auth user.
    pub sip_user: String,
}

/// A setting as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingView {
    /// Name.
    pub name: String,
    /// Value; secrets are masked.
    pub value: String,
    /// Whether it is still the default.
    pub default: bool,
    /// What it does.
    pub help: String,
}

/// The result of a CSV import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Devices created.
    pub imported: usize,
    /// Rows skipped, with reasons (partial imports only).
    pub problems: Vec<CsvProblem>,
}

/// The current Unix time.
pub fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Masked stand-in for a secret.
pub const MASK: &str = "********";

impl App {
    /// Wraps a mounted store. Generates the phones' admin password on first start.
    pub fn new(db: Db<AnyFlash>, site: Site) -> Result<App, AppError> {
        let templates = Templates::new(site.data_dir.join("templates"));
        let mut state =
            State { db, tokens: HashMap::new(), pending_contacts: HashMap::new(), in_grace: HashMap::new() };
        if state.db.setting("phone.admin_password")?.is_none() {
            let mut txn = Txn::new();
            txn.set_setting("phone.admin_password", &devices::generate_password())?;
            state.db.commit(&txn)?;
        }
        state.rebuild_tokens()?;
        Ok(App {
            state: Mutex::new(state),
            templates,
            throttle: Throttle::default(),
            site,
            redirect: Redirector::default(),
            sip: SipState::default(),
            admin: crate::admin::SetupCode::default(),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the store consistent (commits are atomic),
        // so later requests may go on.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The device owning `token` as a `kind` token, compared in constant time.
    pub fn device_by_token(&self, token: &[u8; 16], kind: TokenKind) -> Result<Option<Device>, AppError> {
        let state = self.lock();
        let Some((mac, owner_kind)) = state.tokens.get(token).copied() else { return Ok(None) };
        let Some(device) = state.db.device(&mac)? else { return Ok(None) };
        let stored = match kind {
            TokenKind::Enrollment => &device.enrollment_token,
            TokenKind::Steady => &device.steady_token,
        };
        let matches: bool = stored.ct_eq(token).into();
        Ok((matches && owner_kind == kind).then_some(device))
    }

    /// The effective base URL phones use.
    pub fn base_url(&self) -> Result<String, AppError> {
        self.lock().base_url(&self.site.default_base_url)
    }

    /// Every setting's effective value (secrets included: for rendering only).
    pub fn effective_settings(&self) -> Result<std::collections::BTreeMap<String, String>, AppError> {
        Ok(settings::effective(&self.lock().db.settings()?))
    }

    /// Adds a device.
    pub fn add_device(&self, spec: &DeviceSpec, actor: &str) -> Result<DeviceView, AppError> {
        let catalog = self.templates.catalog();
        let device = spec.build(|vendor| catalog.vendors.contains_key(vendor))?;
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
        self.redirect.wake();
        tracing::info!(mac = %device.mac, actor, "device added");
        self.device_view(&device.mac, false)
    }

    /// Every device, in MAC order.
    pub fn devices(&self) -> Result<Vec<DeviceView>, AppError> {
        let devices: Vec<(Device, RedirectView)> = {
            let state = self.lock();
            let (queue, settings) = (state.db.outbox()?, state.settings()?);
            state
                .db
                .devices()
                .map(|device| {
                    let device = state.with_pending_contact(device?);
                    let redirect = redirect_view_of(&state, &device, &queue, &settings)?;
                    Ok((device, redirect))
                })
                .collect::<Result<_, AppError>>()?
        };
        devices.into_iter().map(|(device, redirect)| self.view_of(&device, false, redirect)).collect()
    }

    /// One device, with its static files' checksums.
    pub fn device_view(&self, mac: &Mac, with_files: bool) -> Result<DeviceView, AppError> {
        let device = self.device(mac)?;
        let redirect = self.redirect_view(mac)?;
        self.view_of(&device, with_files, redirect)
    }

    /// The stored device with `mac`, with any contact not yet flushed.
    pub fn device(&self, mac: &Mac) -> Result<Device, AppError> {
        let state = self.lock();
        let device = state.db.device(mac)?.ok_or(AppError::NoDevice(*mac))?;
        Ok(state.with_pending_contact(device))
    }

    /// The view of `device`, which already carries its newest contact.
    fn view_of(&self, device: &Device, with_files: bool, redirect: RedirectView) -> Result<DeviceView, AppError> {
        let base = self.base_url()?;
        let grace = self.grace_seconds()?;
        let enrollment = match device.enrollment {
            Enrollment::Open { first_fetch: None } => EnrollmentView::Open,
            Enrollment::Open { first_fetch: Some(at) } if now() < at + grace => {
                EnrollmentView::Grace { until: at + grace }
            }
            Enrollment::Open { first_fetch: Some(at) } => EnrollmentView::Locked { since: at + grace },
            Enrollment::Locked { since } => EnrollmentView::Locked { since },
        };
        let config = match &device.last_contact {
            Some(contact) if contact.config_hash != [0; 8] => match self.device_file_hash(device) {
                Ok(hash) if hash == contact.config_hash => ConfigState::Current,
                _ => ConfigState::Pending,
            },
            _ => ConfigState::NeverFetched,
        };
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
            enrollment_url: format!("{base}e/{}/", hex(&device.enrollment_token)),
            steady_url: format!("{base}p/{}/", hex(&device.steady_token)),
            lan_window_until: device.lan_window_until.filter(|until| *until > now()),
            last_contact: device.last_contact.clone(),
            config,
            keys: device.keys.to_vec(),
            overrides: device.overrides.to_vec(),
            files: if with_files { self.static_files() } else { Vec::new() },
            redirect,
        })
    }

    /// The grace period after the first enrollment fetch, in seconds.
    pub fn grace_seconds(&self) -> Result<u64, AppError> {
        let minutes = self.effective_settings()?.get("provision.enroll_grace_minutes").and_then(|m| m.parse().ok());
        Ok(minutes.unwrap_or(15u64) * 60)
    }

    /// Hash of the device file as it would be served now.
    pub fn device_file_hash(&self, device: &Device) -> Result<[u8; 8], AppError> {
        let catalog = self.templates.catalog();
        let vendor = catalog.vendor(&device.vendor)?;
        let file = vendor
            .device_file_name(&device.mac, &device.model)
            .ok_or_else(|| AppError::NoSuchFile { vendor: device.vendor.to_string(), file: "(device file)".into() })?;
        let body = self.render_for(device, &file, context::Secrets::Real)?;
        Ok(context::config_hash(&body))
    }

    /// Removes a device.
    pub fn remove_device(&self, mac: &Mac, actor: &str) -> Result<(), AppError> {
        let mut state = self.lock();
        let device = state.db.device(mac)?.ok_or(AppError::NoDevice(*mac))?;
        let mut txn = Txn::new();
        txn.remove_device(mac).audit(now(), actor, &format!("removed device {mac}"))?;
        state.plan_change(Some(&device), None, &mut txn)?;
        txn.remove_redirect(mac);
        state.commit_devices(&txn)?;
        state.pending_contacts.remove(mac);
        drop(state);
        self.redirect.wake();
        tracing::info!(%mac, actor, "device removed");
        Ok(())
    }

    /// Changes one stored device with `change`, commits it with an audit line `what`, and
    /// returns its new view. Token changes re-index the tokens.
    fn update_device(
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
        self.redirect.wake();
        tracing::info!(%mac, actor, "{what}");
        self.device_view(mac, false)
    }

    /// Changes a device's model and lines as `spec` says (its MAC cannot change). A line
    /// without a SIP user or password keeps those of the current line with the same
    /// extension; tokens, enrollment, keys and overrides stay.
    pub fn edit_device(&self, mac: &Mac, spec: &DeviceSpec, actor: &str) -> Result<DeviceView, AppError> {
        let catalog = self.templates.catalog();
        let mut spec = spec.clone();
        spec.mac = mac.to_string();
        let current = self.device(mac)?;
        // Validate with a placeholder password where none is given, then keep the old one.
        let edited = spec.build(|vendor| catalog.vendors.contains_key(vendor))?;
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
            device.enrollment_token = devices::new_token();
            device.enrollment = Enrollment::Open { first_fetch: None };
            Ok(())
        })?;
        crate::metrics::ENROLLMENT.inc("unlocked");
        Ok(view)
    }

    /// Revokes both URLs of a device (a stolen phone): fresh enrollment and steady tokens,
    /// enrollment open again, LAN window closed. The phone must enroll again.
    pub fn rekey(&self, mac: &Mac, actor: &str) -> Result<DeviceView, AppError> {
        self.update_device(mac, actor, &format!("revoked both URLs of {mac}"), |device| {
            device.enrollment_token = devices::new_token();
            device.steady_token = devices::new_token();
            device.enrollment = Enrollment::Open { first_fetch: None };
            device.lan_window_until = None;
            Ok(())
        })
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
        let state = self.lock();
        let mut devices = Vec::new();
        for (line, spec) in specs {
            match spec.build(|vendor| catalog.vendors.contains_key(vendor)) {
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
        // A store transaction fits one flash sector, so a large import commits as many devices
        // (each with its redirect registration) as fit in each. Validation is complete before
        // the first write; a power cut mid-import leaves a prefix, and re-running the import
        // with --partial adds the rest.
        drop(state);
        let audit = format!("imported {} device(s) from CSV", devices.len());
        self.commit_each(
            &devices,
            |state, device| {
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
            },
            |_, ()| {},
        )?;
        self.lock().rebuild_tokens()?;
        self.redirect.wake();
        Ok(ImportReport { imported: devices.len(), problems })
    }

    /// Every device as CSV; SIP passwords only with `reveal`.
    pub fn export(&self, reveal: bool) -> Result<String, AppError> {
        let devices: Vec<Device> = self.lock().db.devices().collect::<Result<_, _>>()?;
        Ok(devices::write_csv(devices.iter(), reveal))
    }

    /// Every known setting, secrets masked.
    pub fn settings_view(&self) -> Result<Vec<SettingView>, AppError> {
        let stored = self.lock().db.settings()?;
        Ok(settings::SETTINGS
            .iter()
            .map(|spec| {
                let value = stored.iter().find(|(name, _)| name == spec.name).map(|(_, value)| value.clone());
                let shown = match (&value, spec.secret) {
                    (Some(v), true) if !v.is_empty() => MASK.to_string(),
                    (Some(v), _) => v.clone(),
                    (None, _) => spec.default.to_string(),
                };
                SettingView { name: spec.name.into(), value: shown, default: value.is_none(), help: spec.help.into() }
            })
            .collect())
    }

    /// Sets one setting after validating it.
    pub fn set_setting(&self, name: &str, value: &str, actor: &str) -> Result<(), AppError> {
        let value = settings::validate(name, value)?;
        let shown = if settings::is_secret(name) { MASK } else { value.as_str() };
        let mut txn = Txn::new();
        txn.set_setting(name, &value)?.audit(now(), actor, &format!("set {name} = {shown}"))?;
        self.lock().db.commit(&txn)?;
        tracing::info!(setting = name, value = shown, actor, "setting changed");
        if name.starts_with("redirect.") {
            // New credentials or a service switched on: register what should be.
            self.reconcile_redirects(Plan::Reconcile)?;
        } else if name == "provision.base_url" {
            // The registered enrollment URLs point at the old address.
            self.reconcile_redirects(Plan::Reregister)?;
        }
        Ok(())
    }

    /// Renders `file` exactly as the device would be served it now.
    pub fn render(&self, mac: &Mac, file: &str, reveal: bool) -> Result<String, AppError> {
        let device = self.device(mac)?;
        let secrets = if reveal { context::Secrets::Real } else { context::Secrets::Masked };
        self.render_for(&device, file, secrets)
    }

    /// Renders `file` for `device` through its vendor's profile.
    pub fn render_for(&self, device: &Device, file: &str, secrets: context::Secrets) -> Result<String, AppError> {
        let catalog = self.templates.catalog();
        let vendor = catalog.vendor(&device.vendor)?;
        let matched = vendor
            .match_file(file)
            .ok_or_else(|| AppError::NoSuchFile { vendor: device.vendor.to_string(), file: file.to_string() })?;
        let shown_device = matched.file.secrets.then_some(device);
        let context = context::build(self, shown_device, &matched, secrets)?;
        Ok(self.templates.render(&vendor.id, &matched.file.template, &context)?)
    }

    /// Every extension on the appliance, for phonebooks: (name, extension).
    pub fn directory(&self) -> Result<Vec<(String, String)>, AppError> {
        let state = self.lock();
        let mut entries = Vec::new();
        for device in state.db.devices() {
            for line in device?.lines {
                entries.push((line.display_name.to_string(), line.extension.to_string()));
            }
        }
        entries.sort();
        Ok(entries)
    }

    /// The phones-seen list.
    pub fn phones_seen(&self) -> Result<Vec<PhoneSeen>, AppError> {
        Ok(self.lock().db.phones_seen()?)
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
        let mut txn = Txn::new();
        txn.remove_seen(mac);
        Ok(self.lock().db.commit(&txn)?)
    }

    /// The audit log, newest first.
    pub fn audit_log(&self) -> Result<Vec<crate::store::records::AuditEntry>, AppError> {
        let mut log = self.lock().db.audit_log()?;
        log.reverse();
        Ok(log)
    }

    /// Store usage: (live bytes, capacity in bytes, lowest and highest sector erase count).
    pub fn store_usage(&self) -> (usize, usize, u32, u32) {
        let state = self.lock();
        let store = state.db.store();
        let live: usize = store.records_by_prefix().values().map(|(_, bytes)| bytes).sum();
        let sectors = store.sectors();
        let erases: Vec<u32> = sectors.iter().filter_map(|s| s.state.erase_count()).collect();
        let capacity = sectors.len() * crate::store::backend::SECTOR_SIZE;
        (live, capacity, erases.iter().copied().min().unwrap_or(0), erases.iter().copied().max().unwrap_or(0))
    }

    /// Records an unknown phone; written at most once a minute per phone to spare the flash.
    pub fn record_seen(&self, seen: PhoneSeen) -> Result<(), AppError> {
        let mut state = self.lock();
        let existing = state.db.phones_seen()?;
        if existing.iter().any(|old| old.mac == seen.mac && seen.at < old.at + 60) {
            return Ok(());
        }
        let mut txn = Txn::new();
        if existing.len() >= SEEN_CAPACITY
            && !existing.iter().any(|old| old.mac == seen.mac)
            && let Some(oldest) = existing.iter().min_by_key(|old| old.at)
        {
            txn.remove_seen(&oldest.mac);
        }
        txn.put_seen(&seen);
        state.db.commit(&txn)?;
        Ok(())
    }

    /// Files under `<data>/files/`, with SHA-256 sums.
    pub fn static_files(&self) -> Vec<StaticFile> {
        let root = self.site.data_dir.join("files");
        let mut files = Vec::new();
        let mut pending = vec![root.clone()];
        // Bounded walk: the files area is small by design.
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten().take(10_000) {
                let path = entry.path();
                let Ok(kind) = entry.file_type() else { continue };
                if kind.is_dir() && files.len() < 10_000 {
                    pending.push(path);
                } else if kind.is_file()
                    && let Ok(sum) = sha256_file(&path)
                {
                    let relative = path.strip_prefix(&root).unwrap_or(&path).to_string_lossy().into_owned();
                    files.push(StaticFile { path: relative, size: sum.1, sha256: sum.0 });
                }
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
    }

    /// Records a fetch of `read` (the device as the request saw it): applies `change` to the
    /// stored device under the lock and commits it durably, or buffers `contact` when nothing
    /// else changes. An enrollment change applies only if the stored device still has the
    /// tokens and enrollment state the request saw, so a concurrent unlock, removal or
    /// competing fetch is never undone by a stale copy.
    pub fn record_fetch(&self, read: &Device, change: &FetchChange, contact: Option<Contact>) -> Result<(), AppError> {
        let mut state = self.lock();
        let Some(mut stored) = state.db.device(&read.mac)? else { return Ok(()) };
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

    /// Appends `action` by `actor` to the audit log.
    pub fn record_audit(&self, actor: &str, action: &str) -> Result<(), AppError> {
        let mut txn = Txn::new();
        txn.audit(now(), actor, action)?;
        Ok(self.lock().db.commit(&txn)?)
    }

    /// Notes the current time in the store for the next boot (at most every half hour).
    pub fn note_time(&self) -> Result<(), AppError> {
        Ok(crate::clock::note(&mut self.lock().db, now())?)
    }

    /// Commits one part per item, packed into as few store transactions as fit a sector.
    /// Each transaction's parts are built and committed under one hold of the lock, which is
    /// released between transactions so phones are served meanwhile; `committed` runs for
    /// each part once its transaction is durable.
    pub(crate) fn commit_each<T, E>(
        &self,
        items: &[T],
        mut part: impl FnMut(&mut State, &T) -> Result<(Txn, E), AppError>,
        mut committed: impl FnMut(&mut State, E),
    ) -> Result<(), AppError> {
        let mut next = 0;
        while next < items.len() {
            let mut state = self.lock();
            let mut pending = Txn::new();
            let mut effects = Vec::new();
            while let Some(item) = items.get(next) {
                let (txn, effect) = part(&mut state, item)?;
                let mut joined = pending.clone();
                joined.extend(txn);
                if !pending.is_empty() && !state.db.fits(&joined) {
                    // Built again, fresh, under the next hold of the lock.
                    break;
                }
                pending = joined;
                effects.push(effect);
                next += 1;
            }
            if !pending.is_empty() {
                state.db.commit(&pending)?;
            }
            for effect in effects {
                committed(&mut state, effect);
            }
        }
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

impl State {
    /// `device` with its contact not yet flushed, if any.
    fn with_pending_contact(&self, mut device: Device) -> Device {
        if let Some(contact) = self.pending_contacts.get(&device.mac) {
            device.last_contact = Some(contact.clone());
        }
        device
    }

    /// Commits a transaction that adds, removes or re-tokens devices, and re-indexes tokens.
    fn commit_devices(&mut self, txn: &Txn) -> Result<(), AppError> {
        self.db.commit(txn)?;
        self.rebuild_tokens()
    }

    /// Rebuilds the token index and the grace-period set from the stored devices.
    fn rebuild_tokens(&mut self) -> Result<(), AppError> {
        let mut tokens = HashMap::new();
        let mut in_grace = HashMap::new();
        for device in self.db.devices() {
            let device = device?;
            tokens.insert(device.enrollment_token, (device.mac, TokenKind::Enrollment));
            tokens.insert(device.steady_token, (device.mac, TokenKind::Steady));
            if let Enrollment::Open { first_fetch: Some(at) } = device.enrollment {
                in_grace.insert(device.mac, at);
            }
        }
        self.tokens = tokens;
        self.in_grace = in_grace;
        Ok(())
    }
}

/// SHA-256 (hex) and size of a file, streamed.
fn sha256_file(path: &std::path::Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0; 64 * 1024];
    let mut size = 0;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        context.update(&buffer[..n]);
    }
    Ok((hex(context.finish().as_ref()), size))
}

/// The client's address as shown: IPv4-mapped IPv6 addresses as plain IPv4.
pub fn client_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}
