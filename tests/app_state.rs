//! The appliance state without a server: buffered contacts and grace-period expiry.

use provbox::app::{App, FetchChange, Site};
use provbox::devices::{DeviceSpec, LineSpec};
use provbox::store::Store;
use provbox::store::backend;
use provbox::store::records::{Contact, Db, Enrollment};

fn app(dir: &std::path::Path) -> App {
    let flash = backend::open(&dir.join("store.bin"), Some(1 << 20)).unwrap();
    let db = Db::new(Store::format(flash).unwrap());
    App::new(
        db,
        Site {
            data_dir: dir.to_path_buf(),
            default_base_url: "https://192.0.2.1:8443/".into(),
            bootstrap_url: "http://192.0.2.1:8080/".into(),
        },
    )
    .unwrap()
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
    let no_change = FetchChange { enrollment: None, close_window: false };
    for i in 0..count {
        let device = app.device(&spec(i).mac.parse().unwrap()).unwrap();
        app.record_fetch(&device, &no_change, Some(contact.clone())).unwrap();
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
    App::new(
        db,
        Site {
            data_dir: dir.to_path_buf(),
            default_base_url: "https://192.0.2.1:8443/".into(),
            bootstrap_url: "http://192.0.2.1:8080/".into(),
        },
    )
    .unwrap()
}

#[test]
fn grace_periods_expire_in_the_background_flush() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    app.set_setting("provision.enroll_grace_minutes", "0", "test").unwrap();
    let mac = spec(1).mac.parse().unwrap();
    app.add_device(&spec(1), "test").unwrap();
    let device = app.device(&mac).unwrap();
    let first_fetch = Enrollment::Open { first_fetch: Some(1) };
    let change = FetchChange { enrollment: Some((device.enrollment, first_fetch)), close_window: false };
    app.record_fetch(&device, &change, None).unwrap();
    assert_eq!(app.flush_contacts().unwrap(), 1);
    assert!(matches!(app.device(&mac).unwrap().enrollment, Enrollment::Locked { .. }));
    assert_eq!(app.flush_contacts().unwrap(), 0, "nothing left to do");
}

#[test]
fn a_fetch_seen_before_an_unlock_or_removal_does_not_undo_it() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let mac = spec(2).mac.parse().unwrap();
    app.add_device(&spec(2), "test").unwrap();
    let seen_by_request = app.device(&mac).unwrap();
    let steady_fetch = FetchChange {
        enrollment: Some((seen_by_request.enrollment, Enrollment::Locked { since: 5 })),
        close_window: true,
    };
    // A technician unlocks while the request renders: the stale lock must not land.
    app.unlock(&mac, "test").unwrap();
    let unlocked_token = app.device(&mac).unwrap().enrollment_token;
    app.record_fetch(&seen_by_request, &steady_fetch, None).unwrap();
    let after = app.device(&mac).unwrap();
    assert_eq!(after.enrollment, Enrollment::Open { first_fetch: None });
    assert_eq!(after.enrollment_token, unlocked_token);

    // A removal is not undone either.
    app.remove_device(&mac, "test").unwrap();
    app.record_fetch(&seen_by_request, &steady_fetch, None).unwrap();
    assert!(app.device(&mac).is_err(), "the device stays removed");
}

#[test]
fn a_steady_fetch_closes_the_lan_window_even_when_enrollment_is_already_locked() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let mac = spec(3).mac.parse().unwrap();
    app.add_device(&spec(3), "test").unwrap();
    let device = app.device(&mac).unwrap();
    let lock =
        FetchChange { enrollment: Some((device.enrollment, Enrollment::Locked { since: 5 })), close_window: true };
    app.record_fetch(&device, &lock, None).unwrap();
    app.open_lan_window(&mac, 10, "test").unwrap();
    let locked = app.device(&mac).unwrap();
    assert!(locked.lan_window_until.is_some());
    app.record_fetch(&locked, &FetchChange { enrollment: None, close_window: true }, None).unwrap();
    app.flush_contacts().unwrap();
    assert_eq!(app.device(&mac).unwrap().lan_window_until, None);
}
