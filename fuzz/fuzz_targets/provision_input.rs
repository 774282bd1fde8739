//! Everything provisioning reads from people and phones: vendor profiles with their zone and
//! language tables, User-Agents and requested file names against the stock profiles, device
//! CSV, settings, POSIX time-zone rules, URL tokens and MACs, passwords against each policy
//! level, and template edits (the format checks of rendered files, the diff against stock).
//! None of it may panic; each must come back as a value or an error.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use provbox::devices::parse_csv;
use provbox::mac::Mac;
use provbox::token::Token;
use provbox::provision::templates::{Catalog, Templates};
use provbox::provision::vendor::Vendor;
use provbox::app::config::settings_table;
use provbox::locale::{PosixRule, VendorLocale, ZoneMatching};
use provbox::policy::{self, Level};
use provbox::provision::diff;
use provbox::provision::format::Format;

fn stock() -> &'static Catalog {
    static CATALOG: OnceLock<std::sync::Arc<Catalog>> = OnceLock::new();
    CATALOG.get_or_init(|| Templates::new("/nonexistent/provbox-fuzz".into()).catalog())
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    match selector % 8 {
        0 => {
            // The same text as the profile and as the tables it names.
            if let Ok(vendor) = Vendor::parse("fuzz", &text, &|_| Some(text.to_string())) {
                let _ = vendor.identify(&text);
                let _ = vendor.claims(&text);
                let _ = vendor.match_file(&text, Some(&text));
                let _ = vendor.locale.resolve("fuzz", &text, &text);
            }
        }
        1 => {
            for vendor in stock().vendors.values() {
                let _ = vendor.identify(&text);
                if let Some(matched) = vendor.match_file(&text, Some(&text)) {
                    assert!(!matched.file.name.is_empty());
                }
                let _ = vendor.locale.resolve("fuzz", &text, &text);
            }
        }
        5 => {
            let _ = PosixRule::parse(&text);
            for matching in [ZoneMatching::Nearest, ZoneMatching::Exact, ZoneMatching::Offset] {
                if let Ok(locale) = VendorLocale::parse(&text, "x", matching, &text, "y") {
                    let _ = locale.resolve("fuzz", "Europe/Rome", &text);
                }
            }
        }
        2 => {
            let (specs, _problems) = parse_csv(&text);
            for (_, spec) in specs {
                for level in [Level::Strong, Level::Standard, Level::Pbx] {
                    let _ = spec.build(|vendor| vendor == "yealink", level);
                }
            }
        }
        6 => {
            for level in [Level::Strong, Level::Standard, Level::Pbx] {
                let _ = policy::check(level, &text);
            }
            for format in [Format::Xml, Format::KeyValueLines] {
                if let Err(error) = format.check(&text) {
                    assert!(error.line >= 1 && error.line <= text.lines().count().max(1) + 1);
                }
            }
        }
        7 => {
            // The text split in two: an override against its stock.
            let middle = (0..=text.len() / 2).rev().find(|&at| text.is_char_boundary(at)).unwrap_or(0);
            let (old, new) = text.split_at(middle);
            let _ = diff::unified(old, new, "stock", "override");
        }
        3 => {
            let table = settings_table();
            let specs: Vec<_> = table.specs().collect();
            let setting = specs[usize::from(rest.first().copied().unwrap_or(0)) % specs.len()];
            if let Ok(value) = table.validate(setting.name, &text) {
                assert!(!value.chars().any(char::is_control));
            }
        }
        _ => {
            let _ = Token::parse(&text);
            let _ = text.parse::<Mac>();
        }
    }
});
