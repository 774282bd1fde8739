//! A property-based state machine: random operations interleaved with random power cuts of
//! every kind, with a full remount from the raw image after each cut, checked against a
//! model of acknowledged writes.

mod common;

use common::{Model, Step, assert_old_or_new, contents};
use proptest::prelude::*;
use provbox::store::backend::sim::{Cut, SimFlash};
use provbox::store::{Store, StoreError};

/// Small sectors and few of them, so that random runs wrap and compact often.
type Flash = SimFlash<512>;
const SECTORS: usize = 10;

fn key() -> impl Strategy<Value = Vec<u8>> {
    (0u8..12).prop_map(|k| format!("key{k}").into_bytes())
}

fn step() -> impl Strategy<Value = Step> {
    let value = proptest::collection::vec(any::<u8>(), 0..90);
    prop_oneof![
        4 => (key(), value.clone()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => key().prop_map(Step::Delete),
        1 => proptest::collection::vec((key(), proptest::option::of(value)), 1..4).prop_map(Step::Txn),
    ]
}

fn cut() -> impl Strategy<Value = Cut> {
    prop_oneof![
        (0usize..300).prop_map(Cut::AfterByte),
        (0usize..40, any::<u64>()).prop_map(|(word, seed)| Cut::TornWord { word, seed }),
        any::<u64>().prop_map(|seed| Cut::InterruptedErase { seed }),
        Just(Cut::BeforeOp),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_and_cuts_never_lose_an_acknowledged_write(
        steps in proptest::collection::vec(step(), 1..250),
        cuts in proptest::collection::vec((0u64..60, cut()), 0..10),
    ) {
        let mut model = Model::new();
        let mut cuts = cuts.into_iter();
        let mut flash = Flash::new(SECTORS);
        if let Some((after, cut)) = cuts.next() {
            flash.arm_cut(after, cut);
        }
        let mut store = Store::mount(flash).expect("blank flash mounts");
        for (i, step) in steps.iter().enumerate() {
            match step.run(&mut store) {
                Ok(()) => step.apply(&mut model),
                Err(error @ StoreError::Flash { .. }) => {
                    let mut flash = store.into_flash();
                    prop_assert!(flash.is_cut(), "a flash error without a cut at step {i}: {error}");
                    flash.power_cycle();
                    if let Some((after, cut)) = cuts.next() {
                        flash.arm_cut(after, cut);
                    }
                    store = Store::mount(flash).expect("mount after a cut");
                    if assert_old_or_new(&store, &model, step, &format!("step {i}")) {
                        step.apply(&mut model);
                    }
                }
                Err(other) => {
                    // A refusal (full store) must change nothing.
                    prop_assert!(matches!(other, StoreError::Full { .. }), "step {i}: {other}");
                    prop_assert_eq!(&contents(&store), &model);
                }
            }
        }
        let mut flash = store.into_flash();
        flash.power_cycle();
        let store = Store::mount(flash).expect("final mount");
        prop_assert_eq!(contents(&store), model);
    }
}
