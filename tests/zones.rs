//! The zone table (`templates/zones.tsv`) against the host's tz database, and provbox's
//! POSIX-rule reading against glibc's. Reference: RFC 8536 section 3.3 (the TZif footer),
//! POSIX.1-2017 section 8.3 (the TZ rule), Debian's tzdata and glibc.

use std::path::Path;
use std::process::Command;

use provbox::locale::{PosixRule, posix_rule};

const ZONEINFO: &str = "/usr/share/zoneinfo";

fn table() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/zones.tsv")).unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (name, rule) = line.split_once('\t').expect("name<TAB>rule");
            (name.to_string(), rule.to_string())
        })
        .collect()
}

#[test]
fn every_zone_of_the_tz_database_is_listed_with_its_own_footer() {
    let zi = std::fs::read_to_string(Path::new(ZONEINFO).join("tzdata.zi"))
        .expect("Debian's tzdata is installed (apt-get install tzdata); .ci/run installs it");
    let table = table();
    let names: Vec<&str> = zi
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields[..] {
                ["Z", name, ..] => Some(name),
                ["L", _, name] => Some(name),
                _ => None,
            }
        })
        .collect();
    assert!(names.len() > 500, "tzdata.zi lists {} names", names.len());
    for name in &names {
        // The footer is the TZif file's last line, between two newlines.
        let bytes = std::fs::read(Path::new(ZONEINFO).join(name)).unwrap_or_default();
        let footer = String::from_utf8_lossy(&bytes).trim_end().rsplit('\n').next().unwrap_or("").to_string();
        let listed = table.iter().find(|(zone, _)| zone == name).map(|(_, rule)| rule.as_str());
        assert_eq!(listed, Some(footer.as_str()), "{name}: the table differs from {ZONEINFO} (run scripts/gen-zones)");
        assert_eq!(posix_rule(name), listed, "{name}: the embedded table is not the file");
    }
    assert_eq!(table.len(), names.iter().collect::<std::collections::BTreeSet<_>>().len());
}

/// glibc's offset (`date +%z`, seconds east) for TZ `rule` at Unix time `at`.
fn glibc_offset(rule: &str, at: i64) -> i32 {
    let out = Command::new("date").env("TZ", rule).args(["-d", &format!("@{at}"), "+%z"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let text = text.trim();
    let sign = if text.starts_with('-') { -1 } else { 1 };
    let hours: i32 = text[1..3].parse().unwrap();
    let minutes: i32 = text[3..5].parse().unwrap();
    sign * (hours * 3600 + minutes * 60)
}

#[test]
fn every_rule_reads_as_glibc_reads_it() {
    // 2027-01-15 and 2027-07-15, 12:00 UTC: winter and summer in one hemisphere or the other.
    let (january, july) = (1_799_928_000, 1_815_652_800);
    let table = table();
    for (name, rule) in &table {
        let parsed = PosixRule::parse(rule).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut ours = vec![parsed.offset_seconds, parsed.dst.map_or(parsed.offset_seconds, |d| d.offset_seconds)];
        let mut theirs = vec![glibc_offset(rule, january), glibc_offset(rule, july)];
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{name} {rule}");
    }
}
