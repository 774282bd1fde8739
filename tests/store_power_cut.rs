//! The exhaustive power-cut sweep: a scripted workload is recorded once, then the flash is
//! rebuilt as it stood at every cut point (inside every write and every erase, clean,
//! torn-word and interrupted-erase variants), remounted from the raw image with no RAM
//! state carried over, and checked against the model of acknowledged writes. A sample of
//! cut points gets a second cut during recovery.
//!
//! `cargo test` runs a deterministic sample; `scripts/power-cut-sweep` runs every point.

mod common;

use common::{Flash, Model, Rng, SECTORS, Step, assert_old_or_new, contents, workload};
use provbox::store::Store;
use provbox::store::backend::sim::{Cut, FlashOp, WORD};

/// How densely to sample cut points.
struct Density {
    /// Cut after every `write_stride`-th byte of each write.
    write_stride: usize,
    /// Cut after every `erase_stride`-th byte of each erase.
    erase_stride: usize,
    /// Tear every `torn_stride`-th word of each write.
    torn_stride: usize,
    /// Run a second cut during recovery after every `recovery_every`-th first cut.
    recovery_every: usize,
}

/// Flash operations of a recorded run, and how many had happened after each step.
struct Recording {
    ops: Vec<FlashOp>,
    done_after_step: Vec<usize>,
}

fn record(steps: &[Step]) -> Recording {
    let mut flash = Flash::new(SECTORS);
    flash.record();
    let mut store = Store::mount(flash).expect("blank flash mounts");
    let mut done_after_step = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        step.run(&mut store).unwrap_or_else(|e| panic!("step {i} {step:?} failed without a cut: {e}"));
        done_after_step.push(store.flash().ops_done() as usize);
    }
    let mut flash = store.into_flash();
    Recording { ops: flash.take_recording(), done_after_step }
}

fn cuts_for(op: &FlashOp, density: &Density, seed: u64) -> Vec<Cut> {
    match op {
        FlashOp::Write { data, .. } => {
            let clean = (0..=data.len()).step_by(density.write_stride).chain([data.len()]).map(Cut::AfterByte);
            // Word 0 is always torn both ways: with random bits, and weakly (reads erased).
            let torn = (0..data.len() / WORD)
                .step_by(density.torn_stride)
                .map(move |word| Cut::TornWord { word, seed: (seed << 2 | 1) ^ (word as u64) << 8 })
                .chain([Cut::TornWord { word: 0, seed: seed << 2 }]);
            clean.chain(torn).collect()
        }
        FlashOp::Erase { from, to } => (0..=to - from)
            .step_by(density.erase_stride)
            .map(Cut::AfterByte)
            .chain([Cut::InterruptedErase { seed }])
            .collect(),
    }
}

/// Statistics of a sweep, for the report.
#[derive(Default, Debug)]
struct Tally {
    cuts: usize,
    landed_new: usize,
    recoveries: usize,
    flash_ops: usize,
    erases: usize,
}

/// Retries the interrupted step and runs a few more, cutting the power once more at a random
/// point; then remounts and checks against the acknowledged steps.
fn second_cut(image: &Flash, state: &Model, script: &[Step], rng: &mut Rng, context: &str) {
    let mut dry = Store::mount(image.clone()).expect("remount");
    let start = dry.flash().ops_done();
    for step in script {
        step.run(&mut dry).unwrap_or_else(|e| panic!("{context}: store refused {step:?} after recovery: {e}"));
    }
    let total = dry.flash().ops_done() - start;
    if total == 0 {
        return;
    }
    let mut flash = image.clone();
    let cut = match rng.below(3) {
        0 => Cut::TornWord { word: rng.below(8) as usize, seed: rng.next() },
        1 => Cut::InterruptedErase { seed: rng.next() },
        _ => Cut::AfterByte(rng.below(64) as usize),
    };
    let at = rng.below(total);
    flash.arm_cut(at, cut);
    let mut store = Store::mount(flash).expect("remount");
    let mut acked = state.clone();
    let mut pending = None;
    for step in script {
        if step.run(&mut store).is_err() {
            pending = Some(step);
            break;
        }
        step.apply(&mut acked);
    }
    let pending = pending.unwrap_or_else(|| panic!("{context}: the armed cut {cut:?} at op {at} never fired"));
    let mut flash = store.into_flash();
    flash.power_cycle();
    let store = Store::mount(flash).unwrap_or_else(|e| panic!("{context}: mount after second cut failed: {e}"));
    assert_old_or_new(&store, &acked, pending, &format!("{context}, second cut {cut:?} at recovery op {at}"));
}

fn sweep(steps: &[Step], density: &Density) -> Tally {
    let recording = record(steps);
    let erases = recording.ops.iter().filter(|op| matches!(op, FlashOp::Erase { .. })).count();
    let mut tally = Tally { flash_ops: recording.ops.len(), erases, ..Tally::default() };
    let mut base = Flash::new(SECTORS);
    let mut before = Model::new();
    let mut step = 0;
    let mut rng = Rng(0x5EED);
    for (i, op) in recording.ops.iter().enumerate() {
        while recording.done_after_step[step] <= i {
            steps[step].apply(&mut before);
            step += 1;
        }
        for cut in cuts_for(op, density, i as u64) {
            let context = format!("step {step} ({:?}), flash op {i}, cut {cut:?}", steps[step]);
            let mut flash = base.clone();
            flash.replay_cut(op, cut);
            flash.power_cycle();
            let store = Store::mount(flash).unwrap_or_else(|e| panic!("{context}: mount failed: {e}"));
            let landed = assert_old_or_new(&store, &before, &steps[step], &context);
            tally.cuts += 1;
            // The store must go on after any cut: retrying the step is accepted, and nothing
            // it writes lands on a word the cut may have half-programmed.
            let mut retry = Store::mount(store.flash().clone()).expect("remount");
            steps[step].run(&mut retry).unwrap_or_else(|e| panic!("{context}: retry after the cut failed: {e}"));
            tally.landed_new += landed as usize;
            if tally.cuts.is_multiple_of(density.recovery_every) {
                let state = contents(&store);
                let script: Vec<Step> = steps[step..(step + 4).min(steps.len())].to_vec();
                second_cut(&store.into_flash(), &state, &script, &mut rng, &context);
                tally.recoveries += 1;
            }
        }
        base.replay(op).expect("replaying the recording");
    }
    tally
}

fn workload_with_wraps() -> Vec<Step> {
    let steps = workload(2024, 2400, 40, 100);
    let recording = record(&steps);
    let erases = recording.ops.iter().filter(|op| matches!(op, FlashOp::Erase { .. })).count();
    assert!(erases >= 3 * SECTORS, "the workload must wrap the store at least three times ({erases} erases)");
    // The static keys were moved by wear levelling: no sector was left behind.
    let mut flash = Flash::new(SECTORS);
    let mut store = Store::mount(&mut flash).unwrap();
    for step in &steps {
        step.run(&mut store).unwrap();
    }
    let counts: Vec<u64> = flash.counters().iter().map(|c| c.erases).collect();
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 3, "erase counts {counts:?}");
    steps
}

#[test]
fn every_sampled_cut_keeps_each_key_old_or_new_and_acknowledged_writes_survive() {
    let density = Density { write_stride: 7, erase_stride: 256, torn_stride: 5, recovery_every: 97 };
    let tally = sweep(&workload_with_wraps(), &density);
    eprintln!("power-cut sample: {tally:?}");
    assert!(tally.flash_ops > 2_000 && tally.erases > 3 * SECTORS, "{tally:?}");
    assert!(tally.cuts > 20_000 && tally.recoveries > 200, "{tally:?}");
    assert!(tally.landed_new > 0, "some cuts after the last byte must show the new value");
}

/// Every byte of every write, every word torn, every 4th byte of every erase.
#[test]
#[ignore = "full sweep: run by scripts/power-cut-sweep in release mode"]
fn full_sweep_every_cut_point() {
    let density = Density { write_stride: 1, erase_stride: WORD, torn_stride: 1, recovery_every: 13 };
    let tally = sweep(&workload_with_wraps(), &density);
    eprintln!("power-cut full sweep: {tally:?}");
}
