//! Redirect services end to end: a real provbox process, its durable outbox, and mock vendor
//! clouds on loopback that verify each wire format (Basic auth and XML-RPC bodies, the
//! Yealink X-Ca HMAC signature, the Snom Hawk MAC, Fanvil's double-MD5 password).

mod fleet;
mod redirect_mock;

use std::time::{Duration, Instant};

use fleet::{Appliance, Phone, cli, cli_ok};
use redirect_mock::{Fault, Mock, OTHER, PASSWORD, USER};

const MAC: &str = "805ec0d57d72";

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
    let device = wait_redirect(&appliance, MAC, "registered");
    let enrollment_url = device["enrollment_url"].as_str().unwrap().to_string();
    assert!(enrollment_url.contains("/e/"));
    let call = &mock.calls()[0];
    assert_eq!(call.method, "redirect.registerDeviceWithUniqueUrl");
    assert_eq!(call.params, ["80-5E-C0-D5-7D-72", "provbox", enrollment_url.as_str(), "0"]);
    assert_eq!(mock.registry()[MAC].url, enrollment_url, "the service holds the /e/ URL, never the steady one");
    let check: serde_json::Value = serde_json::from_str(&cli_ok(&appliance.data, &["redirect", "check", MAC])).unwrap();
    assert_eq!(check["holds"], serde_json::json!([true, "registered"]));

    // Enrollment closes: the MAC is removed, so a factory reset cannot enroll again.
    appliance.enroll(&Phone::yealink(MAC)).await;
    wait_redirect(&appliance, MAC, "deregistered");
    assert_eq!(mock.calls().last().unwrap().method, "redirect.deRegisterDevice");
    assert!(!mock.registry().contains_key(MAC));

    // Unlock: registered again with the fresh enrollment URL.
    cli_ok(&appliance.data, &["device", "unlock", MAC]);
    let device = wait_redirect(&appliance, MAC, "registered");
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
    wait_redirect(&appliance, MAC, "registered");
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
    let device = wait_redirect(&appliance, MAC, "registered");
    let methods: Vec<String> = mock.calls().into_iter().map(|c| c.method).collect();
    assert_eq!(methods, ["redirect.addServer", "redirect.registerDevice"]);
    assert_eq!(mock.registry()[MAC].url, device["enrollment_url"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_can_be_turned_off_per_device_and_per_site() {
    let mock = Mock::start().await;
    let appliance = appliance_with(&yealink_xmlrpc(&mock));
    appliance.add(MAC, "yealink", "T54W");
    wait_redirect(&appliance, MAC, "registered");
    cli_ok(&appliance.data, &["redirect", "off", MAC]);
    let device = wait_redirect(&appliance, MAC, "deregistered");
    assert!(!mock.registry().contains_key(MAC), "turning it off removes it: {}", device["redirect"]);
    cli_ok(&appliance.data, &["redirect", "on", MAC]);
    wait_redirect(&appliance, MAC, "registered");

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
    wait_redirect(&appliance, other, "registered");
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
    assert_eq!(
        methods,
        ["POST /api/open/v1/device/add", "GET /api/open/v1/device/checkDevice", "POST /api/open/v1/device/edit"]
    );
    assert_eq!(mock.registry()[MAC].url, device["enrollment_url"].as_str().unwrap());
    let check: serde_json::Value = serde_json::from_str(&cli_ok(&appliance.data, &["redirect", "check", MAC])).unwrap();
    assert_eq!(check["holds"]["uniqueServerUrl"], device["enrollment_url"]);

    cli_ok(&appliance.data, &["device", "remove", MAC]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while mock.registry().contains_key(MAC) {
        assert!(Instant::now() < deadline, "removal never reached the service");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(mock.calls().last().unwrap().method, "POST /api/open/v1/device/delete");
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
    assert!(message.contains("Are you sure you want to override MAC addresses"), "{message}");
    assert!(message.contains(&format!("provbox redirect override {MAC}")), "{message}");
    assert_eq!(mock.registry()[MAC].account, OTHER, "still the other account's");

    let (ok, out, _) = cli(&appliance.data, &["redirect", "override", MAC]);
    assert!(ok, "{out}");
    let device = wait_redirect(&appliance, MAC, "registered");
    assert_eq!(mock.calls().last().unwrap().params[3], "1", "the override flag is sent");
    assert_eq!(mock.registry()[MAC].url, device["enrollment_url"].as_str().unwrap());
    assert_eq!(mock.registry()[MAC].account, redirect_mock::OWN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snom_sraps_is_signed_with_hawk() {
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
    assert_eq!(
        fanvil_calls,
        ["redirect.deleteServer", "redirect.addMaterialServer", "redirect.deRegisterDevice", "redirect.registerDevice"]
    );
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
        let device = wait_redirect(&appliance, mac, "registered");
        assert_eq!(mock.registry()[mac].url, device["enrollment_url"].as_str().unwrap());
        let registrations = mock.calls().iter().filter(|c| c.params[0].replace('-', "").to_lowercase() == mac).count();
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
    let device = wait_redirect(&appliance, MAC, "registered");
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
        let device = wait_redirect(&appliance, mac, "registered");
        let path = Appliance::path_of(device["enrollment_url"].as_str().unwrap());
        assert_eq!(Appliance::path_of(&mock.registry()[mac].url), path, "{mac} points at its enrollment URL");
    }
    for mac in &macs {
        let sent = mock.calls().iter().filter(|c| c.params[0].replace('-', "").to_lowercase() == *mac).count();
        // One registration; the one in flight at the kill may be sent again after the
        // restart, answered "Existing MAC" and redone (deregister + register): harmless.
        assert!((1..=4).contains(&sent), "{mac}: {sent} calls");
    }
}
