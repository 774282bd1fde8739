//! The typed records provbox keeps in the store, and [`Db`], the transactional facade the
//! rest of the appliance uses.
//!
//! Keys are one kind byte followed by the record's identity (a MAC, a setting name, a queue
//! position). Values are one schema-version byte followed by the postcard body. Postcard does
//! not describe its own fields, so a change to a record's fields bumps its `SCHEMA`, and
//! [`Record::upgrade`] learns to read the old body.

use std::net::IpAddr;

use embedded_storage::nor_flash::NorFlash;
use heapless::{String as HString, Vec as HVec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Op, Store, StoreError};
use crate::mac::Mac;
use crate::token::Token;

/// The most devices the appliance manages.
pub const MAX_DEVICES: usize = 5000;
/// Phones-seen entries kept; the least recent is dropped beyond this.
pub const SEEN_CAPACITY: usize = 256;
/// Audit entries kept; the oldest are dropped beyond this.
pub const AUDIT_CAPACITY: usize = 256;
/// Longest setting name.
pub const MAX_SETTING_NAME: usize = 31;

/// What a record is, as the first byte of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A phone: [`Device`].
    Device = 1,
    /// One site setting: [`Setting`].
    Setting = 2,
    /// The administrator's credentials: [`AdminCredentials`].
    Admin = 3,
    /// Pending WAN work: [`OutboxItem`].
    Outbox = 4,
    /// Who did what: [`AuditEntry`].
    Audit = 5,
    /// An unknown phone that asked for a config: [`PhoneSeen`].
    Seen = 6,
    /// A device's redirect-service state: [`RedirectRecord`].
    Redirect = 7,
    /// The last known time: [`LastKnownTime`].
    Clock = 8,
    /// A bearer token of the JSON API: [`ApiToken`].
    ApiToken = 9,
    /// A technician's consent that a device's configuration may travel over plain HTTP:
    /// [`PlainHttpGrant`].
    PlainHttp = 10,
    /// The scheduled off-box backup copy: [`BackupCopyState`].
    BackupCopy = 11,
}

impl Kind {
    /// Every kind, in key order.
    pub const ALL: [Kind; 11] = [
        Kind::Device,
        Kind::Setting,
        Kind::Admin,
        Kind::Outbox,
        Kind::Audit,
        Kind::Seen,
        Kind::Redirect,
        Kind::Clock,
        Kind::ApiToken,
        Kind::PlainHttp,
        Kind::BackupCopy,
    ];

    /// The kind whose keys start with `byte`.
    pub fn from_byte(byte: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| *kind as u8 == byte)
    }

    /// Whether its records describe this board rather than the site (its clock, its
    /// backup-copy schedule): backups leave them out and restores leave them as they are.
    pub fn is_board_own(self) -> bool {
        matches!(self, Kind::Clock | Kind::BackupCopy)
    }

    /// A short lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Device => "device",
            Kind::Setting => "setting",
            Kind::Admin => "admin",
            Kind::Outbox => "outbox",
            Kind::Audit => "audit",
            Kind::Seen => "seen",
            Kind::Redirect => "redirect",
            Kind::Clock => "clock",
            Kind::ApiToken => "api-token",
            Kind::PlainHttp => "plain-http",
            Kind::BackupCopy => "backup-copy",
        }
    }
}

/// Why a stored record could not be read or written.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A value with no schema byte.
    #[error("{kind:?} record is empty")]
    Empty {
        /// The record kind.
        kind: Kind,
    },
    /// A schema this build does not know: written by a newer provbox.
    #[error("{kind:?} record has schema {found}, this provbox reads up to {supported}; upgrade provbox")]
    UnknownSchema {
        /// The record kind.
        kind: Kind,
        /// The schema found.
        found: u8,
        /// The newest schema this build reads.
        supported: u8,
    },
    /// A body that does not decode.
    #[error("{kind:?} record does not decode: {reason}")]
    Malformed {
        /// The record kind.
        kind: Kind,
        /// The decoder's complaint.
        reason: String,
    },
    /// A field longer than its fixed capacity.
    #[error("{field} is longer than {capacity} bytes")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its capacity.
        capacity: usize,
    },
}

/// A record type stored under one [`Kind`].
pub trait Record: Serialize + DeserializeOwned {
    /// Its kind.
    const KIND: Kind;
    /// The schema version written today.
    const SCHEMA: u8;

    /// Reads a body written under an older `schema`.
    fn upgrade(schema: u8, _body: &[u8]) -> Result<Self, RecordError> {
        Err(RecordError::UnknownSchema { kind: Self::KIND, found: schema, supported: Self::SCHEMA })
    }

    /// The schema this record is written as: [`Record::SCHEMA`], unless an older schema
    /// still describes it exactly (so that an older version can read it).
    fn schema_of(&self) -> u8 {
        Self::SCHEMA
    }

    /// Encodes the record with its schema byte.
    fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.schema_of()];
        // Writing into a growable Vec cannot fail for these plain data types.
        out.extend(postcard::to_allocvec(self).expect("postcard encodes records into a Vec"));
        out
    }

    /// Decodes a stored value.
    fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let (&schema, body) = bytes.split_first().ok_or(RecordError::Empty { kind: Self::KIND })?;
        match schema {
            s if s == Self::SCHEMA => postcard::from_bytes(body)
                .map_err(|e| RecordError::Malformed { kind: Self::KIND, reason: e.to_string() }),
            s if s < Self::SCHEMA => Self::upgrade(s, body),
            found => Err(RecordError::UnknownSchema { kind: Self::KIND, found, supported: Self::SCHEMA }),
        }
    }
}

/// Copies `text` into a fixed-capacity string, naming `field` if it does not fit.
pub fn bounded<const N: usize>(field: &'static str, text: &str) -> Result<HString<N>, RecordError> {
    HString::try_from(text).map_err(|_| RecordError::TooLong { field, capacity: N })
}

/// `text` cut to fit a fixed capacity, on a character boundary: for messages and logs,
/// where the end of a long text matters less than keeping the rest.
pub fn truncated<const N: usize>(text: &str) -> HString<N> {
    let mut out = HString::new();
    for c in text.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

/// One SIP account on a phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The extension number.
    pub extension: HString<16>,
    /// The name shown on the phone and to callees.
    pub display_name: HString<48>,
    /// SIP authentication user.
    pub sip_user: HString<32>,
    /// SIP authentication password.
    pub sip_password: HString<48>,
}

/// Where a phone stands in its one-time enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Enrollment {
    /// The enrollment URL serves the full config; `first_fetch` starts the grace period.
    Open {
        /// Unix time of the first enrollment fetch.
        first_fetch: Option<u64>,
    },
    /// The enrollment URL serves nothing until a technician unlocks it.
    Locked {
        /// Unix time it locked.
        since: u64,
    },
}

/// The last time a phone fetched its configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct Contact {
    /// Unix time.
    pub at: u64,
    /// The phone's address.
    #[cfg_attr(test, schema(value_type = String))]
    pub ip: IpAddr,
    /// Its User-Agent header.
    #[cfg_attr(test, schema(value_type = String, max_length = 96))]
    pub user_agent: HString<96>,
    /// Firmware version parsed from the User-Agent.
    #[cfg_attr(test, schema(value_type = String, max_length = 32))]
    pub firmware: HString<32>,
    /// Truncated hash of the configuration served.
    #[cfg_attr(test, schema(value_type = Vec<u8>, min_items = 8, max_items = 8))]
    pub config_hash: [u8; 8],
}

/// What a programmable key on the phone does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub enum KeyKind {
    /// Shows one of the phone's own lines; `value` is the line number.
    Line,
    /// Busy lamp field: watches the extension in `value`.
    Blf,
    /// Dials the number in `value`.
    SpeedDial,
}

/// One programmable key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct FunctionKey {
    /// What it does.
    pub kind: KeyKind,
    /// Line number, extension or number, per `kind`.
    #[cfg_attr(test, schema(value_type = String, max_length = 32))]
    pub value: HString<32>,
    /// Text on the phone's display.
    #[cfg_attr(test, schema(value_type = String, max_length = 24))]
    pub label: HString<24>,
}

/// A vendor config key set for one device only, written after the template's own keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct Override {
    /// The vendor's key, e.g. `features.dnd.enable`.
    #[cfg_attr(test, schema(value_type = String, max_length = 48))]
    pub name: HString<48>,
    /// Its value.
    #[cfg_attr(test, schema(value_type = String, max_length = 96))]
    pub value: HString<96>,
}

/// A phone the appliance provisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Its MAC address, also its key.
    pub mac: Mac,
    /// Vendor name, e.g. `yealink`.
    pub vendor: HString<16>,
    /// Model, e.g. `T54W`.
    pub model: HString<24>,
    /// Its SIP accounts.
    pub lines: HVec<Line, 4>,
    /// Programmable line and BLF keys, in key order.
    pub keys: HVec<FunctionKey, 16>,
    /// Per-device vendor keys.
    pub overrides: HVec<Override, 16>,
    /// Secret of the one-time enrollment URL.
    pub enrollment_token: Token,
    /// Secret of the steady URL.
    pub steady_token: Token,
    /// Enrollment state.
    pub enrollment: Enrollment,
    /// Unix time until which the tokenless path may serve this phone's full config.
    pub lan_window_until: Option<u64>,
    /// Last configuration fetch.
    pub last_contact: Option<Contact>,
}

impl Record for Device {
    const KIND: Kind = Kind::Device;
    const SCHEMA: u8 = 1;
}

/// One site setting (SIP server, NTP server, ...), stored under its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    /// The value.
    pub value: HString<256>,
}

/// An unknown phone that asked for its config on the tokenless path, kept for approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct PhoneSeen {
    /// Its MAC, also its key.
    pub mac: Mac,
    /// Its address.
    #[cfg_attr(test, schema(value_type = String))]
    pub ip: IpAddr,
    /// Its User-Agent header.
    #[cfg_attr(test, schema(value_type = String, max_length = 96))]
    pub user_agent: HString<96>,
    /// Vendor, when the User-Agent told.
    #[cfg_attr(test, schema(value_type = String, max_length = 16))]
    pub vendor: HString<16>,
    /// Model, when the User-Agent told.
    #[cfg_attr(test, schema(value_type = String, max_length = 24))]
    pub model: HString<24>,
    /// Unix time of its last request.
    pub at: u64,
}

impl Record for PhoneSeen {
    const KIND: Kind = Kind::Seen;
    const SCHEMA: u8 = 1;
}

impl Record for Setting {
    const KIND: Kind = Kind::Setting;
    const SCHEMA: u8 = 1;
}

/// The administrator's login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminCredentials {
    /// Argon2id hash in PHC string form.
    pub password_hash: HString<128>,
    /// Unix time of the last change.
    pub changed_at: u64,
}

impl Record for AdminCredentials {
    const KIND: Kind = Kind::Admin;
    const SCHEMA: u8 = 1;
}

/// WAN work for a redirect service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutboxAction {
    /// Point the MAC at the enrollment URL of `token`, under the base URL current when sent.
    Register {
        /// The enrollment token when queued.
        token: Token,
        /// Take the MAC over from another account (the technician said so).
        take_over: bool,
    },
    /// Remove the MAC from the service.
    Deregister,
}

/// A queued redirect-service operation, durable across reboots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// The phone concerned.
    pub mac: Mac,
    /// The redirect service, e.g. `yealink`.
    pub service: HString<16>,
    /// What to do.
    pub action: OutboxAction,
    /// Attempts so far.
    pub attempts: u32,
    /// Unix time before which it is not retried.
    pub not_before: u64,
    /// Why the last attempt failed, empty before the first.
    pub last_error: HString<160>,
}

// No released provbox wrote outbox records before these fields, so the schema stays 1.
impl Record for OutboxItem {
    const KIND: Kind = Kind::Outbox;
    const SCHEMA: u8 = 1;
}

/// Where a device stands with its vendor's redirect service, as last settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RedirectState {
    /// Never registered, or nothing settled yet.
    NotRegistered,
    /// Registered at this Unix time.
    Registered {
        /// When.
        at: u64,
    },
    /// Removed from the service at this Unix time.
    Deregistered {
        /// When.
        at: u64,
    },
    /// Given up: the service refused for good.
    Failed {
        /// When.
        at: u64,
        /// The service's words.
        message: HString<160>,
        /// What failed was a deregistration: the service may still hold the MAC.
        deregistering: bool,
    },
    /// The service accepted the registration at this time, but reading it back did not
    /// show the enrollment URL.
    Unverified {
        /// When.
        at: u64,
        /// What the read-back showed.
        reason: HString<160>,
        /// The service confirmed it holds the MAC; its API cannot show the URL.
        held: bool,
    },
}

/// A device's redirect record: its settled state and whether the technician turned
/// registration off for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedirectRecord {
    /// Registration wanted for this device (on by default).
    pub enabled: bool,
    /// The last settled state.
    pub state: RedirectState,
}

/// Consent, given for one device by a technician, that its configuration (SIP password
/// included) may be served over plain HTTP: for phones that cannot fetch over HTTPS (the
/// Gigaset N510/N720 DECT bases). Its presence is the consent; removing it withdraws it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlainHttpGrant {
    /// Unix time it was given.
    pub since: u64,
}

impl Record for PlainHttpGrant {
    const KIND: Kind = Kind::PlainHttp;
    const SCHEMA: u8 = 1;
}

/// The scheduled off-box backup copy: when the next one is due and how the last went. A
/// board's own bookkeeping: backups do not carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupCopyState {
    /// Unix time the next copy is due (0: as soon as one is configured).
    pub due: u64,
    /// Failed attempts since the last success.
    pub attempts: u32,
    /// When a copy last reached the target.
    pub last_success: Option<u64>,
    /// When a copy was last tried.
    pub last_attempt: Option<u64>,
    /// Why the last attempt failed; empty after a success.
    pub last_error: HString<160>,
}

impl Record for BackupCopyState {
    const KIND: Kind = Kind::BackupCopy;
    const SCHEMA: u8 = 1;
}

impl Default for RedirectRecord {
    fn default() -> Self {
        RedirectRecord { enabled: true, state: RedirectState::NotRegistered }
    }
}

impl Record for RedirectRecord {
    const KIND: Kind = Kind::Redirect;
    /// 2 added [`RedirectState::Unverified`]. Only such a record is written as schema 2
    /// (`schema_of`), so a version that knows only schema 1 (the slot an
    /// update rolls back to) reads every other one, and refuses this one with a clear error
    /// instead of misreading it.
    const SCHEMA: u8 = 2;

    fn schema_of(&self) -> u8 {
        if matches!(self.state, RedirectState::Unverified { .. }) { Self::SCHEMA } else { 1 }
    }

    fn upgrade(schema: u8, body: &[u8]) -> Result<Self, RecordError> {
        match schema {
            // Schema 1's variants are schema 2's first four, encoded alike.
            1 => postcard::from_bytes(body)
                .map_err(|e| RecordError::Malformed { kind: Self::KIND, reason: e.to_string() }),
            found => Err(RecordError::UnknownSchema { kind: Self::KIND, found, supported: Self::SCHEMA }),
        }
    }
}

/// A bearer token of the JSON API. Only a hash of its secret is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Who or what it is for, e.g. `pbx`.
    pub name: HString<32>,
    /// SHA-256 of the secret part.
    pub secret_hash: [u8; 32],
    /// Unix time it was made.
    pub created: u64,
}

impl Record for ApiToken {
    const KIND: Kind = Kind::ApiToken;
    const SCHEMA: u8 = 1;
}

/// The newest time the appliance knew, restored at boot on a board without a clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastKnownTime {
    /// Unix time.
    pub at: u64,
}

impl Record for LastKnownTime {
    const KIND: Kind = Kind::Clock;
    const SCHEMA: u8 = 1;
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Unix time.
    pub at: u64,
    /// Who: `admin`, `cli`, `api:<token name>`, `system`.
    #[cfg_attr(test, schema(value_type = String, max_length = 32))]
    pub actor: HString<32>,
    /// What, in words; never a secret.
    #[cfg_attr(test, schema(value_type = String, max_length = 160))]
    pub action: HString<160>,
}

impl Record for AuditEntry {
    const KIND: Kind = Kind::Audit;
    const SCHEMA: u8 = 1;
}

/// Decodes a stored value of `kind` into JSON, for the inspection commands.
pub fn decode_json(kind: Kind, value: &[u8]) -> Result<serde_json::Value, RecordError> {
    fn json<R: Record>(value: &[u8]) -> Result<serde_json::Value, RecordError> {
        serde_json::to_value(R::decode(value)?)
            .map_err(|e| RecordError::Malformed { kind: R::KIND, reason: e.to_string() })
    }
    match kind {
        Kind::Device => json::<Device>(value),
        Kind::Setting => json::<Setting>(value),
        Kind::Admin => json::<AdminCredentials>(value),
        Kind::Outbox => json::<OutboxItem>(value),
        Kind::Audit => json::<AuditEntry>(value),
        Kind::Seen => json::<PhoneSeen>(value),
        Kind::Redirect => json::<RedirectRecord>(value),
        Kind::PlainHttp => json::<PlainHttpGrant>(value),
        Kind::BackupCopy => json::<BackupCopyState>(value),
        Kind::Clock => json::<LastKnownTime>(value),
        Kind::ApiToken => json::<ApiToken>(value),
    }
}

/// The schema version this build writes for `kind`.
pub fn current_schema(kind: Kind) -> u8 {
    match kind {
        Kind::Device => Device::SCHEMA,
        Kind::Setting => Setting::SCHEMA,
        Kind::Admin => AdminCredentials::SCHEMA,
        Kind::Outbox => OutboxItem::SCHEMA,
        Kind::Audit => AuditEntry::SCHEMA,
        Kind::Seen => PhoneSeen::SCHEMA,
        Kind::Redirect => RedirectRecord::SCHEMA,
        Kind::PlainHttp => PlainHttpGrant::SCHEMA,
        Kind::BackupCopy => BackupCopyState::SCHEMA,
        Kind::Clock => LastKnownTime::SCHEMA,
        Kind::ApiToken => ApiToken::SCHEMA,
    }
}

fn key(kind: Kind, id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(kind as u8);
    key.extend_from_slice(id);
    key
}

fn device_key(mac: &Mac) -> Vec<u8> {
    key(Kind::Device, &mac.0)
}

fn setting_key(name: &str) -> Result<Vec<u8>, RecordError> {
    if name.is_empty() || name.len() > MAX_SETTING_NAME {
        return Err(RecordError::TooLong { field: "setting name", capacity: MAX_SETTING_NAME });
    }
    Ok(key(Kind::Setting, name.as_bytes()))
}

/// Why a database operation failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A record could not be encoded or decoded.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Adding devices beyond [`MAX_DEVICES`].
    #[error("the appliance manages at most {MAX_DEVICES} devices; remove some first")]
    TooManyDevices,
    /// A commit that adds a device, a phone seen or an API token would eat into the room
    /// kept for what a technician needs when the store is full.
    #[error(
        "the store is nearly full ({room} bytes left): the rest is kept for unlocking, rekeying, settings \
         and removals; remove devices or phones seen, or give the store a larger partition"
    )]
    NearlyFull {
        /// Bytes of records the store could still take.
        room: usize,
    },
}

/// Of the store's room, the part only commits that add no device, phone seen or API token
/// may use: a sixteenth of the usable capacity, at least 8 KiB (an unlock writes about
/// 1 KiB: the device, its audit line and its redirect registration).
fn reserve_of(usable_capacity: usize) -> usize {
    (usable_capacity / 16).max(8 * 1024)
}

/// A set of changes committed atomically by [`Db::commit`].
#[derive(Debug, Default, Clone)]
pub struct Txn {
    changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    new_outbox: Vec<OutboxItem>,
    new_audit: Vec<AuditEntry>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.new_outbox.is_empty() && self.new_audit.is_empty()
    }

    /// Adds `other`'s changes after this one's.
    pub fn extend(&mut self, other: Txn) -> &mut Self {
        self.changes.extend(other.changes);
        self.new_outbox.extend(other.new_outbox);
        self.new_audit.extend(other.new_audit);
        self
    }

    /// Adds or replaces a device.
    pub fn put_device(&mut self, device: &Device) -> &mut Self {
        self.changes.push((device_key(&device.mac), Some(device.encode())));
        self
    }

    /// Removes a device.
    pub fn remove_device(&mut self, mac: &Mac) -> &mut Self {
        self.changes.push((device_key(mac), None));
        self
    }

    /// Sets a site setting.
    pub fn set_setting(&mut self, name: &str, value: &str) -> Result<&mut Self, RecordError> {
        let setting = Setting { value: bounded("setting value", value)? };
        self.changes.push((setting_key(name)?, Some(setting.encode())));
        Ok(self)
    }

    /// Replaces the admin credentials.
    pub fn set_admin(&mut self, credentials: &AdminCredentials) -> &mut Self {
        self.changes.push((key(Kind::Admin, b""), Some(credentials.encode())));
        self
    }

    /// Removes the administrator's credentials: the appliance is unclaimed again.
    pub fn remove_admin(&mut self) -> &mut Self {
        self.changes.push((key(Kind::Admin, b""), None));
        self
    }

    /// Queues WAN work at the end of the outbox.
    pub fn enqueue(&mut self, item: OutboxItem) -> &mut Self {
        self.new_outbox.push(item);
        self
    }

    /// Replaces the outbox item at `position` (after an attempt).
    pub fn update_outbox(&mut self, position: u64, item: &OutboxItem) -> &mut Self {
        self.changes.push((key(Kind::Outbox, &position.to_be_bytes()), Some(item.encode())));
        self
    }

    /// Removes the outbox item at `position` (done, or given up).
    pub fn complete_outbox(&mut self, position: u64) -> &mut Self {
        self.changes.push((key(Kind::Outbox, &position.to_be_bytes()), None));
        self
    }

    /// Records an unknown phone, or refreshes its entry.
    pub fn put_seen(&mut self, seen: &PhoneSeen) -> &mut Self {
        self.changes.push((key(Kind::Seen, &seen.mac.0), Some(seen.encode())));
        self
    }

    /// Forgets an entry of the phones-seen list.
    pub fn remove_seen(&mut self, mac: &Mac) -> &mut Self {
        self.changes.push((key(Kind::Seen, &mac.0), None));
        self
    }

    /// Sets a device's redirect record.
    pub fn put_redirect(&mut self, mac: &Mac, record: &RedirectRecord) -> &mut Self {
        self.changes.push((key(Kind::Redirect, &mac.0), Some(record.encode())));
        self
    }

    /// Forgets a device's redirect record.
    pub fn remove_redirect(&mut self, mac: &Mac) -> &mut Self {
        self.changes.push((key(Kind::Redirect, &mac.0), None));
        self
    }

    /// Records consent to serve `mac`'s configuration over plain HTTP.
    pub fn put_plain_http(&mut self, mac: &Mac, grant: &PlainHttpGrant) -> &mut Self {
        self.changes.push((key(Kind::PlainHttp, &mac.0), Some(grant.encode())));
        self
    }

    /// Records the scheduled backup copy's state.
    pub fn set_backup_copy(&mut self, state: &BackupCopyState) -> &mut Self {
        self.changes.push((key(Kind::BackupCopy, b""), Some(state.encode())));
        self
    }

    /// Withdraws that consent.
    pub fn remove_plain_http(&mut self, mac: &Mac) -> &mut Self {
        self.changes.push((key(Kind::PlainHttp, &mac.0), None));
        self
    }

    /// Adds or replaces the API token with `id`.
    pub fn put_api_token(&mut self, id: &[u8; 8], token: &ApiToken) -> &mut Self {
        self.changes.push((key(Kind::ApiToken, id), Some(token.encode())));
        self
    }

    /// Revokes the API token with `id`.
    pub fn remove_api_token(&mut self, id: &[u8; 8]) -> &mut Self {
        self.changes.push((key(Kind::ApiToken, id), None));
        self
    }

    /// Notes the current time as the last known one.
    pub fn set_last_known_time(&mut self, at: u64) -> &mut Self {
        self.changes.push((key(Kind::Clock, b""), Some(LastKnownTime { at }.encode())));
        self
    }

    /// Appends to the audit log.
    pub fn audit(&mut self, at: u64, actor: &str, action: &str) -> Result<&mut Self, RecordError> {
        self.new_audit.push(AuditEntry { at, actor: bounded("actor", actor)?, action: truncated(action) });
        Ok(self)
    }
}

/// The typed view of a [`Store`] the appliance works through.
pub struct Db<F: NorFlash> {
    store: Store<F>,
    /// Transactions committed since mount: what drives flash wear.
    commits: u64,
}

impl<F: NorFlash> Db<F> {
    /// Wraps a mounted store.
    pub fn new(store: Store<F>) -> Self {
        Db { store, commits: 0 }
    }

    /// Transactions committed since mount.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// The underlying store.
    pub fn store(&self) -> &Store<F> {
        &self.store
    }

    /// The underlying store, for maintenance (compaction).
    pub fn store_mut(&mut self) -> &mut Store<F> {
        &mut self.store
    }

    /// Gives the store back.
    pub fn into_store(self) -> Store<F> {
        self.store
    }

    /// The device with `mac`.
    pub fn device(&self, mac: &Mac) -> Result<Option<Device>, RecordError> {
        self.store.get(&device_key(mac)).map(Device::decode).transpose()
    }

    /// Every device, in MAC order.
    pub fn devices(&self) -> impl Iterator<Item = Result<Device, RecordError>> + '_ {
        self.store.iter_prefix(&[Kind::Device as u8]).map(|(_, value)| Device::decode(value))
    }

    /// Whether a device with `mac` exists (without decoding it).
    pub fn has_device(&self, mac: &Mac) -> bool {
        self.store.get(&device_key(mac)).is_some()
    }

    /// Every device's MAC, in order, without decoding the devices.
    pub fn device_macs(&self) -> Vec<Mac> {
        self.store
            .iter_prefix(&[Kind::Device as u8])
            .filter_map(|(key, _)| Some(Mac(key.get(1..7)?.try_into().ok()?)))
            .collect()
    }

    /// Number of devices.
    pub fn device_count(&self) -> usize {
        self.store.iter_prefix(&[Kind::Device as u8]).count()
    }

    /// The value of setting `name`, if set.
    pub fn setting(&self, name: &str) -> Result<Option<String>, RecordError> {
        let Some(value) = self.store.get(&setting_key(name)?) else { return Ok(None) };
        Ok(Some(Setting::decode(value)?.value.as_str().into()))
    }

    /// Every setting that is set, by name.
    pub fn settings(&self) -> Result<Vec<(String, String)>, RecordError> {
        self.store
            .iter_prefix(&[Kind::Setting as u8])
            .map(|(key, value)| {
                let name = String::from_utf8_lossy(&key[1..]).into_owned();
                Ok((name, Setting::decode(value)?.value.as_str().into()))
            })
            .collect()
    }

    /// The phones-seen list, in MAC order.
    pub fn phones_seen(&self) -> Result<Vec<PhoneSeen>, RecordError> {
        self.store.iter_prefix(&[Kind::Seen as u8]).map(|(_, value)| PhoneSeen::decode(value)).collect()
    }

    /// The consent to serve `mac`'s configuration over plain HTTP, if given.
    pub fn plain_http(&self, mac: &Mac) -> Result<Option<PlainHttpGrant>, RecordError> {
        self.store.get(&key(Kind::PlainHttp, &mac.0)).map(PlainHttpGrant::decode).transpose()
    }

    /// The scheduled backup copy's state (the default before the first).
    pub fn backup_copy(&self) -> Result<BackupCopyState, RecordError> {
        Ok(self.store.get(&key(Kind::BackupCopy, b"")).map(BackupCopyState::decode).transpose()?.unwrap_or_default())
    }

    /// A device's redirect record (the default when none is stored).
    pub fn redirect(&self, mac: &Mac) -> Result<RedirectRecord, RecordError> {
        self.store
            .get(&key(Kind::Redirect, &mac.0))
            .map(RedirectRecord::decode)
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Every API token with its id.
    pub fn api_tokens(&self) -> Result<Vec<([u8; 8], ApiToken)>, RecordError> {
        self.store
            .iter_prefix(&[Kind::ApiToken as u8])
            .filter_map(|(key, value)| Some((key.get(1..9)?.try_into().ok()?, value)))
            .map(|(id, value)| Ok((id, ApiToken::decode(value)?)))
            .collect()
    }

    /// The last known time, if ever noted.
    pub fn last_known_time(&self) -> Result<Option<u64>, RecordError> {
        Ok(self.store.get(&key(Kind::Clock, b"")).map(LastKnownTime::decode).transpose()?.map(|t| t.at))
    }

    /// The admin credentials, once set.
    pub fn admin(&self) -> Result<Option<AdminCredentials>, RecordError> {
        self.store.get(&key(Kind::Admin, b"")).map(AdminCredentials::decode).transpose()
    }

    /// The outbox in queue order, with each item's position.
    pub fn outbox(&self) -> Result<Vec<(u64, OutboxItem)>, RecordError> {
        self.positioned(Kind::Outbox)
    }

    /// The audit log, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>, RecordError> {
        Ok(self.positioned::<AuditEntry>(Kind::Audit)?.into_iter().map(|(_, entry)| entry).collect())
    }

    fn positioned<R: Record>(&self, kind: Kind) -> Result<Vec<(u64, R)>, RecordError> {
        self.store
            .iter_prefix(&[kind as u8])
            .filter_map(|(key, value)| Some((u64::from_be_bytes(key.get(1..9)?.try_into().ok()?), value)))
            .map(|(position, value)| Ok((position, R::decode(value)?)))
            .collect()
    }

    /// The position after the last record of a queue-like `kind`.
    fn next_position(&self, kind: Kind) -> u64 {
        self.store
            .last_with_prefix(&[kind as u8])
            .and_then(|(key, _)| Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?)))
            .map_or(0, |last| last + 1)
    }

    /// Commits `txn` atomically: after a power cut, all of it or none of it is there.
    pub fn commit(&mut self, txn: &Txn) -> Result<(), DbError> {
        self.check_growth(std::slice::from_ref(txn))?;
        let changes = self.prepare(txn);
        let ops: Vec<Op<'_>> = changes.iter().map(|(key, value)| Op::set(key, value.as_deref())).collect();
        self.store.commit(&ops)?;
        self.commits += 1;
        Ok(())
    }

    /// Refuses `parts`, to be committed one after another, if together they would pass
    /// [`MAX_DEVICES`] or, adding a device, a phone seen or an API token, eat into the
    /// store's reserve: one decision for a change too large for one transaction (an
    /// import), taken before its first part is written.
    pub fn check_growth(&self, parts: &[Txn]) -> Result<(), DbError> {
        let is_new = |key: &Vec<u8>, value: &Option<Vec<u8>>| value.is_some() && self.store.get(key).is_none();
        let mut added_devices = std::collections::BTreeSet::new();
        let mut grows = false;
        for (key, value) in parts.iter().flat_map(|txn| &txn.changes) {
            if is_new(key, value) {
                match Kind::from_byte(key[0]) {
                    Some(Kind::Device) => {
                        added_devices.insert(key.as_slice());
                        grows = true;
                    }
                    Some(Kind::Seen | Kind::ApiToken) => grows = true,
                    _ => {}
                }
            }
        }
        if !added_devices.is_empty() && self.device_count() + added_devices.len() > MAX_DEVICES {
            return Err(DbError::TooManyDevices);
        }
        if grows {
            // What the parts write, encoded as the store writes it (queue positions and
            // audit expiry included): never less than the live bytes they add.
            let adding: usize = parts
                .iter()
                .map(|txn| {
                    let changes = self.prepare(txn);
                    let ops: Vec<Op<'_>> = changes.iter().map(|(key, value)| Op::set(key, value.as_deref())).collect();
                    super::format::encode_ops(&ops).len()
                })
                .sum();
            let room = self.store.room();
            if room < adding + reserve_of(self.store.usable_capacity()) {
                return Err(DbError::NearlyFull { room });
            }
        }
        Ok(())
    }

    /// Replaces every record but the board's own ([`Kind::is_board_own`]) with `records` (a
    /// restored backup), whose board's own records are left out. The administrator's
    /// credentials go first and come back last, so a restore cut short by power leaves an
    /// unclaimed appliance, whose first-start page offers the restore again, never a mix
    /// that looks complete. Commits as many store transactions as needed.
    pub fn replace_all(&mut self, records: &[(Vec<u8>, Vec<u8>)]) -> Result<(), DbError> {
        let admin_key = key(Kind::Admin, b"");
        let own = |key: &[u8]| Kind::from_byte(key[0]).is_some_and(Kind::is_board_own);
        if self.store.get(&admin_key).is_some() {
            self.store.commit(&[Op::set(&admin_key, None)])?;
        }
        let incoming: std::collections::BTreeSet<&[u8]> = records.iter().map(|(key, _)| key.as_slice()).collect();
        let stale: Vec<Vec<u8>> = self
            .store
            .iter_prefix(&[])
            .map(|(key, _)| key)
            .filter(|key| !own(key) && !incoming.contains(key))
            .map(<[u8]>::to_vec)
            .collect();
        let mut ops: Vec<Op<'_>> = stale.iter().map(|key| Op::set(key, None)).collect();
        ops.extend(
            records
                .iter()
                .filter(|(key, _)| *key != admin_key && !own(key))
                .map(|(key, value)| Op::set(key, Some(value))),
        );
        let limit = self.store.max_commit_len();
        let mut batch: Vec<Op<'_>> = Vec::new();
        for op in ops {
            batch.push(op);
            if batch.len() > 1 && super::format::encode_ops(&batch).len() > limit {
                let overflow = batch.pop().into_iter();
                self.store.commit(&batch)?;
                batch = overflow.collect();
            }
        }
        if !batch.is_empty() {
            self.store.commit(&batch)?;
        }
        if let Some((_, admin)) = records.iter().find(|(key, _)| *key == admin_key) {
            self.store.commit(&[Op::set(&admin_key, Some(admin))])?;
        }
        Ok(())
    }

    /// Whether `txn` fits one store transaction (one flash sector).
    pub fn fits(&self, txn: &Txn) -> bool {
        let changes = self.prepare(txn);
        let ops: Vec<Op<'_>> = changes.iter().map(|(key, value)| Op::set(key, value.as_deref())).collect();
        super::format::encode_ops(&ops).len() <= self.store.max_commit_len()
    }

    /// Every key change `txn` makes, queue positions and audit expiry included.
    fn prepare(&self, txn: &Txn) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut changes = txn.changes.clone();
        let outbox = (self.next_position(Kind::Outbox)..).zip(&txn.new_outbox);
        changes
            .extend(outbox.map(|(position, item)| (key(Kind::Outbox, &position.to_be_bytes()), Some(item.encode()))));
        let audit = (self.next_position(Kind::Audit)..).zip(&txn.new_audit);
        changes
            .extend(audit.map(|(position, entry)| (key(Kind::Audit, &position.to_be_bytes()), Some(entry.encode()))));
        if txn.new_audit.is_empty() {
            return changes;
        }
        // Keep the audit log bounded: drop the oldest entries in the same transaction.
        let audit_keys: Vec<&[u8]> = self.store.iter_prefix(&[Kind::Audit as u8]).map(|(key, _)| key).collect();
        let expired = (audit_keys.len() + txn.new_audit.len()).saturating_sub(AUDIT_CAPACITY);
        changes.extend(audit_keys[..expired.min(audit_keys.len())].iter().map(|key| (key.to_vec(), None)));
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_record_is_written_in_the_oldest_schema_that_describes_it() {
        // Schema 1 for every state an older version knows: the slot an update rolls back to
        // still reads it.
        let registered = RedirectRecord { enabled: true, state: RedirectState::Registered { at: 7 } };
        let bytes = registered.encode();
        assert_eq!(bytes[0], 1);
        assert_eq!(RedirectRecord::decode(&bytes).unwrap(), registered);
        let unverified = RedirectRecord {
            enabled: true,
            state: RedirectState::Unverified { at: 7, reason: bounded("reason", "another URL").unwrap(), held: false },
        };
        let bytes = unverified.encode();
        assert_eq!(bytes[0], 2);
        assert_eq!(RedirectRecord::decode(&bytes).unwrap(), unverified);
    }
}
