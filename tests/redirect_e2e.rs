//! Redirect services end to end: a real provbox process, its durable outbox, and mock vendor
//! clouds on loopback that verify each wire format (Basic auth and XML-RPC bodies, the
//! Yealink X-Ca HMAC signature, the Snom Hawk MAC, Fanvil's double-MD5 password).

mod fleet;
mod redirect_mock;

use std::time::{Duration, Instant};

use fleet::{Appliance, Phone, cli, cli_ok};
use redirect_mock::{Fault, Mock, OTHER, PASSWORD, USER};

const MAC: &str = "805ec0d57d72";

/// What an accepted XML-RPC registration shows: RPS's `checkDevice` confirms the account
/// holds the MAC but cannot say where it points, so it is never shown as "registered".
const XMLRPC_ACCEPTED: &str = "unverified";

/// The calls that concern `mac`, read-backs (lookups) left out.
fn calls_for(mock: &Mock, mac: &str) -> usize {
    let lookups = ["redirect.checkDevice", "redirect.getPhoneRedirection"];
    mock.calls()
        .iter()
        .filter(|c| !lookups.contains(&c.method.as_str()))
        .filter(|c| c.params.first().is_some_and(|p| p.replace('-', "").to_lowercase() == mac))
        .count()
}

/// provbox on a fresh data directory with `settings` applied while it runs.
fn appliance_with(settings: &[(&str, String)]) -> Appliance {
    let appliance = Appliance::start();
    for (name, value) in settings {
        cli_ok(&appliance.data, &["settings", "set", name, value]);
    }
    appliance
}

fn yealink_xmlrpc(mock: &Mock) -> Vec<(&'static str, String)> {
    vec![
        ("redirect.yealink.url", format!("{}/xmlrpc", mock.base())),
        ("redirect.yealink.username", USER.into()),
        ("redirect.yealink.password", PASSWORD.into()),
        ("redirect.timeout_seconds", "2".into()),
    ]
}

fn yealink_json(mock: &Mock, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("redirect.yealink.api", "json".into()),
        ("redirect.yealink.url", mock.base()),
        ("redirect.yealink.key", redirect_mock::KEY.into()),
        ("redirect.yealink.secret", secret.into()),
    ]
}

/// Polls (bounded) until the device's redirect state is `state`; returns the device.
fn wait_redirect(appliance: &Appliance, mac: &str, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let device = appliance.device(mac);
        if device["redirect"]["state"] == state {
            return device;
        }
        assert!(Instant::now() < deadline, "{mac} never reached {state}: {}", device["redirect"]);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yealink_xmlrpc_registers_deregisters_on_lock_and_reregisters_on_unlock() {
    let mock = Mock::start().await;
    let appliance = appliance_with(&yealink_xmlrpc(&mock));
    appliance.add(MAC, "yealink", "T54W");
    let device = wait_redirect(&appliance, MAC, XMLRPC_ACCEPTED);
    let enrollment_url = device["enrollment_url"].as_str().unwrap().to_string();
    assert!(enrollment_url.contains("/e/"));
    let call = &mock.calls()[0];
    assert_eq!(call.method, "redirect.registerDeviceWithUniqueUrl");
    assert_eq!(call.params, ["80-5E-C0-D5-7D-72", "provbox", enrollment_url.as_str(), "0"]);
    assert_eq!(mock.registry()[MAC].url, enrollment_url, "the service holds the /e/ URL, never the steady one");
    assert_eq!(
        device["redirect"]["reason"],
        "the service confirms it holds the MAC, but its API cannot show where it points"
    );
    let check: serde_json::Value =
        serde_json::from_str(&cli_ok(&appliance.data, &["redirect", "check", MAC, "--json"])).unwrap();
    assert_eq!(check["holds"], "the MAC, without saying where it points");
    assert_eq!(check["reply"], serde_json::json!([true, "registered"]));

    // Enrollment closes: the MAC is removed, so a factory reset cannot enroll again.
    appliance.enroll(&Phone::yealink(MAC)).await;
    wait_redirect(&appliance, MAC, "deregistered");
    // Looked up, removed, then confirmed removed by another lookup.
    let methods: Vec<String> = mock.calls().into_iter().rev().take(3).map(|c| c.method).collect();
    assert_eq!(methods, ["redirect.checkDevice", "redirect.deRegisterDevice", "redirect.checkDevice"]);
    assert!(!mock.registry().contains_key(MAC));

    // Unlock: registered again with the fresh enrollment URL.
    cli_ok(&appliance.data, &["device", "unlock", MAC]);
    let device = wait_redirect(&appliance, MAC, XMLRPC_ACCEPTED);
    let fresh = device["enrollment_url"].as_str().unwrap();
    assert_ne!(fresh, enrollment_url);
    assert_eq!(mock.registry()[MAC].url, fresh);
    assert!(mock.refused().is_empty(), "every request passed the mock's checks: {:?}", mock.refused());
    let token = fresh.trim_end_matches('/').rsplit('/').next().unwrap();
    let log = appliance.log();
    assert!(!log.contains(token) && !log.contains("/e/"), "enrollment URLs never reach the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_deregistration_is_kept_and_retried_by_sync() {
    let mock = Mock::start().await;
    let appliance = appliance_with(&yealink_xmlrpc(&mock));
    appliance.add(MAC, "yealink", "T54W");
    wait_redirect(&appliance, MAC, XMLRPC_ACCEPTED);
    mock.refuse_deregister(Some("Error: service maintenance"));
    appliance.enroll(&Phone::yealink(MAC)).await;
    let device = wait_redirect(&appliance, MAC, "failed");
    assert!(device["redirect"]["message"].as_str().unwrap().contains("service maintenance"));
    assert!(mock.registry().contains_key(MAC), "still registered at the vendor");
    mock.refuse_deregister(None);
    cli_ok(&appliance.data, &["redirect", "sync"]);
    wait_redirect(&appliance, MAC, "deregistered");
    assert!(!mock.registry().contains_key(MAC));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yealink_xmlrpc_without_unique_urls_falls_back_to_a_server_entry() {
    let mock = Mock::start().await;
    mock.without_unique_url();
    let appliance = appliance_with(&yealink_xmlrpc(&mock));
    appliance.add(MAC, "yealink", "T54W");
    let device = wait_redirect(&appliance, MAC, XMLRPC_ACCEPTED);
    let methods: Vec<String> = mock.calls().into_iter().map(|c| c.method).collect();
    assert_eq!(methods, ["redirect.addServer", "redirect.registerDevice", "redirect.checkDevice"]);
    // The server entry is named as ngcp-panel names them: 20 hex digits of the URL's MD5.
    let server = &mock.calls()[0].params[0];
    assert!(server.len() == 20 && server.bytes().all(|b| b.is_ascii_hexdigit()), "{server}");
    assert_eq!(mock.registry()[MAC].url, device["enrollment_url"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_can_be_turned_off_per_device_and_per_site() {
    let mock = Mock::start().await;
    let appliance = appliance_with(&yealink_xmlrpc(&mock));
    appliance.add(MAC, "yealink", "T54W");
    wait_redirect(&appliance, MAC, XMLRPC_ACCEPTED);
    cli_ok(&appliance.data, &["redirect", "off", MAC]);
    let device = wait_redirect(&appliance, MAC, "deregistered");
    assert!(!mock.registry().contains_key(MAC), "turning it off removes it: {}", device["redirect"]);
    cli_ok(&appliance.data, &["redirect", "on", MAC]);
    wait_redirect(&appliance, MAC, XMLRPC_ACCEPTED);

    // Off for the whole site: a new device is not sent anywhere, and says why.
    cli_ok(&appliance.data, &["settings", "set", "redirect.enabled", "off"]);
    let other = "805ec0d57d73";
    appliance.add(other, "yealink", "T54W");
    let view = appliance.device(other)["redirect"].clone();
    assert_eq!(view["state"], "off");
    assert!(view["reason"].as_str().unwrap().contains("redirect.enabled"), "{view}");
    assert!(!mock.registry().contains_key(other));
    // Back on: the missing registration is queued by itself.
    cli_ok(&appliance.data, &["settings", "set", "redirect.enabled", "on"]);
    wait_redirect(&appliance, other, XMLRPC_ACCEPTED);
    // A vendor without a redirect service.
    appliance.add("0004f2aabbcc", "polycom", "VVX400");
    let view = appliance.device("0004f2aabbcc")["redirect"].clone();
    assert_eq!(view, serde_json::json!({"state": "off", "reason": "no redirect service for polycom phones"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yealink_json_api_is_signed_edits_an_existing_mac_and_deletes() {
    let mock = Mock::start().await;
    // The MAC is already in this account (an earlier appliance): add says "existed", provbox edits.
    mock.seed(MAC, redirect_mock::OWN, "https://old.example/e/x/");
    let appliance = appliance_with(&yealink_json(&mock, redirect_mock::SECRET));
    appliance.add(MAC, "yealink", "T54W");
    let device = wait_redirect(&appliance, MAC, "registered");
    let methods: Vec<String> = mock.calls().into_iter().map(|c| c.method).collect();
    // The id comes from the device list ([Y], [S] in the mock); then the registration is read back.
    assert_eq!(
        methods,
        [
            "POST /api/open/v1/device/add",
            "POST /api/open/v1/device/list",
            "POST /api/open/v1/device/edit",
            "POST /api/open/v1/device/list"
        ]
    );
    assert_eq!(mock.registry()[MAC].url, device["enrollment_url"].as_str().unwrap());
    let check: serde_json::Value =
        serde_json::from_str(&cli_ok(&appliance.data, &["redirect", "check", MAC, "--json"])).unwrap();
    assert_eq!((check["holds"].as_str(), check["matches"].as_bool()), (Some("the enrollment URL"), Some(true)));
    let held = check["reply"]["uniqueServerUrl"].as_str().unwrap();
    assert!(held.ends_with("/e/<token>/"), "the token is masked in what check shows: {held}");

    cli_ok(&appliance.data, &["device", "remove", MAC]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while mock.registry().contains_key(MAC) {
        assert!(Instant::now() < deadline, "removal never reached the service");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Found by the list, then deleted by its id.
    let calls = mock.calls();
    let at = calls.iter().rposition(|c| c.method == "POST /api/open/v1/device/delete").expect("a delete");
    assert_eq!(calls[at - 1].method, "POST /api/open/v1/device/list");
    let id = mock.calls()[at].params[0].clone();
    assert!(id.contains("\"ids\":["), "deleted by id: {id}");
    assert!(mock.refused().is_empty(), "signatures verified: {:?}", mock.refused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_credentials_fail_for_good_with_the_vendors_words() {
    let mock = Mock::start().await;
    let appliance = appliance_with(&yealink_json(&mock, "wrong-secret"));
    appliance.add(MAC, "yealink", "T54W");
    let device = wait_redirect(&appliance, MAC, "failed");
    let message = device["redirect"]["message"].as_str().unwrap();
    assert!(message.contains("credentials refused (HTTP 401)") && message.contains("Invalid signature"), "{message}");
    // Not retried: the item left the queue.
    let status: serde_json::Value =
        serde_json::from_str(&cli_ok(&appliance.data, &["redirect", "status", "--json"])).unwrap();
    assert_eq!(status["queue"].as_array().unwrap().len(), 0);
    assert!(!appliance.log().contains("wrong-secret"), "secrets never reach the log");
    let shown = cli_ok(&appliance.data, &["settings", "show"]);
    assert!(!shown.contains("wrong-secret"), "secrets are masked");

    // Fixed credentials and a sync register it.
    cli_ok(&appliance.data, &["settings", "set", "redirect.yealink.secret", redirect_mock::SECRET]);
    cli_ok(&appliance.data, &["redirect", "sync"]);
    wait_redirect(&appliance, MAC, "registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_accounts_mac_is_never_taken_silently() {
    let mock = Mock::start().await;
    mock.seed(MAC, OTHER, "https://elsewhere.example/");
    let appliance = appliance_with(&yealink_xmlrpc(&mock));
    appliance.add(MAC, "yealink", "T54W");
    let device = wait_redirect(&appliance, MAC, "failed");
    let message = device["redirect"]["message"].as_str().unwrap();
    assert!(message.contains("belongs to another RPS account"), "{message}");
    assert!(message.contains(&format!("provbox redirect override {MAC}")), "{message}");
    assert_eq!(mock.registry()[MAC].account, OTHER, "still the other account's");

    let (ok, out, _) = cli(&appliance.data, &["redirect", "override", MAC]);
    assert!(ok, "{out}");
    let device = wait_redirect(&appliance, MAC, XMLRPC_ACCEPTED);
    let sent = mock.calls().into_iter().rfind(|c| c.method == "redirect.registerDeviceWithUniqueUrl").unwrap();
    assert_eq!(sent.params[3], "1", "the override flag is sent");
    assert_eq!(mock.registry()[MAC].url, device["enrollment_url"].as_str().unwrap());
    assert_eq!(mock.registry()[MAC].account, redirect_mock::OWN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snom_sraps_is_signed_with_hawk_and_sets_the_phone_settings_server() {
    let mock = Mock::start().await;
    let appliance = appliance_with(&[
        ("redirect.snom.url", format!("{}/api/v1/", mock.base())),
        ("redirect.snom.key", redirect_mock::HAWK_ID.into()),
        ("redirect.snom.secret", redirect_mock::HAWK_KEY.into()),
    ]);
    let mac = "000413922d24";
    appliance.add(mac, "snom", "D785");
    let device = wait_redirect(&appliance, mac, "registered");
    assert_eq!(mock.registry()[mac].url, device["enrollment_url"].as_str().unwrap());
    let put = mock.calls().into_iter().find(|c| c.method.starts_with("PUT")).unwrap();
    assert_eq!(put.method, format!("PUT /api/v1/companies/c1/endpoints/{mac}"));
    let body: serde_json::Value = serde_json::from_str(&put.params[0]).unwrap();
    let manager = body["settings_manager"].as_object().unwrap();
    assert_eq!(manager.len(), 1, "{body}");
    let (uuid, setting) = manager.iter().next().unwrap();
    assert!(uuid.starts_with("50a40056"), "the phone-settings setting_server, found on the second page: {uuid}");
    assert_eq!(setting["value"], device["enrollment_url"]);
    assert_eq!(setting["attrs"]["perm"], "RW");
    // The settings list was read page by page (Link: rel="next").
    let pages = mock.calls().iter().filter(|c| c.method == "GET /api/v1/settings/").count();
    assert!(pages >= 2, "{pages} settings pages");

    appliance.enroll(&Phone::snom(mac)).await;
    wait_redirect(&appliance, mac, "deregistered");
    assert!(!mock.registry().contains_key(mac));
    assert!(mock.refused().is_empty(), "Hawk MACs verified: {:?}", mock.refused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snom_legacy_xmlrpc_and_fanvil_fdps_register() {
    let mock = Mock::start().await;
    let appliance = appliance_with(&[
        ("redirect.snom.api", "xmlrpc".into()),
        ("redirect.snom.url", format!("{}/snom/xmlrpc/", mock.base())),
        ("redirect.snom.username", USER.into()),
        ("redirect.snom.password", PASSWORD.into()),
        ("redirect.fanvil.url", format!("{}/xmlrpc.php", mock.base())),
        ("redirect.fanvil.username", USER.into()),
        ("redirect.fanvil.password", PASSWORD.into()),
    ]);
    let (snom, fanvil) = ("000413922d24", "0c383e123456");
    appliance.add(snom, "snom", "D785");
    appliance.add(fanvil, "fanvil", "X4U");
    let snom_device = wait_redirect(&appliance, snom, "registered");
    let fanvil_device = wait_redirect(&appliance, fanvil, "registered");
    assert_eq!(mock.registry()[snom].url, snom_device["enrollment_url"].as_str().unwrap());
    assert_eq!(mock.registry()[fanvil].url, fanvil_device["enrollment_url"].as_str().unwrap());
    let fanvil_calls: Vec<String> = mock.calls().into_iter().filter(|c| c.api == "fanvil").map(|c| c.method).collect();
    // falconieri's four calls, after removing the lowercase server name of older versions.
    assert_eq!(
        fanvil_calls,
        [
            "redirect.deleteServer",
            "redirect.deleteServer",
            "redirect.addMaterialServer",
            "redirect.deRegisterDevice",
            "redirect.registerDevice"
        ]
    );
    // falconieri's form: uppercase MAC, the server named after it, host and path apart.
    let material = mock.calls().into_iter().find(|c| c.method == "redirect.addMaterialServer").unwrap();
    let path = Appliance::path_of(fanvil_device["enrollment_url"].as_str().unwrap());
    assert_eq!(material.params[0], "cfgName=0C383E123456");
    assert!(material.params.contains(&"cfgDhcpOpt=false".to_string()), "{:?}", material.params);
    assert!(material.params.contains(&"cfgPnpEnable=false".to_string()), "{:?}", material.params);
    assert!(material.params.contains(&format!("cfgPfName={}", path.trim_start_matches('/'))), "{:?}", material.params);
    // Snom's registration is read back with getPhoneRedirection, which shows the URL.
    assert!(mock.calls().iter().any(|c| c.method == "redirect.getPhoneRedirection"));
    assert!(mock.refused().is_empty(), "{:?}", mock.refused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wan_outage_delays_but_delivers_each_intent_exactly_once() {
    let mut mock = Mock::start().await;
    mock.go_down().await;
    let appliance = appliance_with(&yealink_xmlrpc(&mock));
    let macs = ["805ec0000001", "805ec0000002", "805ec0000003"];
    for mac in macs {
        appliance.add(mac, "yealink", "T54W");
    }
    let pending = |reason: &str| {
        cli_ok(&appliance.data, &["redirect", "sync"]);
        for mac in macs {
            let view = appliance.device(mac)["redirect"].clone();
            assert_eq!(view["state"], "pending", "{view}");
            let error = view["last_error"].as_str().unwrap();
            assert!(error.contains(reason), "{mac}: {error:?} should say {reason:?}");
            assert!(view["next_try"].as_u64().unwrap() > 0);
        }
    };
    pending("Connection refused");
    mock.come_up().await;
    mock.set_fault(Fault::Status(503));
    pending("service unavailable (HTTP 503)");
    mock.set_fault(Fault::Stall);
    pending("no complete answer within 2 s");
    assert!(mock.calls().is_empty(), "nothing was accepted during the outage");

    // Unlocked during the outage: its second registration waits behind the first.
    cli_ok(&appliance.data, &["device", "unlock", macs[0]]);
    mock.set_fault(Fault::None);
    let out = cli_ok(&appliance.data, &["redirect", "sync"]);
    assert!(out.contains("delivered 4"), "{out}");
    for mac in macs {
        let device = wait_redirect(&appliance, mac, XMLRPC_ACCEPTED);
        assert_eq!(mock.registry()[mac].url, device["enrollment_url"].as_str().unwrap());
        let registrations = calls_for(&mock, mac);
        // The unlocked one: both intents, in order. The second finds the first in place
        // ("Existing MAC") and replaces it: register, register, deregister, register.
        let calls = if mac == macs[0] { 4 } else { 1 };
        assert_eq!(registrations, calls, "{mac}: each intent delivered once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_replies_are_clear_statuses_and_lose_nothing() {
    let mock = Mock::start().await;
    mock.set_fault(Fault::Html);
    let mut settings = yealink_xmlrpc(&mock);
    settings.extend(
        yealink_json(&mock, redirect_mock::SECRET)
            .into_iter()
            .filter(|(n, _)| n.ends_with("key") || n.ends_with("secret")),
    );
    let appliance = appliance_with(&settings);
    appliance.add(MAC, "yealink", "T54W");
    let cases = [
        (Fault::Html, "an HTML page instead of XML-RPC"),
        (Fault::Malformed, "malformed XML-RPC reply: truncated"),
        (Fault::Truncated, "reply truncated"),
        (Fault::Huge, "reply larger than 256 KiB"),
        (Fault::WrongType, "malformed XML-RPC reply"),
    ];
    for (fault, reason) in cases {
        mock.set_fault(fault);
        cli_ok(&appliance.data, &["redirect", "sync"]);
        let view = appliance.device(MAC)["redirect"].clone();
        assert_eq!(view["state"], "pending", "{fault:?}: {view}");
        assert!(view["last_error"].as_str().unwrap().contains(reason), "{fault:?}: {view}");
    }
    // The same through the JSON API.
    cli_ok(&appliance.data, &["settings", "set", "redirect.yealink.api", "json"]);
    cli_ok(&appliance.data, &["settings", "set", "redirect.yealink.url", &mock.base()]);
    for (fault, reason) in [(Fault::Malformed, "malformed JSON reply"), (Fault::Html, "an HTML page instead of JSON")] {
        mock.set_fault(fault);
        cli_ok(&appliance.data, &["redirect", "sync"]);
        let view = appliance.device(MAC)["redirect"].clone();
        assert!(view["last_error"].as_str().unwrap().contains(reason), "{fault:?}: {view}");
    }
    mock.set_fault(Fault::None);
    cli_ok(&appliance.data, &["redirect", "sync"]);
    let device = wait_redirect(&appliance, MAC, "registered");
    assert_eq!(mock.registry()[MAC].url, device["enrollment_url"].as_str().unwrap());
    assert!(appliance.wait_for_log("redirect attempt failed, will retry"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_services_need_a_trusted_ca() {
    let mock = Mock::start_tls().await;
    let appliance = appliance_with(&yealink_xmlrpc(&mock));
    appliance.add(MAC, "yealink", "T54W");
    cli_ok(&appliance.data, &["redirect", "sync"]);
    let view = appliance.device(MAC)["redirect"].clone();
    let error = view["last_error"].as_str().unwrap();
    assert!(error.contains("TLS with 127.0.0.1 failed") && error.contains("set redirect.ca_file"), "{error}");
    assert!(mock.calls().is_empty());

    let ca_file = mock.ca_file.as_ref().unwrap().to_str().unwrap();
    cli_ok(&appliance.data, &["settings", "set", "redirect.ca_file", ca_file]);
    cli_ok(&appliance.data, &["redirect", "sync"]);
    let device = wait_redirect(&appliance, MAC, XMLRPC_ACCEPTED);
    assert_eq!(mock.registry()[MAC].url, device["enrollment_url"].as_str().unwrap());
}

/// Writes a CSV of `macs` (Yealink T54W) into the data directory and imports it.
fn import(appliance: &Appliance, macs: &[String]) {
    let csv: String = std::iter::once("mac,vendor,model,extension,name\n".to_string())
        .chain(macs.iter().enumerate().map(|(i, mac)| format!("{mac},yealink,T54W,{},User {i}\n", 200 + i)))
        .collect();
    let file = appliance.data.join("import.csv");
    std::fs::write(&file, csv).unwrap();
    cli_ok(&appliance.data, &["device", "import", file.to_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_add_of_500_goes_in_batches_of_100_through_ymcs() {
    let mock = Mock::start().await;
    // Five of them were registered by an earlier appliance: YMCS says "exists", provbox
    // deletes and adds them again with their new URLs.
    let macs: Vec<String> = (0..500).map(|i| format!("805ec02{i:05x}")).collect();
    for mac in &macs[..5] {
        mock.seed(mac, redirect_mock::OWN, "https://old.example/e/x/");
    }
    let appliance = appliance_with(&[
        ("redirect.yealink.api", "ymcs".into()),
        ("redirect.yealink.url", mock.base()),
        ("redirect.yealink.key", redirect_mock::KEY.into()),
        ("redirect.yealink.secret", redirect_mock::SECRET.into()),
    ]);
    import(&appliance, &macs);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&cli_ok(&appliance.data, &["redirect", "status", "--json"])).unwrap();
        let registered = status["devices"].as_array().unwrap().iter().filter(|d| d[1]["state"] == "registered").count();
        if registered == macs.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{registered} of 500 registered");
        std::thread::sleep(Duration::from_millis(200));
    }
    let devices: serde_json::Value =
        serde_json::from_str(&cli_ok(&appliance.data, &["device", "list", "--json"])).unwrap();
    let registry = mock.registry();
    for device in devices.as_array().unwrap() {
        let mac = device["mac"].as_str().unwrap();
        assert_eq!(registry[mac].url, device["enrollment_url"].as_str().unwrap(), "{mac}");
    }
    let adds = mock.calls().iter().filter(|c| c.method == "POST /v2/rps/addDevicesByMac").count();
    // Batches of at most 100 (the mock refuses more), plus one re-add for the five that existed.
    assert!((5..=12).contains(&adds), "{adds} addDevicesByMac calls for 500 devices");
    assert!(mock.refused().is_empty(), "{:?}", mock.refused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_mid_queue_resumes_after_restart() {
    let mock = Mock::start().await;
    mock.set_delay(Duration::from_millis(150));
    let appliance = appliance_with(&yealink_xmlrpc(&mock));
    let macs: Vec<String> = (0..20).map(|i| format!("805ec01000{i:02x}")).collect();
    import(&appliance, &macs);
    let deadline = Instant::now() + Duration::from_secs(20);
    while mock.registry().len() < 5 {
        assert!(Instant::now() < deadline, "the worker never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    appliance.signal(nix::sys::signal::Signal::SIGKILL);
    let delivered_before = mock.registry().len();
    assert!(delivered_before < macs.len(), "killed mid-queue");
    let (_, data, dir) = appliance.stop();

    let appliance = Appliance::start_on(data, dir, &["--key-type", "ecdsa-p256"]);
    mock.set_delay(Duration::ZERO);
    for mac in &macs {
        let device = wait_redirect(&appliance, mac, XMLRPC_ACCEPTED);
        let path = Appliance::path_of(device["enrollment_url"].as_str().unwrap());
        assert_eq!(Appliance::path_of(&mock.registry()[mac].url), path, "{mac} points at its enrollment URL");
    }
    for mac in &macs {
        let sent = calls_for(&mock, mac);
        // One registration; the one in flight at the kill may be sent again after the
        // restart, answered "Existing MAC" and redone (deregister + register): harmless.
        assert!((1..=4).contains(&sent), "{mac}: {sent} calls");
    }
}

/// One request to the mock over a fresh connection: (status, body).
async fn raw(mock: &Mock, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(mock.addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", mock.addr);
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += &format!("Content-Length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

fn xmlrpc_body(method: &str, params: &[&str]) -> Vec<u8> {
    let params: String = params.iter().map(|p| format!("<param><value><string>{p}</string></value></param>")).collect();
    format!(
        "<?xml version=\"1.0\"?><methodCall><methodName>{method}</methodName><params>{params}</params></methodCall>"
    )
    .into_bytes()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mocks_refuse_the_request_forms_provbox_used_to_send() {
    let mock = Mock::start().await;
    let url = "https://192.0.2.1:8443/e/00112233445566778899aabbccddeeff/";

    // Snom SRAPS: the URL in a provisioning_url field, which no reference sends.
    let body = serde_json::json!({"mac": MAC, "autoprovisioning_enabled": true, "provisioning_url": url}).to_string();
    let path = format!("/api/v1/companies/c1/endpoints/{MAC}");
    let nonce = "0a1b2c3d4e5f";
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let input = provbox::redirect::snom::HawkInput {
        method: "PUT",
        resource: &path,
        host: "127.0.0.1",
        port: mock.addr.port(),
        content_type: "application/json",
        payload: body.as_bytes(),
        ts,
        nonce,
    };
    let hawk = provbox::redirect::snom::hawk_header(redirect_mock::HAWK_ID, redirect_mock::HAWK_KEY, &input);
    let headers = [("Authorization", hawk), ("Content-Type", "application/json".into())];
    let (status, text) = raw(&mock, "PUT", &path, &headers, body.as_bytes()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("settings_manager"), "{text}");

    // Fanvil FDPS: cfgPfName with its leading slash, no cfgDhcpOpt/cfgPnpEnable, lowercase MAC.
    let password = {
        use md5::Digest;
        let once: String = md5::Md5::digest(PASSWORD.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        md5::Md5::digest(once.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let fields = format!(
        "<param><value><array><data><value><string>cfgName={MAC}</string></value>\
         <value><string>cfgPfMode=1</string></value><value><string>cfgPfSrv=192.0.2.1:8443</string></value>\
         <value><string>cfgPfName=/e/00112233445566778899aabbccddeeff/</string></value>\
         <value><string>cfgPfProt=5</string></value></data></array></value></param>"
    );
    let body = format!(
        "<?xml version=\"1.0\"?><methodCall><methodName>redirect.addMaterialServer</methodName>\
         <params>{fields}</params></methodCall>"
    );
    let headers = [("Authorization", basic(USER, &password)), ("Content-Type", "text/xml".into())];
    let (status, text) = raw(&mock, "POST", "/xmlrpc.php", &headers, body.as_bytes()).await;
    assert_eq!(status, 400, "{text}");
    let lower_mac = xmlrpc_body("redirect.deRegisterDevice", &[MAC]);
    assert_eq!(raw(&mock, "POST", "/xmlrpc.php", &headers, &lower_mac).await.0, 400, "FDPS MACs are uppercase");

    // Yealink RPS XML-RPC: a server name longer than 20 characters.
    let headers = [("Authorization", basic(USER, PASSWORD)), ("Content-Type", "text/xml".into())];
    let long = xmlrpc_body(
        "redirect.registerDeviceWithUniqueUrl",
        &["80-5E-C0-D5-7D-72", "provbox-appliance-office-3", url, "0"],
    );
    let (status, text) = raw(&mock, "POST", "/xmlrpc", &headers, &long).await;
    assert_eq!(status, 200);
    assert!(text.contains("<boolean>0</boolean>") && text.contains("server name can only contain"), "{text}");

    // Yealink RPS JSON: checkDevice answers a status, not the record with the id that
    // provbox used to edit and delete by.
    let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis().to_string();
    let query = [("mac", MAC.to_string())];
    let signing = provbox::redirect::yealink::SigningInput {
        method: "GET",
        path: "/api/open/v1/device/checkDevice",
        query: &query,
        body: b"",
        key: redirect_mock::KEY,
        nonce: "1c5e2c6f9a4b4d2f8e7a6b5c4d3e2f10",
        timestamp: &timestamp,
    };
    let mut headers = provbox::redirect::yealink::sign(&signing, redirect_mock::SECRET);
    headers.push(("content-type", "application/json;charset=UTF-8".into()));
    let (status, text) = raw(&mock, "GET", &format!("/api/open/v1/device/checkDevice?mac={MAC}"), &headers, b"").await;
    assert_eq!(status, 200, "{text}");
    let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(reply["data"].is_string() && reply["data"].get("id").is_none(), "{reply}");

    // YMCS: a call without Accept: application/json.
    let headers = [
        ("timestamp", timestamp.clone()),
        ("nonce", "0123456789abcdef0123456789abcdef".into()),
        ("Content-Type", "application/json".into()),
        ("Authorization", basic(redirect_mock::KEY, redirect_mock::SECRET)),
    ];
    let (status, text) = raw(&mock, "POST", "/v2/token", &headers, b"{\"grant_type\":\"client_credentials\"}").await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_that_holds_another_url_is_unverified_and_a_removal_it_ignores_stays_queued() {
    let mock = Mock::start().await;
    let appliance = appliance_with(&yealink_json(&mock, redirect_mock::SECRET));
    // Accepted, but the cloud points the MAC somewhere else.
    mock.misdirect(Some("https://elsewhere.example/e/x/"));
    appliance.add(MAC, "yealink", "T54W");
    let device = wait_redirect(&appliance, MAC, "unverified");
    assert!(device["redirect"]["reason"].as_str().unwrap().contains("holds another URL"), "{}", device["redirect"]);
    let check: serde_json::Value =
        serde_json::from_str(&cli_ok(&appliance.data, &["redirect", "check", MAC, "--json"])).unwrap();
    assert_eq!(check["matches"], false);
    assert!(check["holds"].as_str().unwrap().starts_with("another URL"), "{check}");

    // While the cloud is unreachable, repeated syncs queue that registration once, not once
    // per sync.
    let mut mock = mock;
    mock.go_down().await;
    for _ in 0..3 {
        cli_ok(&appliance.data, &["redirect", "sync"]);
    }
    let status: serde_json::Value =
        serde_json::from_str(&cli_ok(&appliance.data, &["redirect", "status", "--json"])).unwrap();
    assert_eq!(status["queue"].as_array().unwrap().len(), 1, "{}", status["queue"]);
    mock.come_up().await;

    // A sync registers an unverified device again; now the cloud keeps what it is given.
    mock.misdirect(None);
    cli_ok(&appliance.data, &["redirect", "sync"]);
    wait_redirect(&appliance, MAC, "registered");

    // A removal the cloud says yes to but does not carry out stays queued, and says why.
    mock.ignore_removals(true);
    appliance.enroll(&Phone::yealink(MAC)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = appliance.device(MAC)["redirect"].clone();
        if view["state"] == "pending" && view["last_error"].as_str().is_some_and(|e| e.contains("still holds the MAC"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the ignored removal was never noticed: {view}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(mock.registry().contains_key(MAC));
    mock.ignore_removals(false);
    cli_ok(&appliance.data, &["redirect", "sync"]);
    wait_redirect(&appliance, MAC, "deregistered");
    assert!(!mock.registry().contains_key(MAC));
}
