//! End-to-end provisioning: a real provbox process and simulated phones over real TLS.

mod fleet;

use std::net::IpAddr;

use fleet::{Appliance, Connection, Phone, cli, cli_ok};
use nix::sys::signal::Signal;

const YEALINK_MAC: &str = "805ec0d57d72";

fn add(appliance: &Appliance, phone: &Phone, ext: &str) -> serde_json::Value {
    cli_ok(
        &appliance.data,
        &[
            "device",
            "add",
            "--mac",
            &phone.mac,
            "--vendor",
            phone.vendor,
            "--model",
            phone.model,
            "--ext",
            ext,
            "--name",
            "Test User",
        ],
    );
    appliance.device(&phone.mac)
}

/// The SIP password the appliance would serve, from `render --reveal`.
fn sip_password(appliance: &Appliance, phone: &Phone) -> String {
    let config = cli_ok(&appliance.data, &["render", &phone.mac, &phone.device_file(), "--reveal"]);
    let masked = cli_ok(&appliance.data, &["render", &phone.mac, &phone.device_file()]);
    // The one line that differs in a password field holds it.
    let line = config
        .lines()
        .zip(masked.lines())
        .find(|(real, shown)| real != shown && shown.contains("********") && !real.contains("/p/"))
        .map(|(real, _)| real.to_string())
        .expect("a masked password line");
    assert!(!line.contains("********"));
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_lock_unlock_and_enroll_again() {
    let appliance = Appliance::start();
    let phone = Phone::yealink(YEALINK_MAC);
    let device = add(&appliance, &phone, "100");
    assert_eq!(device["enrollment"]["state"], "open");
    let enrollment = Appliance::path_of(device["enrollment_url"].as_str().unwrap());
    let password_line = sip_password(&appliance, &phone);

    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let responses = phone.boot(&mut connection, &enrollment).await;
    let statuses: Vec<u16> = responses.iter().map(|(_, r)| r.status).collect();
    assert_eq!(statuses, [404, 404, 200, 200], "boot files, then common and device file");
    let config = responses[3].1.text();
    assert!(config.starts_with("#!version:1.0.0.1\n"));
    assert!(config.contains(&password_line), "the device file carries the SIP password");
    assert!(config.contains("account.1.sip_server.1.address = pbx.example.com"));
    assert_eq!(responses[3].1.header("cache-control"), Some("no-store"));
    assert!(!responses[2].1.text().contains("password"), "the common file has no secrets");
    assert_eq!(appliance.device(&phone.mac)["enrollment"]["state"], "grace");

    // The phone resyncs through the steady URL written into its config: enrollment closes.
    let steady = phone.steady_path_in(&config).unwrap();
    assert_eq!(steady, Appliance::path_of(device["steady_url"].as_str().unwrap()));
    let resync = phone.boot(&mut connection, &steady).await;
    assert_eq!(resync[3].1.status, 200);
    let phonebook_url = config.lines().find_map(|l| l.strip_prefix("remote_phonebook.data.1.url = ")).unwrap();
    assert_eq!(Appliance::path_of(phonebook_url), format!("{steady}phonebook.xml"));
    let ua = phone.user_agent();
    let phonebook = connection.get(&format!("{steady}phonebook.xml"), &[("User-Agent", &ua)]).await.unwrap();
    assert_eq!(phonebook.status, 200);
    assert_eq!(phonebook.header("content-type"), Some("application/xml"));
    assert!(
        phonebook.text().contains("<Name>Test User</Name>\n    <Telephone>100</Telephone>"),
        "{}",
        phonebook.text()
    );
    let shown = appliance.device(&phone.mac);
    assert_eq!(shown["enrollment"]["state"], "locked");
    assert_eq!(shown["config"], "current");
    assert_eq!(shown["last_contact"]["firmware"], phone.firmware);
    assert!(shown["last_contact"]["user_agent"].as_str().unwrap().contains("SIP-T54W"));

    // A factory reset sends the phone back to the enrollment URL: nothing with secrets.
    let again = phone.boot(&mut connection, &enrollment).await;
    assert_eq!(again[2].1.status, 200, "secret-free common file is still served");
    assert_eq!(again[3].1.status, 404, "locked enrollment serves no device file");
    assert!(appliance.wait_for_log("enrollment is locked"));

    // A config change shows as pending until the phone fetches it.
    cli_ok(&appliance.data, &["settings", "set", "sip.port", "5070"]);
    assert_eq!(appliance.device(&phone.mac)["config"], "pending");

    // The technician unlocks: a new enrollment URL works, the old one stays dead.
    let unlocked: serde_json::Value =
        serde_json::from_str(&cli_ok(&appliance.data, &["device", "show", &phone.mac, "--json"])).unwrap();
    assert_eq!(unlocked["enrollment"]["state"], "locked");
    cli_ok(&appliance.data, &["device", "unlock", &phone.mac]);
    let reopened = appliance.device(&phone.mac);
    assert_eq!(reopened["enrollment"]["state"], "open");
    let fresh = Appliance::path_of(reopened["enrollment_url"].as_str().unwrap());
    assert_ne!(fresh, enrollment);
    assert_eq!(phone.boot(&mut connection, &enrollment).await[3].1.status, 404);
    let enrolled = phone.boot(&mut connection, &fresh).await;
    assert_eq!(enrolled[3].1.status, 200);
    assert!(enrolled[3].1.text().contains("account.1.sip_server.1.port = 5070"));
    assert_eq!(appliance.device(&phone.mac)["config"], "current");

    // A stolen phone keeps its steady URL until the technician revokes both URLs.
    let steady_now = phone.steady_path_in(&enrolled[3].1.text()).unwrap();
    assert_eq!(phone.boot(&mut connection, &steady_now).await[3].1.status, 200);
    let said = cli_ok(&appliance.data, &["device", "rekey", &phone.mac, "--new-sip-passwords"]);
    assert!(said.contains("enrollment locked") && said.contains("shown this once"), "{said}");
    let new_password = said.lines().last().unwrap().rsplit(' ').next().unwrap().to_string();
    assert_eq!(phone.boot(&mut connection, &steady_now).await[3].1.status, 404, "old steady URL revoked");
    let rekeyed = appliance.device(&phone.mac);
    assert_eq!(rekeyed["enrollment"]["state"], "locked", "a rekey never reopens enrollment");
    let new_enrollment = Appliance::path_of(rekeyed["enrollment_url"].as_str().unwrap());
    assert_eq!(phone.boot(&mut connection, &new_enrollment).await[3].1.status, 404, "locked until unlocked");
    // The technician unlocks for the replacement phone, which gets the new SIP password.
    cli_ok(&appliance.data, &["device", "unlock", &phone.mac]);
    let reopened = Appliance::path_of(appliance.device(&phone.mac)["enrollment_url"].as_str().unwrap());
    let enrolled = phone.boot(&mut connection, &reopened).await;
    assert_eq!(enrolled[3].1.status, 200);
    assert!(enrolled[3].1.text().contains(&format!("account.1.password = {new_password}")), "the new password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vendor_enrolls_with_its_own_files_and_user_agent() {
    let appliance = Appliance::start();
    let phones = [
        Phone::yealink("805ec0d57d73"),
        Phone::snom("000413922d24"),
        Phone::poly("0004f2a1b2c3"),
        Phone::grandstream("000b828aa872"),
    ];
    for (i, phone) in phones.iter().enumerate() {
        let device = add(&appliance, phone, &format!("20{i}"));
        let password_line = sip_password(&appliance, phone);
        let enrollment = Appliance::path_of(device["enrollment_url"].as_str().unwrap());
        let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
        let responses = phone.boot(&mut connection, &enrollment).await;
        let (_, device_file) = responses.last().unwrap();
        assert_eq!(device_file.status, 200, "{}: device file", phone.vendor);
        let config = device_file.text();
        assert!(config.contains(password_line.trim()), "{}: password served", phone.vendor);
        let steady = phone.steady_path_in(&config).unwrap_or_else(|| panic!("{}: steady URL in config", phone.vendor));
        let resync = phone.boot(&mut connection, &steady).await;
        assert_eq!(resync.last().unwrap().1.status, 200, "{}: steady fetch", phone.vendor);
        if phone.vendor == "polycom" {
            // The master a Poly asks for when it finds no <mac>.cfg, read as no one's MAC.
            let ua = phone.user_agent();
            let master = connection.get(&format!("{steady}000000000000.cfg"), &[("User-Agent", &ua)]).await.unwrap();
            assert_eq!(master.status, 200, "polycom: 000000000000.cfg on the steady URL");
            assert!(master.text().contains("-user.cfg"));
        }
        let shown = appliance.device(&phone.mac);
        assert_eq!(shown["enrollment"]["state"], "locked", "{}", phone.vendor);
        assert_eq!(shown["config"], "current", "{}", phone.vendor);
        assert_eq!(shown["last_contact"]["firmware"], phone.firmware, "{}", phone.vendor);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_with_another_mac_is_refused() {
    let appliance = Appliance::start();
    let phone = Phone::yealink(YEALINK_MAC);
    let device = add(&appliance, &phone, "100");
    let enrollment = Appliance::path_of(device["enrollment_url"].as_str().unwrap());
    let impostor = Phone::yealink("805ec0d57d99");
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let ua = impostor.user_agent();
    let stolen = connection.get(&format!("{enrollment}{YEALINK_MAC}.cfg"), &[("User-Agent", &ua)]).await.unwrap();
    assert_eq!(stolen.status, 404);
    assert!(appliance.wait_for_log("the User-Agent names another phone"));
    let other_file = connection.get(&format!("{enrollment}805ec0d57d99.cfg"), &[("User-Agent", &ua)]).await.unwrap();
    assert_eq!(other_file.status, 404);
    assert_eq!(appliance.device(YEALINK_MAC)["enrollment"]["state"], "open", "refusals do not start the grace period");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_scan_is_throttled_per_address() {
    let appliance = Appliance::start();
    let phone = Phone::yealink(YEALINK_MAC);
    let device = add(&appliance, &phone, "100");
    let steady = Appliance::path_of(device["steady_url"].as_str().unwrap());
    let scanner: IpAddr = "127.0.0.2".parse().unwrap();
    let mut connection = Connection::open(appliance.client_config(), appliance.https, Some(scanner)).await.unwrap();
    let mut statuses = Vec::new();
    for i in 0..30u32 {
        let response = connection.get(&format!("/p/{i:032x}/{YEALINK_MAC}.cfg"), &[]).await.unwrap();
        statuses.push(response.status);
    }
    assert!(statuses[..20].iter().all(|s| *s == 404), "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    assert!(appliance.wait_for_log("too many unknown URLs"));
    // Even a right token gets 429 from the scanner's address, but the phone is unaffected.
    assert_eq!(connection.get(&format!("{steady}{YEALINK_MAC}.cfg"), &[]).await.unwrap().status, 429);
    let mut from_phone = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let ua = phone.user_agent();
    assert_eq!(
        from_phone.get(&format!("{steady}{YEALINK_MAC}.cfg"), &[("User-Agent", &ua)]).await.unwrap().status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_edits_apply_at_once_and_broken_ones_give_a_clean_500() {
    let appliance = Appliance::start();
    let phone = Phone::yealink(YEALINK_MAC);
    let device = add(&appliance, &phone, "100");
    let steady = Appliance::path_of(device["steady_url"].as_str().unwrap());
    let ua = phone.user_agent();
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let url = format!("{steady}{YEALINK_MAC}.cfg");
    let before = connection.get(&url, &[("User-Agent", &ua)]).await.unwrap();
    assert!(!before.text().contains("features.dnd.enable"));

    // Keys and per-device overrides reach the served file at the next request.
    cli_ok(&appliance.data, &["device", "key", YEALINK_MAC, "1", "blf", "201", "Bob"]);
    cli_ok(&appliance.data, &["device", "override", YEALINK_MAC, "features.dnd.enable", "1"]);
    let keyed = connection.get(&url, &[("User-Agent", &ua)]).await.unwrap().text();
    assert!(
        keyed.contains("linekey.1.type = 16\nlinekey.1.line = 1\nlinekey.1.value = 201\nlinekey.1.label = Bob\n"),
        "{keyed}"
    );
    assert!(keyed.ends_with("features.dnd.enable = 1\n"), "{keyed}");
    let (ok, _, err) =
        cli(&appliance.data, &["device", "override", YEALINK_MAC, "x\nstatic.security.user_password", "1"]);
    assert!(!ok && err.contains("must start with a letter"), "{err}");
    cli_ok(&appliance.data, &["device", "override", YEALINK_MAC, "features.dnd.enable"]);

    let overrides = appliance.data.join("templates/yealink");
    std::fs::create_dir_all(&overrides).unwrap();
    let stock = cli_ok(&appliance.data, &["render", YEALINK_MAC, "y000000000096.cfg"]);
    assert!(stock.contains("lang.gui"));
    std::fs::write(
        overrides.join("device.cfg"),
        "#!version:1.0.0.1\nfeatures.dnd.enable = 1\naccount.1.user_name = {{ device.lines[0].sip_user }}\n",
    )
    .unwrap();
    let edited = connection.get(&url, &[("User-Agent", &ua)]).await.unwrap();
    assert_eq!(edited.status, 200);
    assert_eq!(edited.text(), "#!version:1.0.0.1\nfeatures.dnd.enable = 1\naccount.1.user_name = 100\n");

    std::fs::write(overrides.join("device.cfg"), "#!version:1.0.0.1\npartial = 1\n{{ device.no_such_field }}\n")
        .unwrap();
    let broken = connection.get(&url, &[("User-Agent", &ua)]).await.unwrap();
    assert_eq!(broken.status, 500);
    assert!(broken.body.is_empty(), "no half-rendered file: {:?}", broken.text());
    assert!(appliance.wait_for_log("template yealink/device.cfg"));
    let (ok, _, err) = cli(&appliance.data, &["render", YEALINK_MAC, &format!("{YEALINK_MAC}.cfg")]);
    assert!(!ok && err.contains("line 3"), "render names the line: {err}");

    std::fs::write(overrides.join("device.cfg"), "{% if %}").unwrap();
    assert_eq!(connection.get(&url, &[("User-Agent", &ua)]).await.unwrap().status, 500);
    std::fs::remove_file(overrides.join("device.cfg")).unwrap();
    let restored = connection.get(&url, &[("User-Agent", &ua)]).await.unwrap();
    assert_eq!(restored.status, 200);
    assert!(restored.text().contains("account.1.password = "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_certificate_is_served_after_sighup() {
    let appliance = Appliance::start();
    let first = Connection::open(appliance.client_config(), appliance.https, None).await;
    assert!(first.is_ok(), "the generated certificate chains to the local CA");

    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    let tls = appliance.data.join("tls");
    std::fs::write(tls.join("operator.key"), key.serialize_pem()).unwrap();
    std::fs::write(tls.join("operator.crt"), cert.pem()).unwrap();
    appliance.signal(Signal::SIGHUP);
    assert!(appliance.wait_for_log("certificate reloaded"));
    let operator_only = fleet::client_config_trusting(&[cert.der().clone()], None);
    let mut connection =
        Connection::open(operator_only, appliance.https, None).await.expect("operator certificate served");
    assert_eq!(connection.get("/ca.crt", &[]).await.unwrap().status, 200);
    assert!(Connection::open(appliance.client_config(), appliance.https, None).await.is_err(), "the old chain is gone");

    // A broken operator file keeps the working certificate.
    std::fs::write(tls.join("operator.key"), "not a key").unwrap();
    appliance.signal(Signal::SIGHUP);
    assert!(appliance.wait_for_log("certificate reload failed"));
    let operator_only = fleet::client_config_trusting(&[cert.der().clone()], None);
    assert!(Connection::open(operator_only, appliance.https, None).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_devices_enrollment_and_contacts() {
    let appliance = Appliance::start();
    let phone = Phone::yealink(YEALINK_MAC);
    let device = add(&appliance, &phone, "100");
    let steady = Appliance::path_of(device["steady_url"].as_str().unwrap());
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    phone.boot(&mut connection, &steady).await;
    let ca_before = std::fs::read(appliance.data.join("tls/ca.crt")).unwrap();
    let https_port = appliance.https.port();
    let (clean, data, dir) = appliance.stop();
    assert!(clean, "SIGTERM exits cleanly");

    // Offline, the CLI still prints the URLs phones use: with the last server's port.
    let offline = fleet::cli_ok(&data, &["device", "show", YEALINK_MAC]);
    assert!(offline.contains(&format!(":{}/p/", https_port)), "{offline}");
    let restarted = Appliance::start_on(data, dir, &["--key-type", "ecdsa-p256"]);
    assert_eq!(std::fs::read(restarted.data.join("tls/ca.crt")).unwrap(), ca_before, "the CA is kept");
    let shown = restarted.device(&phone.mac);
    assert_eq!(shown["enrollment"]["state"], "locked");
    assert_eq!(Appliance::path_of(shown["steady_url"].as_str().unwrap()), steady, "same steady token");
    assert_eq!(shown["last_contact"]["firmware"], phone.firmware, "buffered contact written at shutdown");
    let mut connection = Connection::open(restarted.client_config(), restarted.https, None).await.unwrap();
    let ua = phone.user_agent();
    assert_eq!(
        connection.get(&format!("{steady}{YEALINK_MAC}.cfg"), &[("User-Agent", &ua)]).await.unwrap().status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenless_requests_get_no_secrets_unless_a_lan_window_is_open() {
    let appliance = Appliance::start();
    let unknown = Phone::yealink("805ec0d57daa");
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let responses = unknown.boot(&mut connection, "/").await;
    assert_eq!(responses[3].1.status, 200);
    let bootstrap = responses[3].1.text();
    assert!(!bootstrap.contains("account.1.password") && !bootstrap.contains("/p/"), "{bootstrap}");
    let next = bootstrap.lines().find_map(|l| l.strip_prefix("static.auto_provision.server.url = ")).unwrap();
    assert!(
        next.starts_with("https://") && Appliance::path_of(next) == "/",
        "bootstrap sends the phone to HTTPS: {next}"
    );
    let seen = cli_ok(&appliance.data, &["device", "seen", "--json"]);
    assert!(seen.contains("805ec0d57daa") && seen.contains("T54W"), "{seen}");

    let phone = Phone::yealink(YEALINK_MAC);
    add(&appliance, &phone, "100");
    assert!(!phone.boot(&mut connection, "/").await[3].1.text().contains("account.1.password"));
    cli_ok(&appliance.data, &["device", "lan-window", YEALINK_MAC, "--minutes", "5"]);
    let full = phone.boot(&mut connection, "/").await[3].1.text();
    assert!(full.contains("account.1.password = ") && full.contains("/p/"));

    // Plain HTTP never carries secrets, window or not; it does carry the CA.
    let plain = std::net::TcpStream::connect(appliance.http).unwrap();
    let mut plain = tokio::io::BufReader::new(
        tokio::net::TcpStream::from_std({
            plain.set_nonblocking(true).unwrap();
            plain
        })
        .unwrap(),
    );
    use tokio::io::AsyncWriteExt;
    let ua = phone.user_agent();
    plain.get_mut().write_all(format!("GET /{YEALINK_MAC}.cfg HTTP/1.1\r\nHost: x\r\nUser-Agent: {ua}\r\n\r\nGET /ca.crt HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let over_http = fleet::read_response(&mut plain).await.unwrap();
    assert!(!over_http.text().contains("account.1.password"));
    let ca = fleet::read_response(&mut plain).await.unwrap();
    assert!(ca.text().starts_with("-----BEGIN CERTIFICATE-----"));

    cli_ok(&appliance.data, &["settings", "set", "provision.bootstrap", "off"]);
    assert_eq!(unknown.boot(&mut connection, "/").await[3].1.status, 404);
}

/// A fetch gets a log line only at `--log-level debug`; at the default level the log has a
/// summary (a minute, and the rest at shutdown) whose counts are the phone's own requests.
#[tokio::test]
async fn fetches_are_summarised_in_the_log_and_itemised_only_at_debug() {
    for (flags, itemised) in [(&[][..], false), (&["--log-level", "debug"][..], true)] {
        let appliance = Appliance::start_with(flags);
        let phone = Phone::yealink(YEALINK_MAC);
        let device = add(&appliance, &phone, "100");
        let enrollment = Appliance::path_of(device["enrollment_url"].as_str().unwrap());
        let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
        let responses = phone.boot(&mut connection, &enrollment).await;
        let statuses: Vec<u16> = responses.iter().map(|(_, r)| r.status).collect();
        assert_eq!(statuses, [404, 404, 200, 200], "boot files, then common and device file");
        // A firmware file from the steady URL counts as a static file.
        std::fs::create_dir_all(appliance.data.join("files")).unwrap();
        std::fs::write(appliance.data.join("files/T54W.rom"), b"firmware").unwrap();
        let steady = phone.steady_path_in(&responses[3].1.text()).expect("steady URL in the config");
        let firmware = connection.get(&format!("{steady}files/T54W.rom"), &[]).await.unwrap();
        assert_eq!((firmware.status, firmware.text()), (200, "firmware".to_string()));
        appliance.signal(Signal::SIGTERM);
        assert!(appliance.wait_for_log("since the last summary: "), "{}", appliance.log());
        let log = appliance.log();
        let summary = log.lines().find(|line| line.contains("since the last summary: ")).unwrap();
        assert!(
            summary.contains(
                "fetches served 2, not found 2, throttled 0, failed 0, static files served 1, TLS handshakes failed 0"
            ),
            "{summary}"
        );
        let per_fetch = log
            .lines()
            .filter(|line| line.contains("provbox::app::fetches: served") || line.contains("served a static file"))
            .count();
        assert_eq!(per_fetch, if itemised { 3 } else { 0 }, "{flags:?}:\n{log}");
    }
}
