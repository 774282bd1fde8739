//! Password policy: how strong SIP passwords (`policy.sip_password`) and the page's admin
//! password (`policy.admin_password`) must be, as the site chooses, and the compiled-in
//! list of common passwords both checked levels refuse.
//!
//! | Level | Rule |
//! |---|---|
//! | `strong` (default) | 12 or more characters, more than one character class, not common |
//! | `standard` | 8 or more characters, more than one character class, not common |
//! | `pbx` (SIP only) | anything without control characters: the PBX issued it |
//!
//! A SIP password also may not contain its extension or the phone's MAC at `strong` and
//! `standard`.

use serde::{Deserialize, Serialize};

use crate::mac::Mac;

/// Common passwords, lowercased, one per line after the `#` header: those of 8 or more
/// characters that are not all digits from Django's list (`scripts/gen-common-passwords`).
const COMMON: &str = include_str!("common-passwords.txt");

/// A policy level; they order weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Anything the PBX accepts; the page warns.
    Pbx,
    /// 8 or more characters, mixed, not common.
    Standard,
    /// 12 or more characters, mixed, not common.
    Strong,
}

impl Level {
    /// The words the settings accept for SIP passwords.
    pub const SIP_CHOICES: &'static [&'static str] = &["strong", "standard", "pbx"];
    /// The words the settings accept for the admin password.
    pub const ADMIN_CHOICES: &'static [&'static str] = &["strong", "standard"];

    /// The level a setting's value names; anything else (the settings refuse it) is `strong`.
    pub fn from_setting(value: &str) -> Level {
        match value {
            "standard" => Level::Standard,
            "pbx" => Level::Pbx,
            _ => Level::Strong,
        }
    }

    /// The setting's word for this level.
    pub fn name(self) -> &'static str {
        match self {
            Level::Strong => "strong",
            Level::Standard => "standard",
            Level::Pbx => "pbx",
        }
    }

    fn min_length(self) -> usize {
        match self {
            Level::Strong => 12,
            Level::Standard => 8,
            Level::Pbx => 1,
        }
    }
}

/// The list's entries, in byte order (as `scripts/gen-common-passwords` sorts them), for a
/// binary search: the settings page checks every device's passwords.
static COMMON_SORTED: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    let mut entries: Vec<&str> = COMMON.lines().filter(|line| !line.starts_with('#')).collect();
    entries.sort_unstable();
    entries
});

/// Whether `password` is on the common-password list, whatever its case.
pub fn is_common(password: &str) -> bool {
    COMMON_SORTED.binary_search(&password.to_lowercase().as_str()).is_ok()
}

/// Checks `password` against `level`: why it falls short, or Ok.
pub fn check(level: Level, password: &str) -> Result<(), &'static str> {
    if password.is_empty() {
        return Err("a password cannot be empty");
    }
    if password.chars().any(char::is_control) {
        return Err("control characters are not allowed");
    }
    if level == Level::Pbx {
        return Ok(());
    }
    if password.chars().count() < level.min_length() {
        return Err(if level == Level::Strong { "use at least 12 characters" } else { "use at least 8 characters" });
    }
    let class = |c: char| match c {
        'a'..='z' => 0,
        'A'..='Z' => 1,
        '0'..='9' => 2,
        _ => 3,
    };
    let first = password.chars().next().map(class);
    if password.chars().all(|c| Some(class(c)) == first) {
        return Err("mix character classes: it is all lowercase, all uppercase, all digits or all symbols");
    }
    if is_common(password) {
        return Err("it is on the list of common passwords");
    }
    Ok(())
}

/// Checks a SIP password against `level`: [`check`], and at `strong` and `standard` not
/// containing the line's extension or the phone's MAC (in any usual spelling).
pub fn check_sip(level: Level, password: &str, extension: &str, mac: &Mac) -> Result<(), &'static str> {
    check(level, password)?;
    if level == Level::Pbx {
        return Ok(());
    }
    let lower = password.to_lowercase();
    if !extension.is_empty() && lower.contains(&extension.to_lowercase()) {
        return Err("it contains the extension");
    }
    let mac_hex = mac.to_string();
    let mac_colon: String = mac.0.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let mac_dash = mac_colon.replace(':', "-");
    if [mac_hex, mac_colon, mac_dash].iter().any(|form| lower.contains(form.as_str())) {
        return Err("it contains the MAC address");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> Mac {
        "805ec0d57d72".parse().unwrap()
    }

    #[test]
    fn each_level_says_why() {
        assert_eq!(check_sip(Level::Strong, "Short1", "100", &mac()), Err("use at least 12 characters"));
        assert!(check_sip(Level::Strong, "alllowercaseletters", "100", &mac()).unwrap_err().contains("classes"));
        assert!(check_sip(Level::Strong, "Abcdefgh4711xyz", "4711", &mac()).unwrap_err().contains("extension"));
        assert!(check_sip(Level::Strong, "X805EC0D57D72y", "100", &mac()).unwrap_err().contains("MAC"));
        assert!(check_sip(Level::Strong, "80:5e:c0:d5:7d:72Zz", "100", &mac()).unwrap_err().contains("MAC"));
        assert_eq!(check_sip(Level::Strong, "Tr0ub4dor&3horse", "100", &mac()), Ok(()));
        // Long enough and mixed, but common: today's rule alone let it through.
        assert_eq!(check(Level::Strong, "password1234"), Err("it is on the list of common passwords"));
        assert_eq!(check(Level::Standard, "Password1"), Err("it is on the list of common passwords"));
        assert_eq!(check(Level::Standard, "Kx7-plum"), Ok(()));
        assert_eq!(check(Level::Strong, "Kx7-plum"), Err("use at least 12 characters"));
        // A PBX-issued numeric secret: only the pbx level takes it.
        assert!(check_sip(Level::Standard, "48213907", "100", &mac()).unwrap_err().contains("classes"));
        assert_eq!(check_sip(Level::Pbx, "48213907", "100", &mac()), Ok(()));
        assert_eq!(check(Level::Pbx, "bad\nline"), Err("control characters are not allowed"));
        assert_eq!(check(Level::Pbx, ""), Err("a password cannot be empty"));
        assert!(Level::Strong > Level::Standard && Level::Standard > Level::Pbx);
    }

    #[test]
    fn the_list_is_read_whole_and_without_its_header() {
        let entries: Vec<&str> = COMMON.lines().filter(|line| !line.starts_with('#')).collect();
        assert!(entries.len() > 8000, "{}", entries.len());
        assert!(entries.iter().all(|entry| entry.chars().count() >= 8 && *entry == entry.to_lowercase()));
        assert!(is_common("PASSWORD1234") && is_common("iloveyou1") && !is_common("Tr0ub4dor&3horse"));
    }
}
