//! The server's edges: TLS versions and resumption, limits against slow or hostile clients,
//! hostile paths, static files with Range, and the CLI's refusals.

mod fleet;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use fleet::{Appliance, Connection, Phone, cli, cli_ok};

const MAC: &str = "805ec0d57d72";

fn add_yealink(appliance: &Appliance) -> serde_json::Value {
    cli_ok(
        &appliance.data,
        &["device", "add", "--mac", MAC, "--vendor", "yealink", "--model", "T54W", "--ext", "100", "--name", "Alice"],
    );
    appliance.device(MAC)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_12_and_13_both_work_and_sessions_resume() {
    let appliance = Appliance::start();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let config = fleet::client_config_trusting(&appliance.ca(), Some(version));
        let mut first = Connection::open(config.clone(), appliance.https, None).await.unwrap();
        assert_eq!(first.handshake().0, Some(version.version));
        assert_eq!(first.handshake().1, Some(rustls::HandshakeKind::Full));
        // TLS 1.3 tickets arrive after the handshake; one request makes sure they are read.
        assert_eq!(first.get("/ca.crt", &[]).await.unwrap().status, 200);
        let second = Connection::open(config, appliance.https, None).await.unwrap();
        assert_eq!(second.handshake().1, Some(rustls::HandshakeKind::Resumed), "{:?}", version.version);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_and_the_first_server_key_are_rsa_2048_by_default_and_key_files_are_private() {
    let appliance = Appliance::start_with(&[]);
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    use std::os::unix::fs::PermissionsExt;
    for file in ["ca.key", "server.key"] {
        let path = appliance.data.join("tls").join(file);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "{file}");
        let PrivateKeyDer::Pkcs8(der) = PrivateKeyDer::from_pem_file(&path).unwrap() else { panic!("{file}: PKCS#8") };
        let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("an RSA key");
        assert_eq!(key.public().modulus_len(), 256, "{file}: 2048 bits");
    }
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    assert_eq!(connection.get("/ca.crt", &[]).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let appliance = Appliance::start();
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    for _ in 0..50 {
        assert_eq!(connection.get("/ca.crt", &[]).await.unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_and_headers_get_clean_errors() {
    let appliance = Appliance::start();
    let device = add_yealink(&appliance);
    let steady = Appliance::path_of(device["steady_url"].as_str().unwrap());
    std::fs::create_dir_all(appliance.data.join("files")).unwrap();
    std::fs::write(appliance.data.join("files/firmware.rom"), b"0123456789abcdefghij").unwrap();
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    for path in [
        format!("{steady}files/../store.bin"),
        format!("{steady}files/%2e%2e/store.bin"),
        format!("{steady}files/..%2fstore.bin"),
        format!("{steady}..%2f..%2fstore.bin"),
        "/%2e%2e/%2e%2e/etc/passwd".to_string(),
        "/tls/ca.key".to_string(),
        format!("{steady}%ff%fe.cfg"),
        "/e/not-hex/805ec0d57d72.cfg".to_string(),
    ] {
        let response = connection.get(&path, &[]).await.unwrap();
        assert!(matches!(response.status, 400 | 404), "{path}: {}", response.status);
        assert!(!response.text().contains("BEGIN"), "{path} leaked a file");
    }
    // Range requests on static files, and their checksums in `device show`.
    let ranged = connection.get(&format!("{steady}files/firmware.rom"), &[("Range", "bytes=10-13")]).await.unwrap();
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.body, b"abcd");
    let shown = appliance.device(MAC);
    assert_eq!(shown["files"][0]["path"], "firmware.rom");
    let sum = ring::digest::digest(&ring::digest::SHA256, b"0123456789abcdefghij");
    let hex: String = sum.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(shown["files"][0]["sha256"], hex);
    assert_eq!(
        connection.get("/p/00000000000000000000000000000000/files/firmware.rom", &[]).await.unwrap().status,
        404
    );
    // A folder is not found, never redirected: a redirect to `<path>/` lost the
    // `/p/<token>/files` prefix, and `files//sub` pointed off site (`//sub/`).
    std::fs::create_dir_all(appliance.data.join("files/sub")).unwrap();
    std::fs::write(appliance.data.join("files/sub/logo.png"), b"png").unwrap();
    for path in [format!("{steady}files/sub"), format!("{steady}files//sub"), format!("{steady}files/sub/")] {
        let response = connection.get(&path, &[]).await.unwrap();
        assert_eq!((response.status, response.header("location")), (404, None), "{path}");
    }
    assert_eq!(connection.get(&format!("{steady}files/sub/logo.png"), &[]).await.unwrap().body, b"png");

    // An oversized header block: 431, and the server goes on.
    let huge = "x".repeat(40 * 1024);
    let mut other = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let refused = other.get("/ca.crt", &[("X-Padding", &huge)]).await;
    assert!(refused.is_err() || refused.as_ref().unwrap().status == 431, "{refused:?}");
    assert_eq!(connection.get("/ca.crt", &[]).await.unwrap().status, 200);
}

/// A fresh plain-HTTP client still gets the CA.
fn assert_serves_the_ca(appliance: &Appliance) {
    let mut fine = std::net::TcpStream::connect(appliance.http).unwrap();
    fine.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    fine.write_all(b"GET /ca.crt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    fine.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_slowloris_client_is_cut_off_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let data = fleet::data_dir(dir.path());
    let appliance = Appliance::start_on(data, Some(dir), &["--header-timeout", "1", "--key-type", "ecdsa-p256"]);
    let mut slow = std::net::TcpStream::connect(appliance.http).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    slow.write_all(b"GET /ca.crt HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let mut buffer = [0u8; 512];
    // The server answers 408 or just closes once the header timeout passes.
    let _ = slow.read(&mut buffer);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "cut off after {waited:?}");
    assert_serves_the_ca(&appliance);
}

/// A plain TCP connection to `server` from loopback address `local`.
async fn connect_from(local: [u8; 4], server: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(IpAddr::from(local), 0)).unwrap();
    socket.connect(server).await.unwrap()
}

/// Whether `stream` was closed without an answer to a request.
async fn closed_unanswered(mut stream: tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.write_all(b"GET /ca.crt HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buffer = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_turns_away_extra_connections() {
    let dir = tempfile::tempdir().unwrap();
    let data = fleet::data_dir(dir.path());
    let appliance = Appliance::start_on(data, Some(dir), &["--max-connections", "2", "--key-type", "ecdsa-p256"]);
    let held = [connect_from([127, 0, 0, 2], appliance.http).await, connect_from([127, 0, 0, 3], appliance.http).await];
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(closed_unanswered(connect_from([127, 0, 0, 4], appliance.http).await).await);
    assert!(appliance.wait_for_log("connection cap reached"));
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_serves_the_ca(&appliance);
}

/// An appliance started with `flags`, and a Yealink that enrolled from 127.0.0.50 through its
/// URL (so its address proved itself): the appliance, the phone, its address and its steady
/// file's path.
async fn enrolled_phone(flags: &[&str]) -> (Appliance, Phone, IpAddr, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = fleet::data_dir(dir.path());
    let appliance = Appliance::start_on(data, Some(dir), flags);
    let device = appliance.add(MAC, "yealink", "T54W");
    let phone = Phone::yealink(MAC);
    let phone_address = IpAddr::from([127, 0, 0, 50]);
    let enrollment = Appliance::path_of(device["enrollment_url"].as_str().unwrap());
    let mut first = Connection::open(appliance.client_config(), appliance.https, Some(phone_address)).await.unwrap();
    let steady = phone.steady_path_in(&phone.boot(&mut first, &enrollment).await[3].1.text()).unwrap();
    (appliance, phone, phone_address, steady)
}

/// One address cannot take every connection (it may hold a sixteenth), and when strangers
/// fill the rest, the last eighth stays for addresses that proved themselves: a phone that
/// fetched through its URL, even before a restart, still gets its configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection_and_known_phones_keep_a_reserve() {
    let (appliance, phone, phone_address, steady) =
        enrolled_phone(&["--max-connections", "64", "--key-type", "ecdsa-p256"]).await;
    // A restart (a power cut restarts the phones too) keeps the phone known: its last
    // contact's address is.
    let (stopped, data, dir) = appliance.stop();
    assert!(stopped);
    let appliance = Appliance::start_on(data, dir, &["--max-connections", "64", "--key-type", "ecdsa-p256"]);

    // One address: 4 of 64 (a sixteenth), then refused.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from([127, 0, 0, 2], appliance.https).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(closed_unanswered(connect_from([127, 0, 0, 2], appliance.https).await).await);
    assert!(appliance.wait_for_log("this address holds 4 connections already"));
    // Strangers from 13 more addresses take the rest but the reserve (64 - 8 = 56 in all).
    for host in 3..16u8 {
        for _ in 0..4 {
            held.push(connect_from([127, 0, 0, host], appliance.https).await);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(closed_unanswered(connect_from([127, 0, 0, 20], appliance.https).await).await, "a stranger is refused");
    assert!(appliance.wait_for_log("kept for known phones and the page"));
    // The phone that fetched through its URL before still gets through.
    let mut again = Connection::open(appliance.client_config(), appliance.https, Some(phone_address)).await.unwrap();
    let fetched = phone.boot(&mut again, &steady).await;
    assert_eq!(fetched[3].1.status, 200);
    drop(held);
}

#[test]
fn the_cli_refuses_bad_input_with_reasons_and_keeps_what_was_there() {
    let dir = tempfile::tempdir().unwrap();
    let data = fleet::data_dir(dir.path());
    let add = |extra: &[&str]| {
        let mut args = vec!["device", "add", "--vendor", "yealink", "--model", "T54W", "--name", "Alice"];
        args.extend_from_slice(extra);
        cli(&data, &args)
    };
    let (ok, _, err) = add(&["--mac", "80:5e:c0:d5:7d", "--ext", "100"]);
    assert!(!ok && err.contains("invalid MAC"), "{err}");
    let (ok, _, err) = add(&["--mac", MAC, "--ext", "100", "--sip-password", "short"]);
    assert!(!ok && err.contains("at least 12"), "{err}");
    let (ok, _, err) = add(&["--mac", MAC, "--ext", "4711", "--sip-password", "Secret4711Abc"]);
    assert!(!ok && err.contains("extension"), "{err}");
    let (ok, _, err) =
        cli(&data, &["device", "add", "--mac", MAC, "--vendor", "acme", "--model", "X", "--ext", "1", "--name", "A"]);
    assert!(!ok && err.contains("acme"), "{err}");
    let (ok, _, err) = cli(&data, &["settings", "set", "sip.transport", "carrier-pigeon"]);
    assert!(!ok && err.contains("udp, tcp, tls"), "{err}");
    assert!(cli_ok(&data, &["device", "list", "--json"]).trim() == "[]", "nothing was added");

    cli_ok(
        &data,
        &["device", "add", "--mac", MAC, "--vendor", "yealink", "--model", "T54W", "--ext", "100", "--name", "Alice"],
    );
    let (ok, _, err) = cli(
        &data,
        &["device", "add", "--mac", MAC, "--vendor", "yealink", "--model", "T54W", "--ext", "101", "--name", "B"],
    );
    assert!(!ok && err.contains("already exists"), "{err}");

    let csv = dir.path().join("phones.csv");
    std::fs::write(
        &csv,
        "mac,vendor,model,extension,name,sip_user,sip_password\n\
         000413922d24,snom,D785,200,Bob,,\n\
         zz:zz,yealink,T54W,201,Carol,,\n\
         000b828aa872,grandstream,GXP2135,202,Dan,,weak\n\
         805ec0d57d72,yealink,T54W,203,Dup,,\n\
         0004f2a1b2c3,polycom,VVX400,204,Eve,,\n",
    )
    .unwrap();
    let (ok, _, err) = cli(&data, &["device", "import", csv.to_str().unwrap()]);
    assert!(!ok, "all-or-nothing refuses");
    assert!(err.contains("line 3: invalid MAC"), "{err}");
    assert!(err.contains("line 4: SIP password"), "{err}");
    assert!(err.contains("line 5: a device with MAC 805ec0d57d72 already exists"), "{err}");
    let listed: serde_json::Value = serde_json::from_str(&cli_ok(&data, &["device", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "nothing imported");

    let (ok, out, err) = cli(&data, &["device", "import", csv.to_str().unwrap(), "--partial"]);
    assert!(ok, "{err}");
    assert!(out.contains("imported 2 device(s)"), "{out}");
    assert!(err.contains("line 3") && err.contains("(skipped)"), "{err}");
    let export = cli_ok(&data, &["device", "export"]);
    assert!(export.starts_with("mac,vendor,model,extension,name,sip_user,sip_password\n"));
    assert!(export.contains("000413922d24,snom,D785,200,Bob,200,\n"), "passwords masked: {export}");
    let revealed = cli_ok(&data, &["device", "export", "--reveal"]);
    assert!(!revealed.contains("000413922d24,snom,D785,200,Bob,200,\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_talks_to_the_running_server_over_its_socket() {
    let appliance = Appliance::start();
    let socket = appliance.data.join("control.sock");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    for key in ["tls/ca.key", "tls/server.key", "store.bin"] {
        let mode = std::fs::metadata(appliance.data.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    // The store is held by the server; the device still gets added, through the socket.
    add_yealink(&appliance);
    let phone = Phone::yealink(MAC);
    let device = appliance.device(MAC);
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let enrollment = Appliance::path_of(device["enrollment_url"].as_str().unwrap());
    assert_eq!(phone.boot(&mut connection, &enrollment).await[3].1.status, 200);
    let settings = cli_ok(&appliance.data, &["settings", "show"]);
    assert!(settings.contains("phone.admin_password") && settings.contains("********"));
    assert!(
        !appliance.log().contains(
            &cli_ok(&appliance.data, &["render", MAC, &format!("{MAC}.cfg"), "--reveal"])
                .lines()
                .find(|l| l.starts_with("account.1.password"))
                .unwrap()
                .replace("account.1.password = ", "")
        ),
        "no password in the log"
    );
}

#[tokio::test]
async fn serve_drops_to_an_unprivileged_user_after_binding() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: dropping privileges needs root (CI runs as root)");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("a nobody user");
    let dir = tempfile::tempdir().unwrap();
    let data = fleet::data_dir(dir.path());
    // A fresh data directory made by root: serve hands it to the user before dropping.
    cli_ok(&data, &["settings", "set", "sip.server", "pbx.example.com"]);
    // (The temporary parent must be passable for the user, as /var/lib is.)
    let path_to_data = dir.path().to_path_buf();
    nix::unistd::chown(&path_to_data, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let appliance = Appliance::start_on(data, Some(dir), &["--key-type", "ecdsa-p256", "--user", "nobody"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", appliance.pid())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let expected = nobody.uid.as_raw().to_string();
    assert!(uids.split_whitespace().skip(1).all(|uid| uid == expected), "real, effective, saved and fs uid: {uids}");
    assert!(appliance.wait_for_log("running unprivileged"));
    // It still serves, and its files are the unprivileged user's.
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    assert_eq!(connection.get("/ca.crt", &[]).await.unwrap().status, 200);
    let key = std::fs::metadata(appliance.data.join("tls/server.key")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&key), nobody.uid.as_raw());
    assert!(
        cli_ok(&appliance.data, &["device", "list"]).starts_with("MAC"),
        "the CLI reaches it over the control socket"
    );
}

#[test]
fn commands_run_elsewhere_create_no_store_and_say_where_to_look() {
    let home = tempfile::tempdir().unwrap();
    // A new terminal in $HOME: no --data, no PROVBOX_DATA, no ./provbox-data.
    for args in [
        &["device", "list"][..],
        &["device", "add", "--mac", MAC, "--vendor", "yealink", "--model", "T54W", "--ext", "100", "--name", "A"][..],
        &["settings", "show"][..],
    ] {
        let output =
            fleet::provbox_command().current_dir(home.path()).env_remove("PROVBOX_DATA").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("no provbox data directory") && err.contains("--data") && err.contains("PROVBOX_DATA"),
            "{err}"
        );
        assert!(!home.path().join("provbox-data").exists(), "{args:?} created a stray store");
    }
    // PROVBOX_DATA names the data directory, as --data does.
    let data = fleet::data_dir(home.path());
    let set = fleet::provbox_command()
        .current_dir(home.path())
        .env("PROVBOX_DATA", &data)
        .args(["settings", "set", "sip.server", "pbx.example.com"])
        .output()
        .unwrap();
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    assert!(cli_ok(&data, &["settings", "show"]).contains("pbx.example.com"));
}

/// The validity of `certificate`: (not before, not after), Unix seconds.
fn validity(certificate: &[u8]) -> (i64, i64) {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).expect("an X.509 certificate");
    (parsed.validity().not_before.timestamp(), parsed.validity().not_after.timestamp())
}

/// The served certificate lasts 398 days at most, which Apple's clients require (CA/Browser
/// Forum baseline since 2020), and a running appliance renews it before it expires: here its
/// record says it ends tomorrow, and a new handshake soon gets a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_lasts_398_days_at_most_and_renews_while_running() {
    let appliance = Appliance::start();
    let served = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap().peer_certificate();
    let (not_before, not_after) = validity(&served);
    assert!(not_after - not_before <= 398 * 86_400, "{} days", (not_after - not_before) / 86_400);
    assert!(not_after - not_before >= 397 * 86_400, "{} days", (not_after - not_before) / 86_400);

    // As if 368 days had passed: the record of the certificate says it ends in a day.
    let record_path = appliance.data.join("tls/server.json");
    let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    record["not_after"] = serde_json::json!(now + 86_400);
    std::fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let renewed =
            Connection::open(appliance.client_config(), appliance.https, None).await.unwrap().peer_certificate();
        if renewed != served {
            let (_, renewed_until) = validity(&renewed);
            assert!(renewed_until >= not_after, "the renewed one lasts at least as long");
            break;
        }
        assert!(Instant::now() < deadline, "not renewed: {}", appliance.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(appliance.wait_for_log("renewed the server certificate"), "{}", appliance.log());
}

/// The value of the Prometheus series `name` in `text`.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in {text}"))
}

/// Strangers walking MACs on the tokenless path cannot drive flash writes: 40 addresses
/// asking for 20 unknown phones each (800 phones-seen records, which once meant as many
/// store commits) cost a few batched commits within the hour's budget, and what is listed
/// is on flash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_walking_macs_cannot_drive_flash_writes() {
    let appliance = Appliance::start();
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "prometheus"]).trim().to_string();
    let commits = || async {
        metric(&fleet::api(&appliance, "GET", "/metrics", &token, "").await.2, "provbox_store_commits_total")
    };
    let before = commits().await;
    let mut answered = 0;
    for host in 2..42u8 {
        let local = IpAddr::from([127, 0, 0, host]);
        let mut connection = Connection::open(appliance.client_config(), appliance.https, Some(local)).await.unwrap();
        for i in 0..20u8 {
            let phone = Phone::yealink(&format!("805ec0{host:02x}{i:04x}"));
            let ua = phone.user_agent();
            let response = connection.get(&format!("/{}.cfg", phone.mac), &[("User-Agent", &ua)]).await.unwrap();
            answered += usize::from(response.status < 500);
        }
    }
    assert_eq!(answered, 800);
    tokio::time::sleep(Duration::from_secs(7)).await; // the flush interval is 5 s
    let written = commits().await - before;
    // At most the hour's 256 records, as many to a commit as one store entry holds.
    assert!((1..=20).contains(&written), "{written} store commits for 800 strangers' requests");
    let seen = |data: &std::path::Path| -> usize {
        serde_json::from_str::<Vec<serde_json::Value>>(&cli_ok(data, &["device", "seen", "--json"])).unwrap().len()
    };
    let listed = seen(&appliance.data);
    assert_eq!(listed, 256, "the list's capacity");
    // What was listed is on flash: a restart lists it again.
    let (stopped, data, dir) = appliance.stop();
    assert!(stopped);
    let again = Appliance::start_on(data, dir, &[]);
    assert_eq!(seen(&again.data), listed);
}

/// Strangers' new connections are capped all together (a TLS handshake costs a signature),
/// while a phone that fetched before is not counted and still gets its configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_new_connections_are_capped_but_known_phones_pass() {
    let (appliance, phone, phone_address, steady) =
        enrolled_phone(&["--strangers-per-second", "5", "--key-type", "ecdsa-p256"]).await;
    let mut refused = 0;
    for host in 0..40u8 {
        let stranger = connect_from([127, 0, 3, host + 1], appliance.http).await;
        refused += usize::from(closed_unanswered(stranger).await);
    }
    assert!(refused >= 20, "{refused} of 40 strangers' connections refused at 5 a second");
    assert!(appliance.wait_for_log("new connections from unproven addresses run over 5 a second"));
    // On the same listener, at once, the phone's address is not counted.
    let mut known = connect_from([127, 0, 0, 50], appliance.http).await;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        known.write_all(b"GET /ca.crt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), known.read_to_end(&mut answer)).await.unwrap().unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    }
    let mut again = Connection::open(appliance.client_config(), appliance.https, Some(phone_address)).await.unwrap();
    assert_eq!(phone.boot(&mut again, &steady).await[3].1.status, 200);
}
