//! What operations answer with: plain data, serialised the same way for the control socket,
//! the CLI's `--json` and the JSON API, and read back by the CLI as these same types.

use serde::{Deserialize, Serialize};

use crate::devices::CsvProblem;
use crate::store::records::{Contact, FunctionKey, Override};

/// Enrollment as shown to people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
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
#[cfg_attr(test, derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConfigState {
    /// The phone has never fetched its device file.
    NeverFetched,
    /// It fetched exactly what it would get now.
    Current,
    /// The config changed since its last fetch.
    Pending,
}

/// A file rendered for a person (`provbox render`, the device page).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    /// The file as the phone gets it (secrets masked unless revealed).
    pub body: String,
    /// Each site setting the vendor cannot express exactly, and what it gets instead.
    pub warnings: Vec<String>,
}

/// A static file offered under `/p/<steady>/files/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
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
#[cfg_attr(test, derive(utoipa::ToSchema))]
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
    /// The technician's consent to serve its configuration over plain HTTP, if given.
    pub plain_http: Option<PlainHttpView>,
}

/// A device whose configuration may travel over plain HTTP, and the URLs it then uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct PlainHttpView {
    /// Unix time the consent was given.
    pub since: u64,
    /// The enrollment URL on the plain-HTTP port.
    pub enrollment_url: String,
    /// The steady URL on the plain-HTTP port.
    pub steady_url: String,
}

/// One line without its password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
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
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct SettingView {
    /// Name.
    pub name: String,
    /// Value; secrets are masked.
    pub value: String,
    /// Whether it is still the default.
    pub default: bool,
    /// Whether it is a secret: write-only on the page, masked everywhere.
    pub secret: bool,
    /// What it does.
    pub help: String,
    /// The values it takes, when they are a fixed set (the page shows a list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
}

/// The result of a CSV import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    /// Devices created.
    pub imported: usize,
    /// Rows skipped, with reasons (partial imports only).
    pub problems: Vec<CsvProblem>,
}

/// A device's redirect state as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
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
    /// Accepted by the service, but what it holds when read back is not the enrollment URL.
    Unverified {
        /// When.
        at: u64,
        /// What the read-back showed.
        reason: String,
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
#[cfg_attr(test, derive(utoipa::ToSchema))]
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
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct ServiceView {
    /// `yealink`, `snom`, `fanvil`.
    pub service: String,
    /// The API in use, or `off`.
    pub api: String,
    /// Whether registrations are sent.
    pub active: bool,
    /// Why not, when inactive.
    pub reason: String,
    /// A concern about an active service (plain-http endpoint).
    pub warning: String,
}

/// `provbox redirect status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
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
    /// Seconds until the next item can be sent, if any can.
    pub next_due: Option<u64>,
}
/// An API token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiTokenView {
    /// Its public id (hex).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Unix time it was made.
    pub created: u64,
}

/// `redirect sync`: what was queued, and how the delivery pass went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// Items queued by reconciling devices with their state.
    pub queued: usize,
    /// The pass that followed.
    pub delivery: Delivery,
}

/// `redirect check`: what a service says it holds for a MAC, next to what provbox expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceHolding {
    /// The service asked.
    pub service: String,
    /// The phone.
    pub mac: String,
    /// What it should hold: the enrollment URL, or nothing.
    pub expected: String,
    /// What it holds, in words (URL tokens masked).
    pub holds: String,
    /// Whether the two agree.
    pub matches: bool,
    /// The service's own answer, as it gave it (URL tokens masked): each API has its shape.
    pub reply: serde_json::Value,
}

impl EnrollmentView {
    /// The state's name: `open`, `grace` or `locked`.
    pub fn name(&self) -> &'static str {
        match self {
            EnrollmentView::Open => "open",
            EnrollmentView::Grace { .. } => "grace",
            EnrollmentView::Locked { .. } => "locked",
        }
    }
}

impl std::fmt::Display for EnrollmentView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnrollmentView::Open => f.write_str("open: the enrollment URL serves the full config once"),
            EnrollmentView::Grace { until } => write!(f, "grace: open until {}", crate::clock::date_time(*until)),
            EnrollmentView::Locked { since } => write!(f, "locked since {}", crate::clock::date_time(*since)),
        }
    }
}

impl ConfigState {
    /// The state's name: `never_fetched`, `current` or `pending`.
    pub fn name(&self) -> &'static str {
        match self {
            ConfigState::NeverFetched => "never_fetched",
            ConfigState::Current => "current",
            ConfigState::Pending => "pending",
        }
    }
}

impl RedirectView {
    /// The state's name, as in the JSON `state` field.
    pub fn name(&self) -> &'static str {
        match self {
            RedirectView::Off { .. } => "off",
            RedirectView::NotRegistered => "not_registered",
            RedirectView::Pending { .. } => "pending",
            RedirectView::Registered { .. } => "registered",
            RedirectView::Deregistered { .. } => "deregistered",
            RedirectView::Failed { .. } => "failed",
            RedirectView::Unverified { .. } => "unverified",
        }
    }
}

impl std::fmt::Display for RedirectView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let when = crate::clock::date_time;
        match self {
            RedirectView::Off { reason } => write!(f, "off: {reason}"),
            RedirectView::NotRegistered => f.write_str("not registered"),
            RedirectView::Pending { action, attempts, next_try, last_error } => {
                let next = if *next_try == 0 { "now".to_string() } else { when(*next_try) };
                write!(f, "pending {action} (attempts {attempts}, next try {next}")?;
                if !last_error.is_empty() {
                    write!(f, "; last error: {last_error}")?;
                }
                f.write_str(")")
            }
            RedirectView::Registered { at } => write!(f, "registered {}", when(*at)),
            RedirectView::Deregistered { at } => write!(f, "deregistered {}", when(*at)),
            RedirectView::Failed { message, .. } => write!(f, "failed: {message}"),
            RedirectView::Unverified { at, reason } => write!(f, "unverified {}: {reason}", when(*at)),
        }
    }
}

/// What a restore put back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestoreSummary {
    /// The provbox version that made the backup.
    pub version: String,
    /// When it was made, Unix seconds.
    pub created_at: u64,
    /// Devices restored.
    pub devices: usize,
    /// Data-directory files restored (certificates, overrides, static files).
    pub files: usize,
    /// Whether the backup brought an admin password (else the page asks for one).
    pub admin_restored: bool,
}

/// The scheduled backup copies: where they go and how the last went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupCopyView {
    /// `backup.copy_url`; empty when copies are off.
    pub target: String,
    /// `daily` or `weekly`.
    pub schedule: String,
    /// The age public key copies are encrypted to, once set.
    pub recipient: Option<String>,
    /// When a copy last arrived.
    pub last_success: Option<u64>,
    /// When a copy was last tried.
    pub last_attempt: Option<u64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the next copy is due (Unix time; 0: now), while copies are on.
    pub next_due: Option<u64>,
}

/// The site's password levels and the devices whose SIP passwords fall short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct PolicyReport {
    /// `policy.sip_password`.
    pub sip_level: crate::policy::Level,
    /// `policy.admin_password`.
    pub admin_level: crate::policy::Level,
    /// The level devices are measured against: the site's, or `standard` under `pbx`.
    pub measured_against: crate::policy::Level,
    /// Under `pbx`: that passwords are not checked, and how many would fall short.
    pub warning: Option<String>,
    /// Devices with at least one SIP password below `measured_against`.
    pub devices: Vec<ShortDevice>,
}

/// A device with SIP passwords below the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct ShortDevice {
    /// Its MAC.
    pub mac: crate::mac::Mac,
    /// Vendor id.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// The first line's display name.
    pub name: String,
    /// The lines that fall short, and why.
    pub lines: Vec<ShortLine>,
}

/// One line whose SIP password falls short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct ShortLine {
    /// The line's extension.
    pub extension: String,
    /// The rule it breaks.
    pub reason: String,
}

/// New SIP passwords after a rotation: shown this once, for the PBX.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct RotatedPasswords {
    /// The device.
    pub mac: crate::mac::Mac,
    /// The lines that got a new password (none when all met the policy).
    pub lines: Vec<RotatedLine>,
}

/// A device after `rekey`: its new URLs, and its new SIP passwords when asked for (shown
/// this once, for the PBX).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rekeyed {
    /// The device, enrollment locked.
    pub device: DeviceView,
    /// Each line's new SIP password; empty when the passwords were kept.
    pub passwords: Vec<RotatedLine>,
}

/// One line's new SIP password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct RotatedLine {
    /// The line's extension.
    pub extension: String,
    /// Its SIP user.
    pub sip_user: String,
    /// The new password.
    pub password: String,
}

/// A vendor's editable templates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct VendorTemplates {
    /// Vendor id (its folder under `templates/`).
    pub vendor: String,
    /// The vendor's name.
    pub name: String,
    /// Its templates, by name.
    pub templates: Vec<TemplateSummary>,
}

/// One template in the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct TemplateSummary {
    /// File name in the vendor folder.
    pub file: String,
    /// Whether provbox ships it.
    pub stock: bool,
    /// Whether `<data>/templates/` overrides it.
    pub overridden: bool,
    /// The files phones ask for that it renders (none: a part other templates include).
    pub served_as: Vec<ServedAs>,
}

/// A file name phones ask for, rendered from a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct ServedAs {
    /// The name with placeholders (`{mac}.cfg`).
    pub name: String,
    /// The models it is limited to (a regular expression), if any.
    pub models: Option<String>,
    /// Whether it carries secrets (served only through a device's URL).
    pub secrets: bool,
}

/// One template: its text now, stock, and the override against stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct TemplateView {
    /// Vendor id.
    pub vendor: String,
    /// File name in the vendor folder.
    pub file: String,
    /// The files it renders.
    pub served_as: Vec<ServedAs>,
    /// Whether it is overridden.
    pub overridden: bool,
    /// The first 16 hex digits of the SHA-256 of `current`, as the audit log names it.
    pub sha256: String,
    /// The stock text, if provbox ships one.
    pub stock: Option<String>,
    /// What phones are rendered from now (the override, else stock).
    pub current: String,
    /// The override against stock as a unified diff; empty when not overridden.
    pub diff: String,
}

/// An unsaved edit rendered for one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct TemplatePreview {
    /// Vendor id.
    pub vendor: String,
    /// The edited template.
    pub file: String,
    /// The device it was rendered for.
    pub mac: crate::mac::Mac,
    /// Each file it feeds, as that device would get it (secrets masked).
    pub files: Vec<PreviewFile>,
}

/// One previewed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct PreviewFile {
    /// The file name as the phone asks for it.
    pub requested: String,
    /// The file, secrets masked.
    pub body: String,
    /// Site settings the vendor cannot express exactly.
    pub warnings: Vec<String>,
}

/// A saved or reverted template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct TemplateSaved {
    /// Vendor id.
    pub vendor: String,
    /// The template.
    pub file: String,
    /// Fingerprint of the text before (as in the audit log).
    pub before: String,
    /// Fingerprint of the text after.
    pub after: String,
    /// Devices whose own file changed: they get it at their next fetch.
    pub changed_devices: Vec<crate::mac::Mac>,
    /// The phones to reprovision ([`crate::app::App::template_affected`]).
    pub affected: Vec<crate::mac::Mac>,
    /// Devices of the vendor.
    pub vendor_devices: usize,
}

/// One phone's check-sync in a bulk reprovision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct ReprovisionOutcome {
    /// The phone.
    pub mac: crate::mac::Mac,
    /// Whether it answered the NOTIFY.
    pub answered: bool,
    /// Whether it then fetched its configuration (the proof it was the real phone).
    pub fetched: bool,
    /// What happened, in words.
    pub result: String,
}
