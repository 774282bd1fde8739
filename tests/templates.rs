//! Template overrides through the JSON API and the CLI, against a running appliance over
//! real HTTPS: list, show, preview for a device (secrets masked, nothing saved), edits that
//! do not render or do not parse refused with their line, save (audited with fingerprints,
//! the phone's config pending, then current once it fetched the new file), revert, and
//! every vendor's stock templates accepted as overrides (the format checks pass what phones
//! really get).

mod fleet;

use fleet::{Appliance, Connection, Phone, cli, cli_ok};

const MAC: &str = "805ec0d57d72";
const MARKER: &str = "features.provbox_test_marker = 1";

async fn call(appliance: &Appliance, method: &str, path: &str, token: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, json, _) = fleet::api(appliance, method, path, token, body).await;
    (status, json)
}

fn edit_body(source: &str, mac: Option<&str>) -> String {
    serde_json::json!({ "source": source, "mac": mac }).to_string()
}

/// The phone fetches its device file through its steady URL; returns the body.
async fn fetch_steady(appliance: &Appliance, phone: &Phone) -> String {
    let steady = Appliance::path_of(appliance.device(&phone.mac)["steady_url"].as_str().unwrap());
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    phone.boot(&mut connection, &steady).await.pop().unwrap().1.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_is_previewed_checked_saved_fetched_and_reverted_over_the_api() {
    let appliance = Appliance::start();
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "pbx"]).trim().to_string();
    appliance.add(MAC, "yealink", "T54W");
    let phone = Phone::yealink(MAC);
    appliance.enroll(&phone).await;
    assert_eq!(appliance.device(MAC)["config"], "current");

    // The list: templates, not profiles, tables or raw redirect files.
    let (status, list) = call(&appliance, "GET", "/api/v1/templates", &token, "").await;
    assert_eq!(status, 200, "{list}");
    let yealink = list.as_array().unwrap().iter().find(|v| v["vendor"] == "yealink").unwrap();
    let files: Vec<&str> =
        yealink["templates"].as_array().unwrap().iter().map(|t| t["file"].as_str().unwrap()).collect();
    assert!(files.contains(&"device.cfg") && files.contains(&"common.cfg"), "{files:?}");
    assert!(files.iter().all(|f| !f.ends_with(".toml") && !f.ends_with(".tsv")), "{files:?}");
    let gigaset = list.as_array().unwrap().iter().find(|v| v["vendor"] == "gigaset").unwrap();
    assert!(gigaset["templates"].as_array().unwrap().iter().all(|t| !t["file"].as_str().unwrap().ends_with(".bin")));
    for hidden in ["yealink/vendor.toml", "yealink/zones.tsv", "gigaset/chain-sifsroot.bin", "acme/device.cfg"] {
        assert_eq!(
            call(&appliance, "GET", &format!("/api/v1/templates/{hidden}"), &token, "").await.0,
            404,
            "{hidden}"
        );
    }

    let (status, shown) = call(&appliance, "GET", "/api/v1/templates/yealink/device.cfg", &token, "").await;
    assert_eq!(status, 200);
    assert_eq!(shown["overridden"], false);
    assert_eq!(shown["current"], shown["stock"]);
    assert_eq!(shown["diff"], "");
    let stock = shown["current"].as_str().unwrap().to_string();
    let edited = format!("{stock}{MARKER}\n");

    // Preview: rendered for the device, secrets masked, nothing saved.
    let (status, preview) = call(
        &appliance,
        "POST",
        "/api/v1/templates/yealink/device.cfg/preview",
        &token,
        &edit_body(&edited, Some(MAC)),
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    let file = &preview["files"][0];
    assert_eq!(file["requested"], format!("{MAC}.cfg"));
    let body = file["body"].as_str().unwrap();
    assert!(body.contains(MARKER), "{body}");
    assert!(body.contains("account.1.password = ********"), "secrets masked: {body}");
    assert_eq!(appliance.device(MAC)["config"], "current", "a preview changes nothing");
    let (status, body) =
        call(&appliance, "POST", "/api/v1/templates/yealink/device.cfg/preview", &token, &edit_body(&edited, None))
            .await;
    assert_eq!(status, 400, "{body}");

    // Refused edits, each with its line: minijinja syntax, a line without a key, broken XML.
    let broken_syntax = format!("{stock}{{% if device %}}\n");
    let (status, body) =
        call(&appliance, "PUT", "/api/v1/templates/yealink/device.cfg", &token, &edit_body(&broken_syntax, None)).await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.starts_with("template refused, nothing saved") && message.contains("line"), "{message}");
    let no_key = format!("{stock} = orphan value\n");
    let (status, body) =
        call(&appliance, "PUT", "/api/v1/templates/yealink/device.cfg", &token, &edit_body(&no_key, None)).await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains(&format!("for {MAC} (T54W): {MAC}.cfg as rendered, line")), "{message}");
    assert!(message.contains("no key") && message.matches("template refused").count() == 1, "{message}");
    // A refusal quotes the line, and the line is rendered with secrets masked.
    let revealed = cli_ok(&appliance.data, &["render", MAC, &format!("{MAC}.cfg"), "--reveal"]);
    let password = revealed.lines().find_map(|l| l.strip_prefix("account.1.password = ")).unwrap().to_string();
    let no_equals = stock.replacen(".password = {{ line.sip_password }}", ".password {{ line.sip_password }}", 1);
    assert_ne!(no_equals, stock);
    let (status, body) =
        call(&appliance, "PUT", "/api/v1/templates/yealink/device.cfg", &token, &edit_body(&no_equals, None)).await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("account.1.password ********") && !message.contains(&password), "{message}");
    let phonebook = cli_ok(&appliance.data, &["template", "show", "yealink", "phonebook.xml"]);
    let unclosed = phonebook.replacen("</", "<open></", 1);
    let (status, body) =
        call(&appliance, "PUT", "/api/v1/templates/yealink/phonebook.xml", &token, &edit_body(&unclosed, None)).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not well-formed"), "{body}");
    assert_eq!(
        call(&appliance, "GET", "/api/v1/templates/yealink/device.cfg", &token, "").await.1["overridden"],
        false
    );
    assert_eq!(appliance.device(MAC)["config"], "current", "a refused edit changes nothing");

    // Save: audited with both fingerprints, the phone's config pending until it fetches.
    let (status, saved) =
        call(&appliance, "PUT", "/api/v1/templates/yealink/device.cfg", &token, &edit_body(&edited, None)).await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["changed_devices"], serde_json::json!([MAC]));
    assert_ne!(saved["before"], saved["after"]);
    let audit = cli_ok(&appliance.data, &["audit"]);
    let line = format!(
        "changed template yealink/device.cfg (sha256 {} -> {})",
        saved["before"].as_str().unwrap(),
        saved["after"].as_str().unwrap()
    );
    assert!(audit.contains(&line), "{audit}");
    assert_eq!(saved["affected"], serde_json::json!([MAC]));
    assert_eq!(appliance.device(MAC)["config"], "pending");
    // Reprovision the affected phones: check-sync goes to the pending one (nothing answers
    // SIP on loopback here, and the result says so).
    let (status, sent) = call(&appliance, "POST", "/api/v1/templates/yealink/device.cfg/reprovision", &token, "").await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent[0]["mac"], MAC, "{sent}");
    assert_eq!(sent[0]["answered"], false, "{sent}");
    let (_, shown) = call(&appliance, "GET", "/api/v1/templates/yealink/device.cfg", &token, "").await;
    assert_eq!(shown["overridden"], true);
    assert!(shown["diff"].as_str().unwrap().contains(&format!("+{MARKER}")), "{shown}");
    assert!(appliance.data.join("templates/yealink/device.cfg").is_file());
    let fetched = fetch_steady(&appliance, &phone).await;
    assert!(fetched.contains(MARKER), "{fetched}");
    assert_eq!(appliance.device(MAC)["config"], "current");
    let system_overrides = call(&appliance, "GET", "/api/v1/templates", &token, "").await.1;
    let overridden: Vec<&serde_json::Value> = system_overrides
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v["templates"].as_array().unwrap())
        .filter(|t| t["overridden"] == true)
        .collect();
    assert_eq!(overridden.len(), 1);

    // Once the phone has fetched it, none is left to reprovision.
    let (status, sent) = call(&appliance, "POST", "/api/v1/templates/yealink/device.cfg/reprovision", &token, "").await;
    assert_eq!((status, sent.as_array().map(Vec::len)), (200, Some(0)), "{sent}");
    // A shared file's change affects every phone that gets it, pending or not.
    let common = cli_ok(&appliance.data, &["template", "show", "yealink", "common.cfg"]);
    let common_edit = edit_body(&format!("{common}{MARKER}\n"), None);
    let (status, saved_common) =
        call(&appliance, "PUT", "/api/v1/templates/yealink/common.cfg", &token, &common_edit).await;
    assert_eq!(status, 200, "{saved_common}");
    assert_eq!(saved_common["changed_devices"], serde_json::json!([]));
    assert_eq!(saved_common["affected"], serde_json::json!([MAC]));
    assert_eq!(call(&appliance, "DELETE", "/api/v1/templates/yealink/common.cfg", &token, "").await.0, 200);

    // Revert: stock again, pending again, audited.
    let (status, reverted) = call(&appliance, "DELETE", "/api/v1/templates/yealink/device.cfg", &token, "").await;
    assert_eq!(status, 200, "{reverted}");
    assert_eq!(reverted["after"], saved["before"]);
    assert!(!appliance.data.join("templates/yealink/device.cfg").exists());
    assert_eq!(appliance.device(MAC)["config"], "pending");
    assert!(cli_ok(&appliance.data, &["audit"]).contains("reverted template yealink/device.cfg to stock"));
    assert!(!fetch_steady(&appliance, &phone).await.contains(MARKER));
    let (status, body) = call(&appliance, "DELETE", "/api/v1/templates/yealink/device.cfg", &token, "").await;
    assert_eq!(status, 409, "reverting stock: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vendors_stock_templates_pass_the_checks_they_are_held_to() {
    let appliance = Appliance::start();
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "pbx"]).trim().to_string();
    // Devices of several models, so model families render with real models too.
    for (mac, vendor, model) in [
        ("805ec0000001", "yealink", "T54W"),
        ("000413000002", "snom", "D785"),
        ("0004f2000003", "polycom", "VVX400"),
        ("000b82000004", "grandstream", "GXP2135"),
        ("0c383e000005", "fanvil", "X4U"),
        ("0c383e000006", "fanvil", "X3S"),
        ("7c2f80000007", "gigaset", "N720 DM PRO"),
        ("7c2f80000008", "gigaset", "N510 IP PRO"),
    ] {
        appliance.add(mac, vendor, model);
    }
    let (_, list) = call(&appliance, "GET", "/api/v1/templates", &token, "").await;
    let mut checked = 0;
    for vendor in list.as_array().unwrap() {
        let id = vendor["vendor"].as_str().unwrap();
        for template in vendor["templates"].as_array().unwrap() {
            let path = format!("/api/v1/templates/{id}/{}", template["file"].as_str().unwrap());
            let stock = call(&appliance, "GET", &path, &token, "").await.1["stock"].as_str().unwrap().to_string();
            let (status, saved) = call(&appliance, "PUT", &path, &token, &edit_body(&stock, None)).await;
            assert_eq!(status, 200, "{path}: {saved}");
            assert!(saved["changed_devices"].as_array().unwrap().is_empty(), "{path}: stock changes nothing");
            assert_eq!(call(&appliance, "DELETE", &path, &token, "").await.0, 200, "{path}");
            checked += 1;
        }
    }
    // Every stock template but the profiles, tables and raw redirect files.
    let stock_templates = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/templates"))
        .unwrap()
        .flatten()
        .filter(|vendor| vendor.path().is_dir())
        .flat_map(|vendor| std::fs::read_dir(vendor.path()).unwrap().flatten())
        .filter(|file| {
            let name = file.file_name().to_string_lossy().into_owned();
            !name.ends_with(".toml") && !name.ends_with(".tsv") && !name.ends_with(".bin")
        })
        .count();
    assert_eq!(checked, stock_templates);
}

#[test]
fn the_cli_lists_shows_previews_edits_and_reverts() {
    let appliance = Appliance::start();
    appliance.add(MAC, "yealink", "T54W");
    let listed = cli_ok(&appliance.data, &["template", "list"]);
    assert!(
        listed.lines().any(|l| l.contains("device.cfg") && l.contains("stock") && l.contains("{mac}.cfg")),
        "{listed}"
    );
    let stock = cli_ok(&appliance.data, &["template", "show", "yealink", "device.cfg"]);
    let dir = tempfile::tempdir().unwrap();
    let edited = dir.path().join("device.cfg");
    std::fs::write(&edited, format!("{stock}{MARKER}\n")).unwrap();
    let edited_arg = edited.to_str().unwrap();

    let preview =
        cli_ok(&appliance.data, &["template", "preview", "yealink", "device.cfg", "--mac", MAC, "--from", edited_arg]);
    assert!(preview.contains(MARKER) && preview.contains("********"), "{preview}");

    let broken = dir.path().join("broken.cfg");
    std::fs::write(&broken, format!("{stock}no separator here\n")).unwrap();
    let (ok, _, stderr) =
        cli(&appliance.data, &["template", "edit", "yealink", "device.cfg", "--from", broken.to_str().unwrap()]);
    assert!(!ok && stderr.contains("is not a `key = value` line") && stderr.contains("line"), "{stderr}");

    let saved = cli_ok(&appliance.data, &["template", "edit", "yealink", "device.cfg", "--from", edited_arg]);
    assert!(saved.contains("yealink/device.cfg saved (sha256"), "{saved}");
    assert!(
        cli_ok(&appliance.data, &["template", "list"])
            .lines()
            .any(|l| l.contains("device.cfg") && l.contains("overridden"))
    );
    let diff = cli_ok(&appliance.data, &["template", "show", "yealink", "device.cfg", "--diff"]);
    assert!(diff.contains(&format!("+{MARKER}")) && diff.contains("--- stock"), "{diff}");
    assert_eq!(cli_ok(&appliance.data, &["template", "show", "yealink", "device.cfg", "--stock"]), stock);
    assert!(cli_ok(&appliance.data, &["render", MAC, &format!("{MAC}.cfg")]).contains(MARKER));

    // An editor that changes nothing saves nothing.
    let (ok, _, stderr) =
        fleet::cli_env(&appliance.data, &["template", "edit", "yealink", "device.cfg"], &[("EDITOR", "true")]);
    assert!(!ok && stderr.contains("no change"), "{stderr}");

    let reverted = cli_ok(&appliance.data, &["template", "revert", "yealink", "device.cfg"]);
    assert!(reverted.contains("reverted to stock"), "{reverted}");
    assert!(!cli_ok(&appliance.data, &["render", MAC, &format!("{MAC}.cfg")]).contains(MARKER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_family_template_is_checked_without_a_phone_of_that_family() {
    let appliance = Appliance::start();
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "pbx"]).trim().to_string();
    // Only an X-U phone: the X3/X4 template renders for nobody here, and is still checked.
    appliance.add("0c383e000005", "fanvil", "X4U");
    let path = "/api/v1/templates/fanvil/device-legacy.cfg";
    let stock = call(&appliance, "GET", path, &token, "").await.1["stock"].as_str().unwrap().to_string();
    let (status, body) = call(&appliance, "PUT", path, &token, &edit_body(&format!("{stock} = orphan\n"), None)).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("for a sample fanvil phone"), "{body}");
    // An X3S phone gets the family's file, not the catch-all entry after it.
    appliance.add("0c383e000006", "fanvil", "X3S");
    let (status, body) = call(
        &appliance,
        "POST",
        "/api/v1/templates/fanvil/device.cfg/preview",
        &token,
        &edit_body("<<VOIP CONFIG FILE>>Version:2.0000000000\n", Some("0c383e000006")),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("gets no file from fanvil/device.cfg"), "{body}");

    // The preview for the X-U phone says it gets nothing from that template.
    let preview = edit_body(&stock, Some("0c383e000005"));
    let (status, body) = call(&appliance, "POST", &format!("{path}/preview"), &token, &preview).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("gets no file from fanvil/device-legacy.cfg"), "{body}");
    // A part that others include is checked for its syntax, and through what includes it.
    let (status, body) =
        call(&appliance, "PUT", "/api/v1/templates/fanvil/locale.cfg", &token, &edit_body("{% if %}\n", None)).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("line 1"), "{body}");
}
