//! The import benchmark: `App::import` of N new devices (a CSV of Yealink, Snom, Poly and
//! Grandstream phones) into a fresh file-backed store of the default size, as
//! `provbox device import` does it. Prints the median, minimum and maximum of several runs
//! per size and the time per device, which stays flat when the import is linear.
//!
//! Run with `cargo bench --bench import` (`-- --runs 7 --sizes 1000,2500,5000`).

use std::time::Instant;

use provbox::app::{App, Site};
use provbox::store::records::Db;
use provbox::store::{Store, backend};

const MODELS: [(&str, &str); 4] =
    [("yealink", "T54W"), ("snom", "D785"), ("polycom", "VVX400"), ("grandstream", "GXP2135")];

fn csv(rows: usize) -> String {
    let mut text = String::from("mac,vendor,model,extension,name\n");
    for i in 0..rows {
        let (vendor, model) = MODELS[i % MODELS.len()];
        text.push_str(&format!("0004f2{i:06x},{vendor},{model},{},Desk {i}\n", 10_000 + i));
    }
    text
}

/// Seconds one import of `rows` devices takes into a new store.
fn import_once(text: &str, rows: usize) -> f64 {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let flash = backend::open(&dir.path().join("store.bin"), Some(backend::DEFAULT_CAPACITY)).expect("a store file");
    let site = Site {
        data_dir: dir.path().to_path_buf(),
        default_base_url: "https://192.0.2.1:8443/".into(),
        bootstrap_url: "http://192.0.2.1:8080/".into(),
    };
    let app = App::new(Db::new(Store::format(flash).expect("a blank store")), site).expect("an appliance");
    let start = Instant::now();
    let report = app.import(text, false, "bench").unwrap_or_else(|error| panic!("the import: {error}"));
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(report.imported, rows);
    seconds
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| args.windows(2).find(|pair| pair[0] == name).map(|pair| pair[1].clone());
    let runs: usize = value("--runs").and_then(|v| v.parse().ok()).unwrap_or(5);
    let sizes: Vec<usize> = value("--sizes")
        .unwrap_or_else(|| "1000,2500,5000".into())
        .split(',')
        .filter_map(|size| size.parse().ok())
        .collect();
    println!("| devices | median | min | max | per device (median) |");
    println!("|---:|---:|---:|---:|---:|");
    for rows in sizes {
        let text = csv(rows);
        let mut times: Vec<f64> = (0..runs).map(|_| import_once(&text, rows)).collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "| {rows} | {:.3} s | {:.3} s | {:.3} s | {:.1} µs |",
            median,
            times[0],
            times[times.len() - 1],
            median / rows as f64 * 1e6
        );
    }
}
