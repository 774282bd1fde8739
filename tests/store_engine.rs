//! Behaviour of the store engine and its typed records on simulated flash.

use provbox::mac::Mac;
use provbox::store::backend::sim::{Cut, SimFlash};
use provbox::store::check::check;
use provbox::store::format::{FORMAT_VERSION, Geometry, SectorHeader};
use provbox::store::records::{
    AUDIT_CAPACITY, Contact, Db, DbError, Device, Enrollment, Line, MAX_DEVICES, OutboxAction, OutboxItem, Record,
    RecordError, Txn, bounded,
};
use provbox::store::{Op, Store, StoreError};
use provbox::token::Token;

/// A 1 MiB store in the appliance's 4 KiB sectors (a quarter of the default file).
type Flash = SimFlash<4096>;
const SECTORS: usize = 256;

/// A device as the appliance holds it after the phone's first fetch.
fn contacted_device(n: u32) -> Device {
    Device {
        last_contact: Some(Contact {
            at: 1_763_900_000,
            ip: "192.0.2.10".parse().unwrap(),
            user_agent: bounded("ua", "Yealink SIP-T54W 96.86.0.70 00:15:65:aa:bb:cc").unwrap(),
            firmware: bounded("firmware", "96.86.0.70").unwrap(),
            config_hash: [9; 8],
        }),
        ..device(n, 2)
    }
}

fn device(n: u32, lines: usize) -> Device {
    let mac = Mac([0x00, 0x15, 0x65, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
    let line = |i: usize| Line {
        extension: bounded("extension", &format!("{}", 1000 + n as usize * 4 + i)).unwrap(),
        display_name: bounded("name", &format!("Reception desk {n} line {i}")).unwrap(),
        sip_user: bounded("user", &format!("sip{n}x{i}")).unwrap(),
        sip_password: bounded("password", "Kq7#mZp2vL9!xR4wT8eY").unwrap(),
    };
    Device {
        mac,
        vendor: bounded("vendor", "yealink").unwrap(),
        model: bounded("model", "T54W").unwrap(),
        lines: (0..lines).map(line).collect(),
        enrollment_token: Token::from_bytes([n as u8; 16]),
        steady_token: Token::from_bytes([!n as u8; 16]),
        keys: Default::default(),
        overrides: Default::default(),
        enrollment: Enrollment::Open { first_fetch: None },
        lan_window_until: None,
        last_contact: None,
    }
}

#[test]
fn acknowledged_writes_survive_remount_and_reads_never_touch_flash() {
    let mut store = Store::mount(Flash::new(SECTORS)).unwrap();
    for i in 0..500u32 {
        store.put(format!("key{i}").as_bytes(), format!("value {i}").as_bytes()).unwrap();
    }
    store.delete(b"key7").unwrap();
    let store = Store::mount(store.into_flash()).unwrap();
    let reads_after_mount: u64 = store.flash().counters().iter().map(|c| c.reads).sum();
    for i in 0..500u32 {
        let expected = (i != 7).then(|| format!("value {i}").into_bytes());
        assert_eq!(store.get(format!("key{i}").as_bytes()).map(<[u8]>::to_vec), expected);
    }
    let reads_after_gets: u64 = store.flash().counters().iter().map(|c| c.reads).sum();
    assert_eq!(reads_after_gets, reads_after_mount, "gets must be served from RAM");
    assert_eq!(store.len(), 499);
}

#[test]
fn mount_never_writes_or_erases() {
    let mut store = Store::mount(Flash::new(16)).unwrap();
    for i in 0..200u32 {
        store.put(b"hot", &i.to_le_bytes()).unwrap();
    }
    let flash = store.into_flash();
    let before = flash.ops_done();
    let store = Store::mount(flash).unwrap();
    assert_eq!(store.flash().ops_done(), before);
}

#[test]
fn full_store_returns_store_full_keeps_every_record_and_still_accepts_deletes() {
    let mut store = Store::mount(SimFlash::<1024>::new(8)).unwrap();
    let mut acknowledged = Vec::new();
    let error = loop {
        let key = format!("key{:04}", acknowledged.len());
        match store.put(key.as_bytes(), &[0xA5; 100]) {
            Ok(()) => acknowledged.push(key),
            Err(error) => break error,
        }
        assert!(acknowledged.len() < 1000, "an 8 KiB store cannot take 100 KB");
    };
    assert!(matches!(error, StoreError::Full { .. }), "{error:?}");
    assert!(acknowledged.len() > 30, "only {} records fit", acknowledged.len());
    let mut store = Store::mount(store.into_flash()).unwrap();
    for key in &acknowledged {
        assert_eq!(store.get(key.as_bytes()), Some(&[0xA5; 100][..]), "{key} lost after StoreFull");
    }
    for key in &acknowledged[..10] {
        store.delete(key.as_bytes()).unwrap();
    }
    store.put(b"after-deletes", &[1; 100]).unwrap();
    assert_eq!(store.get(b"after-deletes"), Some(&[1; 100][..]));
}

#[test]
fn erase_counts_stay_level_under_hot_key_updates_with_static_data() {
    let mut store = Store::mount(SimFlash::<1024>::new(32)).unwrap();
    for i in 0..60u32 {
        store.put(format!("static{i}").as_bytes(), &[7; 120]).unwrap();
    }
    for i in 0..20_000u32 {
        store.put(format!("hot{}", i % 4).as_bytes(), &i.to_le_bytes().repeat(8)).unwrap();
    }
    let erases: Vec<u64> = store.flash().counters().iter().map(|c| c.erases).collect();
    let (min, max) = (erases.iter().min().unwrap(), erases.iter().max().unwrap());
    assert!(*min >= 30, "every sector takes part: {erases:?}");
    assert!(max - min <= 2, "erase spread {min}..={max}: {erases:?}");
    for i in 0..60u32 {
        assert_eq!(store.get(format!("static{i}").as_bytes()), Some(&[7; 120][..]));
    }
}

#[test]
fn foreign_image_is_refused_and_left_untouched() {
    let image: Vec<u8> = (0..16 * 4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let flash = Flash::from_image(image.clone());
    match Store::mount(flash.clone()) {
        Err(StoreError::NotRecognised(why)) => assert!(why.contains("sector 0"), "{why}"),
        other => panic!("expected NotRecognised, got {:?}", other.map(|s| s.len())),
    }
    assert!(check(flash.clone()).is_err());
    assert_eq!(flash.image(), &image[..]);
}

#[test]
fn store_of_a_newer_format_version_is_refused() {
    let geometry = Geometry { sector_size: 4096, sector_count: 16, align: 4 };
    let mut image = vec![0xFF; 16 * 4096];
    let mut header = SectorHeader { seq: 0, erase_count: 1 }.encode(&geometry);
    header[4..6].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let crc = crc32fast::hash(&header[0..16]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    image[4096..4096 + header.len()].copy_from_slice(&header);
    let error = Store::mount(Flash::from_image(image)).err().unwrap();
    assert_eq!(error, StoreError::UnknownVersion { sector: 1, version: FORMAT_VERSION + 1 });
    assert!(error.to_string().contains("upgrade provbox"));
}

#[test]
fn torn_first_header_on_blank_flash_still_mounts() {
    let mut flash = Flash::new(16);
    flash.arm_cut(1, Cut::AfterByte(9)); // op 0 erases, op 1 writes the header
    let mut store = Store::mount(flash).unwrap();
    assert!(store.put(b"first", b"value").is_err());
    let mut flash = store.into_flash();
    flash.power_cycle();
    let mut store = Store::mount(flash).unwrap();
    assert!(store.is_empty());
    store.put(b"first", b"value").unwrap();
    assert_eq!(Store::mount(store.into_flash()).unwrap().get(b"first"), Some(&b"value"[..]));
}

#[test]
fn damaged_entry_is_reported_with_sector_and_offset_and_earlier_records_survive() {
    let mut store = Store::mount(Flash::new(16)).unwrap();
    for i in 0..6u32 {
        store.put(format!("key{i}").as_bytes(), &[i as u8; 40]).unwrap();
    }
    let mut image = store.into_flash().image().to_vec();
    let sector = (0..16).find(|s| image[s * 4096] == b'P').unwrap();
    // The third entry: sector header (20) + two entries of 8 header + 48 payload bytes.
    let third = sector * 4096 + 20 + 2 * 56;
    image[third + 12] ^= 0x40;
    let report = check(Flash::from_image(image.clone())).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.corruption[0].location, format!("sector {sector}, offset {third:#x}"));
    let store = Store::mount(Flash::from_image(image)).unwrap();
    assert_eq!(store.get(b"key1"), Some(&[1; 40][..]));
    assert_eq!(store.get(b"key5"), None, "records after damage in the same sector are not trusted");
}

#[test]
fn bad_keys_and_oversized_transactions_are_refused_with_reasons() {
    let mut store = Store::mount(Flash::new(16)).unwrap();
    assert_eq!(store.put(b"", b"v"), Err(StoreError::BadKeyLength(0)));
    assert_eq!(store.put(&[b'k'; 33], b"v"), Err(StoreError::BadKeyLength(33)));
    assert_eq!(store.put(&[0, 1], b"v"), Err(StoreError::ReservedKey));
    let big = vec![0; 5000];
    assert!(matches!(store.put(b"big", &big), Err(StoreError::TooLarge { .. })));
    assert!(store.is_empty());
}

#[test]
fn transaction_commits_device_and_outbox_together_at_every_cut() {
    let mut clean = Db::new(Store::mount(Flash::new(16)).unwrap());
    let before = clean.store().flash().ops_done();
    let mut txn = Txn::new();
    let dev = device(1, 2);
    txn.put_device(&dev).enqueue(OutboxItem {
        mac: dev.mac,
        service: "yealink".try_into().unwrap(),
        action: OutboxAction::Register { token: Token::from_bytes([7; 16]), take_over: false },
        attempts: 0,
        not_before: 0,
        last_error: Default::default(),
    });
    clean.commit(&txn).unwrap();
    let ops = clean.store().flash().ops_done() - before;
    for at in 0..ops {
        for cut in [Cut::AfterByte(0), Cut::AfterByte(30), Cut::TornWord { word: 20, seed: at + 1 }] {
            let mut flash = Flash::new(16);
            flash.arm_cut(at, cut);
            let mut db = Db::new(Store::mount(flash).unwrap());
            assert!(db.commit(&txn).is_err());
            let mut flash = db.into_store().into_flash();
            flash.power_cycle();
            let db = Db::new(Store::mount(flash).unwrap());
            let has_device = db.device(&dev.mac).unwrap().is_some();
            assert_eq!(has_device, !db.outbox().unwrap().is_empty(), "cut {cut:?} at op {at} split the transaction");
        }
    }
}

#[test]
fn three_thousand_realistic_devices_fit_the_default_store_with_compaction_headroom() {
    let mut db = Db::new(Store::mount(Flash::new(SECTORS)).unwrap());
    for n in 0..3000 {
        db.commit(Txn::new().put_device(&contacted_device(n))).unwrap();
    }
    let size = contacted_device(0).encode().len();
    assert!((200..=300).contains(&size), "a device record is {size} bytes");
    // Rewrite every device once more: compaction must cope at this fill level.
    for n in 0..3000 {
        let mut dev = contacted_device(n);
        dev.enrollment = Enrollment::Locked { since: 1_700_000_000 };
        db.commit(Txn::new().put_device(&dev)).unwrap();
    }
    let db = Db::new(Store::mount(db.into_store().into_flash()).unwrap());
    assert_eq!(db.device_count(), 3000);
    assert_eq!(
        db.device(&device(2999, 0).mac).unwrap().unwrap().enrollment,
        Enrollment::Locked { since: 1_700_000_000 }
    );
}

#[test]
fn device_limit_is_enforced() {
    let mut db = Db::new(Store::mount(Flash::new(SECTORS)).unwrap());
    for chunk in (0..MAX_DEVICES as u32).collect::<Vec<_>>().chunks(10) {
        let mut txn = Txn::new();
        chunk.iter().for_each(|&n| {
            txn.put_device(&device(n, 0));
        });
        db.commit(&txn).unwrap();
    }
    assert_eq!(db.commit(Txn::new().put_device(&device(MAX_DEVICES as u32, 0))), Err(DbError::TooManyDevices));
    // Updating an existing device is still fine.
    db.commit(Txn::new().put_device(&device(3, 1))).unwrap();
}

#[test]
fn audit_log_keeps_only_the_newest_entries() {
    let mut db = Db::new(Store::mount(Flash::new(64)).unwrap());
    for i in 0..AUDIT_CAPACITY + 40 {
        db.commit(Txn::new().audit(i as u64, "admin", &format!("unlocked device {i}")).unwrap()).unwrap();
    }
    let log = Db::new(Store::mount(db.into_store().into_flash()).unwrap()).audit_log().unwrap();
    assert_eq!(log.len(), AUDIT_CAPACITY);
    assert_eq!(log[0].at, 40);
    assert_eq!(log.last().unwrap().action.as_str(), format!("unlocked device {}", AUDIT_CAPACITY + 39));
}

#[test]
fn records_carry_a_schema_and_a_newer_one_is_refused() {
    let mut bytes = device(1, 1).encode();
    assert_eq!(bytes[0], Device::SCHEMA);
    bytes[0] = Device::SCHEMA + 1;
    assert!(matches!(Device::decode(&bytes), Err(RecordError::UnknownSchema { .. })));
    assert!(matches!(Device::decode(&[Device::SCHEMA, 0xFF]), Err(RecordError::Malformed { .. })));
    assert!(matches!(Device::decode(&[]), Err(RecordError::Empty { .. })));
}

#[test]
fn settings_are_individually_atomic_records() {
    let mut db = Db::new(Store::mount(Flash::new(16)).unwrap());
    db.commit(Txn::new().set_setting("sip.server", "pbx.example.net").unwrap()).unwrap();
    db.commit(Txn::new().set_setting("ntp.server", "pool.ntp.org").unwrap()).unwrap();
    assert_eq!(db.setting("sip.server").unwrap().as_deref(), Some("pbx.example.net"));
    assert_eq!(db.settings().unwrap().len(), 2);
    assert!(Txn::new().set_setting(&"x".repeat(40), "v").is_err());
    let ops = [Op::Put { key: b"x", value: b"y" }];
    db.store_mut().commit(&ops).unwrap();
}

#[test]
fn delete_after_put_of_the_same_key_in_one_transaction_wins() {
    let mut store = Store::mount(Flash::new(16)).unwrap();
    store.commit(&[Op::Put { key: b"k", value: b"v" }, Op::Delete { key: b"k" }]).unwrap();
    assert_eq!(store.get(b"k"), None);
    assert_eq!(Store::mount(store.into_flash()).unwrap().get(b"k"), None);
}

#[test]
fn sector_repeating_another_sectors_log_position_is_ignored_and_reported() {
    let mut store = Store::mount(Flash::new(16)).unwrap();
    store.put(b"kept", b"original").unwrap();
    let mut image = store.into_flash().image().to_vec();
    let sector = (0..16).find(|s| image[s * 4096] == b'P').unwrap();
    let copy = (sector + 5) % 16;
    let bytes = image[sector * 4096..(sector + 1) * 4096].to_vec();
    image[copy * 4096..(copy + 1) * 4096].copy_from_slice(&bytes);
    let report = check(Flash::from_image(image.clone())).unwrap();
    assert!(report.corruption.iter().any(|f| f.what.contains("repeats the log position")), "{report}");
    let mut store = Store::mount(Flash::from_image(image)).unwrap();
    assert_eq!(store.get(b"kept"), Some(&b"original"[..]));
    for i in 0..2000u32 {
        store.put(b"churn", &i.to_le_bytes()).unwrap();
    }
    assert_eq!(store.get(b"kept"), Some(&b"original"[..]));
}

/// Found by the proptest: a write cut in its first word can leave that word reading erased
/// while programmed. Two such cuts in a row, each at the first write after a remount, used
/// to put the resumed head on the second weak word and program it twice.
#[test]
fn repeated_cuts_at_the_first_write_after_mount_never_reprogram_a_word() {
    let mut store = Store::mount(Flash::new(16)).unwrap();
    store.put(b"kept", b"value").unwrap();
    let mut flash = store.into_flash();
    for round in 0..3u8 {
        // seed 0 makes the torn word weak: it reads 0xFF but counts as programmed.
        flash.arm_cut(0, Cut::TornWord { word: 0, seed: 0 });
        let mut store = Store::mount(flash).unwrap();
        assert!(matches!(store.put(b"lost", &[round; 8]), Err(StoreError::Flash { .. })));
        flash = store.into_flash();
        flash.power_cycle();
    }
    let mut store = Store::mount(flash).unwrap();
    store.put(b"after", b"cuts").expect("no word is programmed twice");
    assert_eq!(store.get(b"kept"), Some(&b"value"[..]));
    let store = Store::mount(store.into_flash()).unwrap();
    assert_eq!(store.get(b"after"), Some(&b"cuts"[..]));
}

#[test]
fn the_last_record_of_a_prefix_is_what_a_walk_from_the_front_ends_on() {
    let mut store = Store::mount(Flash::new(SECTORS)).unwrap();
    // Keys around the edges of the byte range: prefixes ending in 0xff, keys that are the
    // prefix itself, and deleted keys (tombstones) at the end of a range.
    let alphabet = [0x01u8, 0x02, 0x7f, 0xfe, 0xff];
    let mut keys = Vec::new();
    for &a in &alphabet {
        keys.push(vec![a]);
        for &b in &alphabet {
            keys.push(vec![a, b]);
            for &c in &alphabet {
                keys.push(vec![a, b, c]);
            }
        }
    }
    for key in &keys {
        store.put(key, key).unwrap();
    }
    for key in keys.iter().filter(|key| key.last() == Some(&0xff) || key.ends_with(&[0x02, 0x7f])) {
        store.delete(key).unwrap();
    }
    let mut prefixes = vec![Vec::new()];
    prefixes.extend(keys.iter().filter(|key| key.len() < 3).cloned());
    prefixes.push(vec![0x03]);
    for prefix in &prefixes {
        assert_eq!(store.last_with_prefix(prefix), store.iter_prefix(prefix).last(), "prefix {prefix:02x?}");
    }
    // [01 ff ff] and [01 ff] are deleted: the last live key under 01 is [01 ff fe].
    assert_eq!(store.last_with_prefix(&[0x01]), Some((&[0x01u8, 0xff, 0xfe][..], &[0x01u8, 0xff, 0xfe][..])));
    assert_eq!(store.last_with_prefix(&[0x03]), None);
}
