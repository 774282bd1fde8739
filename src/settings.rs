//! Site settings: the names provbox knows, their defaults, how each is validated, and which
//! are secret. Templates see every setting by name (`site["sip.server"]`).

use std::collections::BTreeMap;

/// How a setting's value is checked.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Free text without control characters (may be empty).
    Text,
    /// A host name or address (may be empty).
    Host,
    /// A whole number within bounds.
    Number(u32, u32),
    /// One of a fixed set of words.
    OneOf(&'static [&'static str]),
    /// `on` or `off`.
    Switch,
    /// An `http://` or `https://` URL, or empty for the default.
    Url,
    /// An `https://` URL ending in `/`, or empty for the default. Never `http://`: the steady
    /// URL it prefixes carries a token.
    BaseUrl,
}

/// One known setting.
#[derive(Debug)]
pub struct SettingSpec {
    /// Its name, e.g. `sip.server`.
    pub name: &'static str,
    /// Value when not set.
    pub default: &'static str,
    /// Whether it is masked when shown.
    pub secret: bool,
    /// One line for `settings show` and the page.
    pub help: &'static str,
    rule: Rule,
}

const fn spec(name: &'static str, default: &'static str, rule: Rule, help: &'static str) -> SettingSpec {
    SettingSpec { name, default, secret: false, help, rule }
}

const fn secret(name: &'static str, help: &'static str) -> SettingSpec {
    SettingSpec { name, default: "", secret: true, help, rule: Rule::Text }
}

/// Every setting provbox knows, in display order.
pub const SETTINGS: &[SettingSpec] = &[
    spec("sip.server", "", Rule::Host, "SIP registrar host name or address"),
    spec("sip.server2", "", Rule::Host, "backup SIP registrar"),
    spec("sip.port", "5060", Rule::Number(1, 65535), "SIP port"),
    spec("sip.transport", "udp", Rule::OneOf(&["udp", "tcp", "tls"]), "SIP transport"),
    spec("sip.srtp", "optional", Rule::OneOf(&["off", "optional", "required"]), "SRTP media encryption"),
    spec("nat.stun.server", "", Rule::Host, "STUN server (empty: STUN off)"),
    spec("nat.stun.port", "3478", Rule::Number(1, 65535), "STUN port"),
    spec("nat.turn.server", "", Rule::Host, "TURN server (empty: TURN off)"),
    spec("nat.turn.port", "3478", Rule::Number(1, 65535), "TURN port"),
    spec("nat.turn.username", "", Rule::Text, "TURN user name"),
    secret("nat.turn.password", "TURN password"),
    spec("nat.ice", "off", Rule::Switch, "ICE for media"),
    spec("time.ntp", "pool.ntp.org", Rule::Host, "NTP server the phones use"),
    spec("time.zone", "UTC", Rule::Text, "time zone, e.g. Europe/Berlin"),
    spec("time.language", "English", Rule::Text, "phone menu language"),
    spec("provision.resync_minutes", "1440", Rule::Number(5, 10080), "how often phones re-fetch their config"),
    spec("provision.base_url", "", Rule::BaseUrl, "URL phones use to reach provbox (empty: from the LAN address)"),
    spec(
        "provision.enroll_grace_minutes",
        "15",
        Rule::Number(0, 1440),
        "enrollment stays open this long after the first fetch",
    ),
    spec(
        "provision.bootstrap",
        "blank",
        Rule::OneOf(&["blank", "off"]),
        "tokenless requests get a secret-free config (blank) or 404 (off)",
    ),
    secret("phone.admin_password", "the phones' own web admin password (generated at first start)"),
    spec("redirect.enabled", "on", Rule::Switch, "register phones with their vendors' redirect services"),
    spec("redirect.timeout_seconds", "20", Rule::Number(1, 120), "give up on a redirect-service call after this long"),
    spec("redirect.ca_file", "", Rule::Text, "extra CA certificates (PEM file) trusted for redirect services"),
    spec("redirect.yealink.api", "xmlrpc", Rule::OneOf(&["xmlrpc", "json", "ymcs", "off"]), "Yealink RPS API"),
    spec("redirect.yealink.url", "", Rule::Url, "Yealink RPS endpoint (empty: the API's public one)"),
    spec("redirect.yealink.username", "", Rule::Text, "Yealink RPS user (xmlrpc)"),
    secret("redirect.yealink.password", "Yealink RPS password (xmlrpc)"),
    spec("redirect.yealink.key", "", Rule::Text, "Yealink RPS API key (json) or YMCS client id (ymcs)"),
    secret("redirect.yealink.secret", "Yealink RPS API secret (json) or YMCS client secret (ymcs)"),
    spec("redirect.yealink.server_name", "provbox", Rule::Text, "server name URLs are registered under (xmlrpc)"),
    spec("redirect.snom.api", "sraps", Rule::OneOf(&["sraps", "xmlrpc", "off"]), "Snom redirect API"),
    spec("redirect.snom.url", "", Rule::Url, "Snom endpoint (empty: the API's public one)"),
    spec("redirect.snom.username", "", Rule::Text, "Snom user (xmlrpc)"),
    secret("redirect.snom.password", "Snom password (xmlrpc)"),
    spec("redirect.snom.key", "", Rule::Text, "SRAPS access key id (sraps)"),
    secret("redirect.snom.secret", "SRAPS access key secret (sraps)"),
    spec("redirect.fanvil.api", "fdps", Rule::OneOf(&["fdps", "off"]), "Fanvil redirect API"),
    spec("redirect.fanvil.url", "", Rule::Url, "Fanvil FDPS endpoint (empty: the public one)"),
    spec("redirect.fanvil.username", "", Rule::Text, "Fanvil FDPS user"),
    secret("redirect.fanvil.password", "Fanvil FDPS password"),
];

/// Why a setting was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// Not a known name.
    #[error("unknown setting {0}; `provbox settings show` lists them")]
    Unknown(String),
    /// A value that breaks the setting's rule.
    #[error("{name}: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

/// The spec of setting `name`.
pub fn spec_of(name: &str) -> Result<&'static SettingSpec, SettingError> {
    SETTINGS.iter().find(|s| s.name == name).ok_or_else(|| SettingError::Unknown(name.into()))
}

/// Checks `value` for setting `name`, returning it normalised (trimmed).
pub fn validate(name: &str, value: &str) -> Result<String, SettingError> {
    let spec = spec_of(name)?;
    let value = value.trim();
    let invalid = |reason: String| Err(SettingError::Invalid { name: spec.name, reason });
    if value.chars().any(char::is_control) {
        return invalid("control characters are not allowed".into());
    }
    if value.len() > 200 {
        return invalid("longer than 200 characters".into());
    }
    match spec.rule {
        Rule::Text => {}
        Rule::Host => {
            let host_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
            if !value.chars().all(host_chars) {
                return invalid(format!("{value:?} is not a host name or address"));
            }
        }
        Rule::Number(low, high) => match value.parse::<u32>() {
            Ok(n) if (low..=high).contains(&n) => {}
            _ => return invalid(format!("must be a whole number from {low} to {high}")),
        },
        Rule::OneOf(words) => {
            if !words.contains(&value) {
                return invalid(format!("must be one of {}", words.join(", ")));
            }
        }
        Rule::Switch => {
            if value != "on" && value != "off" {
                return invalid("must be on or off".into());
            }
        }
        Rule::Url => {
            let valid = (value.starts_with("https://") || value.starts_with("http://"))
                && value.parse::<hyper::Uri>().is_ok_and(|uri| uri.host().is_some());
            if !value.is_empty() && !valid {
                return invalid("must be an http:// or https:// URL".into());
            }
        }
        Rule::BaseUrl => {
            let valid = value.starts_with("https://") && value.ends_with('/') && !value.contains(char::is_whitespace);
            if !value.is_empty() && !valid {
                return invalid("must be an https:// URL ending in / (tokens never travel over plain HTTP)".into());
            }
        }
    }
    Ok(value.to_string())
}

/// Every setting's effective value: the stored value, or the default. `stored` comes from
/// the store; names there that this build does not know are kept, so a downgrade loses
/// nothing.
pub fn effective(stored: &[(String, String)]) -> BTreeMap<String, String> {
    let mut values: BTreeMap<String, String> =
        SETTINGS.iter().map(|s| (s.name.to_string(), s.default.to_string())).collect();
    values.extend(stored.iter().cloned());
    values
}

/// Whether setting `name` is secret.
pub fn is_secret(name: &str) -> bool {
    spec_of(name).is_ok_and(|s| s.secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_refuse_bad_values_with_reasons() {
        assert_eq!(validate("sip.port", " 5070 ").unwrap(), "5070");
        assert!(validate("sip.port", "70000").unwrap_err().to_string().contains("1 to 65535"));
        assert!(validate("sip.transport", "sctp").unwrap_err().to_string().contains("udp, tcp, tls"));
        assert!(validate("sip.server", "pbx.example.com\nx=1").is_err());
        assert!(validate("sip.server", "pbx example").is_err());
        assert!(validate("provision.base_url", "https://10.0.0.2:8443").is_err());
        assert!(validate("provision.base_url", "https://10.0.0.2:8443/").is_ok());
        assert!(validate("provision.base_url", "http://10.0.0.2:8080/").is_err());
        assert!(matches!(validate("sip.nonsense", "1"), Err(SettingError::Unknown(_))));
    }

    #[test]
    fn effective_values_fall_back_to_defaults() {
        let values = effective(&[("sip.server".into(), "pbx".into())]);
        assert_eq!(values["sip.server"], "pbx");
        assert_eq!(values["sip.port"], "5060");
        assert!(is_secret("phone.admin_password") && !is_secret("sip.server"));
    }
}
