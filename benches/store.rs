//! The store benchmark: provbox's store and sequential-storage 8 side by side, on the same
//! simulated flash (4 KiB sectors, 4-byte words) with the same device-record workload, plus
//! a power-cut sweep of both.
//!
//! Run with `scripts/bench-store` (or `cargo bench --bench store`); it prints Markdown.
//! Every timing is the median of several runs, because these machines are noisy.

use std::time::{Duration, Instant};

use embassy_futures::block_on;
use embedded_storage::nor_flash::{NorFlash as BlockingNorFlash, ReadNorFlash as BlockingRead};
use embedded_storage_async::nor_flash::{ErrorType, MultiwriteNorFlash, NorFlash, ReadNorFlash};
use provbox::store::Store;
use provbox::store::backend::sim::{Cut, FlashOp, SimError, SimFlash, WORD};
use sequential_storage::cache::key_pointers::HeapKeyPointers;
use sequential_storage::cache::page_pointers::HeapPagePointers;
use sequential_storage::cache::page_states::HeapPageStates;
use sequential_storage::cache::{Cache, Uncached};
use sequential_storage::map::{MapConfig, MapStorage};

const SECTOR: usize = 4096;
/// Bytes of a device record, as the appliance stores one after first contact.
const RECORD: usize = 250;
const RUNS: usize = 5;

/// sequential-storage drives async flash; this runs the same simulator behind that API.
struct AsyncSim<const E: usize>(SimFlash<E>);

impl<const E: usize> ErrorType for AsyncSim<E> {
    type Error = SimError;
}

impl<const E: usize> ReadNorFlash for AsyncSim<E> {
    const READ_SIZE: usize = 1;
    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimError> {
        BlockingRead::read(&mut self.0, offset, bytes)
    }
    fn capacity(&self) -> usize {
        BlockingRead::capacity(&self.0)
    }
}

impl<const E: usize> NorFlash for AsyncSim<E> {
    const WRITE_SIZE: usize = WORD;
    const ERASE_SIZE: usize = E;
    async fn erase(&mut self, from: u32, to: u32) -> Result<(), SimError> {
        BlockingNorFlash::erase(&mut self.0, from, to)
    }
    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimError> {
        BlockingNorFlash::write(&mut self.0, offset, bytes)
    }
}

/// sequential-storage needs multiwrite to remove items; the simulator allows it for the peer.
impl<const E: usize> MultiwriteNorFlash for AsyncSim<E> {}

type PeerCache = Cache<HeapPageStates, HeapPagePointers, HeapKeyPointers<[u8; 6]>, [u8; 6]>;
type Peer = MapStorage<[u8; 6], AsyncSim<SECTOR>, PeerCache>;

fn peer(flash: SimFlash<SECTOR>, keys: usize) -> Peer {
    let mut flash = flash;
    flash.allow_rewrites();
    let pages = flash.image().len() / SECTOR;
    let config = MapConfig::try_new(0..(pages * SECTOR) as u32).expect("valid peer range");
    let cache = Cache::new(HeapPageStates::new(pages), HeapPagePointers::new(pages), HeapKeyPointers::new(keys));
    MapStorage::new(AsyncSim(flash), config, cache)
}

fn mac(n: usize) -> [u8; 6] {
    [0x00, 0x15, 0x65, (n >> 16) as u8, (n >> 8) as u8, n as u8]
}

fn ours_key(n: usize) -> [u8; 7] {
    let m = mac(n);
    [1, m[0], m[1], m[2], m[3], m[4], m[5]]
}

fn record(n: usize, version: usize) -> Vec<u8> {
    let mut value = format!("device {n} version {version} ").into_bytes();
    value.resize(RECORD, b'x');
    value
}

/// A deterministic sequence of device numbers.
struct Picks(u64);

impl Picks {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

fn fill_ours(sectors: usize, devices: usize) -> Store<SimFlash<SECTOR>> {
    let mut store = Store::mount(SimFlash::<SECTOR>::new(sectors)).unwrap();
    for n in 0..devices {
        store.put(&ours_key(n), &record(n, 0)).unwrap();
    }
    store
}

fn fill_peer(sectors: usize, devices: usize) -> Peer {
    let mut map = peer(SimFlash::new(sectors), devices);
    let mut buf = vec![0; 512];
    for n in 0..devices {
        block_on(map.store_item(&mut buf, &mac(n), &&record(n, 0)[..])).unwrap();
    }
    map
}

/// One row of results: a metric, our figure, the peer's, and peer/ours (or ours/peer).
struct Row {
    metric: String,
    ours: String,
    peer: String,
    ratio: String,
}

fn mount_rows(rows: &mut Vec<Row>) {
    // 4 MiB: room for 10,000 records of 250 bytes.
    let sectors = 1024;
    for devices in [1000, 5000, 10_000] {
        let image = fill_ours(sectors, devices).into_flash();
        drop(Store::mount(image.clone()).unwrap()); // warm-up
        let ours = median(
            (0..RUNS)
                .map(|_| {
                    let flash = image.clone();
                    let (elapsed, store) = time(|| Store::mount(flash).unwrap());
                    assert_eq!(store.len(), devices);
                    elapsed
                })
                .collect(),
        );
        let peer_image = {
            let (flash, _) = fill_peer(sectors, devices).destroy();
            flash.0
        };
        let mut buf = vec![0; 512];
        // The peer has no mount: after a boot its first lookup scans cold, and listing every
        // device (what the appliance's index gives) means iterating all items.
        let peer_cold = median(
            (0..RUNS)
                .map(|_| {
                    let mut map = peer(peer_image.clone(), devices);
                    let (elapsed, found) =
                        time(|| block_on(map.fetch_item::<&[u8]>(&mut buf, &mac(devices / 2))).unwrap().is_some());
                    assert!(found);
                    elapsed
                })
                .collect(),
        );
        let peer_list = median(
            (0..RUNS)
                .map(|_| {
                    let mut map = peer(peer_image.clone(), devices);
                    time(|| {
                        let mut iter = block_on(map.fetch_all_items(&mut buf)).unwrap();
                        let mut count = 0;
                        while block_on(iter.next::<&[u8]>(&mut buf)).unwrap().is_some() {
                            count += 1;
                        }
                        assert!(count >= devices);
                    })
                    .0
                })
                .collect(),
        );
        rows.push(Row {
            metric: format!("mount, {devices} devices (peer: first cold lookup)"),
            ours: format!("{:.2} ms", ours.as_secs_f64() * 1e3),
            peer: format!("{:.2} ms", peer_cold.as_secs_f64() * 1e3),
            ratio: format!("{:.1}×", peer_cold.as_secs_f64() / ours.as_secs_f64()),
        });
        rows.push(Row {
            metric: format!("mount and list all, {devices} devices"),
            ours: format!("{:.2} ms", ours.as_secs_f64() * 1e3),
            peer: format!("{:.2} ms", peer_list.as_secs_f64() * 1e3),
            ratio: format!("{:.1}×", peer_list.as_secs_f64() / ours.as_secs_f64()),
        });
    }
}

/// Our mount through the file backend, the appliance's real path (the file is in the page
/// cache, as it is after the first boot read).
fn file_mount_row(rows: &mut Vec<Row>) {
    let devices = 5000;
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("store.bin");
    let image = fill_ours(1024, devices).into_flash();
    std::fs::write(&path, image.image()).expect("write the image");
    let ours = median(
        (0..=RUNS)
            .map(|_| {
                let flash = provbox::store::backend::open(&path, None).expect("open the file");
                let (elapsed, store) = time(|| Store::mount(flash).unwrap());
                assert_eq!(store.len(), devices);
                elapsed
            })
            .collect(),
    );
    rows.push(Row {
        metric: format!("mount from a 4 MiB file, {devices} devices"),
        ours: format!("{:.2} ms", ours.as_secs_f64() * 1e3),
        peer: "n/a".into(),
        ratio: String::new(),
    });
}

fn throughput_rows(rows: &mut Vec<Row>) {
    // The default geometry, 1 MiB, at 50% fill: 1,900 records of 250 bytes.
    let (sectors, devices, updates, gets) = (256, 1900, 20_000, 100_000);
    let mut put_ours = Vec::new();
    let mut put_peer = Vec::new();
    let mut get_ours = Vec::new();
    let mut get_peer = Vec::new();
    let mut amplification = (0.0, 0.0);
    for run in 0..RUNS {
        let mut store = fill_ours(sectors, devices);
        let mut picks = Picks(run as u64);
        let flash_before = store.flash().bytes_written();
        let (elapsed, ()) = time(|| {
            for i in 0..updates {
                let n = picks.next(devices);
                store.put(&ours_key(n), &record(n, i)).unwrap();
            }
        });
        put_ours.push(elapsed / updates as u32);
        let logical = (updates * (7 + RECORD)) as f64;
        amplification.0 = (store.flash().bytes_written() - flash_before) as f64 / logical;
        let (elapsed, found) =
            time(|| (0..gets).filter(|_| store.get(&ours_key(picks.next(devices))).is_some()).count());
        assert_eq!(found, gets);
        get_ours.push(elapsed / gets as u32);

        let mut map = fill_peer(sectors, devices);
        let mut picks = Picks(run as u64);
        let mut buf = vec![0; 512];
        let flash_before = map.flash().0.bytes_written();
        let (elapsed, ()) = time(|| {
            for i in 0..updates {
                let n = picks.next(devices);
                block_on(map.store_item(&mut buf, &mac(n), &&record(n, i)[..])).unwrap();
            }
        });
        put_peer.push(elapsed / updates as u32);
        amplification.1 = (map.flash().0.bytes_written() - flash_before) as f64 / (updates * (6 + RECORD)) as f64;
        let peer_gets = gets / 10;
        let (elapsed, found) = time(|| {
            (0..peer_gets)
                .filter(|_| block_on(map.fetch_item::<&[u8]>(&mut buf, &mac(picks.next(devices)))).unwrap().is_some())
                .count()
        });
        assert_eq!(found, peer_gets);
        get_peer.push(elapsed / peer_gets as u32);
    }
    let per_second = |d: Duration| format!("{:.0}/s", 1.0 / d.as_secs_f64());
    let (put_o, put_p) = (median(put_ours), median(put_peer));
    rows.push(Row {
        metric: "put (update a 250-byte record), 50% full".into(),
        ours: per_second(put_o),
        peer: per_second(put_p),
        ratio: format!("{:.1}×", put_p.as_secs_f64() / put_o.as_secs_f64()),
    });
    let (get_o, get_p) = (median(get_ours), median(get_peer));
    rows.push(Row {
        metric: "get (random device)".into(),
        ours: format!("{:.0} ns", get_o.as_secs_f64() * 1e9),
        peer: format!("{:.0} ns", get_p.as_secs_f64() * 1e9),
        ratio: format!("{:.0}×", get_p.as_secs_f64() / get_o.as_secs_f64()),
    });
    rows.push(Row {
        metric: "flash bytes written per logical byte, 50% full".into(),
        ours: format!("{:.2}", amplification.0),
        peer: format!("{:.2}", amplification.1),
        ratio: format!("{:.2}×", amplification.1 / amplification.0),
    });
}

fn wear_rows(rows: &mut Vec<Row>) {
    let (sectors, devices, updates) = (256, 1900, 100_000);
    let mut store = fill_ours(sectors, devices);
    let mut map = fill_peer(sectors, devices);
    let mut picks = Picks(7);
    let mut buf = vec![0; 512];
    for i in 0..updates {
        let n = picks.next(devices);
        store.put(&ours_key(n), &record(n, i)).unwrap();
        block_on(map.store_item(&mut buf, &mac(n), &&record(n, i)[..])).unwrap();
    }
    let spread = |counters: Vec<u64>| {
        let (min, max) = (counters.iter().min().copied().unwrap_or(0), counters.iter().max().copied().unwrap_or(0));
        format!("{min}..={max} (spread {})", max - min)
    };
    rows.push(Row {
        metric: format!("erase counts after {updates} updates"),
        ours: spread(store.flash().counters().iter().map(|c| c.erases).collect()),
        peer: spread(map.flash().0.counters().iter().map(|c| c.erases).collect()),
        ratio: String::new(),
    });
    let reads_before: u64 = store.flash().counters().iter().map(|c| c.reads).sum();
    for _ in 0..1000 {
        store.get(&ours_key(picks.next(devices)));
    }
    let reads_after: u64 = store.flash().counters().iter().map(|c| c.reads).sum();
    let mut fresh = peer(map.destroy().0.0, devices);
    let peer_before: u64 = fresh.flash().0.counters().iter().map(|c| c.reads).sum();
    for _ in 0..1000 {
        block_on(fresh.fetch_item::<&[u8]>(&mut buf, &mac(picks.next(devices)))).unwrap();
    }
    let peer_after: u64 = fresh.flash().0.counters().iter().map(|c| c.reads).sum();
    rows.push(Row {
        metric: "flash reads per lookup".into(),
        ours: format!("{:.1}", (reads_after - reads_before) as f64 / 1000.0),
        peer: format!("{:.1}", (peer_after - peer_before) as f64 / 1000.0),
        ratio: String::new(),
    });
}

/// What a power-cut sweep found.
#[derive(Default, Debug)]
struct CutFindings {
    cut_points: usize,
    lost_or_rolled_back: usize,
    errors: usize,
    panics: usize,
    recoveries: usize,
    lost_after_recovery: usize,
}

/// A store under test in the power-cut sweep: remount from raw flash, read every key, and
/// put after a remount.
trait CutSubject {
    fn read_all(flash: SimFlash<1024>, keys: usize) -> Result<Vec<Option<Vec<u8>>>, String>;
    /// Remounts, puts `writes` (stopping at the first refusal), noting the flash operations
    /// done after each acknowledged put in `done`; returns the flash and the count acknowledged.
    fn write_after_remount(
        flash: SimFlash<1024>,
        writes: &[([u8; 6], Vec<u8>)],
        done: &mut Vec<usize>,
    ) -> (SimFlash<1024>, usize);
}

struct Ours;
struct Theirs;

/// The peer on small sectors, with no cache: as after a reboot.
type SmallPeer = MapStorage<[u8; 6], AsyncSim<1024>, Cache<Uncached, Uncached, Uncached, [u8; 6]>>;

fn peer_small(flash: SimFlash<1024>) -> SmallPeer {
    let pages = flash.image().len() as u32;
    MapStorage::new(AsyncSim(flash), MapConfig::try_new(0..pages).expect("valid peer range"), Cache::new_uncached())
}

impl CutSubject for Ours {
    fn read_all(flash: SimFlash<1024>, keys: usize) -> Result<Vec<Option<Vec<u8>>>, String> {
        let store = Store::mount(flash).map_err(|e| e.to_string())?;
        Ok((0..keys).map(|k| store.get(&small_key(k)).map(<[u8]>::to_vec)).collect())
    }
    fn write_after_remount(
        flash: SimFlash<1024>,
        writes: &[([u8; 6], Vec<u8>)],
        done: &mut Vec<usize>,
    ) -> (SimFlash<1024>, usize) {
        let Ok(mut store) = Store::mount(flash.clone()) else { return (flash, 0) };
        let acked = writes
            .iter()
            .take_while(|(k, v)| {
                let ok = store.put(k, v).is_ok();
                done.push(store.flash().ops_done() as usize);
                ok
            })
            .count();
        (store.into_flash(), acked)
    }
}

impl CutSubject for Theirs {
    fn read_all(flash: SimFlash<1024>, keys: usize) -> Result<Vec<Option<Vec<u8>>>, String> {
        let mut map = peer_small(flash);
        let mut buf = vec![0; 256];
        (0..keys)
            .map(|k| {
                block_on(map.fetch_item::<&[u8]>(&mut buf, &small_key(k)))
                    .map(|v| v.map(<[u8]>::to_vec))
                    .map_err(|e| format!("{e:?}"))
            })
            .collect()
    }
    fn write_after_remount(
        flash: SimFlash<1024>,
        writes: &[([u8; 6], Vec<u8>)],
        done: &mut Vec<usize>,
    ) -> (SimFlash<1024>, usize) {
        let mut map = peer_small(flash);
        let mut buf = vec![0; 256];
        let acked = writes
            .iter()
            .take_while(|(k, v)| {
                let ok = block_on(map.store_item(&mut buf, k, &&v[..])).is_ok();
                done.push(map.flash().0.ops_done() as usize);
                ok
            })
            .count();
        (map.destroy().0.0, acked)
    }
}

fn small_key(k: usize) -> [u8; 6] {
    [b'k', b'e', b'y', 0, 0, k as u8]
}

/// Runs a puts-only workload on small sectors, cuts at sampled points inside every write and
/// erase, remounts from the raw image, and checks every key against acknowledged writes.
/// Every 20th cut also puts three more values after the remount (acknowledged), remounts
/// again, and checks that they are there: the case where a torn write poisons later ones.
fn power_cut_sweep<S: CutSubject>(multiwrite: bool) -> CutFindings {
    const PAGES: usize = 12;
    let keys = 30;
    let steps: Vec<([u8; 6], usize, Vec<u8>)> = {
        let mut picks = Picks(99);
        (0..1500)
            .map(|i| {
                let mut value = format!("{i}:").into_bytes();
                value.resize(8 + picks.next(90), b'v');
                let k = picks.next(keys);
                (small_key(k), k, value)
            })
            .collect()
    };
    let new_flash = || {
        let mut flash = SimFlash::<1024>::new(PAGES);
        if multiwrite {
            flash.allow_rewrites();
        }
        flash
    };
    // Record the run once, noting how many flash operations each put took.
    let mut flash = new_flash();
    flash.record();
    let mut done = Vec::new();
    let writes: Vec<([u8; 6], Vec<u8>)> = steps.iter().map(|(key, _, value)| (*key, value.clone())).collect();
    let (mut flash, acked) = S::write_after_remount(flash, &writes, &mut done);
    assert_eq!(acked, steps.len(), "the uncut run must succeed");
    let ops = flash.take_recording();

    let mut findings = CutFindings::default();
    let mut base = new_flash();
    let mut acked: Vec<Option<Vec<u8>>> = vec![None; keys];
    let mut step = 0;
    for (i, op) in ops.iter().enumerate() {
        while done[step] <= i {
            acked[steps[step].1] = Some(steps[step].2.clone());
            step += 1;
        }
        let cuts: Vec<Cut> = match op {
            FlashOp::Write { data, .. } => (0..=data.len())
                .step_by(7)
                .map(Cut::AfterByte)
                .chain((0..data.len() / WORD).step_by(3).map(|w| Cut::TornWord { word: w, seed: (i * 4 + 1) as u64 }))
                .collect(),
            FlashOp::Erase { from, to } => (0..=to - from)
                .step_by(256)
                .map(Cut::AfterByte)
                .chain([Cut::InterruptedErase { seed: i as u64 }])
                .collect(),
        };
        for cut in cuts {
            let mut flash = base.clone();
            flash.replay_cut(op, cut);
            flash.power_cycle();
            findings.cut_points += 1;
            let (_, k, new) = &steps[step];
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| S::read_all(flash.clone(), keys))) {
                Err(_) => findings.panics += 1,
                Ok(Err(_)) => findings.errors += 1,
                Ok(Ok(values)) => {
                    let bad = values
                        .iter()
                        .enumerate()
                        .any(|(key, got)| got != &acked[key] && !(key == *k && got.as_ref() == Some(new)));
                    findings.lost_or_rolled_back += bad as usize;
                }
            }
            if findings.cut_points % 20 != 0 {
                continue;
            }
            findings.recoveries += 1;
            let later: Vec<([u8; 6], Vec<u8>)> = (0..3)
                .map(|j| (small_key(j), format!("after cut {} #{j}", findings.cut_points).into_bytes()))
                .collect();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let (flash, written) = S::write_after_remount(flash, &later, &mut Vec::new());
                let mut flash = flash;
                flash.power_cycle();
                (written, S::read_all(flash, keys))
            }));
            match outcome {
                Err(_) => findings.panics += 1,
                Ok((_, Err(_))) => findings.errors += 1,
                Ok((written, Ok(values))) => {
                    let lost = later[..written].iter().enumerate().any(|(j, (_, v))| values[j].as_ref() != Some(v));
                    findings.lost_after_recovery += lost as usize;
                }
            }
        }
        base.replay(op).expect("replaying the recording");
    }
    findings
}

fn main() {
    let mut rows = Vec::new();
    mount_rows(&mut rows);
    file_mount_row(&mut rows);
    throughput_rows(&mut rows);
    wear_rows(&mut rows);
    println!("| metric | provbox store | sequential-storage 8 | peer / provbox |");
    println!("|---|---|---|---|");
    for row in rows {
        println!("| {} | {} | {} | {} |", row.metric, row.ours, row.peer, row.ratio);
    }
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ours = power_cut_sweep::<Ours>(false);
    let peer = power_cut_sweep::<Theirs>(true);
    std::panic::set_hook(quiet);
    println!();
    println!("| power-cut sweep (1,500 puts, 12 × 1 KiB) | provbox store | sequential-storage 8 |");
    println!("|---|---|---|");
    println!("| cut points, each remounted from the raw image | {} | {} |", ours.cut_points, peer.cut_points);
    println!(
        "| a key lost its acknowledged value or rolled back | {} | {} |",
        ours.lost_or_rolled_back, peer.lost_or_rolled_back
    );
    println!("| remount or read returned an error | {} | {} |", ours.errors, peer.errors);
    println!("| panics | {} | {} |", ours.panics, peer.panics);
    println!("| cuts followed by 3 more puts and a second remount | {} | {} |", ours.recoveries, peer.recoveries);
    println!(
        "| a put acknowledged after the remount was lost | {} | {} |",
        ours.lost_after_recovery, peer.lost_after_recovery
    );
}
