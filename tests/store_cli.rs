//! The store commands through the real `provbox` binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use provbox::mac::Mac;
use provbox::store::Store;
use provbox::store::backend::{self, DEFAULT_CAPACITY};
use provbox::store::records::{Db, Device, Enrollment, Line, OutboxAction, OutboxItem, Txn, bounded};
use provbox::token::Token;

fn provbox(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_provbox")).arg("--data").arg(data).args(args).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn check_of_random_bytes_fails_clearly_and_leaves_the_file_alone() {
    let dir = tempfile::tempdir().unwrap();
    let image: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let path = dir.path().join("random.bin");
    std::fs::write(&path, &image).unwrap();
    for command in [&["store", "check"][..], &["serve"][..]] {
        let mut args = vec!["--store", path.to_str().unwrap()];
        args.extend(command);
        let output = provbox(dir.path(), &args);
        assert!(!output.status.success(), "{command:?} accepted random bytes");
        assert!(text(&output).contains("not a provbox store"), "{}", text(&output));
    }
    assert_eq!(std::fs::read(&path).unwrap(), image, "a foreign image must never be written");
}

#[test]
fn missing_explicit_store_is_an_error_not_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.bin");
    let output = provbox(dir.path(), &["--store", path.to_str().unwrap(), "store", "check"]);
    assert!(!output.status.success());
    assert!(!path.exists());
}

#[test]
fn dump_shows_records_as_json_with_secrets_masked_and_check_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.bin");
    {
        let flash = backend::open(&path, Some(DEFAULT_CAPACITY)).unwrap();
        let mut db = Db::new(Store::mount(flash).unwrap());
        let device = Device {
            mac: "00:15:65:aa:bb:cc".parse::<Mac>().unwrap(),
            vendor: bounded("vendor", "yealink").unwrap(),
            model: bounded("model", "T54W").unwrap(),
            lines: [Line {
                extension: bounded("ext", "201").unwrap(),
                display_name: bounded("name", "Front desk").unwrap(),
                sip_user: bounded("user", "201").unwrap(),
                sip_password: bounded("password", "Sup3r-Secret-Pass").unwrap(),
            }]
            .into_iter()
            .collect(),
            enrollment_token: Token::from_bytes([1; 16]),
            steady_token: Token::from_bytes([2; 16]),
            keys: Default::default(),
            overrides: Default::default(),
            enrollment: Enrollment::Open { first_fetch: None },
            lan_window_until: None,
            last_contact: None,
        };
        db.commit(Txn::new().put_device(&device).audit(1, "cli", "added 001565aabbcc").unwrap()).unwrap();
        db.commit(Txn::new().set_setting("phone.admin_password", "Sup3r-Admin-Pass").unwrap()).unwrap();
        // A queued registration carries the enrollment token too.
        db.commit(Txn::new().enqueue(OutboxItem {
            mac: device.mac,
            service: bounded("service", "yealink").unwrap(),
            action: OutboxAction::Register { token: Token::from_bytes([0x5a; 16]), take_over: false },
            attempts: 0,
            not_before: 0,
            last_error: Default::default(),
        }))
        .unwrap();
    }
    let output = provbox(dir.path(), &["store", "dump", "--json"]);
    assert!(output.status.success(), "{}", text(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(!stdout.contains("Sup3r-Secret-Pass"), "secret leaked: {stdout}");
    assert!(!stdout.contains("Sup3r-Admin-Pass"), "secret setting leaked: {stdout}");
    // Tokens mask themselves wherever they sit: no hex, and no array of their bytes.
    for (token, byte) in [("01".repeat(16), 1), ("02".repeat(16), 2), ("5a".repeat(16), 0x5a)] {
        assert!(!stdout.contains(&token), "token leaked as hex: {stdout}");
        let bytes = serde_json::to_string(&[byte; 16]).unwrap();
        assert!(!stdout.contains(&bytes), "token leaked as bytes: {stdout}");
    }
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["kind"], "device");
    assert_eq!(lines[0]["key"], "001565aabbcc");
    assert_eq!(lines[0]["record"]["lines"][0]["sip_password"], "***");
    assert_eq!(lines[0]["record"]["lines"][0]["display_name"], "Front desk");
    assert_eq!(lines[1]["kind"], "setting");
    assert_eq!(lines[1]["record"]["value"], "***");
    let kinds: Vec<&str> = lines.iter().map(|line| line["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"audit"), "{kinds:?}");
    let queued = lines.iter().find(|line| line["kind"] == "outbox").expect("the queued registration");
    assert_eq!(queued["record"]["action"]["Register"]["token"], "********");

    let check = provbox(dir.path(), &["store", "check"]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(text(&check).contains("records: audit 1, device 1, outbox 1, setting 1"), "{}", text(&check));
}

/// Kills the child when a failed assertion unwinds the test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_holds_the_store_lock_and_stops_cleanly_on_sigterm() {
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    let mut server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_provbox")).arg("--data").arg(&data).stdout(Stdio::piped()).spawn().unwrap(),
    );
    let mut stdout = BufReader::new(server.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("mounted"), "{line}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(data.join("store.bin")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);

    let second = provbox(&data, &["store", "check"]);
    assert!(!second.status.success());
    assert!(text(&second).contains("in use by another provbox process"), "{}", text(&second));

    let kill = Command::new("kill").arg("-TERM").arg(server.0.id().to_string()).status().unwrap();
    assert!(kill.success());
    assert!(server.0.wait().unwrap().success());
    assert!(provbox(&data, &["store", "check"]).status.success(), "lock released after shutdown");
}

#[test]
fn format_then_compact_work_on_the_default_store() {
    let dir = tempfile::tempdir().unwrap();
    let format = provbox(dir.path(), &["store", "format"]);
    assert!(format.status.success(), "{}", text(&format));
    let compact = provbox(dir.path(), &["store", "compact"]);
    assert!(compact.status.success(), "{}", text(&compact));
    assert!(text(&compact).contains("compacted"));
}

/// A store as a first start leaves it, with one device: its file, and the phones' admin
/// password provbox generated.
fn first_started_store(dir: &Path) -> (std::path::PathBuf, String) {
    let path = dir.join("store.bin");
    let flash = backend::open(&path, Some(DEFAULT_CAPACITY)).unwrap();
    let site = provbox::app::Site {
        data_dir: dir.to_path_buf(),
        default_base_url: "https://192.0.2.1:8443/".into(),
        bootstrap_url: "http://192.0.2.1:8080/".into(),
    };
    let app = provbox::app::App::new(Db::new(Store::mount(flash).unwrap()), site).unwrap();
    let spec = provbox::devices::DeviceSpec {
        mac: "805ec0d57d72".into(),
        vendor: "yealink".into(),
        model: "T54W".into(),
        lines: vec![provbox::devices::LineSpec {
            extension: "100".into(),
            name: "Ann".into(),
            sip_user: None,
            sip_password: None,
        }],
    };
    app.add_device(&spec, "test").unwrap();
    drop(app);
    let db = Db::new(Store::mount(backend::open(&path, None).unwrap()).unwrap());
    let password = db.setting("phone.admin_password").unwrap().expect("generated at first start");
    (path, password)
}

/// One flipped byte in a sector header used to drop the sector's records silently: `store
/// check` called it a power-cut notice and exited 0, and the next start made a new phone
/// admin password. Now check names the sector as damaged and exits non-zero, the records are
/// read back through their own checksums, and nothing is regenerated.
#[test]
fn a_damaged_sector_header_is_corruption_and_its_records_are_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let (path, password) = first_started_store(dir.path());
    let mut image = std::fs::read(&path).unwrap();
    assert_eq!(&image[0..4], b"PVBX", "sector 0 holds the first records");
    image[9] ^= 0x01; // the header's log position: its CRC no longer matches
    std::fs::write(&path, &image).unwrap();

    let check = provbox(dir.path(), &["--store", path.to_str().unwrap(), "store", "check"]);
    let said = text(&check);
    assert!(!check.status.success(), "damage must fail the check: {said}");
    assert!(said.contains("sector 0") && said.contains("damaged header in front of written data"), "{said}");
    let dump = provbox(dir.path(), &["--store", path.to_str().unwrap(), "store", "dump", "--json"]);
    let dumped = String::from_utf8_lossy(&dump.stdout).into_owned();
    assert!(dumped.contains("\"key\":\"805ec0d57d72\""), "the device is read back: {dumped}");

    let db = Db::new(Store::mount(backend::open(&path, None).unwrap()).unwrap());
    assert_eq!(db.setting("phone.admin_password").unwrap().as_deref(), Some(password.as_str()));
}

/// A generated secret the store lost beyond recovery is never made anew: `serve` refuses to
/// start and says how to set it, and the CLI can still set it. Here the first entry, which
/// holds the password, is damaged (one flipped payload byte fails its CRC).
#[test]
fn a_lost_phone_admin_password_is_never_regenerated() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = first_started_store(dir.path());
    // What serve's first start leaves beside the store.
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/ca.crt"), b"-----BEGIN CERTIFICATE-----\n").unwrap();
    let mut image = std::fs::read(&path).unwrap();
    image[32] ^= 0x01; // inside the first entry's payload (header 20, entry header 8)
    std::fs::write(&path, &image).unwrap();
    let db = Db::new(Store::mount(backend::open(&path, None).unwrap()).unwrap());
    assert_eq!(db.setting("phone.admin_password").unwrap(), None, "the damage took the password");
    drop(db);

    let store = path.to_str().unwrap();
    let served = provbox(
        dir.path(),
        &[
            "--store",
            store,
            "serve",
            "--https",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--sip",
            "off",
            "--mdns",
            "off",
        ],
    );
    let said = text(&served);
    assert!(!served.status.success(), "{said}");
    assert!(
        said.contains("has lost phone.admin_password") && said.contains("settings set phone.admin_password"),
        "{said}"
    );
    let db = Db::new(Store::mount(backend::open(&path, None).unwrap()).unwrap());
    assert_eq!(db.setting("phone.admin_password").unwrap(), None, "not regenerated");
    drop(db);
    let set = provbox(dir.path(), &["--store", store, "settings", "set", "phone.admin_password", "Kx7-plum9-Tango"]);
    assert!(set.status.success(), "{}", text(&set));
}
