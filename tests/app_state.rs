//! The appliance state without a server: buffered contacts and grace-period expiry.

use provbox::app::{App, Site};
use provbox::devices::{DeviceSpec, LineSpec};
use provbox::store::Store;
use provbox::store::backend;
use provbox::store::records::{Contact, Db, Enrollment};

fn app(dir: &std::path::Path) -> App {
    let flash = backend::open(&dir.join("store.bin"), Some(1 << 20)).unwrap();
    let db = Db::new(Store::format(flash).unwrap());
    App::new(db, Site { data_dir: dir.to_path_buf(), default_base_url: "https://192.0.2.1:8443/".into() }).unwrap()
}

fn spec(i: usize) -> DeviceSpec {
    DeviceSpec {
        mac: format!("0015650000{i:02x}"),
        vendor: "yealink".into(),
        model: "T54W".into(),
        lines: vec![LineSpec {
            extension: format!("{}", 100 + i),
            name: format!("Desk {i}"),
            sip_user: None,
            sip_password: None,
        }],
    }
}

#[test]
fn buffered_contacts_of_many_phones_are_all_written() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let count = 60; // far more than one store transaction holds
    for i in 0..count {
        app.add_device(&spec(i), "test").unwrap();
    }
    let contact = Contact {
        at: 1_800_000_000,
        ip: "192.0.2.50".parse().unwrap(),
        user_agent: "Yealink SIP-T54W".try_into().unwrap(),
        firmware: "96.86.0.15".try_into().unwrap(),
        config_hash: [7; 8],
    };
    for i in 0..count {
        app.note_contact(spec(i).mac.parse().unwrap(), contact.clone());
    }
    assert_eq!(app.flush_contacts().unwrap(), count);
    drop(app);
    let app = self::app_reopened(dir.path());
    for i in 0..count {
        let device = app.device(&spec(i).mac.parse().unwrap()).unwrap();
        assert_eq!(device.last_contact.as_ref(), Some(&contact), "device {i}");
    }
}

fn app_reopened(dir: &std::path::Path) -> App {
    let flash = backend::open(&dir.join("store.bin"), None).unwrap();
    let db = Db::new(Store::mount(flash).unwrap());
    App::new(db, Site { data_dir: dir.to_path_buf(), default_base_url: "https://192.0.2.1:8443/".into() }).unwrap()
}

#[test]
fn grace_periods_expire_in_the_background_flush() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    app.set_setting("provision.enroll_grace_minutes", "0", "test").unwrap();
    let mac = spec(1).mac.parse().unwrap();
    app.add_device(&spec(1), "test").unwrap();
    let mut device = app.device(&mac).unwrap();
    device.enrollment = Enrollment::Open { first_fetch: Some(1) };
    app.commit_enrollment(&device).unwrap();
    assert_eq!(app.flush_contacts().unwrap(), 1);
    assert!(matches!(app.device(&mac).unwrap().enrollment, Enrollment::Locked { .. }));
    assert_eq!(app.flush_contacts().unwrap(), 0, "nothing left to do");
}
