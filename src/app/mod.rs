//! Every operation of the appliance, in one place. The HTTPS server, the page and the API,
//! the control socket and the offline CLI all go through [`App`], so a device added on the
//! command line and one added over the socket are the same code path.
//!
//! - [`devices`]: add, edit, remove, unlock, rekey, import and export devices; the phones seen.
//! - [`fetches`]: the decision behind every config fetch (one-time enrollment), and what a
//!   fetch records.
//! - [`listing`]: the device list streamed a batch at a time, and the cap on such answers.
//! - [`config`]: settings, rendering, the store's usage, the audit log and `/metrics`.
//! - [`redirect`]: planning redirect work in the device's own transaction, and delivering it.
//! - [`admin`]: the page's password, setup code and API tokens.
//! - [`policy`]: devices whose SIP passwords fall short of the site's level, and rotating them.
//! - [`backup`]: encrypted backups of the identity and state, and restoring them.
//! - [`backup_copy`]: scheduled copies of them, sent off the box.
//! - [`sip`]: what SIP plug-and-play offers a phone, and check-sync.
//! - [`templates`]: template overrides: list, show, preview, save and revert.
//! - [`views`]: what operations answer with, the same for the socket, the CLI and the API.
//! - [`error`]: why an operation failed, and whose fault it is.
//!
//! All state sits behind one lock (`State`, private to this module). Every critical section
//! is short and never awaits; every change commits one store transaction under it, so a
//! device change and the redirect work it causes are durable together or not at all.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

use crate::admin::SetupCode;
use crate::mac::Mac;
use crate::provision::templates::Templates;
use crate::provision::throttle::Throttle;
use crate::redirect::outbox::Redirector;
use crate::settings::Settings;
use crate::sip::checksync::SipState;
use crate::store::backend::AnyFlash;
use crate::store::records::{Contact, Db, Device, Enrollment, PhoneSeen, Txn};
use crate::token::{Token, TokenKind};

pub mod admin;
pub mod backup;
pub mod backup_copy;
pub mod config;
pub mod devices;
pub mod error;
pub mod fetches;
pub mod listing;
pub mod policy;
pub mod redirect;
pub mod sip;
pub mod templates;
pub mod views;

pub use error::AppError;

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

/// The URLs phones are given by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteUrls {
    /// Default base URL when `provision.base_url` is empty.
    pub default_base_url: String,
    /// The credential-free bootstrap over plain HTTP.
    pub bootstrap_url: String,
}

/// Mutable state under one lock; every critical section is short and never awaits.
struct State {
    db: Db<AnyFlash>,
    tokens: HashMap<Token, (Mac, TokenKind)>,
    /// Contacts not yet written to flash; flushed periodically to spare the flash.
    pending_contacts: HashMap<Mac, Contact>,
    /// Devices whose enrollment is in its grace period, with the first fetch time.
    in_grace: HashMap<Mac, u64>,
    /// Fetches through each device's URL since start: a reprovision's proof that the phone
    /// itself fetched (a contact's time has whole seconds only).
    fetches: HashMap<Mac, u64>,
    /// Unknown phones heard but not yet written (at most [`fetches::MAX_PENDING_SEEN`]);
    /// written in batches by [`App::flush_seen`] within an hourly budget, so that strangers
    /// cannot drive flash wear.
    pending_seen: HashMap<Mac, PhoneSeen>,
    /// When each phones-seen record of the last hour was written.
    seen_writes: std::collections::VecDeque<u64>,
}

/// The appliance.
pub struct App {
    /// Addresses that proved themselves (a fetch through a device URL, a login, an API
    /// token): the listeners keep a reserve of connections for them.
    pub known_peers: std::sync::Arc<crate::peers::KnownPeers>,
    state: Mutex<State>,
    /// Vendor profiles and templates.
    pub templates: Templates,
    /// Token-miss throttling.
    pub throttle: Throttle,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The URLs phones are given by default: they follow the LAN address.
    urls: std::sync::RwLock<SiteUrls>,
    /// The redirect outbox worker's shared parts.
    pub redirect: Redirector,
    /// The SIP endpoint and the phones' SIP addresses.
    pub sip: SipState,
    /// The first-start setup code.
    setup_code: SetupCode,
    /// Each device file's hash as it would be served now, with what it was rendered from,
    /// so that saying "current" or "pending" re-renders only what changed.
    config_hashes: Mutex<HashMap<Mac, config::CurrentHash>>,
    /// Files as phones were last served them, while what they were rendered from holds.
    rendered: crate::provision::cache::RenderCache,
    /// Turns for long answers (streamed device lists), so that a few at once bound memory.
    pub heavy: listing::HeavyAnswers,
    /// Bumped by every change that may alter files beyond one device's own: settings, and
    /// devices added, edited or removed (the phonebook directory).
    site_changes: AtomicU64,
    /// The CA certificate that formats carrying it inline (Poly) get, read once it exists
    /// and again after a restore.
    ca_pem: Mutex<Option<String>>,
    /// The server's TLS identity, once the server runs: a restore hands it the restored CA.
    tls: std::sync::OnceLock<std::sync::Arc<crate::pki::Pki>>,
    /// Wakes the backup copy worker: a backup setting changed, or "copy now".
    backup_copy_wake: tokio::sync::Notify,
    /// Held while a template override is checked, written and audited: one edit at a time.
    template_edits: Mutex<()>,
}

impl App {
    /// Wraps a mounted store. Generates the phones' admin password on first start.
    pub fn new(db: Db<AnyFlash>, site: Site) -> Result<App, AppError> {
        let templates = Templates::new(site.data_dir.join("templates"));
        let mut state = State {
            db,
            tokens: HashMap::new(),
            pending_contacts: HashMap::new(),
            in_grace: HashMap::new(),
            fetches: HashMap::new(),
            pending_seen: HashMap::new(),
            seen_writes: std::collections::VecDeque::new(),
        };
        // The phones' admin password is generated at first start only: an empty store on a
        // data directory without a CA. A store that lost it (damage) gets no silent new
        // one, which every phone would take at its next fetch (see `lost_secrets`).
        let first_start = state.db.store().is_empty() && !site.data_dir.join("tls/ca.crt").exists();
        if first_start && state.db.setting("phone.admin_password")?.is_none() {
            let mut txn = Txn::new();
            txn.set_setting("phone.admin_password", &crate::devices::generate_password())?;
            state.db.commit(&txn)?;
        }
        state.rebuild_tokens()?;
        // After a restart (a power cut restarts the phones too) the addresses the phones last
        // fetched from are known again at once, so the connection reserve keeps serving them.
        let known_peers = std::sync::Arc::new(crate::peers::KnownPeers::default());
        for device in state.db.devices() {
            if let Some(contact) = device?.last_contact {
                known_peers.prove(contact.ip);
            }
        }
        Ok(App {
            known_peers,
            state: Mutex::new(state),
            templates,
            throttle: Throttle::default(),
            data_dir: site.data_dir,
            urls: std::sync::RwLock::new(SiteUrls {
                default_base_url: site.default_base_url,
                bootstrap_url: site.bootstrap_url,
            }),
            redirect: Redirector::default(),
            sip: SipState::default(),
            setup_code: SetupCode::default(),
            config_hashes: Mutex::new(HashMap::new()),
            rendered: crate::provision::cache::RenderCache::new(crate::provision::cache::CACHE_BYTES),
            heavy: listing::HeavyAnswers::default(),
            site_changes: AtomicU64::new(0),
            ca_pem: Mutex::new(None),
            tls: std::sync::OnceLock::new(),
            backup_copy_wake: tokio::sync::Notify::new(),
            template_edits: Mutex::new(()),
        })
    }

    /// Hands the app the server's TLS identity, so that a restore can replace the CA it
    /// serves. Called once by the server at start.
    pub fn attach_tls(&self, pki: std::sync::Arc<crate::pki::Pki>) {
        // A second call would come from a second server on the same App: keep the first.
        let _ = self.tls.set(pki);
    }

    /// The default base URL: where phones reach HTTPS when `provision.base_url` is empty.
    pub fn default_base_url(&self) -> String {
        self.site_urls().default_base_url
    }

    /// The credential-free bootstrap URL over plain HTTP (DHCP option 66, SIP PnP).
    pub fn bootstrap_url(&self) -> String {
        self.site_urls().bootstrap_url
    }

    fn site_urls(&self) -> SiteUrls {
        // The URLs are replaced whole, so a poisoned lock still holds a consistent pair.
        self.urls.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Points the default URLs at a new LAN address; true if they changed, and then every
    /// phone's files count as changed too (they carry the URLs).
    pub fn set_site_urls(&self, urls: SiteUrls) -> bool {
        let mut current = self.urls.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if *current == urls {
            return false;
        }
        *current = urls;
        drop(current);
        self.site_changed();
        true
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the store consistent (commits are atomic),
        // so later requests may go on.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Commits one part per item, packed into as few store transactions as fit a sector.
    /// Each transaction's parts are built and committed under one hold of the lock, which is
    /// released between transactions so phones are served meanwhile; `committed` runs for
    /// each part once its transaction is durable.
    fn commit_each<T, E>(
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
}

impl State {
    /// The devices in `macs` that still exist, in that order, each with its contact not yet
    /// flushed.
    fn stored_devices(&self, macs: &[Mac]) -> Result<Vec<Device>, AppError> {
        let mut devices = Vec::with_capacity(macs.len());
        for mac in macs {
            if let Some(device) = self.db.device(mac)? {
                devices.push(self.with_pending_contact(device));
            }
        }
        Ok(devices)
    }

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

    /// The phones' base URL: `provision.base_url`, or `default`.
    fn base_url(&self, default: &str) -> Result<String, AppError> {
        let configured = self.db.setting("provision.base_url")?.unwrap_or_default();
        Ok(if configured.is_empty() { default.to_string() } else { configured })
    }

    /// Every effective setting.
    fn settings(&self) -> Result<Settings, AppError> {
        Ok(config::settings_table().effective(&self.db.settings()?))
    }

    /// The password level `setting` (`policy.sip_password`, `policy.admin_password`) names.
    fn password_level(&self, setting: &str) -> Result<crate::policy::Level, AppError> {
        Ok(crate::policy::Level::from_setting(self.settings()?.get(setting)))
    }

    /// The grace period after the first enrollment fetch, in seconds.
    fn grace_seconds(&self) -> Result<u64, AppError> {
        Ok(self.settings()?.number("provision.enroll_grace_minutes") * 60)
    }
}
