//! The JSON API against its published contract, checked by tools provbox did not write:
//! schemathesis (property-based: schema-valid and schema-violating requests for every
//! operation, then stateful sequences, under every check it has) against a running appliance
//! with a token, and openapi-spec-validator on the document the appliance serves. Run by
//! `scripts/test-api-contract`, which installs both from PyPI; ignored otherwise.
//!
//! The appliance runs in a network namespace of the test's own, so that nothing the random
//! settings point at (redirect services, backup copy URLs) is reachable: every request the
//! run causes stays on the namespace's loopback.

mod fleet;

use std::path::{Path, PathBuf};
use std::process::Command;

use fleet::{Appliance, Netns, cli_ok, data_dir};

/// Operations schemathesis must have tested: the 25 documented ones but the two under
/// `/api/v1/update` (excluded: the upload would install a bundle) and the document itself,
/// which schemathesis does not count.
const OPERATIONS: usize = 22;

#[test]
#[ignore = "needs schemathesis and openapi-spec-validator (PROVBOX_CONTRACT_VENV) and root; scripts/test-api-contract"]
fn the_api_keeps_its_published_contract() {
    let venv = PathBuf::from(std::env::var("PROVBOX_CONTRACT_VENV").expect("PROVBOX_CONTRACT_VENV names the venv"));
    let netns = Netns::with_veth();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = data_dir(dir.path());
    let appliance = Appliance::start_in(Some(&netns), "127.0.0.1:0", data.clone(), None, &[]);
    let token = cli_ok(&data, &["admin", "api-token", "create", "contract"]).trim().to_string();
    let base = format!("https://{}", appliance.https);
    let ca = data.join("tls/ca.crt");
    let in_netns = |program: &Path| {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &netns.appliance]).arg(program).current_dir(dir.path());
        command
    };

    // The document as served (the site's vendors filled in) is valid OpenAPI 3.1.
    let served = dir.path().join("openapi.json");
    let fetch = format!(
        "import ssl, urllib.request; open({served:?}, 'wb').write(urllib.request.urlopen('{base}/api/v1/openapi.json', context=ssl.create_default_context(cafile={ca:?})).read())",
        served = served.display().to_string(),
        ca = ca.display().to_string(),
    );
    let status = in_netns(&venv.join("bin/python")).args(["-c", &fetch]).status().expect("python runs");
    assert!(status.success(), "the document could not be fetched");
    let document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&served).expect("document saved")).expect("the document is JSON");
    assert_eq!(document["openapi"], "3.1.0");
    let validated =
        Command::new(venv.join("bin/openapi-spec-validator")).arg(&served).output().expect("validator runs");
    let said = String::from_utf8_lossy(&validated.stdout).into_owned() + &String::from_utf8_lossy(&validated.stderr);
    println!("openapi-spec-validator: {said}");
    assert!(validated.status.success() && said.contains("OK"), "{said}");

    let examples = std::env::var("PROVBOX_CONTRACT_EXAMPLES").unwrap_or_else(|_| "100".into());
    let seed = std::env::var("PROVBOX_CONTRACT_SEED").unwrap_or_else(|_| "20261130".into());
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contract/schemathesis.toml");
    let run = in_netns(&venv.join("bin/schemathesis"))
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{base}/api/v1/openapi.json")])
        .arg("--tls-verify")
        .arg(&ca)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all", "--exclude-path", "/api/v1/update"])
        .args(["--max-examples", &examples, "--seed", &seed, "--workers", "1", "--no-color"])
        .output()
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&run.stdout).into_owned() + &String::from_utf8_lossy(&run.stderr);
    let summary = report.rfind("SUMMARY").map_or(report.as_str(), |at| &report[at..]);
    println!("schemathesis (seed {seed}, {examples} examples per operation):\n{report}");
    assert!(run.status.success(), "schemathesis found failures:\n{report}");
    let tested: usize = number_after(summary, "Tested:").expect("the summary counts the operations tested");
    assert_eq!(tested, OPERATIONS, "{summary}");
    let generated = number_before(summary, " generated, ").expect("the summary counts the test cases");
    assert!(generated >= OPERATIONS * 10, "only {generated} test cases");
    // The run went through the API: the audit log names the token for what it changed.
    let audit = cli_ok(&data, &["audit"]);
    assert!(audit.contains("api:contract"), "{audit}");
    drop(appliance);
}

/// The number after `label` in `text` (`Tested: 22`).
fn number_after(text: &str, label: &str) -> Option<usize> {
    let rest = &text[text.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// The number just before `label` in `text` (`868 generated`).
fn number_before(text: &str, label: &str) -> Option<usize> {
    text[..text.find(label)?].split_whitespace().last()?.parse().ok()
}
