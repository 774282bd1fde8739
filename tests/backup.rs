//! Encrypted backups, end to end: a phone provisioned before the card was lost fetches from
//! the restored appliance with no change on the phone; bad backups are refused and change
//! nothing; the files open with the reference `age` tool (C2SP age v1), both ways; and
//! scheduled copies reach a real WebDAV server (Debian's nginx) through an outage.

mod fleet;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fleet::{Appliance, Connection, Phone, cli_ok, provbox_command};

const PASSPHRASE: &str = "correct horse battery staple";

/// Runs `provbox --data DATA args...` with the backup passphrase in the environment.
fn backup_cli(data: &Path, args: &[&str]) -> (bool, String, String) {
    let output = provbox_command()
        .arg("--data")
        .arg(data)
        .args(args)
        .env("PROVBOX_BACKUP_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::null())
        .output()
        .expect("provbox runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

fn backup_ok(data: &Path, args: &[&str]) -> String {
    let (ok, out, err) = backup_cli(data, args);
    assert!(ok, "provbox {args:?} failed: {err}");
    out
}

/// An enrolled Yealink, a Snom still enrolling, and a template override; returns the
/// appliance and the Yealink's steady path.
async fn provisioned_site() -> (Appliance, Phone, String) {
    let appliance = Appliance::start();
    let yealink = Phone::yealink("805ec0a1b2c3");
    appliance.add(&yealink.mac, "yealink", "T54W");
    appliance.add("000413aabbcc", "snom", "D785");
    let stock = std::fs::read_to_string("templates/yealink/device.cfg").unwrap();
    let overrides = appliance.data.join("templates/yealink");
    std::fs::create_dir_all(&overrides).unwrap();
    std::fs::write(overrides.join("device.cfg"), format!("{stock}\n## site override: restored with the backup\n"))
        .unwrap();
    appliance.enroll(&yealink).await;
    let device = appliance.device(&yealink.mac);
    let steady = Appliance::path_of(device["steady_url"].as_str().unwrap());
    (appliance, yealink, steady)
}

/// The phone's config through its steady URL, trusting only `ca_pem`.
async fn fetch_steady(
    https: std::net::SocketAddr,
    ca: &[rustls::pki_types::CertificateDer<'static>],
    phone: &Phone,
    steady: &str,
) -> fleet::Response {
    let mut connection =
        Connection::open(fleet::client_config_trusting(ca, None), https, None).await.expect("TLS with the old CA");
    connection.get(&format!("{steady}{}", phone.device_file()), &[("User-Agent", &phone.user_agent())]).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_fetches_from_the_restored_appliance_through_its_old_steady_url() {
    let (old, phone, steady) = provisioned_site().await;
    let old_ca = old.ca();
    let before = fetch_steady(old.https, &old_ca, &phone, &steady).await;
    assert_eq!(before.status, 200);
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("site.age");
    backup_ok(&old.data, &["backup", "create", file.to_str().unwrap()]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n-> scrypt "));
    assert!(!bytes.windows(steady.len()).any(|w| w == steady.as_bytes()), "the steady token is in the clear");

    // The card is lost: the data directory is gone.
    let (_, old_data, _dir) = old.stop();
    std::fs::remove_dir_all(&old_data).unwrap();

    // A new appliance, first start: its own CA, which the phone does not trust.
    let new = Appliance::start();
    assert_ne!(new.ca(), old_ca);
    assert!(Connection::open(fleet::client_config_trusting(&old_ca, None), new.https, None).await.is_err());
    let out = backup_ok(&new.data, &["backup", "restore", file.to_str().unwrap()]);
    assert!(out.contains("restored 2 devices"), "{out}");

    // The running server took the restored CA up at once: the phone's old trust and URL work.
    assert_eq!(new.ca(), old_ca);
    let after = fetch_steady(new.https, &old_ca, &phone, &steady).await;
    assert_eq!(after.status, 200, "{}", after.text());
    let body = after.text();
    assert!(body.contains("## site override: restored with the backup"), "{body}");
    let account =
        |text: &str| text.lines().filter(|l| l.starts_with("account.1.")).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(account(&body), account(&before.text()), "the same SIP account");
    assert_eq!(new.device(&phone.mac)["enrollment"]["state"], "locked", "enrollment stays locked");
    let mode = std::fs::metadata(new.data.join("tls/ca.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A guessed token still gets nothing.
    let guessed = format!("/p/{}/", "A".repeat(26));
    let miss = fetch_steady(new.https, &old_ca, &phone, &guessed).await;
    assert_eq!(miss.status, 404);
    // Restoring over an appliance in use needs saying so; it ends the sessions of the
    // password it replaced (this backup has none: the page asks for setup again).
    let mut browser = logged_in(&new).await;
    assert_eq!(browser.get("/").await.status, 200);
    let (ok, _, err) = backup_cli(&new.data, &["backup", "restore", file.to_str().unwrap()]);
    assert!(!ok && err.contains("--replace"), "{err}");
    backup_ok(&new.data, &["backup", "restore", "--replace", file.to_str().unwrap()]);
    assert_eq!(browser.get("/").await.header("location"), Some("/setup"), "a session outlived the restore");
    let log = new.log();
    assert!(!log.contains(PASSPHRASE), "the passphrase reached the log");
}

/// Every device's MAC and the CA, to compare before and after a refused restore.
fn state_of(appliance: &Appliance) -> (String, Vec<u8>) {
    let list = cli_ok(&appliance.data, &["device", "list", "--json"]);
    (list, std::fs::read(appliance.data.join("tls/ca.crt")).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backups_are_refused_with_their_reason_and_change_nothing() {
    let (old, _, _) = provisioned_site().await;
    let scratch = tempfile::tempdir().unwrap();
    let good = scratch.path().join("good.age");
    backup_ok(&old.data, &["backup", "create", good.to_str().unwrap()]);
    let good_bytes = std::fs::read(&good).unwrap();
    drop(old);

    let target = Appliance::start();
    target.add("805ec0000001", "yealink", "T46U");
    let before = state_of(&target);
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let path = scratch.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let mut tampered = good_bytes.clone();
    let middle = tampered.len() - 40;
    tampered[middle] ^= 0x20;
    let other_product = {
        // A tar of something else, encrypted the same way: it decrypts, and is still refused.
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(5);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, "tancredi/config.json", &b"{}\n\n\n"[..]).unwrap();
        provbox::backup::age::encrypt(&tar.into_inner().unwrap(), PASSPHRASE)
    };
    // A backup whose device record a newer provbox wrote (schema 200): this one cannot read it.
    let newer_record = {
        let key = provbox::backup::BackupKey::Passphrase(PASSPHRASE.into());
        let mut snapshot = provbox::backup::open(&good_bytes, &key).unwrap();
        let device = snapshot.records.iter_mut().find(|record| record.key[0] == 1).expect("a device record");
        device.value[0] = 200;
        provbox::backup::seal(&snapshot, PASSPHRASE)
    };
    // A setting that breaks its rule (credentials would go over plain HTTP).
    let bad_setting = {
        use provbox::store::records::{Record, Setting, bounded};
        let key = provbox::backup::BackupKey::Passphrase(PASSPHRASE.into());
        let mut snapshot = provbox::backup::open(&good_bytes, &key).unwrap();
        let value = Setting { value: bounded("value", "http://nas.example/dav/").unwrap() }.encode();
        let mut name = vec![2u8];
        name.extend_from_slice(b"backup.copy_url");
        snapshot.records.push(provbox::backup::StoreRecord { key: name, value });
        provbox::backup::seal(&snapshot, PASSPHRASE)
    };
    let cases: [(&str, PathBuf, &str); 7] = [
        ("wrong passphrase", good.clone(), "wrong passphrase"),
        ("truncated", write("truncated.age", &good_bytes[..good_bytes.len() / 2]), "truncated"),
        ("tampered", write("tampered.age", &tampered), "was changed"),
        ("another product", write("other.age", &other_product), "not a provbox backup"),
        ("not age", write("export.csv", b"mac,vendor,model\n805ec0000009,yealink,T46U\n"), "not an age-encrypted file"),
        ("a newer record", write("newer.age", &newer_record), "upgrade provbox"),
        ("a setting against its rule", write("setting.age", &bad_setting), "backup.copy_url: must be an https://"),
    ];
    for (what, path, reason) in cases {
        let mut command = provbox_command();
        command.arg("--data").arg(&target.data).args(["backup", "restore", "--replace", path.to_str().unwrap()]);
        let passphrase = if what == "wrong passphrase" { "not the passphrase at all" } else { PASSPHRASE };
        let output = command.env("PROVBOX_BACKUP_PASSPHRASE", passphrase).stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && err.contains(reason), "{what}: {err}");
        assert_eq!(state_of(&target), before, "{what} changed the appliance");
    }
    // A passphrase too short to protect a file that leaves the appliance.
    let output = provbox_command()
        .arg("--data")
        .arg(&target.data)
        .args(["backup", "create", scratch.path().join("weak.age").to_str().unwrap()])
        .env("PROVBOX_BACKUP_PASSPHRASE", "short")
        .output()
        .unwrap();
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("at least 12 characters"));
}

/// Runs the `age` CLI on a pseudo-terminal (it reads passphrases only from a terminal),
/// typing `lines`; bounded by a timeout.
fn age_on_terminal(args: &str, lines: &[&str]) -> std::process::Output {
    let mut child = Command::new("script")
        .args(["-qec", &format!("age {args}"), "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux runs");
    let mut stdin = child.stdin.take().unwrap();
    for line in lines {
        std::thread::sleep(Duration::from_millis(400));
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "age did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's age CLI: scripts/test-backup-tools (a CI step) installs it and runs this"]
async fn the_reference_age_tool_opens_a_backup_and_makes_one_provbox_restores() {
    let (old, phone, steady) = provisioned_site().await;
    let old_ca = old.ca();
    let scratch = tempfile::tempdir().unwrap();
    let made = scratch.path().join("made-by-provbox.age");
    backup_ok(&old.data, &["backup", "create", made.to_str().unwrap()]);

    // age decrypts it; tar lists the documented layout.
    let tar_path = scratch.path().join("backup.tar");
    let output = age_on_terminal(&format!("-d -o {} {}", tar_path.display(), made.display()), &[PASSPHRASE]);
    assert!(output.status.success(), "age -d: {}", String::from_utf8_lossy(&output.stdout));
    let listing = Command::new("tar").arg("tf").arg(&tar_path).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for entry in ["provbox-backup/manifest.json", "provbox-backup/store.records", "provbox-backup/data/tls/ca.key"] {
        assert!(listing.lines().any(|line| line == entry), "{entry} not in:\n{listing}");
    }

    // age encrypts the same archive anew (its own salt, work factor 18, its own chunking);
    // provbox restores that file onto a new appliance.
    let remade = scratch.path().join("made-by-age.age");
    let output =
        age_on_terminal(&format!("-p -o {} {}", remade.display(), tar_path.display()), &[PASSPHRASE, PASSPHRASE]);
    assert!(output.status.success(), "age -p: {}", String::from_utf8_lossy(&output.stdout));
    assert!(std::fs::read(&remade).unwrap().starts_with(b"age-encryption.org/v1\n-> scrypt "));
    drop(old);
    let new = Appliance::start();
    backup_ok(&new.data, &["backup", "restore", "--replace", remade.to_str().unwrap()]);
    let after = fetch_steady(new.https, &old_ca, &phone, &steady).await;
    assert_eq!(after.status, 200);
}

const ADMIN_PASSWORD: &str = "Tech-Passw0rd-2026";

/// Sets the admin password with the CLI and logs a browser in.
async fn logged_in(appliance: &Appliance) -> fleet::Browser {
    let mut child = provbox_command()
        .arg("--data")
        .arg(&appliance.data)
        .args(["admin", "set-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{ADMIN_PASSWORD}\n").as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    login(fleet::Browser::open(appliance).await).await
}

async fn login(mut browser: fleet::Browser) -> fleet::Browser {
    let form = fleet::hidden(&browser.get("/login").await.text(), "form");
    let done = browser.post("/login", &[("form", &form), ("password", ADMIN_PASSWORD)]).await;
    assert_eq!(done.status, 303, "{}", done.text());
    browser
}

/// A browser's multipart form body (RFC 7578) with text fields and one file.
fn multipart(fields: &[(&str, &str)], file: (&str, &[u8])) -> (String, Vec<u8>) {
    let boundary = "----provboxTestBoundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"site.age\"\r\nContent-Type: application/octet-stream\r\n\r\n", file.0)
            .as_bytes(),
    );
    body.extend_from_slice(file.1);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_downloads_a_backup_and_a_new_appliance_restores_it_from_its_first_start_page() {
    let (old, phone, steady) = provisioned_site().await;
    let old_ca = old.ca();
    let mut browser = logged_in(&old).await;
    let csrf = fleet::hidden(&browser.get("/system").await.text(), "csrf");
    let differ =
        browser.post("/system/backup", &[("csrf", &csrf), ("passphrase", PASSPHRASE), ("confirm", "other")]).await;
    assert!(differ.status == 400 && differ.text().contains("the two passphrases differ"), "{}", differ.text());
    let csrf = fleet::hidden(&differ.text(), "csrf");
    let forged = browser
        .post("/system/backup", &[("csrf", "forged"), ("passphrase", PASSPHRASE), ("confirm", PASSPHRASE)])
        .await;
    assert_eq!(forged.status, 403);
    let download =
        browser.post("/system/backup", &[("csrf", &csrf), ("passphrase", PASSPHRASE), ("confirm", PASSPHRASE)]).await;
    assert_eq!(download.status, 200);
    assert!(
        download.header("content-disposition").is_some_and(|d| d.starts_with("attachment; filename=\"provbox-backup-"))
    );
    assert_eq!(download.header("cache-control"), Some("no-store"));
    let file = download.body.clone();
    let snapshot = provbox::backup::open(&file, &provbox::backup::BackupKey::Passphrase(PASSPHRASE.into())).unwrap();
    assert_eq!(snapshot.manifest.devices, 2);

    // The API gives the same with a token and the passphrase header, nothing without them.
    let token = cli_ok(&old.data, &["admin", "api-token", "create", "backups"]).trim().to_string();
    let mut api = Connection::open(old.client_config(), old.https, None).await.unwrap();
    let bearer = format!("Bearer {token}");
    assert_eq!(api.get("/api/v1/backup", &[("Backup-Passphrase", PASSPHRASE)]).await.unwrap().status, 401);
    assert_eq!(api.get("/api/v1/backup", &[("Authorization", &bearer)]).await.unwrap().status, 400);
    let by_api =
        api.get("/api/v1/backup", &[("Authorization", &bearer), ("Backup-Passphrase", PASSPHRASE)]).await.unwrap();
    assert_eq!(by_api.status, 200);
    assert_eq!(
        provbox::backup::open(&by_api.body, &provbox::backup::BackupKey::Passphrase(PASSPHRASE.into()))
            .unwrap()
            .manifest
            .devices,
        2
    );
    drop(old);

    // A new appliance's first-start page: a wrong setup code restores nothing.
    let new = Appliance::start();
    let mut browser = fleet::Browser::open(&new).await;
    let page = browser.get("/setup").await.text();
    assert!(page.contains("Or restore from a backup"));
    let form = fleet::hidden(&page, "form");
    let code = cli_ok(&new.data, &["admin", "setup-code"]).trim().to_string();
    let (content_type, body) =
        multipart(&[("form", &form), ("code", "000000000000"), ("passphrase", PASSPHRASE)], ("backup", &file));
    let wrong = browser
        .request_within(Duration::from_secs(30), "POST", "/setup/restore", &[("Content-Type", &content_type)], &body)
        .await;
    assert!(wrong.status == 400 && wrong.text().contains("wrong setup code"), "{}", wrong.text());
    assert_ne!(new.ca(), old_ca);
    let form = fleet::hidden(&wrong.text(), "form");
    let (content_type, body) =
        multipart(&[("form", &form), ("code", &code), ("passphrase", PASSPHRASE)], ("backup", &file));
    let done = browser
        .request_within(Duration::from_secs(30), "POST", "/setup/restore", &[("Content-Type", &content_type)], &body)
        .await;
    assert_eq!((done.status, done.header("location")), (303, Some("/login")), "{}", done.text());

    // The old admin password logs in on the new appliance, over a connection that trusts
    // only the old CA; the phone fetches through its old URL.
    let browser = login(fleet::Browser::open_at(fleet::client_config_trusting(&old_ca, None), new.https).await).await;
    drop(browser);
    assert_eq!(fetch_steady(new.https, &old_ca, &phone, &steady).await.status, 200);
    // The first-start page is gone once an admin password came back.
    let mut again = fleet::Browser::open_at(fleet::client_config_trusting(&old_ca, None), new.https).await;
    assert_eq!(again.get("/setup").await.header("location"), Some("/login"));
    assert!(!new.log().contains(PASSPHRASE));
}

/// A WebDAV server from Debian's nginx (http_dav_module), on loopback with TLS from a
/// private CA and HTTP Basic authentication; started and stopped by the test.
struct Nginx {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<std::process::Child>,
}

const DAV_USER: &str = "provbox";
const DAV_PASSWORD: &str = "dav-secret-2026";
const DAV_TOKEN: &str = "bearer-token-for-backups-2026";

impl Nginx {
    /// Writes the configuration, certificates and password file; does not start nginx.
    fn prepare() -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let fleet::LoopbackTls { ca, cert, key } = fleet::LoopbackTls::new("Test NAS CA");
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(path("server.pem"), cert.pem()).unwrap();
        std::fs::write(path("server.key"), key.serialize_pem()).unwrap();
        // nginx reads {PLAIN} passwords (ngx_http_auth_basic_module).
        std::fs::write(path("htpasswd"), format!("{DAV_USER}:{{PLAIN}}{DAV_PASSWORD}\n")).unwrap();
        std::fs::create_dir_all(path("www/dav")).unwrap();
        std::fs::create_dir_all(path("www/tokens")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.path().display();
        let config = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n\
             access_log {d}/access.log;\nclient_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
             server {{\nlisten 127.0.0.1:{port} ssl;\nssl_certificate {d}/server.pem;\nssl_certificate_key {d}/server.key;\n\
             root {d}/www;\nclient_max_body_size 100m;\nlocation /dav/ {{\ndav_methods PUT DELETE MKCOL;\n\
             auth_basic \"backups\";\nauth_basic_user_file {d}/htpasswd;\n}}\n\
             location /tokens/ {{\nif ($http_authorization != \"Bearer {DAV_TOKEN}\") {{ return 401; }}\n\
             dav_methods PUT;\n}}\n}}\n}}\n"
        );
        std::fs::write(path("nginx.conf"), config).unwrap();
        Nginx { dir, port, child: None }
    }

    fn start(&mut self) {
        let child = Command::new("nginx")
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx from Debian runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The files the server holds under /dav/.
    fn stored(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path().join("www/dav")).unwrap().map(|entry| entry.unwrap().path()).collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `backup status --json`.
fn copy_status(data: &Path) -> serde_json::Value {
    serde_json::from_str(&cli_ok(data, &["backup", "status", "--json"])).unwrap()
}

/// Waits (at most `limit`) until `done` holds for the copy status; returns it.
fn wait_for_copy(data: &Path, limit: Duration, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let status = copy_status(data);
        if done(&status) || Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's nginx and age: scripts/test-backup-tools (a CI step) installs them and runs this"]
async fn scheduled_copies_reach_a_real_webdav_server_through_an_outage_and_restore_with_the_identity() {
    let (appliance, phone, steady) = provisioned_site().await;
    let old_ca = appliance.ca();
    let mut nginx = Nginx::prepare();
    // The operator's key pair, made by the reference tool; only the public key goes on the box.
    let keys = tempfile::tempdir().unwrap();
    let identity = keys.path().join("key.txt");
    assert!(Command::new("age-keygen").arg("-o").arg(&identity).output().unwrap().status.success());
    let identity_text = std::fs::read_to_string(&identity).unwrap();
    let recipient = identity_text.lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_string();
    let url = format!("https://127.0.0.1:{}/dav/", nginx.port);
    let ca = nginx.dir.path().join("ca.pem");
    for (name, value) in [
        ("backup.copy_recipient", recipient.as_str()),
        ("backup.copy_username", DAV_USER),
        ("backup.copy_password", DAV_PASSWORD),
        ("backup.copy_ca_file", ca.to_str().unwrap()),
        ("backup.copy_url", url.as_str()),
    ] {
        cli_ok(&appliance.data, &["settings", "set", name, value]);
    }

    // The WAN is down: the first copy fails, says why, and is due again soon.
    let status = wait_for_copy(&appliance.data, Duration::from_secs(30), |s| s["last_error"].is_string());
    assert!(status["last_error"].as_str().unwrap().contains("cannot connect to 127.0.0.1"), "{status}");
    assert!(status["last_success"].is_null());
    let due = status["next_due"].as_u64().unwrap();
    // A restart loses nothing: the failed copy is still due, at the same time.
    let (_, data, dir) = appliance.stop();
    let appliance = Appliance::start_on(data, dir, &["--key-type", "ecdsa-p256"]);
    assert_eq!(copy_status(&appliance.data)["next_due"].as_u64(), Some(due));

    // The server comes back: the retry (the outbox's backoff, 15 to 30 s) delivers it.
    nginx.start();
    let status = wait_for_copy(&appliance.data, Duration::from_secs(90), |s| s["last_success"].is_u64());
    assert!(status["last_success"].is_u64() && status["last_error"].is_null(), "{status}");
    assert!(status["next_due"].as_u64().unwrap() > status["last_success"].as_u64().unwrap() + 86_000, "a day later");
    let stored = nginx.stored();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let name = stored[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("provbox-backup-") && name.ends_with(".age"), "{name}");
    // The System page says where copies go and when the last arrived.
    let mut browser = logged_in(&appliance).await;
    let system = browser.get("/system").await.text();
    // (The page escapes the URL's slashes.)
    assert!(system.contains(&format!("127.0.0.1:{}", nginx.port)) && system.contains(&recipient), "{system}");
    assert!(!system.contains("<th>Last copy</th><td>never"), "{system}");
    let access = std::fs::read_to_string(nginx.dir.path().join("access.log")).unwrap();
    assert!(access.contains(&format!("{DAV_USER} [")) && access.contains("\"PUT /dav/provbox-backup-"), "{access}");

    // The reference tool opens the copy with the identity; provbox restores it with the same.
    let output = Command::new("age").arg("-d").arg("-i").arg(&identity).arg(&stored[0]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.stdout.windows(12).any(|w| w == b"manifest.jso"), "a tar with the manifest");
    let new = Appliance::start();
    let args = ["backup", "restore", "--identity", identity.to_str().unwrap(), stored[0].to_str().unwrap()];
    cli_ok(&new.data, &args);
    assert_eq!(fetch_steady(new.https, &old_ca, &phone, &steady).await.status, 200);
    drop(new);

    // Wrong credentials: refused with the reason, and retried.
    cli_ok(&appliance.data, &["settings", "set", "backup.copy_password", "not-the-password"]);
    cli_ok(&appliance.data, &["backup", "copy-now"]);
    let status = wait_for_copy(&appliance.data, Duration::from_secs(30), |s| s["last_error"].is_string());
    assert!(status["last_error"].as_str().unwrap().contains("refused the credentials (401)"), "{status}");

    // A bearer token instead, to a file URL (not a folder): the copy lands under that name.
    let file_url = format!("https://127.0.0.1:{}/tokens/site.age", nginx.port);
    cli_ok(&appliance.data, &["settings", "set", "backup.copy_token", DAV_TOKEN]);
    cli_ok(&appliance.data, &["settings", "set", "backup.copy_url", &file_url]);
    cli_ok(&appliance.data, &["backup", "copy-now"]);
    let status = wait_for_copy(&appliance.data, Duration::from_secs(60), |s| s["last_error"].is_null());
    assert!(status["last_error"].is_null(), "{status}");
    assert!(nginx.dir.path().join("www/tokens/site.age").is_file());
    let log = appliance.log();
    assert!(!log.contains(DAV_PASSWORD) && !log.contains(DAV_TOKEN) && !log.contains("AGE-SECRET-KEY"));
}
