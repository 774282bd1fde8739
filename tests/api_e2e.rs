//! The JSON API and /metrics over real HTTPS: bearer tokens, CRUD, unlock, settings, errors
//! as JSON, the OpenAPI document and Prometheus counters.

mod fleet;

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
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("vendor cannot change"), "{body}");
    let (status, list, _) = call(&appliance, "GET", "/api/v1/devices", &token, "").await;
    assert_eq!((status, list.as_array().unwrap().len()), (200, 1));

    let (status, body, _) = call(&appliance, "PUT", "/api/v1/settings/sip.port", &token, r#"{"value":"99999"}"#).await;
    assert_eq!(status, 400);
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
    let (status, document, _) = call(&appliance, "GET", "/api/v1/openapi.json", "", "").await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.0.3");
    assert!(document["paths"]["/api/v1/devices/{mac}/unlock"]["post"].is_object());

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
    // A refused value is the request's fault: 400.
    let (status, body, _) = call(&appliance, "PUT", "/api/v1/settings/sip.port", &token, r#"{"value":"0"}"#).await;
    assert_eq!(status, 400, "{body}");
}
