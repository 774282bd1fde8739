//! What templates see. A file without secrets gets only site-wide, non-secret values; a
//! device file gets the device, its lines and the steady URL.
//!
//! - `site["sip.server"]` and every other setting (secret ones only in device files)
//! - `device.mac`, `.mac_upper`, `.mac_colon`, `.vendor`, `.model`,
//!   `.lines[i].{number, extension, display_name, sip_user, sip_password}`,
//!   `.keys[i].{number, kind, value, label}`, `.overrides[i].{name, value}`
//! - `urls.base`, `urls.ca`, `urls.steady`, `urls.files`, `urls.phonebook` (the last three
//!   only in device files); `urls.bootstrap` and `urls.ca_http`, the plain-HTTP base and CA
//!   for a phone that does not trust the appliance yet; `urls.steady_http`, the steady URL
//!   on plain HTTP, served only with the technician's consent (device files only)
//! - `request.file` and the file name's placeholders (`request.n`, ...)
//! - `directory[i].{name, extension}` in files marked `directory = true`
//! - `ca.pem`: the appliance's CA certificate, for formats that carry it inline (Poly)
//! - `time.*`: the site's zone and language in the vendor's notation
//!   ([`crate::locale::TimeContext`]: `zone`, `posix`, `offset`, `offset_hours`,
//!   `offset_seconds`, `dst.{saving_minutes, start, end}`, `vendor_zone`,
//!   `vendor_zone_label`, `language`, `vendor_language`)
//! - `provbox.version`

use minijinja::Value;
use serde::Serialize;

use super::vendor::FileMatch;
use crate::locale::TimeContext;
use crate::settings::Settings;
use crate::store::records::{Device, KeyKind};
use crate::token::{MASK, TokenKind};

/// What the site contributes to a template's context, read by the appliance under one hold
/// of its lock.
#[derive(Debug, Clone)]
pub struct SiteFacts {
    /// The phones' base URL, ending in `/`.
    pub base_url: String,
    /// The plain-HTTP base URL (DHCP option 66, plug-and-play), ending in `/`.
    pub bootstrap_url: String,
    /// Every effective setting, secrets included (masked or dropped here as fits).
    pub settings: Settings,
    /// (name, extension) of every line, sorted; only filled for files marked `directory`.
    pub directory: Vec<(String, String)>,
    /// The site's zone and language in the vendor's notation.
    pub time: TimeContext,
    /// The appliance's CA certificate (PEM; empty if there is none yet).
    pub ca_pem: String,
}

/// Whether secrets are rendered or masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// As served to the phone.
    Real,
    /// Masked, for showing to a person.
    Masked,
}

#[derive(Serialize)]
struct LineContext {
    number: usize,
    extension: String,
    display_name: String,
    sip_user: String,
    sip_password: String,
}

#[derive(Serialize)]
struct KeyContext {
    number: usize,
    kind: &'static str,
    value: String,
    label: String,
}

#[derive(Serialize)]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Serialize)]
struct DeviceContext {
    mac: String,
    mac_upper: String,
    mac_colon: String,
    vendor: String,
    model: String,
    lines: Vec<LineContext>,
    keys: Vec<KeyContext>,
    overrides: Vec<NameValue>,
}

#[derive(Serialize)]
struct DirectoryEntry {
    name: String,
    extension: String,
}

#[derive(Serialize)]
struct Urls {
    base: String,
    ca: String,
    bootstrap: String,
    ca_http: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    steady: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phonebook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steady_http: Option<String>,
}

/// Builds the template context for `matched`, showing `device` only if given (device files).
pub fn build(facts: SiteFacts, device: Option<&Device>, matched: &FileMatch<'_>, secrets: Secrets) -> Value {
    let mask =
        |value: &str| if secrets == Secrets::Masked && !value.is_empty() { MASK.to_string() } else { value.into() };
    let SiteFacts { base_url: base, bootstrap_url: bootstrap, settings, directory, time, ca_pem } = facts;
    let mut site = settings.values().clone();
    for (name, value) in site.iter_mut() {
        if settings.is_secret(name) {
            *value = if device.is_some() { mask(value) } else { String::new() };
        }
    }
    let steady_at = |base: &str| {
        device.map(|device| match secrets {
            Secrets::Real => device.steady_token.url(TokenKind::Steady, base),
            Secrets::Masked => TokenKind::Steady.masked_url(base),
        })
    };
    let steady = steady_at(&base);
    let steady_http = steady_at(&bootstrap);
    let urls = Urls {
        ca: format!("{base}ca.crt"),
        ca_http: format!("{bootstrap}ca.crt"),
        bootstrap,
        files: steady.as_ref().map(|steady| format!("{steady}files/")),
        phonebook: steady.as_ref().map(|steady| format!("{steady}phonebook.xml")),
        steady,
        steady_http,
        base,
    };
    let device_context = device.map(|device| {
        let mac = device.mac.to_string();
        DeviceContext {
            mac_upper: mac.to_uppercase(),
            mac_colon: device.mac.0.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
            mac,
            vendor: device.vendor.to_string(),
            model: device.model.to_string(),
            lines: device
                .lines
                .iter()
                .enumerate()
                .map(|(i, line)| LineContext {
                    number: i + 1,
                    extension: line.extension.to_string(),
                    display_name: line.display_name.to_string(),
                    sip_user: line.sip_user.to_string(),
                    sip_password: mask(&line.sip_password),
                })
                .collect(),
            keys: device
                .keys
                .iter()
                .enumerate()
                .map(|(i, key)| KeyContext {
                    number: i + 1,
                    kind: match key.kind {
                        KeyKind::Line => "line",
                        KeyKind::Blf => "blf",
                        KeyKind::SpeedDial => "speed_dial",
                    },
                    value: key.value.to_string(),
                    label: key.label.to_string(),
                })
                .collect(),
            overrides: device
                .overrides
                .iter()
                .map(|o| NameValue { name: o.name.to_string(), value: o.value.to_string() })
                .collect(),
        }
    });
    let directory: Vec<DirectoryEntry> =
        directory.into_iter().map(|(name, extension)| DirectoryEntry { name, extension }).collect();
    let mut request = matched.captures.clone();
    request.insert("file".into(), matched.requested.clone());
    minijinja::context! {
        site => site,
        device => device_context,
        urls => urls,
        request => request,
        directory => directory,
        time => time,
        ca => minijinja::context! { pem => ca_pem.trim_end() },
        provbox => minijinja::context! { version => env!("CARGO_PKG_VERSION") },
    }
}

/// The truncated SHA-256 recorded as "config last served".
pub fn config_hash(body: &str) -> [u8; 8] {
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    let mut hash = [0; 8];
    hash.copy_from_slice(&digest.as_ref()[..8]);
    hash
}
