//! The JSON API and /metrics over real HTTPS: bearer tokens, CRUD, unlock, settings, errors
//! as JSON, the OpenAPI document and Prometheus counters.

mod fleet;

use std::time::Duration;

use fleet::{Appliance, Connection, Phone, api as call, cli_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_a_token_and_manages_devices() {
    let appliance = Appliance::start();
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "pbx"]).trim().to_string();
    assert!(token.starts_with("pbx_"), "{token}");
    assert!(cli_ok(&appliance.data, &["admin", "api-token", "list"]).contains("pbx"));

    let (status, body, _) = call(&appliance, "GET", "/api/v1/devices", "pbx_00_00", "").await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("API token"));
    // Well-formed tokens with the wrong secret or an unknown id are refused too.
    let (id, secret) = token.trim_start_matches("pbx_").split_once('_').unwrap();
    let wrong_secret = format!("pbx_{id}_{}", "0".repeat(secret.len()));
    let unknown_id = format!("pbx_{}_{secret}", "0".repeat(id.len()));
    for bad in [wrong_secret, unknown_id] {
        assert_eq!(call(&appliance, "GET", "/api/v1/devices", &bad, "").await.0, 401, "{bad}");
    }

    let spec =
        r#"{"mac":"805ec0d57d72","vendor":"yealink","model":"T54W","lines":[{"extension":"100","name":"Ann Lee"}]}"#;
    let (status, device, _) = call(&appliance, "POST", "/api/v1/devices", &token, spec).await;
    assert_eq!(status, 200, "{device}");
    assert!(device["enrollment_url"].as_str().unwrap().contains("/e/"));
    let (status, body, _) = call(&appliance, "POST", "/api/v1/devices", &token, spec).await;
    assert_eq!(status, 409, "{body}");
    let (status, body, _) = call(&appliance, "POST", "/api/v1/devices", &token, "{\"mac\":").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().starts_with("malformed JSON"), "{body}");
    let (status, body, _) = call(&appliance, "GET", "/api/v1/devices/not-a-mac", &token, "").await;
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = call(&appliance, "GET", "/api/v1/devices/805ec0d57d73", &token, "").await;
    assert_eq!(status, 404);

    let (status, unlocked, _) = call(&appliance, "POST", "/api/v1/devices/805ec0d57d72/unlock", &token, "").await;
    assert_eq!(status, 200);
    assert_ne!(unlocked["enrollment_url"], device["enrollment_url"]);
    let edit =
        r#"{"mac":"805ec0d57d72","vendor":"yealink","model":"T57W","lines":[{"extension":"100","name":"Ann Smith"}]}"#;
    let (status, edited, _) = call(&appliance, "PUT", "/api/v1/devices/805ec0d57d72", &token, edit).await;
    assert_eq!(
        (status, edited["model"].as_str(), edited["lines"][0]["name"].as_str()),
        (200, Some("T57W"), Some("Ann Smith"))
    );
    let other_vendor = edit.replace("yealink", "snom");
    let (status, body, _) = call(&appliance, "PUT", "/api/v1/devices/805ec0d57d72", &token, &other_vendor).await;
    assert_eq!(status, 422, "well-formed, but against a rule");
    assert!(body["error"].as_str().unwrap().contains("vendor cannot change"), "{body}");
    let (status, list, _) = call(&appliance, "GET", "/api/v1/devices", &token, "").await;
    assert_eq!((status, list.as_array().unwrap().len()), (200, 1));

    let (status, body, _) = call(&appliance, "PUT", "/api/v1/settings/sip.port", &token, r#"{"value":"99999"}"#).await;
    assert_eq!(status, 422);
    assert!(body["error"].as_str().unwrap().contains("1 to 65535"));
    let (status, _, _) = call(&appliance, "PUT", "/api/v1/settings/sip.port", &token, r#"{"value":"5070"}"#).await;
    assert_eq!(status, 200);
    let (_, settings, _) = call(&appliance, "GET", "/api/v1/settings", &token, "").await;
    let port = settings.as_array().unwrap().iter().find(|s| s["name"] == "sip.port").unwrap();
    assert_eq!(port["value"], "5070");
    let (status, seen, _) = call(&appliance, "GET", "/api/v1/phones-seen", &token, "").await;
    assert_eq!((status, seen.as_array().map(Vec::len)), (200, Some(0)));
    let (status, redirect, _) = call(&appliance, "GET", "/api/v1/redirect", &token, "").await;
    assert_eq!(status, 200);
    assert!(redirect["services"].is_array());

    let (status, removed, _) = call(&appliance, "DELETE", "/api/v1/devices/805ec0d57d72", &token, "").await;
    assert_eq!((status, removed["removed"].as_str()), (200, Some("805ec0d57d72")));
    // The log names the token as the actor.
    assert!(appliance.wait_for_log("api:pbx"), "{}", appliance.log());

    // Revoked tokens stop working.
    cli_ok(&appliance.data, &["admin", "api-token", "revoke", "pbx"]);
    let (status, _, _) = call(&appliance, "GET", "/api/v1/devices", &token, "").await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_and_metrics() {
    let appliance = Appliance::start();
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "prometheus"]).trim().to_string();
    let (status, _, _) = call(&appliance, "GET", "/metrics", "wrong", "").await;
    assert_eq!(status, 401, "metrics need a token");
    let phone = Phone::yealink("805ec0d57d72");
    cli_ok(
        &appliance.data,
        &[
            "device", "add", "--mac", &phone.mac, "--vendor", "yealink", "--model", "T54W", "--ext", "100", "--name",
            "Ann Lee",
        ],
    );
    let device = appliance.device(&phone.mac);
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    phone.boot(&mut connection, &Appliance::path_of(device["enrollment_url"].as_str().unwrap())).await;
    let (status, _, text) = call(&appliance, "GET", "/metrics", &token, "").await;
    assert_eq!(status, 200);
    let value = |series: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} in {text}"))
    };
    assert!(value("provbox_fetches_total{result=\"served\"}") >= 2, "{text}");
    assert!(value("provbox_fetches_total{result=\"not_found\"}") >= 1, "{text}");
    assert_eq!(value("provbox_enrollment_events_total{event=\"started\"}"), 1);
    assert!(value("provbox_tls_handshakes_total{result=\"ok\"}") >= 2);
    assert_eq!(value("provbox_devices"), 1);
    assert!(value("provbox_store_capacity_bytes") > 0);
    // The SIP responder's counters: a junk datagram shows as malformed.
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    junk.send_to(b"not SIP at all", appliance.sip).unwrap();
    assert!(appliance.wait_for_log("SIP: dropped"));
    let (_, _, text) = call(&appliance, "GET", "/metrics", &token, "").await;
    let malformed = text
        .lines()
        .find(|l| l.starts_with("provbox_sip_datagrams_total{result=\"malformed\"}"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(malformed.ends_with(" 1"), "{malformed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_checked_first_and_refusals_say_whose_fault() {
    let appliance = Appliance::start();
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "pbx"]).trim().to_string();
    // Without a token, a malformed body or path is not looked at: 401, not 400.
    let (status, _, _) = call(&appliance, "POST", "/api/v1/devices", "", "{\"mac\":").await;
    assert_eq!(status, 401);
    let (status, _, _) = call(&appliance, "GET", "/api/v1/devices/not-a-mac", "", "").await;
    assert_eq!(status, 401);
    let (status, _, _) = call(&appliance, "PUT", "/api/v1/settings/sip.port", "", "[").await;
    assert_eq!(status, 401);

    // A phone that never contacted the appliance cannot be reprovisioned: the request is
    // well-formed, the appliance's state refuses it (409), and says why.
    let spec =
        r#"{"mac":"805ec0d57d72","vendor":"yealink","model":"T54W","lines":[{"extension":"100","name":"Ann Lee"}]}"#;
    assert_eq!(call(&appliance, "POST", "/api/v1/devices", &token, spec).await.0, 200);
    let (status, body, _) = call(&appliance, "POST", "/api/v1/devices/805ec0d57d72/reprovision", &token, "").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("has not contacted the appliance yet"), "{body}");
    // A well-formed value that breaks the setting's rule: 422; a body that is not the
    // operation's JSON: 400; a setting that does not exist: 404.
    let (status, body, _) = call(&appliance, "PUT", "/api/v1/settings/sip.port", &token, r#"{"value":"0"}"#).await;
    assert_eq!(status, 422, "{body}");
    let (status, body, _) = call(&appliance, "PUT", "/api/v1/settings/sip.port", &token, r#"{"value":5060}"#).await;
    assert_eq!(status, 400, "{body}");
    let (status, body, _) = call(&appliance, "PUT", "/api/v1/settings/no.such", &token, r#"{"value":"1"}"#).await;
    assert_eq!(status, 404, "{body}");
    // Too large a body is refused before it is parsed, as JSON.
    let huge = format!(r#"{{"value":"{}"}}"#, "x".repeat(64 * 1024));
    let (status, body, _) = call(&appliance, "PUT", "/api/v1/settings/sip.server", &token, &huge).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].is_string(), "{body}");
    // An edit's body names the device it edits: another MAC is refused, not ignored.
    let other_mac = spec.replace("805ec0d57d72", "805ec0d57d73");
    let (status, body, _) = call(&appliance, "PUT", "/api/v1/devices/805ec0d57d72", &token, &other_mac).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("a device's MAC cannot change"), "{body}");
    // A path that is not UTF-8 is a malformed request, answered in JSON like every error.
    for (method, path, body) in [
        ("PUT", "/api/v1/settings/%FF", r#"{"value":"1"}"#),
        ("GET", "/api/v1/templates/%FF/x", ""),
        ("GET", "/api/v1/devices/%FF", ""),
    ] {
        let (status, body, text) = call(&appliance, method, path, &token, body).await;
        assert_eq!((status, body["error"].is_string()), (400, true), "{path}: {text}");
    }
    // A short backup passphrase breaks a rule (422); a missing one is a malformed request.
    let (status, body, _) = backup(&appliance, &token, Some("short")).await;
    assert_eq!(status, 422, "{body}");
    let (status, body, _) = backup(&appliance, &token, None).await;
    assert_eq!(status, 400, "{body}");
}

/// `GET /api/v1/backup` with `passphrase` in its header, if any.
async fn backup(appliance: &Appliance, token: &str, passphrase: Option<&str>) -> (u16, serde_json::Value, String) {
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(passphrase) = passphrase {
        headers.push(("Backup-Passphrase", passphrase));
    }
    let response = connection.request("GET", "/api/v1/backup", &headers, b"").await.unwrap();
    let text = response.text();
    (response.status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null), text)
}

/// A request with no Authorization header at all guesses nothing: always 401, never
/// throttled. Wrong tokens are throttled only after many (a token is 128 random bits), and
/// the 429 says when to come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tokens_are_never_throttled_and_wrong_ones_late() {
    let appliance = Appliance::start();
    for _ in 0..100 {
        let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
        let response = connection.request("GET", "/api/v1/devices", &[], b"").await.unwrap();
        assert_eq!(response.status, 401);
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    }
    for attempt in 1..=64 {
        assert_eq!(call(&appliance, "GET", "/api/v1/devices", "pbx_00_00", "").await.0, 401, "attempt {attempt}");
    }
    // The 65th arms the delay; the next is told to wait.
    assert_eq!(call(&appliance, "GET", "/api/v1/devices", "pbx_00_00", "").await.0, 401);
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let response =
        connection.request("GET", "/api/v1/devices", &[("Authorization", "Bearer pbx_00_00")], b"").await.unwrap();
    assert_eq!(response.status, 429, "{}", response.text());
    let retry: u64 = response.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
    assert!((1..=4).contains(&retry), "{retry}");
    // A valid token still passes from the throttled address.
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "pbx"]).trim().to_string();
    assert_eq!(call(&appliance, "GET", "/api/v1/devices", &token, "").await.0, 200);
}

/// The served document and the router agree operation by operation: every documented
/// operation answers 401 without a token (the route exists and is protected), and every
/// other method on a documented path answers 405. The vendor enum is the site's, including a
/// vendor added under `<data>/templates/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_routed_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let data = fleet::data_dir(dir.path());
    let acme = data.join("templates/acme");
    std::fs::create_dir_all(&acme).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/yealink")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), acme.join(entry.file_name())).unwrap();
    }
    let appliance = Appliance::start_on(data, Some(dir), &[]);
    let (status, document, _) = call(&appliance, "GET", "/api/v1/openapi.json", "", "").await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");
    let vendors = document["components"]["schemas"]["VendorId"]["enum"].as_array().unwrap();
    assert!(
        vendors.contains(&serde_json::json!("acme")) && vendors.contains(&serde_json::json!("yealink")),
        "{vendors:?}"
    );
    let mut checked = 0;
    for (path, item) in document["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{mac}", "805ec0d57d72")
            .replace("{vendor}", "yealink")
            .replace("{file}", "device.cfg")
            .replace("{name}", "sip.port");
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let documented = item.get(method.to_lowercase()).is_some();
            // No Authorization header: nothing is guessed, so nothing is throttled.
            let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
            let response = connection.request(method, &concrete, &[], b"").await.unwrap();
            let (status, body) = (response.status, response.text());
            let expected = match (documented, path.as_str()) {
                (true, "/api/v1/openapi.json") => 200,
                (true, _) => 401,
                (false, _) => 405,
            };
            assert_eq!(status, expected, "{method} {path}: {body}");
            checked += 1;
        }
    }
    assert_eq!(checked, 19 * 5);
}

/// A body trickled in (one byte a second) holds its connection no longer than the body
/// timeout: the request is refused with 400 and the connection freed (the page's forms pass
/// the same deadline layer; `scripts/bench-abuse` trickles login forms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_off_at_the_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let data = fleet::data_dir(dir.path());
    let appliance = Appliance::start_on(data, Some(dir), &["--body-timeout", "2"]);
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "pbx"]).trim().to_string();
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let head = format!(
        "POST /api/v1/devices HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    connection.write_raw(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = None;
    for _ in 0..10 {
        if connection.write_raw(b" ").await.is_err() {
            break;
        }
        if let Ok(response) = connection.response_within(Duration::from_secs(1)).await {
            answer = Some(response);
            break;
        }
    }
    let answer = answer.expect("an answer before the trickle ends");
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.text().contains("took over 2 s"), "{}", answer.text());
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
}

/// A full store keeps room for what a technician needs: adding devices stops (409, saying
/// why) while unlock, rekey, a setting and a removal still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_keeps_room_for_unlock_settings_and_removal() {
    let dir = tempfile::tempdir().unwrap();
    let data = fleet::data_dir(dir.path());
    let store = dir.path().join("small.bin");
    let flash = provbox::store::backend::open(&store, Some(64 * 1024)).unwrap();
    drop(provbox::store::Store::format(flash).unwrap());
    let appliance = Appliance::start_on(data, Some(dir), &["--store", store.to_str().unwrap()]);
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "pbx"]).trim().to_string();
    let mut added = Vec::new();
    let refusal = loop {
        assert!(added.len() < 500, "a 64 KiB store never filled");
        let mac = format!("805ec0{:06x}", added.len());
        let spec = format!(
            r#"{{"mac":"{mac}","vendor":"yealink","model":"T54W","lines":[{{"extension":"1{:03}","name":"Phone {mac} with a long display name"}}]}}"#,
            added.len()
        );
        let (status, body, _) = call(&appliance, "POST", "/api/v1/devices", &token, &spec).await;
        if status != 200 {
            break (status, body);
        }
        added.push(mac);
    };
    assert_eq!(refusal.0, 409, "{}", refusal.1);
    assert!(refusal.1["error"].as_str().unwrap().contains("nearly full"), "{}", refusal.1);
    assert!(added.len() > 10, "{} devices fitted", added.len());
    let first = &added[0];
    for (method, path, body) in [
        ("POST", format!("/api/v1/devices/{first}/unlock"), ""),
        ("PUT", "/api/v1/settings/sip.server".to_string(), r#"{"value":"pbx.example.com"}"#),
        ("POST", format!("/api/v1/devices/{first}/rotate-passwords"), ""),
        ("DELETE", format!("/api/v1/devices/{}", added[1]), ""),
    ] {
        let (status, answer, _) = call(&appliance, method, &path, &token, body).await;
        assert_eq!(status, 200, "{method} {path}: {answer}");
    }
    let (rekeyed, _, said) = fleet::cli(&appliance.data, &["device", "rekey", first, "--new-sip-passwords"]);
    assert!(rekeyed, "{said}");
}

/// A list longer than one batch (`provbox::app::listing::LIST_BATCH`), asked for by more
/// clients at once than there are turns for long answers: each gets every device, in MAC
/// order, streamed (chunked, never built whole), and the same views as the CLI's list over
/// the control socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_device_lists_are_streamed_whole_to_every_client_at_once() {
    use provbox::app::listing::{HEAVY_SLOTS, LIST_BATCH};
    let appliance = Appliance::start();
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "pbx"]).trim().to_string();
    let count = LIST_BATCH * 3 + 7;
    let mut csv = String::from("mac,vendor,model,extension,name\n");
    // Written out of MAC order: the list sorts.
    for i in (0..count).rev() {
        csv.push_str(&format!("805ec0{i:06x},yealink,T54W,{},Desk {i}\n", 1000 + i));
    }
    let file = appliance.data.join("many.csv");
    std::fs::write(&file, csv).unwrap();
    cli_ok(&appliance.data, &["device", "import", file.to_str().unwrap()]);

    let clients = HEAVY_SLOTS + 2;
    let requests: Vec<_> = (0..clients)
        .map(|_| {
            let (config, address, auth) = (appliance.client_config(), appliance.https, format!("Bearer {token}"));
            tokio::spawn(async move {
                let mut connection = Connection::open(config, address, None).await.unwrap();
                connection.request("GET", "/api/v1/devices", &[("Authorization", &auth)], b"").await.unwrap()
            })
        })
        .collect();
    let mut lists = Vec::new();
    for request in requests {
        lists.push(request.await.unwrap());
    }
    let from_cli: serde_json::Value =
        serde_json::from_str(&cli_ok(&appliance.data, &["device", "list", "--json"])).unwrap();
    let from_cli = from_cli.as_array().unwrap();
    assert_eq!(from_cli.len(), count);
    for response in lists {
        assert_eq!(response.status, 200);
        assert_eq!(response.header("transfer-encoding"), Some("chunked"), "streamed, not built whole");
        let list: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        let list = list.as_array().unwrap();
        let macs: Vec<&str> = list.iter().map(|device| device["mac"].as_str().unwrap()).collect();
        let expected: Vec<String> = (0..count).map(|i| format!("805ec0{i:06x}")).collect();
        assert_eq!(macs, expected.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(list, from_cli, "the API and the control socket list the same views");
    }
}
