//! One site setting, every vendor's notation: `provbox render` for an Italian site
//! (`Europe/Rome`, `it`) against a running appliance, with a warning for what a vendor cannot
//! express, and the settings refusing what is not a zone or a language tag.

mod fleet;

use fleet::{Appliance, cli, cli_ok};

/// (MAC, vendor, model, file, what the file must say for Rome and Italian). The values are
/// those of tests/reference/*.tsv, which cite where each comes from.
const ITALIAN: &[(&str, &str, &str, &str, &[&str])] = &[
    (
        "805ec0d57d72",
        "yealink",
        "T54W",
        "805ec0d57d72.cfg",
        &["local_time.time_zone = +1", "local_time.time_zone_name = Italy(Rome)", "lang.gui = Italian"],
    ),
    (
        "000413922d24",
        "snom",
        "D785",
        "snomD785-000413922D24.htm",
        &["<timezone perm=\"\">ITA+1</timezone>", "<language perm=\"\">Italiano</language>"],
    ),
    (
        "0004f2a1b2c3",
        "polycom",
        "VVX400",
        "0004f2a1b2c3-user.cfg",
        &["tcpIpApp.sntp.gmtOffset=\"3600\"", "lcl.ml.lang=\"Italian_Italy\""],
    ),
    (
        "000b828aa872",
        "grandstream",
        "GXP2135",
        "cfg000b828aa872.xml",
        &["<P64>CET-1CEST-2,M3.5.0/02:00:00,M10.5.0/03:00:00</P64>", "<P1362>it</P1362>"],
    ),
    ("0c383e07e16c", "fanvil", "X4U", "0c383e07e16c.cfg", &["Time Zone Name     :UTC+1", "Default Language   :7"]),
    (
        "00562b043615",
        "cisco",
        "CP-8841-3PCC",
        "00562b043615.xml",
        &["<Time_Zone ua=\"na\">GMT+01:00</Time_Zone>", "start=3/-1/7/2:0:0;end=10/-1/7/3:0:0"],
    ),
];

#[test]
fn render_shows_each_vendors_notation_and_warns_about_what_it_cannot_say() {
    let appliance = Appliance::start();
    cli_ok(&appliance.data, &["settings", "set", "time.zone", "Europe/Rome"]);
    cli_ok(&appliance.data, &["settings", "set", "time.language", "it"]);
    for (mac, vendor, model, file, expected) in ITALIAN {
        appliance.add(mac, vendor, model);
        let (ok, out, err) = cli(&appliance.data, &["render", mac, file]);
        assert!(ok, "{vendor}: {err}");
        for text in *expected {
            assert!(out.contains(text), "{vendor} {file} lacks {text:?}:\n{out}");
        }
        // Only Cisco cannot say Italian (its dictionaries are not on the appliance).
        let warned = err.contains("provbox: warning: Cisco MPP: no language \"it\"");
        assert_eq!(warned, *vendor == "cisco", "{vendor}: {err}");
        if !warned {
            assert!(err.is_empty(), "{vendor}: {err}");
        }
    }
    // A zone Snom's list has no entry for: the nearest by offset, said out loud.
    cli_ok(&appliance.data, &["settings", "set", "time.zone", "Asia/Kathmandu"]);
    let (ok, out, err) = cli(&appliance.data, &["render", "000413922d24", "snomD785-000413922D24.htm"]);
    assert!(ok && out.contains("<timezone perm=\"\">"), "{err}");
    assert!(err.contains("warning: Snom: no entry has Asia/Kathmandu's offset"), "{err}");
}

#[test]
fn zones_and_languages_are_checked_when_set() {
    let appliance = Appliance::start();
    for (name, value, reason) in [
        ("time.zone", "Europe/Atlantis", "is not an IANA time zone"),
        ("time.zone", "CET-1CEST", "is not an IANA time zone"),
        ("time.language", "Italian", "is not a language tag"),
        ("time.language", "it_IT", "is not a language tag"),
    ] {
        let (ok, _, err) = cli(&appliance.data, &["settings", "set", name, value]);
        assert!(!ok && err.contains(reason), "{name} = {value}: {err}");
    }
    for (name, value) in [("time.zone", "America/Argentina/Buenos_Aires"), ("time.language", "pt-BR")] {
        cli_ok(&appliance.data, &["settings", "set", name, value]);
    }
}
