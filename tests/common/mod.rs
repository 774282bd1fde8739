//! A scripted workload, a model of acknowledged writes, and the checks that compare a
//! remounted store against it. Shared by the power-cut sweep and the property tests.
#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::collections::BTreeMap;

use provbox::store::backend::sim::SimFlash;
use provbox::store::{Op, Store, StoreError};

/// Sector size of the small simulated flash the harness uses: small, so that a workload
/// of a few thousand operations wraps the store many times.
pub const SECTOR: usize = 1024;
/// Sectors of that flash.
pub const SECTORS: usize = 12;
/// The flash the harness uses.
pub type Flash = SimFlash<SECTOR>;

/// What the model says the store holds.
pub type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// One step of a workload.
#[derive(Debug, Clone)]
pub enum Step {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Vec<u8>),
    /// Several puts and deletes at once.
    Txn(Vec<(Vec<u8>, Option<Vec<u8>>)>),
}

impl Step {
    /// Runs the step against `store`.
    pub fn run<F: embedded_storage::nor_flash::NorFlash>(&self, store: &mut Store<F>) -> Result<(), StoreError> {
        match self {
            Step::Put(key, value) => store.put(key, value),
            Step::Delete(key) => store.delete(key),
            Step::Txn(changes) => {
                let ops: Vec<Op<'_>> = changes.iter().map(|(key, value)| Op::set(key, value.as_deref())).collect();
                store.commit(&ops)
            }
        }
    }

    /// Applies the step to `model`.
    pub fn apply(&self, model: &mut Model) {
        let mut set = |key: &Vec<u8>, value: &Option<Vec<u8>>| match value {
            Some(value) => {
                model.insert(key.clone(), value.clone());
            }
            None => {
                model.remove(key);
            }
        };
        match self {
            Step::Put(key, value) => set(key, &Some(value.clone())),
            Step::Delete(key) => set(key, &None),
            Step::Txn(changes) => changes.iter().for_each(|(key, value)| set(key, value)),
        }
    }

    /// Keys the step touches.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        match self {
            Step::Put(key, _) | Step::Delete(key) => vec![key.clone()],
            Step::Txn(changes) => changes.iter().map(|(key, _)| key.clone()).collect(),
        }
    }
}

/// A small deterministic generator, so that a seed names one exact workload.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The key with number `id`.
pub fn key(id: u64) -> Vec<u8> {
    format!("k{id:02}").into_bytes()
}

/// A workload of `steps` puts, updates, deletes and transactions over `keys` keys; values
/// are 1..=`max_value` bytes and name the step that wrote them. The first ten steps write
/// static keys that never change again, so that wear levelling has to move them.
pub fn workload(seed: u64, steps: usize, keys: u64, max_value: u64) -> Vec<Step> {
    let mut rng = Rng(seed);
    let statics = (0..10).map(|i| Step::Put(format!("static{i}").into_bytes(), vec![b's'; 60]));
    let value = |rng: &mut Rng, step: usize| {
        let len = 1 + rng.below(max_value) as usize;
        let mut v = format!("{step}:").into_bytes();
        v.resize(len.max(v.len()), b'a' + (step % 26) as u8);
        v
    };
    let changing: Vec<Step> = (10..steps)
        .map(|step| match rng.below(10) {
            0..=5 => Step::Put(key(rng.below(keys)), value(&mut rng, step)),
            6 | 7 => Step::Delete(key(rng.below(keys))),
            _ => {
                let n = 2 + rng.below(3);
                Step::Txn(
                    (0..n)
                        .map(|_| {
                            let k = key(rng.below(keys));
                            let v = if rng.below(4) == 0 { None } else { Some(value(&mut rng, step)) };
                            (k, v)
                        })
                        .collect(),
                )
            }
        })
        .collect();
    statics.chain(changing).collect()
}

/// Everything the store holds, as a model.
pub fn contents<F: embedded_storage::nor_flash::NorFlash>(store: &Store<F>) -> Model {
    store.iter_prefix(&[]).map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

/// Checks that `store` holds `before` or `before` with all of `step` applied: nothing
/// older, nothing half-applied, no garbage. Returns true when it holds the step's result
/// and the step changed something.
pub fn assert_old_or_new<F: embedded_storage::nor_flash::NorFlash>(
    store: &Store<F>,
    before: &Model,
    step: &Step,
    context: &str,
) -> bool {
    let got = contents(store);
    if &got == before {
        return false;
    }
    let mut after = before.clone();
    step.apply(&mut after);
    assert!(
        got == after,
        "{context}: store is neither the acknowledged state nor that state plus {step:?}\n\
         differences from acknowledged: {:?}",
        diff(before, &got)
    );
    true
}

fn diff(expected: &Model, got: &Model) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in expected {
        match got.get(k) {
            None => out.push(format!("missing {}", String::from_utf8_lossy(k))),
            Some(g) if g != v => out.push(format!(
                "{}: {} instead of {}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(g),
                String::from_utf8_lossy(v)
            )),
            _ => {}
        }
    }
    for k in got.keys().filter(|k| !expected.contains_key(*k)) {
        out.push(format!("unexpected {}", String::from_utf8_lossy(k)));
    }
    out
}
