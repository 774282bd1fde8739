//! A restore cut by power at any flash operation: after the remount the appliance holds its
//! old state whole, or the backup's whole, or no admin password at all (so its first-start
//! page offers the restore again). Never a mix that has an administrator.

mod common;

use std::collections::BTreeMap;

use common::{Flash, SECTORS};
use provbox::store::Store;
use provbox::store::backend::sim::Cut;
use provbox::store::format::Op;
use provbox::store::records::{Db, Kind};

type Records = BTreeMap<Vec<u8>, Vec<u8>>;

/// An appliance's records: its admin, `devices` devices and a clock, all tagged `tag`.
fn site(tag: u8, devices: u8) -> Records {
    let mut records = Records::new();
    records.insert(vec![Kind::Admin as u8], vec![1, tag, tag]);
    for i in 0..devices {
        records
            .insert(vec![Kind::Device as u8, 0x80, 0x5e, tag, 0, 0, i], vec![1; 60].into_iter().chain([tag]).collect());
    }
    records.insert(vec![Kind::Setting as u8, b'x', tag], vec![1, tag]);
    records
}

fn contents(store: &Store<Flash>) -> Records {
    store
        .iter_prefix(&[])
        .filter(|(key, _)| key[0] != Kind::Clock as u8)
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

/// The old site on a fresh flash, with a clock record the restore must keep.
fn old_flash() -> Flash {
    let mut store = Store::mount(Flash::new(SECTORS)).unwrap();
    for (key, value) in site(1, 30) {
        store.commit(&[Op::set(&key, Some(&value))]).unwrap();
    }
    store.commit(&[Op::set(&[Kind::Clock as u8], Some(&[1, 42]))]).unwrap();
    store.into_flash()
}

#[test]
fn a_restore_cut_at_any_flash_operation_leaves_old_new_or_unclaimed() {
    let backup: Vec<(Vec<u8>, Vec<u8>)> = site(2, 40).into_iter().collect();
    let operations = {
        let mut db = Db::new(Store::mount(old_flash()).unwrap());
        let before = db.store().flash().ops_done();
        db.replace_all(&backup).unwrap();
        assert_eq!(contents(db.store()), site(2, 40));
        assert_eq!(db.store().get(&[Kind::Clock as u8]), Some(&[1, 42][..]), "the board's clock stays");
        db.store().flash().ops_done() - before
    };
    assert!(operations > 10, "the restore spans several commits: {operations} operations");
    let (mut old, mut new, mut unclaimed) = (0, 0, 0);
    for cut_at in 0..operations {
        for cut in [Cut::AfterByte(0), Cut::AfterByte(17), Cut::TornWord { word: 0, seed: cut_at }] {
            let mut flash = old_flash();
            flash.arm_cut(cut_at, cut);
            let mut db = Db::new(Store::mount(flash).unwrap());
            assert!(db.replace_all(&backup).is_err(), "cut {cut_at} {cut:?} did not stop the restore");
            let mut flash = db.into_store().into_flash();
            flash.power_cycle();
            let store = Store::mount(flash).unwrap_or_else(|e| panic!("cut {cut_at} {cut:?}: {e}"));
            let found = contents(&store);
            match found.get(&[Kind::Admin as u8][..]).map(|admin| admin[1]) {
                Some(1) => {
                    assert_eq!(found, site(1, 30), "cut {cut_at} {cut:?}: the old admin with changed data");
                    old += 1;
                }
                Some(2) => {
                    assert_eq!(found, site(2, 40), "cut {cut_at} {cut:?}: the new admin before all data");
                    new += 1;
                }
                None => unclaimed += 1,
                Some(other) => panic!("cut {cut_at}: an admin tagged {other}"),
            }
        }
    }
    println!("{operations} operations, 3 cuts each: {old} old, {new} restored, {unclaimed} unclaimed");
    assert!(old > 0 && unclaimed > 0, "the cuts fell before and during the restore");
}
