//! One site setting, every vendor's notation: the site's IANA time zone and language tag,
//! turned into what a template needs.
//!
//! The zone's rule comes from the tz database (`templates/zones.tsv`, the POSIX footer of
//! each TZif file, written by `scripts/gen-zones`). From the rule come the offset and the
//! daylight-saving transitions (what Poly, Grandstream and Cisco take) and the nearest entry
//! of a vendor's own list (`templates/<vendor>/zones.tsv`: Yealink's, Snom's, Fanvil's,
//! Gigaset's). Languages map through `templates/<vendor>/languages.tsv`. Whatever a vendor
//! cannot express falls back to its profile's stated default, with a warning.

use serde::Serialize;

/// Every IANA zone and link with its POSIX rule (generated; see the module doc).
const ZONES: &str = include_str!("../templates/zones.tsv");

/// The POSIX rule of IANA zone `name` (e.g. `Europe/Rome` → `CET-1CEST,M3.5.0,M10.5.0/3`).
pub fn posix_rule(name: &str) -> Option<&'static str> {
    zone_rule(name).map(|(text, _)| text)
}

/// Zone `name`'s rule, as text and parsed. Looked up for every rendered file, so the table
/// is indexed and its rules parsed once; every row parses (tests/zones.rs).
fn zone_rule(name: &str) -> Option<(&'static str, &'static PosixRule)> {
    type Index = std::collections::HashMap<&'static str, (&'static str, PosixRule)>;
    static INDEX: std::sync::LazyLock<Index> = std::sync::LazyLock::new(|| {
        table_rows(ZONES).filter_map(|(zone, text)| Some((zone, (text, PosixRule::parse(text).ok()?)))).collect()
    });
    INDEX.get(name).map(|(text, rule)| (*text, rule))
}

/// Rows of a tab-separated table: the first two columns, skipping comments and blank lines.
fn table_rows(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter(|line| !line.trim().is_empty() && !line.starts_with('#')).filter_map(|line| {
        let mut columns = line.split('\t');
        Some((columns.next()?.trim(), columns.next()?.trim()))
    })
}

/// Why a POSIX TZ rule or a vendor table is unusable.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LocaleError(String);

/// A parsed POSIX TZ rule (POSIX.1-2017 section 8.3, with RFC 8536's extension of hours to
/// ±167 in transition times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PosixRule {
    /// Standard time's offset from UTC, in seconds east (`CET-1` → 3600).
    pub offset_seconds: i32,
    /// Daylight-saving time, if the zone has it.
    pub dst: Option<Dst>,
}

/// When and by how much a zone shifts for summer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dst {
    /// Summer time's offset from UTC, in seconds east.
    pub offset_seconds: i32,
    /// The change to summer time, in standard (local) time.
    pub start: Transition,
    /// The change back, in summer (local) time.
    pub end: Transition,
}

/// A transition `Mm.w.d/time`: day `weekday` (0 = Sunday) of week `week` (5 = last) of
/// `month`, at `seconds` after local midnight (may be negative or past a day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// 1–12.
    pub month: u8,
    /// 1–5; 5 means the last.
    pub week: u8,
    /// 0 (Sunday) – 6.
    pub weekday: u8,
    /// Seconds after local midnight.
    pub seconds: i32,
}

impl PosixRule {
    /// Parses a rule like `CET-1CEST,M3.5.0,M10.5.0/3` or `<+0330>-3:30`. Julian-day
    /// transitions (`Jn`, `n`) are refused: no zone of the tz database uses them.
    pub fn parse(text: &str) -> Result<PosixRule, LocaleError> {
        let error = |what: &str| LocaleError(format!("POSIX TZ rule {text:?}: {what}"));
        let mut rest = text;
        skip_name(&mut rest).ok_or_else(|| error("no standard-time name"))?;
        let std_west = parse_offset(&mut rest).ok_or_else(|| error("no standard offset"))?;
        let offset_seconds = -std_west;
        if rest.is_empty() {
            return Ok(PosixRule { offset_seconds, dst: None });
        }
        skip_name(&mut rest).ok_or_else(|| error("bad daylight-saving name"))?;
        let dst_offset = if rest.starts_with(',') {
            offset_seconds + 3600
        } else {
            -parse_offset(&mut rest).ok_or_else(|| error("bad daylight-saving offset"))?
        };
        let transition = |rest: &mut &str| {
            *rest = rest.strip_prefix(',')?;
            parse_transition(rest)
        };
        let start = transition(&mut rest).ok_or_else(|| error("bad start rule (only Mm.w.d is supported)"))?;
        let end = transition(&mut rest).ok_or_else(|| error("bad end rule (only Mm.w.d is supported)"))?;
        if !rest.is_empty() {
            return Err(error("trailing text"));
        }
        if dst_offset < offset_seconds {
            // Negative DST (Europe/Dublin's `IST-1GMT0,M10.5.0,M3.5.0/1`): the same clock as
            // winter time with a summer shift, which is how phones describe it. Each
            // transition time stays in the local time in effect before it.
            return Ok(PosixRule {
                offset_seconds: dst_offset,
                dst: Some(Dst { offset_seconds, start: end, end: start }),
            });
        }
        Ok(PosixRule { offset_seconds, dst: Some(Dst { offset_seconds: dst_offset, start, end }) })
    }
}

/// Skips a zone abbreviation: three or more letters, or `<...>` with signs and digits.
fn skip_name(rest: &mut &str) -> Option<()> {
    let length = if let Some(quoted) = rest.strip_prefix('<') {
        quoted.find('>')? + 2
    } else {
        rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len())
    };
    if length < 3 {
        return None;
    }
    *rest = &rest[length..];
    Some(())
}

/// `[+-]hh[:mm[:ss]]` in seconds, hours up to 167.
fn parse_offset(rest: &mut &str) -> Option<i32> {
    let (sign, unsigned) = match rest.as_bytes().first()? {
        b'-' => (-1, &rest[1..]),
        b'+' => (1, &rest[1..]),
        _ => (1, *rest),
    };
    let end = unsigned.find(|c: char| !c.is_ascii_digit() && c != ':').unwrap_or(unsigned.len());
    let mut parts = unsigned[..end].split(':');
    let hours: i32 = parts.next()?.parse().ok()?;
    let minutes: i32 = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    let secs: i32 = parts.next().map_or(Some(0), |s| s.parse().ok())?;
    if hours > 167 || minutes > 59 || secs > 59 || parts.next().is_some() {
        return None;
    }
    *rest = &unsigned[end..];
    Some(sign * (hours * 3600 + minutes * 60 + secs))
}

/// `Mm.w.d[/time]`.
fn parse_transition(rest: &mut &str) -> Option<Transition> {
    let body = rest.strip_prefix('M')?;
    let end = body.find([',', '/']).unwrap_or(body.len());
    let mut fields = body[..end].split('.').map(|field| field.parse::<u8>().ok());
    let (month, week, weekday) = (fields.next()??, fields.next()??, fields.next()??);
    if !(1..=12).contains(&month) || !(1..=5).contains(&week) || weekday > 6 || fields.next().is_some() {
        return None;
    }
    *rest = &body[end..];
    let seconds = match rest.strip_prefix('/') {
        Some(time) => {
            *rest = time;
            parse_offset(rest)?
        }
        None => 2 * 3600,
    };
    Some(Transition { month, week, weekday, seconds })
}

/// How a zone finds its entry in a vendor's list (`zone_match` in `vendor.toml`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ZoneMatching {
    /// The entry of the same rule, else one of the same offset (with a warning), else the
    /// fallback (with a warning).
    #[default]
    Nearest,
    /// Only the entry of the same rule, else the fallback without a warning: the vendor's
    /// templates then express the rule itself (Grandstream's self-defined zone).
    Exact,
    /// The entry of the same standard offset: the vendor's list holds offsets only and its
    /// phones apply daylight saving by themselves (Gigaset).
    Offset,
}

/// One entry of a vendor's own zone list.
#[derive(Debug, Clone)]
struct ZoneEntry {
    value: String,
    rule: PosixRule,
    label: String,
    /// IANA zones a reference maps to this entry, preferred among entries of equal rule.
    zones: Vec<String>,
}

/// A vendor's notation for zones and languages, from its profile (`[time]` in
/// `vendor.toml`) and the tables it names.
#[derive(Debug, Clone, Default)]
pub struct VendorLocale {
    zones: Vec<ZoneEntry>,
    zone_fallback: String,
    matching: ZoneMatching,
    languages: Vec<(String, String)>,
    language_fallback: String,
}

impl VendorLocale {
    /// A vendor's notation from its zone table (`value<TAB>POSIX rule<TAB>label[<TAB>zones]`
    /// lines, zones being IANA names a reference maps to the entry, comma-separated) and
    /// language table (`tag<TAB>value` lines), with the values used when nothing fits,
    /// matching zones as `matching` says.
    pub fn parse(
        zones: &str,
        zone_fallback: &str,
        matching: ZoneMatching,
        languages: &str,
        language_fallback: &str,
    ) -> Result<VendorLocale, LocaleError> {
        let mut entries = Vec::new();
        for (number, line) in zones.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let columns: Vec<&str> = line.split('\t').collect();
            let (value, rule, label, zones) = match columns[..] {
                [value, rule, label] => (value, rule, label, ""),
                [value, rule, label, zones] => (value, rule, label, zones),
                _ => {
                    return Err(LocaleError(format!(
                        "zones line {}: want value, POSIX rule, label and optionally zones",
                        number + 1
                    )));
                }
            };
            let rule = PosixRule::parse(rule.trim())
                .map_err(|error| LocaleError(format!("zones line {}: {error}", number + 1)))?;
            let zones = zones.split(',').map(str::trim).filter(|z| !z.is_empty()).map(String::from).collect();
            entries.push(ZoneEntry { value: value.trim().into(), rule, label: label.trim().into(), zones });
        }
        let languages = table_rows(languages).map(|(tag, value)| (tag.to_ascii_lowercase(), value.into())).collect();
        Ok(VendorLocale {
            zones: entries,
            zone_fallback: zone_fallback.into(),
            matching,
            languages,
            language_fallback: language_fallback.into(),
        })
    }

    /// The site's `zone` and `language` in this vendor's notation, with a warning for each
    /// that the vendor cannot express exactly.
    pub fn resolve(&self, vendor: &str, zone: &str, language: &str) -> Resolved {
        let mut warnings = Vec::new();
        const UTC: PosixRule = PosixRule { offset_seconds: 0, dst: None };
        let (zone, posix, rule) = match zone_rule(zone) {
            Some((posix, rule)) => (zone, posix, rule),
            None => {
                warnings.push(format!("time.zone {zone:?} is not an IANA zone; using UTC"));
                ("UTC", "UTC0", &UTC)
            }
        };
        let (vendor_zone, vendor_zone_label) = self.nearest_zone(vendor, zone, rule, &mut warnings);
        let vendor_language = self.language(vendor, language, &mut warnings);
        let time = TimeContext {
            zone: zone.into(),
            posix: posix.into(),
            offset_seconds: rule.offset_seconds,
            offset: format_offset(rule.offset_seconds, true),
            offset_hours: format_offset(rule.offset_seconds, false),
            dst: rule.dst.as_ref().map(|dst| DstContext {
                offset_seconds: dst.offset_seconds,
                saving_minutes: (dst.offset_seconds - rule.offset_seconds) / 60,
                start: dst.start.into(),
                end: dst.end.into(),
            }),
            vendor_zone,
            vendor_zone_label,
            language: language.into(),
            vendor_language,
        };
        Resolved { time, warnings }
    }

    fn nearest_zone(&self, vendor: &str, zone: &str, rule: &PosixRule, warnings: &mut Vec<String>) -> (String, String) {
        if self.zones.is_empty() {
            return (String::new(), String::new());
        }
        let city = zone.rsplit('/').next().unwrap_or(zone).replace('_', " ").to_lowercase();
        let same_offset = |entry: &&ZoneEntry| entry.rule.offset_seconds == rule.offset_seconds;
        let exact = match self.matching {
            ZoneMatching::Offset => prefer(self.zones.iter().filter(same_offset), zone, &city),
            _ => prefer(self.zones.iter().filter(|entry| entry.rule == *rule), zone, &city),
        };
        if let Some(entry) = exact {
            return (entry.value.clone(), entry.label.clone());
        }
        if self.matching == ZoneMatching::Exact {
            return (self.zone_fallback.clone(), String::new());
        }
        let same_dst = |entry: &&ZoneEntry| entry.rule.dst.is_some() == rule.dst.is_some();
        let near = prefer(self.zones.iter().filter(same_offset).filter(same_dst), zone, &city)
            .or_else(|| prefer(self.zones.iter().filter(same_offset), zone, &city));
        if let Some(entry) = near {
            warnings.push(format!(
                "{vendor}: no entry has {zone}'s daylight-saving rule; using {:?} ({}), same offset",
                entry.value, entry.label
            ));
            return (entry.value.clone(), entry.label.clone());
        }
        warnings.push(format!("{vendor}: no entry has {zone}'s offset; using the default {:?}", self.zone_fallback));
        (self.zone_fallback.clone(), String::new())
    }

    fn language(&self, vendor: &str, tag: &str, warnings: &mut Vec<String>) -> String {
        let tag = tag.to_ascii_lowercase();
        if self.languages.is_empty() {
            return String::new();
        }
        let primary = tag.split('-').next().unwrap_or(&tag);
        let found = self
            .languages
            .iter()
            .find(|(known, _)| *known == tag)
            .or_else(|| self.languages.iter().find(|(known, _)| known == primary))
            .or_else(|| self.languages.iter().find(|(known, _)| known.split('-').next() == Some(primary)));
        match found {
            Some((_, value)) => value.clone(),
            None => {
                warnings.push(format!("{vendor}: no language {tag:?}; using the default {:?}", self.language_fallback));
                self.language_fallback.clone()
            }
        }
    }
}

/// Among `candidates`: the one a reference maps `zone` to, else the one whose label names
/// `city` (lowercase), else the first.
fn prefer<'a>(candidates: impl Iterator<Item = &'a ZoneEntry>, zone: &str, city: &str) -> Option<&'a ZoneEntry> {
    let candidates: Vec<&ZoneEntry> = candidates.collect();
    let listed = candidates.iter().find(|entry| entry.zones.iter().any(|z| z == zone));
    let named = || candidates.iter().find(|entry| entry.label.to_lowercase().contains(city));
    listed.or_else(named).or(candidates.first()).copied()
}

/// `+01:00` (`colon`) or `+1` (`+5:30` when minutes are left).
fn format_offset(seconds: i32, colon: bool) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let (hours, minutes) = (seconds.abs() / 3600, seconds.abs() % 3600 / 60);
    match (colon, minutes) {
        (true, _) => format!("{sign}{hours:02}:{minutes:02}"),
        (false, 0) => format!("{sign}{hours}"),
        (false, _) => format!("{sign}{hours}:{minutes:02}"),
    }
}

/// The site's zone and language as one vendor's templates see them (`time.*`).
#[derive(Debug, Clone, Serialize)]
pub struct TimeContext {
    /// The IANA name, e.g. `Europe/Rome`.
    pub zone: String,
    /// Its POSIX rule, e.g. `CET-1CEST,M3.5.0,M10.5.0/3`.
    pub posix: String,
    /// Standard time's offset in seconds east of UTC.
    pub offset_seconds: i32,
    /// The same as `+01:00`.
    pub offset: String,
    /// The same as `+1` (`+5:30`).
    pub offset_hours: String,
    /// Daylight-saving time, if any.
    pub dst: Option<DstContext>,
    /// The nearest entry of the vendor's own zone list (empty if it has none).
    pub vendor_zone: String,
    /// That entry's label.
    pub vendor_zone_label: String,
    /// The site's language tag, e.g. `it`.
    pub language: String,
    /// The vendor's value for it (empty if the vendor has no language table).
    pub vendor_language: String,
}

/// Daylight-saving time as templates see it.
#[derive(Debug, Clone, Serialize)]
pub struct DstContext {
    /// Summer time's offset in seconds east of UTC.
    pub offset_seconds: i32,
    /// How far clocks go forward, in minutes.
    pub saving_minutes: i32,
    /// The change to summer time.
    pub start: TransitionContext,
    /// The change back.
    pub end: TransitionContext,
}

/// A transition as templates see it: `weekday` 0 = Sunday, `week` 5 = last.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct TransitionContext {
    /// 1–12.
    pub month: u8,
    /// 1–5 (5: the last).
    pub week: u8,
    /// 0 (Sunday) – 6.
    pub weekday: u8,
    /// Whole hours after local midnight (may be negative).
    pub hour: i32,
    /// Minutes past that hour.
    pub minute: i32,
}

impl From<Transition> for TransitionContext {
    fn from(t: Transition) -> TransitionContext {
        TransitionContext {
            month: t.month,
            week: t.week,
            weekday: t.weekday,
            hour: t.seconds.div_euclid(3600),
            minute: t.seconds.rem_euclid(3600) / 60,
        }
    }
}

/// A vendor's view of the site's zone and language, and what it could not express.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What templates see as `time`.
    pub time: TimeContext,
    /// One line per setting the vendor cannot express exactly.
    pub warnings: Vec<String>,
}

/// Whether `name` is an IANA zone (or link) in the table.
pub fn is_zone(name: &str) -> bool {
    posix_rule(name).is_some()
}

/// Whether `tag` is a plausible BCP 47 language tag: a 2–3 letter language, optionally a
/// region or script (`it`, `de`, `en-US`, `pt-BR`, `zh-Hans`).
pub fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let language_ok =
        parts.next().is_some_and(|p| (2..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    let rest: Vec<&str> = parts.collect();
    language_ok
        && rest.len() <= 1
        && rest.iter().all(|p| (2..=4).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_offsets_and_transitions() {
        let rome = PosixRule::parse("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        assert_eq!(rome.offset_seconds, 3600);
        let dst = rome.dst.unwrap();
        assert_eq!(dst.offset_seconds, 7200);
        assert_eq!(dst.start, Transition { month: 3, week: 5, weekday: 0, seconds: 7200 });
        assert_eq!(dst.end, Transition { month: 10, week: 5, weekday: 0, seconds: 10800 });
        let tehran = PosixRule::parse("<+0330>-3:30").unwrap();
        assert_eq!((tehran.offset_seconds, tehran.dst), (12600, None));
        let nuuk = PosixRule::parse("<-02>2<-01>,M3.5.0/-1,M10.5.0/0").unwrap();
        assert_eq!(nuuk.offset_seconds, -7200);
        assert_eq!(nuuk.dst.unwrap().start.seconds, -3600);
        let dublin = PosixRule::parse("IST-1GMT0,M10.5.0,M3.5.0/1").unwrap();
        assert_eq!(dublin, PosixRule::parse("GMT0BST,M3.5.0/1,M10.5.0").unwrap(), "Dublin keeps London's clock");
        let new_york = PosixRule::parse("EST5EDT,M3.2.0,M11.1.0").unwrap();
        assert_eq!(new_york.dst.unwrap().offset_seconds, -4 * 3600);
    }

    #[test]
    fn broken_rules_are_refused() {
        for bad in ["", "C-1", "CET", "CET-1CEST,M3.5.0", "CET-1CEST,J60,J300", "CET-1CEST,M13.5.0,M10.5.0", "CET-1x"] {
            assert!(PosixRule::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_zone_maps_to_the_exact_entry_then_the_same_offset_then_the_fallback() {
        let zones = "X0\tCET-1CEST,M3.5.0,M10.5.0/3\tAlbania(Tirane)\n\
                     X1\tCET-1CEST,M3.5.0,M10.5.0/3\tGermany(Berlin)\tEurope/Berlin,Europe/Vienna\n\
                     X2\tCET-1CEST,M3.5.0,M10.5.0/3\tItaly(Rome)\n\
                     X3\tCET-1\tCentral Africa\n\
                     X4\tEET-2EEST,M3.5.0/3,M10.5.0/4\tGreece(Athens)\n";
        let locale =
            VendorLocale::parse(zones, "GMT", ZoneMatching::Nearest, "it\tItalian\nde-de\tGerman\n", "English")
                .unwrap();
        let rome = locale.resolve("v", "Europe/Rome", "it");
        assert_eq!((rome.time.vendor_zone.as_str(), rome.time.vendor_language.as_str()), ("X2", "Italian"));
        assert!(rome.warnings.is_empty(), "{:?}", rome.warnings);
        let berlin = locale.resolve("v", "Europe/Berlin", "de-AT");
        assert_eq!((berlin.time.vendor_zone.as_str(), berlin.time.vendor_language.as_str()), ("X1", "German"));
        assert_eq!(locale.resolve("v", "Europe/Vienna", "de").time.vendor_zone, "X1", "listed");
        assert_eq!(locale.resolve("v", "Europe/Paris", "de").time.vendor_zone, "X0", "first of equal rule");
        let algiers = locale.resolve("v", "Africa/Algiers", "fr");
        assert_eq!(algiers.time.vendor_zone, "X3");
        assert_eq!(algiers.time.vendor_language, "English");
        assert_eq!(algiers.warnings.len(), 1, "{:?}", algiers.warnings);
        let tokyo = locale.resolve("v", "Asia/Tokyo", "it");
        assert_eq!(tokyo.time.vendor_zone, "GMT");
        assert!(tokyo.warnings[0].contains("Asia/Tokyo"));
        let exact = VendorLocale::parse(zones, "custom", ZoneMatching::Exact, "", "").unwrap();
        // Chisinau's DST starts an hour earlier than Athens's.
        assert_eq!(locale.resolve("v", "Europe/Chisinau", "it").time.vendor_zone, "X4", "near");
        let chisinau = exact.resolve("v", "Europe/Chisinau", "it");
        assert_eq!(chisinau.time.vendor_zone, "custom", "no near entry in exact mode");
        assert!(chisinau.warnings.is_empty(), "the fallback is exact: {:?}", chisinau.warnings);
        assert_eq!(exact.resolve("v", "Europe/Rome", "it").time.vendor_zone, "X2");
        let offsets = VendorLocale::parse("0x1b\t<+01>-1\tGMT+1\n", "0x1a", ZoneMatching::Offset, "", "").unwrap();
        let rome = offsets.resolve("v", "Europe/Rome", "it");
        assert_eq!(rome.time.vendor_zone, "0x1b", "offset lists match by standard offset");
        assert!(rome.warnings.is_empty(), "{:?}", rome.warnings);
        let tokyo = offsets.resolve("v", "Asia/Tokyo", "it");
        assert_eq!(tokyo.time.vendor_zone, "0x1a");
        assert_eq!(tokyo.warnings.len(), 1, "no +09:00 entry: {:?}", tokyo.warnings);
        let nowhere = locale.resolve("v", "Mars/Olympus", "it");
        assert_eq!((nowhere.time.zone.as_str(), nowhere.time.offset.as_str()), ("UTC", "+00:00"));
    }

    #[test]
    fn offsets_read_both_ways() {
        let india = VendorLocale::default().resolve("v", "Asia/Kolkata", "en");
        assert_eq!((india.time.offset.as_str(), india.time.offset_hours.as_str()), ("+05:30", "+5:30"));
        let new_york = VendorLocale::default().resolve("v", "America/New_York", "en");
        assert_eq!((new_york.time.offset.as_str(), new_york.time.offset_hours.as_str()), ("-05:00", "-5"));
        assert_eq!(new_york.time.dst.unwrap().start.hour, 2);
    }

    #[test]
    fn tags_and_zones_are_checked() {
        assert!(is_zone("Europe/Rome") && is_zone("UTC") && !is_zone("Europe/Nowhere") && !is_zone(""));
        for good in ["it", "de", "en-US", "pt-BR", "zh-Hans"] {
            assert!(is_language_tag(good), "{good}");
        }
        for bad in ["", "English", "e", "en_US", "en-US-x-y", "de-"] {
            assert!(!is_language_tag(bad), "{bad}");
        }
    }
}
