//! One fixed site and its phones, rendered in-process: the golden files and the parameter
//! references both check what these get.

use heapless::Vec as HVec;
use provbox::app::{App, Site};
use provbox::store::Store;
use provbox::store::backend;
use provbox::store::records::{Db, Device, Enrollment, FunctionKey, KeyKind, Line, Override, Txn, bounded};
use provbox::token::Token;

/// The sample phones: (MAC, vendor, model).
pub const PHONES: &[(&str, &str, &str)] = &[
    ("805ec0d57d72", "yealink", "T54W"),
    ("000413922d24", "snom", "D785"),
    ("0004f2a1b2c3", "polycom", "VVX400"),
    ("000b828aa872", "grandstream", "GXP2135"),
    ("0c383e07e16c", "fanvil", "X4U"),
    ("7c2f804df9a9", "gigaset", "N510 IP PRO"),
];

/// Further models whose files differ from their vendor's sample: (MAC, vendor, model).
pub const FAMILIES: &[(&str, &str, &str)] =
    &[("0c383e07e16d", "fanvil", "X3S"), ("7c2f80ca21e4", "gigaset", "N720 DM PRO")];

/// The vendor added with files only (templates/cisco): (MAC, vendor, model).
pub const ADDED: &[(&str, &str, &str)] = &[("00562b043615", "cisco", "CP-8841-3PCC")];

/// The site every sample renders for: TLS to pbx.example.com:5061, SRTP, STUN, TURN, ICE.
pub const SITE: &[(&str, &str)] = &[
    ("sip.server", "pbx.example.com"),
    ("sip.transport", "tls"),
    ("sip.port", "5061"),
    ("sip.srtp", "required"),
    ("nat.stun.server", "stun.example.com"),
    ("nat.turn.server", "turn.example.com"),
    ("nat.turn.username", "turnuser"),
    ("nat.turn.password", "TurnPassw0rd!"),
    ("nat.ice", "on"),
    ("provision.base_url", "https://provbox.example:8443/"),
    ("phone.admin_password", "Adm1nPassw0rd!"),
];

/// A phone with two lines (the first display name needs escaping), a line key, a BLF key,
/// a speed dial and one override.
pub fn device(mac: &str, vendor: &str, model: &str) -> Device {
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
    keys.push(FunctionKey {
        kind: KeyKind::SpeedDial,
        value: bounded("v", "5551234").unwrap(),
        label: bounded("l", "Front desk").unwrap(),
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

/// An appliance in `dir` with [`SITE`] plus `extra` settings and every phone of `phones`.
pub fn app(dir: &std::path::Path, extra: &[(&str, &str)], phones: &[(&str, &str, &str)]) -> App {
    // The CA some formats carry inline, created as the appliance creates it.
    provbox::pki::Pki::ensure(dir, provbox::pki::KeyType::EcdsaP256, &["localhost".into()], &[]).unwrap();
    let flash = backend::open(&dir.join("store.bin"), Some(256 * 1024)).unwrap();
    let mut db = Db::new(Store::format(flash).unwrap());
    let mut txn = Txn::new();
    for (name, value) in SITE.iter().chain(extra) {
        txn.set_setting(name, value).unwrap();
    }
    for (mac, vendor, model) in phones {
        txn.put_device(&device(mac, vendor, model));
    }
    db.commit(&txn).unwrap();
    App::new(
        db,
        Site {
            data_dir: dir.to_path_buf(),
            default_base_url: "https://192.0.2.10:8443/".into(),
            bootstrap_url: "http://192.0.2.10:8080/".into(),
        },
    )
    .unwrap()
}
