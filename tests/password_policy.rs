//! The site's password levels through the JSON API and the CLI of a running appliance:
//! `password1234` refused at `strong` (long and mixed, but common), a PBX-issued 8-digit
//! secret taken at `pbx` with the warning, the devices below the level listed and their
//! passwords rotated, the admin password held to its own level, and each change audited.

mod fleet;

use std::io::Write;
use std::process::Stdio;

use fleet::{Appliance, cli, cli_ok, provbox_command};

async fn call(appliance: &Appliance, method: &str, path: &str, token: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, json, _) = fleet::api(appliance, method, path, token, body).await;
    (status, json)
}

fn device(mac: &str, password: &str) -> String {
    serde_json::json!({
        "mac": mac, "vendor": "yealink", "model": "T54W",
        "lines": [{ "extension": "100", "name": "Ann Lee", "sip_password": password }]
    })
    .to_string()
}

/// `provbox admin set-password` with `password` on standard input.
fn set_admin_password(appliance: &Appliance, password: &str) -> (bool, String) {
    let mut child = provbox_command()
        .arg("--data")
        .arg(&appliance.data)
        .args(["admin", "set-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_level_takes_what_it_should_and_lists_what_falls_short() {
    let appliance = Appliance::start();
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "pbx"]).trim().to_string();
    let set = |name: &'static str, value: &'static str| {
        let body = serde_json::json!({ "value": value }).to_string();
        let (appliance, token) = (&appliance, token.clone());
        async move { call(appliance, "PUT", &format!("/api/v1/settings/{name}"), &token, &body).await }
    };
    let sip_level = |value: &'static str| set("policy.sip_password", value);

    // strong (the default): long and mixed is not enough when it is common.
    let (status, body) =
        call(&appliance, "POST", "/api/v1/devices", &token, &device("805ec0000001", "password1234")).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("on the list of common passwords"), "{body}");
    let (status, body) = call(&appliance, "POST", "/api/v1/devices", &token, &device("805ec0000001", "48213907")).await;
    assert_eq!(status, 422, "{body}");
    let (ok, stderr) = set_admin_password(&appliance, "password1234");
    assert!(!ok && stderr.contains("common passwords"), "{stderr}");

    // pbx: a PBX-issued 8-digit secret is taken, and the policy warns about it.
    assert_eq!(sip_level("pbx").await.0, 200);
    let (status, body) = call(&appliance, "POST", "/api/v1/devices", &token, &device("805ec0000001", "48213907")).await;
    assert_eq!(status, 200, "{body}");
    let (status, report) = call(&appliance, "GET", "/api/v1/password-policy", &token, "").await;
    assert_eq!(status, 200);
    assert_eq!(report["sip_level"], "pbx");
    assert_eq!(report["measured_against"], "standard");
    assert!(report["warning"].as_str().unwrap().contains("not checked"), "{report}");
    assert_eq!(report["devices"][0]["mac"], "805ec0000001");
    assert!(report["devices"][0]["lines"][0]["reason"].as_str().unwrap().contains("classes"), "{report}");
    let shown = cli_ok(&appliance.data, &["settings", "policy"]);
    assert!(shown.contains("warning: SIP passwords are not checked") && shown.contains("805ec0000001"), "{shown}");

    // standard: 8 mixed characters pass, the numeric secret does not.
    assert_eq!(sip_level("standard").await.0, 200);
    let (status, body) = call(&appliance, "POST", "/api/v1/devices", &token, &device("805ec0000002", "48213907")).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = call(&appliance, "POST", "/api/v1/devices", &token, &device("805ec0000002", "Kx7-plum")).await;
    assert_eq!(status, 200, "{body}");
    let (_, report) = call(&appliance, "GET", "/api/v1/password-policy", &token, "").await;
    assert!(report["warning"].is_null());
    let listed: Vec<&str> = report["devices"].as_array().unwrap().iter().map(|d| d["mac"].as_str().unwrap()).collect();
    assert_eq!(listed, ["805ec0000001"]);

    // strong again: both fall short; rotating gives new passwords that pass and are served.
    assert_eq!(sip_level("strong").await.0, 200);
    let (_, report) = call(&appliance, "GET", "/api/v1/password-policy", &token, "").await;
    assert_eq!(report["devices"].as_array().unwrap().len(), 2, "{report}");
    let (status, rotated) = call(&appliance, "POST", "/api/v1/devices/805ec0000002/rotate-passwords", &token, "").await;
    assert_eq!(status, 200, "{rotated}");
    let new_password = rotated["lines"][0]["password"].as_str().unwrap().to_string();
    assert!(new_password.len() >= 12 && new_password != "Kx7-plum");
    let revealed = cli_ok(&appliance.data, &["render", "805ec0000002", "805ec0000002.cfg", "--reveal"]);
    assert!(revealed.contains(&format!("account.1.password = {new_password}")), "{revealed}");
    let printed = cli_ok(&appliance.data, &["device", "rotate-passwords", "805ec0000001"]);
    assert!(printed.contains("shown this once") && printed.contains("extension 100"), "{printed}");
    let (_, report) = call(&appliance, "GET", "/api/v1/password-policy", &token, "").await;
    assert!(report["devices"].as_array().unwrap().is_empty(), "{report}");
    let again = cli_ok(&appliance.data, &["device", "rotate-passwords", "805ec0000001"]);
    assert!(again.contains("nothing rotated"), "{again}");

    // The admin password has its own level.
    let (ok, stderr) = set_admin_password(&appliance, "Kx7-plum9");
    assert!(!ok && stderr.contains("at least 12"), "{stderr}");
    assert_eq!(set("policy.admin_password", "standard").await.0, 200);
    assert!(set_admin_password(&appliance, "Kx7-plum9").0);
    let (status, body) = set("policy.admin_password", "pbx").await;
    assert_eq!(status, 422, "the admin password has no pbx level: {body}");

    let audit = cli_ok(&appliance.data, &["audit"]);
    for line in [
        "set policy.sip_password = pbx",
        "set policy.sip_password = standard",
        "set policy.admin_password = standard",
        "rotated the SIP passwords of 805ec0000002 (extensions 100)",
    ] {
        assert!(audit.contains(line), "{line} in {audit}");
    }
    assert!(!audit.contains(&new_password), "no password in the audit log");
    let (ok, _, stderr) = cli(&appliance.data, &["settings", "set", "policy.sip_password", "lax"]);
    assert!(!ok && stderr.contains("strong, standard, pbx"), "{stderr}");
}
