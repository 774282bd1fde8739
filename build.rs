//! Embeds the stock templates (`templates/<vendor>/*`) into the binary, so the appliance
//! needs no template files on disk; files under `<data>/templates/` override them. Also
//! embeds the API's OpenAPI document without its indentation.

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
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(Path::new(&out_dir).join("stock_templates.rs"), out).expect("OUT_DIR writable");

    let document = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/web/openapi.json");
    println!("cargo:rerun-if-changed={}", document.display());
    let text = std::fs::read_to_string(&document).expect("src/web/openapi.json readable");
    std::fs::write(Path::new(&out_dir).join("openapi.json"), minified(&text)).expect("OUT_DIR writable");
}

/// `json` without the white space between its tokens (strings kept as they are).
fn minified(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if !c.is_ascii_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}
