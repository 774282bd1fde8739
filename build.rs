//! Embeds the stock templates (`templates/<vendor>/*`) into the binary, so the appliance
//! needs no template files on disk; files under `<data>/templates/` override them.

use std::fmt::Write;
use std::path::Path;

fn main() {
    // The floor for a plausible wall clock (src/clock.rs): SOURCE_DATE_EPOCH for
    // reproducible builds, else the time of this build.
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let build_time = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    });
    println!("cargo:rustc-env=PROVBOX_BUILD_TIME={build_time}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    let mut vendors: Vec<_> = std::fs::read_dir(&root).expect("templates/ exists").flatten().collect();
    vendors.sort_by_key(|entry| entry.file_name());
    for vendor in vendors.iter().filter(|entry| entry.path().is_dir()) {
        println!("cargo:rerun-if-changed={}", vendor.path().display());
        let mut entries: Vec<_> = std::fs::read_dir(vendor.path()).expect("vendor dir readable").flatten().collect();
        entries.sort_by_key(|entry| entry.file_name());
        for file in entries.iter().filter(|entry| entry.path().is_file()) {
            let name = format!("{}/{}", vendor.file_name().to_string_lossy(), file.file_name().to_string_lossy());
            files.push((name, file.path()));
        }
    }
    let mut out = String::from(
        "/// Stock templates as (`vendor/file`, contents), sorted.\npub const STOCK: &[(&str, &str)] = &[\n",
    );
    for (name, path) in files {
        writeln!(out, "    ({name:?}, include_str!({:?})),", path.display().to_string()).expect("String write");
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("stock_templates.rs");
    std::fs::write(dest, out).expect("OUT_DIR writable");
}
