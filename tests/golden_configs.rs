//! Golden files: every vendor's files rendered for one fixed device and site, compared byte
//! for byte with `tests/golden/<vendor>/`. After a deliberate template change, regenerate
//! with `UPDATE_GOLDEN=1 cargo test --test golden_configs` and review the diff.

mod sample_site;

use std::path::Path;

/// The files compared for each sample phone, by MAC.
const FILES: &[(&str, &[&str])] = &[
    ("805ec0d57d72", &["805ec0d57d72.cfg", "y000000000096.cfg", "phonebook.xml"]),
    ("000413922d24", &["snomD785-000413922D24.htm", "snomD785.htm", "phonebook.xml"]),
    ("0004f2a1b2c3", &["0004f2a1b2c3-user.cfg", "000000000000.cfg", "0004f2a1b2c3-directory.xml"]),
    ("000b828aa872", &["cfg000b828aa872.xml", "phonebook.xml"]),
    ("0c383e07e16c", &["0c383e07e16c.cfg", "phonebook.xml"]),
    ("0c383e07e16d", &["0c383e07e16d.cfg"]),
    ("00562b043615", &["00562b043615.xml", "8841-3PCC.xml", "phonebook.xml"]),
    ("7c2f804df9a9", &["7C2F804DF9A9.xml"]),
    ("7c2f80ca21e4", &["7C2F80CA21E4.xml"]),
];

#[test]
fn rendered_configs_match_the_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    let phones: Vec<(&str, &str, &str)> =
        sample_site::PHONES.iter().chain(sample_site::FAMILIES).chain(sample_site::ADDED).copied().collect();
    let app = sample_site::app(dir.path(), &[("time.zone", "Europe/Berlin"), ("time.language", "de")], &phones);

    let ca_pem = std::fs::read_to_string(dir.path().join("tls/ca.crt")).unwrap().trim_end().to_string();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for (mac, vendor, _) in &phones {
        let files = FILES.iter().find(|(known, _)| known == mac).map(|(_, files)| *files);
        for file in files.unwrap_or_else(|| panic!("FILES lists no files for sample phone {mac}")) {
            // The CA is generated afresh for every run: the golden files hold a placeholder.
            let rendered = app
                .render(&mac.parse().unwrap(), file, true)
                .unwrap()
                .body
                .replace(&ca_pem.replace('\n', "&#10;"), "(the appliance's CA)")
                .replace(&ca_pem, "(the appliance's CA)");
            let path = golden.join(vendor).join(file);
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &rendered).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(rendered.as_str()) {
                mismatches.push(format!("{}:\n{rendered}", path.display()));
            }
            let masked = app.render(&mac.parse().unwrap(), file, false).unwrap().body;
            for secret in ["Gold3nPassw0rd-201", "Adm1nPassw0rd!", "TurnPassw0rd!", "2222222222222222"] {
                assert!(!masked.contains(secret), "{vendor}/{file} shows {secret} unmasked");
            }
        }
    }
    assert!(mismatches.is_empty(), "differs from golden (UPDATE_GOLDEN=1 to accept):\n{}", mismatches.join("\n"));
}
