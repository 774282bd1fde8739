//! Site settings: the names provbox knows, their defaults, how each is validated, and which
//! are secret. Templates see every setting by name (`site["sip.server"]`).
//!
//! One [`Table`] holds every [`SettingSpec`]: the site-wide ones here ([`SITE`]) and each
//! redirect service's own, declared in its module. The appliance reads values only through
//! [`Settings`], whose typed getters fall back to the table's defaults, so no default is
//! written down twice.

use std::collections::BTreeMap;

/// How a setting's value is checked.
#[derive(Debug, Clone, Copy)]
pub enum Rule {
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
    /// An IANA time zone name (`Europe/Rome`).
    Zone,
    /// A BCP 47 language tag (`it`, `en-US`).
    Language,
    /// An `https://` URL without credentials in it, or empty: where a file and its
    /// credentials go over the WAN.
    SecureUrl,
    /// An age public key (`age1...`), or empty.
    AgeRecipient,
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
    /// How its values are checked.
    pub rule: Rule,
}

impl SettingSpec {
    /// A setting shown as it is.
    pub const fn plain(name: &'static str, default: &'static str, rule: Rule, help: &'static str) -> SettingSpec {
        SettingSpec { name, default, secret: false, help, rule }
    }

    /// A secret: free text, empty by default, masked wherever it is shown.
    pub const fn secret(name: &'static str, help: &'static str) -> SettingSpec {
        SettingSpec { name, default: "", secret: true, help, rule: Rule::Text }
    }
}

const fn spec(name: &'static str, default: &'static str, rule: Rule, help: &'static str) -> SettingSpec {
    SettingSpec::plain(name, default, rule, help)
}

const fn secret(name: &'static str, help: &'static str) -> SettingSpec {
    SettingSpec::secret(name, help)
}

/// The site-wide settings, in display order; each redirect service adds its own.
pub const SITE: &[SettingSpec] = &[
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
    spec("time.zone", "UTC", Rule::Zone, "IANA time zone, e.g. Europe/Rome"),
    spec("time.language", "en", Rule::Language, "phone menu language as a language tag, e.g. it, de, en-US"),
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
    spec(
        "policy.sip_password",
        "strong",
        Rule::OneOf(crate::policy::Level::SIP_CHOICES),
        "SIP passwords: strong (12+ characters, mixed, not common), standard (8+, mixed, not common) or pbx (whatever the PBX issued)",
    ),
    spec(
        "policy.admin_password",
        "strong",
        Rule::OneOf(crate::policy::Level::ADMIN_CHOICES),
        "the page's admin password: strong (12+ characters, mixed, not common) or standard (8+)",
    ),
    spec("redirect.enabled", "on", Rule::Switch, "register phones with their vendors' redirect services"),
    spec("redirect.timeout_seconds", "20", Rule::Number(1, 120), "give up on a redirect-service call after this long"),
    spec("redirect.ca_file", "", Rule::Text, "extra CA certificates (PEM file) trusted for redirect services"),
    spec(
        "backup.copy_url",
        "",
        Rule::SecureUrl,
        "WebDAV or HTTPS PUT URL for scheduled backup copies; ending in / adds a dated file name (empty: no copies)",
    ),
    spec(
        "backup.copy_recipient",
        "",
        Rule::AgeRecipient,
        "age public key (age1..., from age-keygen) the copies are encrypted to; keep its identity off the appliance",
    ),
    spec("backup.copy_schedule", "daily", Rule::OneOf(&["daily", "weekly"]), "how often a backup copy is sent"),
    spec("backup.copy_files", "off", Rule::Switch, "include the static files (firmware) in the copies"),
    spec("backup.copy_username", "", Rule::Text, "user for HTTP Basic authentication at the copy URL"),
    secret("backup.copy_password", "password for HTTP Basic authentication at the copy URL"),
    secret("backup.copy_token", "bearer token for the copy URL, instead of a user and password"),
    spec("backup.copy_ca_file", "", Rule::Text, "extra CA certificates (PEM file) trusted for the copy URL"),
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

/// Every setting provbox knows.
#[derive(Debug)]
pub struct Table {
    specs: Vec<&'static SettingSpec>,
}

impl Table {
    /// The table of `groups`, in order: [`SITE`] and each service's settings.
    pub fn new(groups: &[&'static [SettingSpec]]) -> Table {
        Table { specs: groups.iter().flat_map(|group| group.iter()).collect() }
    }

    /// Every setting, in display order.
    pub fn specs(&self) -> impl Iterator<Item = &'static SettingSpec> + '_ {
        self.specs.iter().copied()
    }

    /// The spec of setting `name`.
    pub fn spec_of(&self, name: &str) -> Result<&'static SettingSpec, SettingError> {
        self.specs().find(|s| s.name == name).ok_or_else(|| SettingError::Unknown(name.into()))
    }

    /// Checks `value` for setting `name`, returning it normalised (trimmed).
    pub fn validate(&self, name: &str, value: &str) -> Result<String, SettingError> {
        let spec = self.spec_of(name)?;
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
                let valid =
                    value.starts_with("https://") && value.ends_with('/') && !value.contains(char::is_whitespace);
                if !value.is_empty() && !valid {
                    return invalid("must be an https:// URL ending in / (tokens never travel over plain HTTP)".into());
                }
            }
            Rule::SecureUrl => {
                let uri = value.parse::<hyper::Uri>().ok();
                let host = uri.as_ref().and_then(|uri| uri.host()).is_some();
                let credentials =
                    uri.as_ref().and_then(|uri| uri.authority()).is_some_and(|a| a.as_str().contains('@'));
                if !value.is_empty() && (!value.starts_with("https://") || !host || credentials) {
                    return invalid(
                        "must be an https:// URL with no user or password in it (they have their own settings)".into(),
                    );
                }
            }
            Rule::AgeRecipient => {
                if let Err(reason) = value.parse::<crate::backup::age::Recipient>()
                    && !value.is_empty()
                {
                    return invalid(reason);
                }
            }
            Rule::Zone => {
                if !crate::locale::is_zone(value) {
                    return invalid(format!("{value:?} is not an IANA time zone (e.g. Europe/Rome, America/New_York)"));
                }
            }
            Rule::Language => {
                if !crate::locale::is_language_tag(value) {
                    return invalid(format!("{value:?} is not a language tag (e.g. it, de, en-US)"));
                }
            }
        }
        Ok(value.to_string())
    }

    /// Whether setting `name` is secret.
    pub fn is_secret(&self, name: &str) -> bool {
        self.spec_of(name).is_ok_and(|s| s.secret)
    }

    /// Every setting's effective value: the stored value, or the default. `stored` comes
    /// from the store; names there that this build does not know are kept, so a downgrade
    /// loses nothing.
    pub fn effective(&'static self, stored: &[(String, String)]) -> Settings {
        let mut values: BTreeMap<String, String> =
            self.specs().map(|s| (s.name.to_string(), s.default.to_string())).collect();
        values.extend(stored.iter().cloned());
        Settings { table: self, values }
    }
}

/// Every setting's effective value, read through the [`Table`].
#[derive(Debug, Clone)]
pub struct Settings {
    table: &'static Table,
    values: BTreeMap<String, String>,
}

impl Settings {
    /// The value of `name` ("" for a name the table does not know).
    pub fn get(&self, name: &str) -> &str {
        self.values.get(name).map_or("", String::as_str)
    }

    /// A number setting: its value, or its default where the stored value does not parse
    /// (a value written by another version).
    pub fn number(&self, name: &str) -> u64 {
        self.get(name)
            .parse()
            .ok()
            .or_else(|| self.table.spec_of(name).ok().and_then(|spec| spec.default.parse().ok()))
            .unwrap_or(0)
    }

    /// Whether switch `name` is `on`.
    pub fn is_on(&self, name: &str) -> bool {
        self.get(name) == "on"
    }

    /// Every value, secrets included: for rendering only.
    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// Whether setting `name` is secret.
    pub fn is_secret(&self, name: &str) -> bool {
        self.table.is_secret(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static TABLE: std::sync::LazyLock<Table> = std::sync::LazyLock::new(|| Table::new(&[SITE]));

    fn validate(name: &str, value: &str) -> Result<String, SettingError> {
        TABLE.validate(name, value)
    }

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
        let values = TABLE.effective(&[
            ("sip.server".into(), "pbx".into()),
            ("provision.enroll_grace_minutes".into(), "soon".into()),
        ]);
        assert_eq!(values.get("sip.server"), "pbx");
        assert_eq!(values.get("sip.port"), "5060");
        assert_eq!(values.number("sip.port"), 5060);
        // A stored value that does not parse reads as the table's default.
        assert_eq!(values.number("provision.enroll_grace_minutes"), 15);
        assert!(values.is_on("redirect.enabled"));
        assert!(TABLE.is_secret("phone.admin_password") && !TABLE.is_secret("sip.server"));
    }
}
