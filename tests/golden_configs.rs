//! Golden files: every vendor's files rendered for one fixed device and site, compared byte
//! for byte with `tests/golden/<vendor>/`. After a deliberate template change, regenerate
//! with `UPDATE_GOLDEN=1 cargo test --test golden_configs` and review the diff.

use std::path::Path;

use heapless::Vec as HVec;
use provbox::app::{App, Site};
use provbox::store::Store;
use provbox::store::backend;
use provbox::store::records::{Db, Device, Enrollment, FunctionKey, KeyKind, Line, Override, Txn, bounded};
use provbox::token::Token;

fn device(mac: &str, vendor: &str, model: &str) -> Device {
    let line = |ext: &str, name: &str, password: &str| Line {
        extension: bounded("ext", ext).unwrap(),
        display_name: bounded("name", name).unwrap(),
        sip_user: bounded("user", ext).unwrap(),
        sip_password: bounded("password", password).unwrap(),
    };
    let mut lines = HVec::new();
    lines.push(line("201", "Alice & Co <Sales>", "Gold3nPassw0rd-201")).unwrap();
    lines.push(line("202", "Alice 2", "Gold3nPassw0rd-202")).unwrap();
    let mut keys = HVec::new();
    keys.push(FunctionKey {
        kind: KeyKind::Line,
        value: bounded("v", "1").unwrap(),
        label: bounded("l", "Line 1").unwrap(),
    })
    .unwrap();
    keys.push(FunctionKey {
        kind: KeyKind::Blf,
        value: bounded("v", "203").unwrap(),
        label: bounded("l", "Bob").unwrap(),
    })
    .unwrap();
    let mut overrides = HVec::new();
    overrides
        .push(Override { name: bounded("n", "features.example").unwrap(), value: bounded("v", "1").unwrap() })
        .unwrap();
    Device {
        mac: mac.parse().unwrap(),
        vendor: bounded("vendor", vendor).unwrap(),
        model: bounded("model", model).unwrap(),
        lines,
        keys,
        overrides,
        enrollment_token: Token::from_bytes([0x11; 16]),
        steady_token: Token::from_bytes([0x22; 16]),
        enrollment: Enrollment::Open { first_fetch: None },
        lan_window_until: None,
        last_contact: None,
    }
}

const CASES: &[(&str, &str, &str, &[&str])] = &[
    ("805ec0d57d72", "yealink", "T54W", &["805ec0d57d72.cfg", "y000000000096.cfg", "phonebook.xml"]),
    ("000413922d24", "snom", "D785", &["snomD785-000413922D24.htm", "snomD785.htm"]),
    ("0004f2a1b2c3", "polycom", "VVX400", &["0004f2a1b2c3-user.cfg", "000000000000.cfg"]),
    ("000b828aa872", "grandstream", "GXP2135", &["cfg000b828aa872.xml"]),
    ("0c383e07e16c", "fanvil", "X4U", &["0c383e07e16c.cfg"]),
    ("7c2f804df9a9", "gigaset", "N510", &["7C2F804DF9A9.xml"]),
];

#[test]
fn rendered_configs_match_the_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    let flash = backend::open(&dir.path().join("store.bin"), Some(256 * 1024)).unwrap();
    let mut db = Db::new(Store::format(flash).unwrap());
    let mut txn = Txn::new();
    for (name, value) in [
        ("sip.server", "pbx.example.com"),
        ("sip.transport", "tls"),
        ("sip.port", "5061"),
        ("sip.srtp", "required"),
        ("nat.stun.server", "stun.example.com"),
        ("nat.turn.server", "turn.example.com"),
        ("nat.turn.username", "turnuser"),
        ("nat.turn.password", "TurnPassw0rd!"),
        ("nat.ice", "on"),
        ("time.zone", "Europe/Berlin"),
        ("provision.base_url", "https://provbox.example:8443/"),
        ("phone.admin_password", "Adm1nPassw0rd!"),
    ] {
        txn.set_setting(name, value).unwrap();
    }
    for (mac, vendor, model, _) in CASES {
        txn.put_device(&device(mac, vendor, model));
    }
    db.commit(&txn).unwrap();
    let app = App::new(
        db,
        Site {
            data_dir: dir.path().to_path_buf(),
            default_base_url: "https://unused/".into(),
            bootstrap_url: "http://unused/".into(),
        },
    )
    .unwrap();

    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for (mac, vendor, _, files) in CASES {
        for file in *files {
            let rendered = app.render(&mac.parse().unwrap(), file, true).unwrap();
            let path = golden.join(vendor).join(file);
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &rendered).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(rendered.as_str()) {
                mismatches.push(format!("{}:\n{rendered}", path.display()));
            }
            let masked = app.render(&mac.parse().unwrap(), file, false).unwrap();
            for secret in ["Gold3nPassw0rd-201", "Adm1nPassw0rd!", "TurnPassw0rd!", "2222222222222222"] {
                assert!(!masked.contains(secret), "{vendor}/{file} shows {secret} unmasked");
            }
        }
    }
    assert!(mismatches.is_empty(), "differs from golden (UPDATE_GOLDEN=1 to accept):\n{}", mismatches.join("\n"));
}
