//! Creating device records from what a technician types or imports: field validation, the
//! SIP password policy, generated passwords and tokens, and the CSV format.

use heapless::Vec as HVec;
use serde::{Deserialize, Serialize};

use crate::mac::Mac;
use crate::policy;
use crate::store::records::{Device, Enrollment, FunctionKey, KeyKind, Line, Override, bounded};
use crate::token::Token;

/// Characters of generated passwords: no look-alikes (0/O, 1/l/I).
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
/// Length of generated SIP passwords.
const GENERATED_PASSWORD_LEN: usize = 20;

/// What a technician supplies for one line of a new device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct LineSpec {
    /// Extension number.
    #[cfg_attr(test, schema(pattern = r"^[ \t\n\f\r]*[A-Za-z0-9._+*#-]{1,16}[ \t\n\f\r]*$", example = "100"))]
    pub extension: String,
    /// Display name.
    #[cfg_attr(test, schema(pattern = r"^[ \t\n\f\r]*[^\x00-\x1f\x7f-\x9f]{1,48}[ \t\n\f\r]*$", example = "Ann Lee"))]
    pub name: String,
    /// SIP auth user; the extension when absent.
    #[cfg_attr(test, schema(pattern = r"^[ \t\n\f\r]*[A-Za-z0-9._+*#-]{1,32}[ \t\n\f\r]*$"))]
    pub sip_user: Option<String>,
    /// SIP password; generated when absent.
    #[cfg_attr(test, schema(pattern = r"^[ \t\n\f\r]*[^\x00-\x1f\x7f-\x9f]{1,48}[ \t\n\f\r]*$"))]
    pub sip_password: Option<String>,
}

/// What a technician supplies for a new device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
#[cfg_attr(test, schema(example = json!({"mac": "80:5e:c0:d5:7d:72", "vendor": "yealink", "model": "T54W",
    "lines": [{"extension": "100", "name": "Ann Lee"}]})))]
pub struct DeviceSpec {
    /// MAC as typed.
    #[cfg_attr(
        test,
        schema(
            pattern = r"^[ \t\n\f\r]*([0-9A-Fa-f]{12}|[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5})[ \t\n\f\r]*$",
            example = "80:5e:c0:d5:7d:72"
        )
    )]
    pub mac: String,
    /// Vendor id, e.g. `yealink`.
    #[cfg_attr(test, schema(value_type = crate::provision::templates::VendorId))]
    pub vendor: String,
    /// Model, e.g. `T54W`.
    #[cfg_attr(test, schema(pattern = r"^[ \t\n\f\r]*[A-Za-z0-9._+ -]{1,24}[ \t\n\f\r]*$", example = "T54W"))]
    pub model: String,
    /// One to four lines.
    #[cfg_attr(test, schema(min_items = 1, max_items = 4))]
    pub lines: Vec<LineSpec>,
}

/// Why a device was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// A malformed MAC.
    #[error(transparent)]
    Mac(#[from] crate::mac::MacError),
    /// A field that breaks its rule.
    #[error("{field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A password that breaks the policy.
    #[error("SIP password for extension {extension} refused: {reason}")]
    WeakPassword {
        /// The line's extension.
        extension: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
}

/// `value` without the ASCII white space around it (what a form or a paste adds). Only
/// ASCII, so that the API's documented patterns (`[ \t\n\f\r]*` at each end) say exactly
/// what is accepted.
fn trimmed(value: &str) -> &str {
    value.trim_matches(|c: char| c.is_ascii_whitespace())
}

fn field(field: &'static str, reason: impl Into<String>) -> DeviceError {
    DeviceError::Field { field, reason: reason.into() }
}

/// Checks a free-text field: no control characters (they would inject config lines), and
/// within `max` bytes.
fn text<const N: usize>(name: &'static str, value: &str, required: bool) -> Result<heapless::String<N>, DeviceError> {
    let value = trimmed(value);
    if required && value.is_empty() {
        return Err(field(name, "is required"));
    }
    if value.chars().any(char::is_control) {
        return Err(field(name, "must not contain control characters"));
    }
    bounded(name, value).map_err(|e| field(name, e.to_string()))
}

/// Checks an identifier-like field (extension, SIP user): letters, digits and `._-+*#`.
fn identifier<const N: usize>(name: &'static str, value: &str) -> Result<heapless::String<N>, DeviceError> {
    let value = trimmed(value);
    if value.is_empty() {
        return Err(field(name, "is required"));
    }
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || "._-+*#".contains(c)) {
        return Err(field(name, format!("{value:?} may hold only letters, digits and ._-+*#")));
    }
    bounded(name, value).map_err(|e| field(name, e.to_string()))
}

/// Checks a model name as vendors print it (`T54W`, `X6U Pro`, `N510 IP PRO`): letters,
/// digits, `._-+` and single spaces between words.
fn model_name<const N: usize>(value: &str) -> Result<heapless::String<N>, DeviceError> {
    let value = trimmed(value);
    if value.is_empty() {
        return Err(field("model", "is required"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._-+ ".contains(c);
    if !value.chars().all(allowed) || value.contains("  ") {
        return Err(field("model", format!("{value:?} may hold only letters, digits, ._-+ and single spaces")));
    }
    bounded("model", value).map_err(|e| field("model", e.to_string()))
}

/// A random password of 20 characters of three classes: long, mixed and not a common one,
/// as every [`policy`] level wants (for a SIP line, [`generate_sip_password`] also keeps
/// out its extension).
pub fn generate_password() -> String {
    loop {
        let mut bytes = [0u8; GENERATED_PASSWORD_LEN];
        crate::random::fill(&mut bytes);
        // Rejection sampling keeps every character equally likely.
        let limit = 256 - 256 % PASSWORD_ALPHABET.len();
        if bytes.iter().any(|b| usize::from(*b) >= limit) {
            continue;
        }
        let password: String =
            bytes.iter().map(|b| char::from(PASSWORD_ALPHABET[usize::from(*b) % PASSWORD_ALPHABET.len()])).collect();
        let classes = [
            password.chars().any(|c| c.is_ascii_lowercase()),
            password.chars().any(|c| c.is_ascii_uppercase()),
            password.chars().any(|c| c.is_ascii_digit()),
        ];
        if classes.iter().all(|present| *present) {
            return password;
        }
    }
}

/// A generated SIP password for the line `extension` of phone `mac`, meeting every policy
/// level, the extension and MAC rules included: a short extension turns up in a random
/// password now and then, so another is drawn (a few draws suffice; 64 at most).
pub fn generate_sip_password(extension: &str, mac: &Mac) -> String {
    let mut password = generate_password();
    for _ in 0..64 {
        if policy::check_sip(policy::Level::Strong, &password, extension, mac).is_ok() {
            break;
        }
        password = generate_password();
    }
    password
}

impl DeviceSpec {
    /// Validates the spec and builds a new device with fresh tokens and open enrollment.
    /// `known_vendor` says whether a vendor id has a profile; given SIP passwords must meet
    /// `sip_policy`.
    pub fn build(&self, known_vendor: impl Fn(&str) -> bool, sip_policy: policy::Level) -> Result<Device, DeviceError> {
        let mac: Mac = trimmed(&self.mac).parse()?;
        let vendor = self.vendor.as_str();
        if !known_vendor(vendor) {
            return Err(field(
                "vendor",
                format!("{vendor:?} has no profile under templates/ (vendor ids are lowercase)"),
            ));
        }
        if self.lines.is_empty() {
            return Err(field("lines", "a device needs at least one line"));
        }
        let mut lines = HVec::new();
        for spec in &self.lines {
            let extension: heapless::String<16> = identifier("extension", &spec.extension)?;
            let sip_user = identifier("sip user", spec.sip_user.as_deref().unwrap_or(&spec.extension))?;
            let password = match &spec.sip_password {
                // The policy judges the password as it is stored: without the white space
                // around it, which would otherwise pad a short one past the length rule.
                Some(password) => {
                    let password = trimmed(password);
                    policy::check_sip(sip_policy, password, &extension, &mac)
                        .map_err(|reason| DeviceError::WeakPassword { extension: extension.to_string(), reason })?;
                    password.to_string()
                }
                None => generate_sip_password(&extension, &mac),
            };
            let line = Line {
                display_name: text("name", &spec.name, true)?,
                sip_user,
                sip_password: text("sip password", &password, true)?,
                extension,
            };
            lines.push(line).map_err(|_| field("lines", "at most 4 lines per device"))?;
        }
        Ok(Device {
            mac,
            vendor: text("vendor", vendor, true)?,
            model: model_name(&self.model)?,
            lines,
            keys: HVec::new(),
            overrides: HVec::new(),
            enrollment_token: Token::generate(),
            steady_token: Token::generate(),
            enrollment: Enrollment::Open { first_fetch: None },
            lan_window_until: None,
            last_contact: None,
        })
    }
}

/// A programmable key as typed: `line`, `blf` or `speed_dial`, with its value and label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpec {
    /// `line`, `blf` or `speed_dial`.
    pub kind: String,
    /// Line number, watched extension or number to dial.
    pub value: String,
    /// Text on the phone.
    pub label: String,
}

/// Sets key `number` (1-based, at most 16) of `device`, or clears it (and the keys after it
/// shift down) when `key` is None.
pub fn set_key(device: &mut Device, number: usize, key: Option<&KeySpec>) -> Result<(), DeviceError> {
    let index = number.checked_sub(1).ok_or_else(|| field("key number", "keys are numbered from 1"))?;
    let Some(key) = key else {
        if index < device.keys.len() {
            device.keys.remove(index);
        }
        return Ok(());
    };
    let kind = match key.kind.as_str() {
        "line" => KeyKind::Line,
        "blf" => KeyKind::Blf,
        "speed_dial" => KeyKind::SpeedDial,
        other => return Err(field("key kind", format!("{other:?} is not one of line, blf, speed_dial"))),
    };
    let function_key =
        FunctionKey { kind, value: identifier("key value", &key.value)?, label: text("key label", &key.label, false)? };
    if index < device.keys.len() {
        device.keys[index] = function_key;
    } else if index == device.keys.len() {
        device.keys.push(function_key).map_err(|_| field("key number", "at most 16 keys"))?;
    } else {
        return Err(field("key number", format!("set key {} first", device.keys.len() + 1)));
    }
    Ok(())
}

/// Sets per-device vendor key `name` to `value`, or removes it when `value` is None. Names
/// are restricted to characters safe as config keys and XML names.
pub fn set_override(device: &mut Device, name: &str, value: Option<&str>) -> Result<(), DeviceError> {
    let name = name.trim();
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !valid {
        return Err(field(
            "override name",
            format!("{name:?} must start with a letter and hold only letters, digits and ._-"),
        ));
    }
    let position = device.overrides.iter().position(|o| o.name == name);
    match (value, position) {
        (None, Some(position)) => {
            device.overrides.remove(position);
        }
        (None, None) => {}
        (Some(value), position) => {
            let entry = Override {
                name: bounded("override name", name).map_err(|e| field("override name", e.to_string()))?,
                value: text("override value", value, false)?,
            };
            match position {
                Some(position) => device.overrides[position] = entry,
                None => device.overrides.push(entry).map_err(|_| field("overrides", "at most 16 per device"))?,
            }
        }
    }
    Ok(())
}

/// The CSV columns, in order. `sip_user` and `sip_password` may be empty.
pub const CSV_COLUMNS: [&str; 7] = ["mac", "vendor", "model", "extension", "name", "sip_user", "sip_password"];

/// One bad CSV line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvProblem {
    /// 1-based line number in the file.
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

/// Characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// `cell` as an export writes it: a cell a spreadsheet would run as a formula (`=HYPERLINK(`,
/// `+4930`, `-1`, `@SUM`) gets a leading `'`, which spreadsheets show as text; so does a
/// cell that starts with `'` itself, so that [`restored`] gives back exactly what was there.
fn neutralised(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(FORMULA_STARTS) || cell.starts_with('\'') { format!("'{cell}").into() } else { cell.into() }
}

/// `cell` as an import reads it: the `'` that [`neutralised`] put in front of a formula
/// character or a `'` is taken off again, so an exported file imports to the same values.
fn restored(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(FORMULA_STARTS) || rest.starts_with('\'') => rest,
        _ => cell,
    }
}

/// Parses a device CSV: a header naming [`CSV_COLUMNS`], then one row per line; rows with the
/// same MAC add lines to one device. Returns the specs with the line each starts on, and the
/// rows that are wrong.
pub fn parse_csv(text: &str) -> (Vec<(u64, DeviceSpec)>, Vec<CsvProblem>) {
    // The csv reader counts a CRLF (spreadsheet exports, browser forms) as two line breaks;
    // plain line feeds keep the reported line numbers right.
    let text = text.replace("\r\n", "\n");
    let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::All).flexible(true).from_reader(text.as_bytes());
    let mut specs: Vec<(u64, DeviceSpec)> = Vec::new();
    // Where each phone's spec is in `specs`.
    let mut phones: std::collections::HashMap<Mac, usize> = std::collections::HashMap::new();
    let mut problems = Vec::new();
    let header: Vec<String> = match reader.headers() {
        Ok(header) => header.iter().map(str::to_lowercase).collect(),
        Err(error) => return (specs, vec![CsvProblem { line: 1, reason: error.to_string() }]),
    };
    let column = |name: &str| header.iter().position(|h| h == name);
    let required = ["mac", "vendor", "model", "extension", "name"];
    let missing: Vec<&str> = required.iter().copied().filter(|name| column(name).is_none()).collect();
    if !missing.is_empty() {
        let reason = format!("header lacks column(s) {}; expected {}", missing.join(", "), CSV_COLUMNS.join(","));
        return (specs, vec![CsvProblem { line: 1, reason }]);
    }
    for row in reader.records() {
        let row = match row {
            Ok(row) => row,
            Err(error) => {
                let line = error.position().map_or(0, |p| p.line());
                problems.push(CsvProblem { line, reason: error.to_string() });
                continue;
            }
        };
        let line = row.position().map_or(0, |p| p.line());
        let get = |name: &str| restored(column(name).and_then(|i| row.get(i)).unwrap_or("")).to_string();
        let optional = |name: &str| Some(get(name)).filter(|value| !value.is_empty());
        let line_spec = LineSpec {
            extension: get("extension"),
            name: get("name"),
            sip_user: optional("sip_user"),
            sip_password: optional("sip_password"),
        };
        let mac = get("mac");
        // Rows of one phone may spell its MAC differently; group by the parsed address (a
        // MAC that does not parse stands alone, and is reported when the device is built).
        let parsed = mac.parse::<Mac>().ok();
        match parsed.and_then(|parsed| phones.get(&parsed)).and_then(|&index| specs.get_mut(index)) {
            Some((_, spec)) => spec.lines.push(line_spec),
            None => {
                if let Some(parsed) = parsed {
                    phones.insert(parsed, specs.len());
                }
                specs.push((
                    line,
                    DeviceSpec { mac, vendor: get("vendor"), model: get("model"), lines: vec![line_spec] },
                ));
            }
        }
    }
    (specs, problems)
}

/// Writes devices as CSV in [`CSV_COLUMNS`] order, with the header; passwords only when
/// `reveal`.
pub fn write_csv<'d>(devices: impl Iterator<Item = &'d Device>, reveal: bool) -> String {
    let mut csv = csv_rows(std::iter::once(CSV_COLUMNS.map(String::from)));
    csv.push_str(&write_csv_rows(devices, reveal));
    csv
}

/// The rows of [`write_csv`] without the header: a batch of a longer export.
pub fn write_csv_rows<'d>(devices: impl Iterator<Item = &'d Device>, reveal: bool) -> String {
    let neutral = |cell: &str| neutralised(cell).into_owned();
    let rows = devices.flat_map(|device| {
        let mac = device.mac.to_string();
        device.lines.iter().map(move |line| {
            let password = if reveal { line.sip_password.as_str() } else { "" };
            let [extension, name, sip_user, password] =
                [line.extension.as_str(), &line.display_name, &line.sip_user, password].map(neutral);
            [mac.clone(), device.vendor.to_string(), device.model.to_string(), extension, name, sip_user, password]
        })
    });
    csv_rows(rows)
}

fn csv_rows(rows: impl Iterator<Item = [String; 7]>) -> String {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        // Writing to a Vec cannot fail.
        writer.write_record(&row).expect("CSV into a Vec");
    }
    // into_inner flushes into the Vec, which cannot fail.
    String::from_utf8(writer.into_inner().expect("CSV into a Vec")).expect("CSV of UTF-8 fields is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac() -> Mac {
        "805ec0d57d72".parse().unwrap()
    }

    #[test]
    fn neutralised_cells_come_back_as_they_were() {
        for cell in ["=1+1", "+4930", "-1", "@SUM(1)", "\tx", "'=x", "''=x", "'", "'t Hooft", "Ann", ""] {
            let written = neutralised(cell);
            assert!(!written.starts_with(FORMULA_STARTS), "{cell:?} is written as {written:?}");
            assert_eq!(restored(&written), cell);
        }
    }

    #[test]
    fn csv_line_numbers_hold_with_crlf() {
        let text =
            "mac,vendor,model,extension,name\r\n805ec0000001,yealink,T54W,201,Ann\r\nnot-a-mac,yealink,T54W,202,Bo\r\n";
        let (specs, _) = parse_csv(text);
        let lines: Vec<u64> = specs.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [2, 3]);
    }

    #[test]
    fn generated_passwords_pass_and_differ() {
        let a = generate_password();
        let b = generate_password();
        assert_ne!(a, b);
        assert_eq!(a.len(), GENERATED_PASSWORD_LEN);
        assert_eq!(policy::check_sip(policy::Level::Strong, &a, "100", &mac()), Ok(()));
        // A one-character extension would turn up in about half of them; never in these.
        for _ in 0..50 {
            let password = generate_sip_password("a", &mac());
            assert_eq!(policy::check_sip(policy::Level::Strong, &password, "a", &mac()), Ok(()), "{password}");
        }
    }

    #[test]
    fn csv_rows_group_by_mac_and_report_lines() {
        let text = "mac,vendor,model,extension,name\n\
                    805ec0d57d72,yealink,T54W,100,Alice\n\
                    80:5E:C0:D5:7D:72,yealink,T54W,101,Alice 2\n\
                    \"unterminated,x\n";
        let (specs, problems) = parse_csv(text);
        assert_eq!(specs[0].0, 2);
        assert_eq!(specs[0].1.lines.len(), 2, "two spellings of one MAC are one phone");
        // The broken last row is reported, either now or when its MAC fails to parse.
        assert!(problems.iter().all(|p| p.line >= 4));
        assert!(specs.len() == 2 || !problems.is_empty());
        let (_, problems) = parse_csv("mac,vendor\n1,2\n");
        assert!(problems[0].reason.contains("model"));
    }

    #[test]
    fn model_names_keep_their_words() {
        for good in ["T54W", "N510 IP PRO", "X6U Pro", "CP-8841-3PCC", "VVX_400"] {
            assert_eq!(model_name::<24>(good).unwrap().as_str(), good);
        }
        assert_eq!(model_name::<24>("  X6U Pro ").unwrap().as_str(), "X6U Pro");
        for bad in ["", "X6U  Pro", "T5\n4W", "a/b", "<x>", "a;b"] {
            assert!(model_name::<24>(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_and_overrides_are_validated() {
        let spec = DeviceSpec {
            mac: "805ec0d57d72".into(),
            vendor: "yealink".into(),
            model: "T54W".into(),
            lines: vec![LineSpec { extension: "100".into(), name: "A".into(), sip_user: None, sip_password: None }],
        };
        let mut device = spec.build(|_| true, policy::Level::Strong).unwrap();
        let blf = KeySpec { kind: "blf".into(), value: "201".into(), label: "Bob".into() };
        assert!(set_key(&mut device, 2, Some(&blf)).unwrap_err().to_string().contains("set key 1 first"));
        set_key(&mut device, 1, Some(&blf)).unwrap();
        assert_eq!(device.keys[0].kind, KeyKind::Blf);
        let bad = KeySpec { kind: "laser".into(), ..blf.clone() };
        assert!(set_key(&mut device, 1, Some(&bad)).is_err());
        set_key(&mut device, 1, None).unwrap();
        assert!(device.keys.is_empty());
        assert!(set_override(&mut device, "x\nstatic.evil", Some("1")).is_err());
        assert!(set_override(&mut device, "<tag>", Some("1")).is_err());
        set_override(&mut device, "features.dnd.enable", Some("1")).unwrap();
        set_override(&mut device, "features.dnd.enable", Some("0")).unwrap();
        assert_eq!(device.overrides.len(), 1);
        assert_eq!(device.overrides[0].value, "0");
        set_override(&mut device, "features.dnd.enable", None).unwrap();
        assert!(device.overrides.is_empty());
    }

    #[test]
    fn build_refuses_bad_fields() {
        let spec = |mac: &str, ext: &str, name: &str| DeviceSpec {
            mac: mac.into(),
            vendor: "yealink".into(),
            model: "T54W".into(),
            lines: vec![LineSpec { extension: ext.into(), name: name.into(), sip_user: None, sip_password: None }],
        };
        let known = |v: &str| v == "yealink";
        let build = |spec: DeviceSpec| spec.build(known, policy::Level::Strong);
        assert!(matches!(build(spec("zz", "100", "A")), Err(DeviceError::Mac(_))));
        assert!(build(spec("805ec0d57d72", "10 0", "A")).unwrap_err().to_string().contains("extension"));
        assert!(build(spec("805ec0d57d72", "100", "A\nstatic.x=1")).unwrap_err().to_string().contains("control"));
        let device = build(spec("805ec0d57d72", "100", "Alice")).unwrap();
        assert_eq!(device.lines[0].sip_user, "100");
        assert_ne!(device.enrollment_token, device.steady_token);
        let mut foreign = spec("805ec0d57d72", "100", "A");
        foreign.vendor = "acme".into();
        assert!(build(foreign).unwrap_err().to_string().contains("acme"));
    }
}
