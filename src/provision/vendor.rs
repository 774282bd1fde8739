//! Vendor profiles: how provbox recognises a vendor's phones and which files it serves them.
//!
//! Each vendor is a directory `templates/<vendor>/` holding `vendor.toml` and its
//! templates. Adding a vendor adds such a directory; no code knows vendor names.
//!
//! ```toml
//! name = "Yealink"
//! user_agent = '^Yealink SIP[- ](?P<model>\S+) (?P<firmware>\S+) (?P<mac>[0-9a-fA-F:]{17})'
//! # (or a list of patterns, tried in order: one per form the vendor's firmware sends)
//! user_agent_vendor = '(?i)\byealink\b'   # the vendor's, even when the above cannot read it
//! check_sync_event = "check-sync;reboot=false"
//!
//! [[files]]
//! name = "y000000000{n}.cfg"   # {mac} {MAC} {n} {model} are placeholders
//! template = "common.cfg"
//!
//! [[files]]
//! name = "{mac}.cfg"
//! template = "device.cfg"
//! secrets = true               # only served to an identified, enrolled phone
//! # models = '^X3'             # only for these models (a family's own template)
//! # raw = true                 # served as it is, not rendered (a binary file)
//!
//! [time]                       # the vendor's own notation (see crate::locale)
//! zones = "zones.tsv"          # value, POSIX rule, label
//! zone_fallback = "+0"         # when no entry has the site's offset
//! zone_match = "nearest"       # "exact": only an entry of the very rule; "offset": by
//!                              # standard offset (the phone applies DST itself)
//! languages = "languages.tsv"  # language tag, value
//! language_fallback = "English"
//! ```

use std::collections::BTreeMap;

use regex_lite::Regex;
use serde::Deserialize;

use crate::locale::{VendorLocale, ZoneMatching};
use crate::mac::Mac;

/// Why a vendor profile is unusable.
#[derive(Debug, thiserror::Error)]
#[error("vendor profile {vendor}: {reason}")]
pub struct ProfileError {
    /// The vendor directory.
    pub vendor: String,
    /// What is wrong.
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    #[serde(default)]
    user_agent: Patterns,
    #[serde(default)]
    user_agent_vendor: Option<String>,
    #[serde(default)]
    check_sync_event: Option<String>,
    files: Vec<FileEntry>,
    #[serde(default)]
    time: TimeSection,
}

/// One regular expression, or several tried in order (a vendor's User-Agent forms).
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Patterns {
    #[default]
    None,
    One(String),
    Several(Vec<String>),
}

impl Patterns {
    fn into_vec(self) -> Vec<String> {
        match self {
            Patterns::None => Vec::new(),
            Patterns::One(pattern) => vec![pattern],
            Patterns::Several(patterns) => patterns,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TimeSection {
    zones: Option<String>,
    #[serde(default)]
    zone_fallback: String,
    #[serde(default)]
    zone_match: ZoneMatching,
    languages: Option<String>,
    #[serde(default)]
    language_fallback: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    name: String,
    template: String,
    #[serde(default)]
    secrets: bool,
    #[serde(default)]
    directory: bool,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    models: Option<String>,
    #[serde(default)]
    raw: bool,
}

/// One file a vendor's phones request.
#[derive(Debug)]
pub struct VendorFile {
    /// The file name with placeholders, e.g. `{mac}.cfg`.
    pub name: String,
    /// Template that renders it, relative to the vendor directory.
    pub template: String,
    /// Whether it carries secrets (SIP passwords, the steady URL): only an identified,
    /// enrolled phone gets it.
    pub secrets: bool,
    /// Whether the template receives the phonebook of all extensions.
    pub directory: bool,
    /// The Content-Type it is served with.
    pub content_type: String,
    pattern: Regex,
    /// Only phones whose model matches get this entry (a model family's own template).
    models: Option<Regex>,
    /// Served as it is, not rendered (binary files).
    pub raw: bool,
}

impl VendorFile {
    /// `requested` matched against this entry's name pattern.
    fn matches(&self, requested: &str) -> Option<FileMatch<'_>> {
        let captures = self.pattern.captures(requested)?;
        let mut mac = None;
        let mut named = BTreeMap::new();
        for name in self.pattern.capture_names().flatten() {
            let Some(value) = captures.name(name) else { continue };
            if name == "mac" {
                mac = Some(value.as_str().parse().ok()?);
            } else {
                named.insert(name.to_string(), value.as_str().to_string());
            }
        }
        Some(FileMatch { file: self, mac, captures: named, requested: requested.to_string() })
    }

    /// The `models` pattern this entry is limited to, if any.
    pub fn models(&self) -> Option<&str> {
        self.models.as_ref().map(Regex::as_str)
    }

    /// Whether phones of `model` get this entry.
    pub fn is_for(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|models| models.is_match(model))
    }

    /// The request a phone with `mac` and `model` makes for this entry (`{n}` taken as 0),
    /// matched: to show what its template renders for that phone, whatever the entry's
    /// `models`. None when the model cannot stand in the file name.
    pub fn example(&self, mac: &Mac, model: &str) -> Option<FileMatch<'_>> {
        let name = self
            .name
            .replace("{mac}", &mac.to_string())
            .replace("{MAC}", &mac.to_string().to_uppercase())
            .replace("{model}", model)
            .replace("{n}", "0");
        self.matches(&name)
    }
}

/// A file request matched against a vendor's files.
#[derive(Debug)]
pub struct FileMatch<'v> {
    /// The matched entry.
    pub file: &'v VendorFile,
    /// The MAC in the file name, if its pattern has one.
    pub mac: Option<Mac>,
    /// Other placeholders' values, by name.
    pub captures: BTreeMap<String, String>,
    /// The file name as requested.
    pub requested: String,
}

/// What a User-Agent header says about the phone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UserAgentInfo {
    /// Model, when the vendor's User-Agent carries it.
    pub model: Option<String>,
    /// Firmware version.
    pub firmware: Option<String>,
    /// The phone's own MAC.
    pub mac: Option<Mac>,
}

/// A vendor's profile.
#[derive(Debug)]
pub struct Vendor {
    /// Directory name and the `vendor` of its devices, e.g. `yealink`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// SIP event that makes its phones re-fetch their config.
    pub check_sync_event: Option<String>,
    /// Files its phones request, in match order.
    pub files: Vec<VendorFile>,
    /// Its notation for time zones and languages.
    pub locale: VendorLocale,
    user_agent: Vec<Regex>,
    user_agent_vendor: Option<Regex>,
    /// What [`Vendor::identify`] read from recent User-Agents: a phone sends the same one on
    /// every request, and matching the patterns again cost more than the rest of a cached
    /// answer (`scripts/bench-keepalive`). At most [`READ_USER_AGENTS`], then started afresh.
    read: std::sync::Mutex<std::collections::HashMap<String, Option<UserAgentInfo>>>,
}

/// User-Agents a vendor remembers having read, at most.
const READ_USER_AGENTS: usize = 1024;
/// Longer User-Agents are read every time, never remembered: phones send under 200 bytes,
/// and a stranger's 16 KiB headers must not fill the memory (1,024 × 256 bytes at most).
const REMEMBERED_USER_AGENT_BYTES: usize = 256;

impl Vendor {
    /// Parses `vendor.toml` of vendor directory `id`; `read` gives the text of another file
    /// of that directory (the `[time]` tables).
    pub fn parse(id: &str, toml_text: &str, read: &dyn Fn(&str) -> Option<String>) -> Result<Vendor, ProfileError> {
        let error = |reason: String| ProfileError { vendor: id.into(), reason };
        let profile: ProfileFile = toml::from_str(toml_text).map_err(|e| error(e.to_string()))?;
        let regex = |field: &str, pattern: &str| Regex::new(pattern).map_err(|e| error(format!("{field}: {e}")));
        let user_agent = profile
            .user_agent
            .into_vec()
            .iter()
            .map(|pattern| regex("user_agent", pattern))
            .collect::<Result<Vec<_>, _>>()?;
        let user_agent_vendor =
            profile.user_agent_vendor.as_deref().map(|pattern| regex("user_agent_vendor", pattern)).transpose()?;
        let files = profile
            .files
            .into_iter()
            .map(|entry| {
                let pattern =
                    file_pattern(&entry.name).map_err(|reason| error(format!("file {}: {reason}", entry.name)))?;
                let content_type = entry.content_type.unwrap_or_else(|| content_type_for(&entry.name).into());
                let models = entry
                    .models
                    .as_deref()
                    .map(|pattern| regex(&format!("file {} models", entry.name), pattern))
                    .transpose()?;
                Ok(VendorFile {
                    name: entry.name,
                    template: entry.template,
                    secrets: entry.secrets,
                    directory: entry.directory,
                    content_type,
                    pattern,
                    models,
                    raw: entry.raw,
                })
            })
            .collect::<Result<_, ProfileError>>()?;
        let table = |name: &Option<String>| match name {
            Some(name) => read(name).ok_or_else(|| error(format!("[time] names {name}, which is missing"))),
            None => Ok(String::new()),
        };
        let time = &profile.time;
        let locale = VendorLocale::parse(
            &table(&time.zones)?,
            &time.zone_fallback,
            time.zone_match,
            &table(&time.languages)?,
            &time.language_fallback,
        )
        .map_err(|e| error(e.to_string()))?;
        Ok(Vendor {
            id: id.into(),
            name: profile.name,
            check_sync_event: profile.check_sync_event,
            files,
            locale,
            user_agent,
            user_agent_vendor,
            read: std::sync::Mutex::default(),
        })
    }

    /// Reads `user_agent` if it is this vendor's, through the first of its patterns that
    /// matches.
    pub fn identify(&self, user_agent: &str) -> Option<UserAgentInfo> {
        if user_agent.len() > REMEMBERED_USER_AGENT_BYTES {
            return self.read_user_agent(user_agent);
        }
        // A poisoned memo holds whole entries only; it stays usable.
        let memo = || self.read.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(info) = memo().get(user_agent) {
            return info.clone();
        }
        // Matched outside the lock: other phones of the vendor do not wait on this one.
        let info = self.read_user_agent(user_agent);
        let mut read = memo();
        if read.len() >= READ_USER_AGENTS {
            read.clear();
        }
        read.insert(user_agent.to_string(), info.clone());
        info
    }

    fn read_user_agent(&self, user_agent: &str) -> Option<UserAgentInfo> {
        let captures = self.user_agent.iter().find_map(|pattern| pattern.captures(user_agent))?;
        let group = |name| captures.name(name).map(|m| m.as_str().to_string());
        Some(UserAgentInfo {
            model: group("model"),
            firmware: group("firmware"),
            mac: group("mac").and_then(|text| text.parse().ok()),
        })
    }

    /// Whether `user_agent` is one of this vendor's, even in a form whose model or firmware
    /// the full pattern cannot read (the profile's looser `user_agent_vendor`).
    pub fn claims(&self, user_agent: &str) -> bool {
        self.reads(user_agent) || self.user_agent_vendor.as_ref().is_some_and(|r| r.is_match(user_agent))
    }

    /// Whether one of its User-Agent patterns reads `user_agent` (what [`Vendor::identify`]
    /// would find something in, without collecting it).
    pub fn reads(&self, user_agent: &str) -> bool {
        self.user_agent.iter().any(|pattern| pattern.is_match(user_agent))
    }

    /// The entry matching file name `requested` for a phone of `model` (when known): the
    /// first entry of that name whose `models`, if it has any, match the model.
    pub fn match_file(&self, requested: &str, model: Option<&str>) -> Option<FileMatch<'_>> {
        let for_model = |file: &&VendorFile| match (&file.models, model) {
            (None, _) => true,
            (Some(models), Some(model)) => models.is_match(model),
            (Some(_), None) => false,
        };
        self.files.iter().filter(for_model).find_map(|file| file.matches(requested))
    }

    /// The file holding one device's account (the first secret file named by its MAC), as
    /// the phone with `mac` and `model` would request it.
    pub fn device_file_name(&self, mac: &Mac, model: &str) -> Option<String> {
        self.files
            .iter()
            .filter(|f| f.secrets && (f.name.contains("{mac}") || f.name.contains("{MAC}")))
            .map(|f| {
                f.name
                    .replace("{mac}", &mac.to_string())
                    .replace("{MAC}", &mac.to_string().to_uppercase())
                    .replace("{model}", model)
            })
            .find(|name| !name.contains('{'))
    }

    /// Whether `requested` is the device file ([`Vendor::device_file_name`]) of the phone
    /// with `mac` and `model`.
    pub fn is_device_file(&self, mac: &Mac, model: &str, requested: &str) -> bool {
        self.device_file_name(mac, model).is_some_and(|name| name.eq_ignore_ascii_case(requested))
    }
}

/// Turns `{mac}.cfg` into an anchored regular expression.
fn file_pattern(name: &str) -> Result<Regex, String> {
    let mut pattern = String::from("^");
    let mut rest = name;
    let mut has_mac = false;
    while let Some(open) = rest.find('{') {
        pattern.push_str(&regex_lite::escape(&rest[..open]));
        let close = rest[open..].find('}').ok_or("unclosed {")? + open;
        let placeholder = &rest[open + 1..close];
        let group = match placeholder {
            "mac" | "MAC" if !has_mac => {
                has_mac = true;
                "(?P<mac>[0-9A-Fa-f]{12})"
            }
            "n" => "(?P<n>[0-9]{1,4})",
            "model" => "(?P<model>[A-Za-z0-9_-]{1,24})",
            other => return Err(format!("unknown or repeated placeholder {{{other}}}")),
        };
        pattern.push_str(group);
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err("stray }".into());
    }
    pattern.push_str(&regex_lite::escape(rest));
    pattern.push('$');
    Regex::new(&pattern).map_err(|e| e.to_string())
}

fn content_type_for(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("xml") => "application/xml",
        Some("htm" | "html") => "text/html; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = r#"
        name = "Example"
        user_agent = '^Example (?P<model>\S+) (?P<firmware>\S+) (?P<mac>[0-9a-f:]{17})'
        [[files]]
        name = "x{n}.cfg"
        template = "common.cfg"
        [[files]]
        name = "{mac}.cfg"
        template = "device.cfg"
        secrets = true
    "#;

    #[test]
    fn files_match_by_placeholder() {
        let vendor = Vendor::parse("example", PROFILE, &|_| None).unwrap();
        let common = vendor.match_file("x124.cfg", None).unwrap();
        assert!(!common.file.secrets && common.mac.is_none() && common.captures["n"] == "124");
        let device = vendor.match_file("805EC0D57D72.cfg", None).unwrap();
        assert_eq!(device.mac.unwrap().to_string(), "805ec0d57d72");
        assert!(vendor.match_file("805ec0d57d7.cfg", None).is_none());
        assert!(vendor.match_file("../805ec0d57d72.cfg", None).is_none());
        assert!(vendor.match_file("x1.cfg.bak", None).is_none());
        assert_eq!(vendor.device_file_name(&"805ec0d57d72".parse().unwrap(), "T31G").unwrap(), "805ec0d57d72.cfg");
    }

    #[test]
    fn a_model_family_gets_its_own_template() {
        let profile = format!(
            "{PROFILE}\n[[files]]\nname = \"{{mac}}.xml\"\ntemplate = \"old.xml\"\nmodels = '^X3'\n\
             [[files]]\nname = \"{{mac}}.xml\"\ntemplate = \"new.xml\"\n"
        );
        let vendor = Vendor::parse("example", &profile, &|_| None).unwrap();
        let template = |model| vendor.match_file("805ec0d57d72.xml", model).unwrap().file.template.clone();
        assert_eq!(template(Some("X3S")), "old.xml");
        assert_eq!(template(Some("X4U")), "new.xml");
        assert_eq!(template(None), "new.xml", "an unknown model gets the general entry");
    }

    #[test]
    fn user_agent_yields_model_firmware_and_mac() {
        let vendor = Vendor::parse("example", PROFILE, &|_| None).unwrap();
        let info = vendor.identify("Example T31G 124.85.257.55 80:5e:c0:d5:7d:72").unwrap();
        assert_eq!(info.model.as_deref(), Some("T31G"));
        assert_eq!(info.firmware.as_deref(), Some("124.85.257.55"));
        assert_eq!(info.mac.unwrap().to_string(), "805ec0d57d72");
        assert!(vendor.identify("curl/8.0").is_none());
    }

    #[test]
    fn a_remembered_user_agent_reads_as_it_did_and_the_memory_stays_bounded() {
        let vendor = Vendor::parse("example", PROFILE, &|_| None).unwrap();
        let phone = |n: usize| format!("Example T{n} 1.{n} 80:5e:c0:d5:7d:72");
        let first = vendor.identify(&phone(1));
        assert_eq!(first.as_ref().and_then(|info| info.model.as_deref()), Some("T1"));
        assert!(vendor.identify("curl/8.0").is_none());
        assert_eq!(vendor.identify(&phone(1)), first, "the same answer from memory");
        assert!(vendor.identify("curl/8.0").is_none(), "a miss is remembered as a miss");
        for n in 0..READ_USER_AGENTS * 2 {
            let info = vendor.identify(&phone(n)).unwrap();
            assert_eq!(info.firmware, Some(format!("1.{n}")), "each User-Agent read as its own");
        }
        assert!(vendor.read.lock().unwrap().len() <= READ_USER_AGENTS);
        let long = format!("{} {}", phone(7), "x".repeat(REMEMBERED_USER_AGENT_BYTES));
        assert_eq!(vendor.identify(&long).and_then(|info| info.model), Some("T7".into()), "read, ...");
        assert!(!vendor.read.lock().unwrap().contains_key(&long), "... but not remembered");
    }

    #[test]
    fn several_user_agent_forms_are_tried_in_order_and_the_vendor_may_claim_the_rest() {
        let profile = PROFILE.replace(
            "user_agent = '^Example (?P<model>\\S+) (?P<firmware>\\S+) (?P<mac>[0-9a-f:]{17})'",
            "user_agent = ['^Example (?P<model>\\S+) (?P<firmware>\\S+)$', '^Old-(?P<model>\\S+)/(?P<firmware>\\S+)']\n\
             user_agent_vendor = '^(Example|Old-)'",
        );
        let vendor = Vendor::parse("example", &profile, &|_| None).unwrap();
        assert_eq!(vendor.identify("Example T1 1.0").unwrap().model.as_deref(), Some("T1"));
        assert_eq!(vendor.identify("Old-T2/2.0").unwrap().firmware.as_deref(), Some("2.0"));
        assert!(vendor.identify("Example one-word").is_none());
        assert!(vendor.claims("Example one-word") && !vendor.claims("Other T1 1.0"));
    }

    #[test]
    fn broken_profiles_are_refused_with_reasons() {
        let unknown = PROFILE.replace("x{n}", "x{nope}");
        assert!(Vendor::parse("example", &unknown, &|_| None).unwrap_err().to_string().contains("{nope}"));
        assert!(Vendor::parse("example", "name = 1", &|_| None).is_err());
        let bad_regex = PROFILE.replace("(?P<model>", "(?P<model");
        assert!(Vendor::parse("example", &bad_regex, &|_| None).unwrap_err().to_string().contains("user_agent"));
    }
}
