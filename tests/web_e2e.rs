//! The technician's page over real HTTPS: first start with the setup code, sessions, CSRF,
//! login throttling, and the unlock button, against a real provbox process.

mod fleet;

use fleet::{Appliance, Browser, Connection, Phone, cli, cli_ok, hidden};

const PASSWORD: &str = "Tech-Passw0rd-2026";

/// First start through the page; returns the logged-in browser.
async fn set_up(appliance: &Appliance) -> Browser {
    let mut browser = Browser::open(appliance).await;
    let page = browser.get("/setup").await;
    let form = hidden(&page.text(), "form");
    let code = cli_ok(&appliance.data, &["admin", "setup-code"]).trim().to_string();
    let done = browser
        .post("/setup", &[("form", &form), ("code", &code), ("password", PASSWORD), ("confirm", PASSWORD)])
        .await;
    assert_eq!(done.status, 303, "{}", done.text());
    browser
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_needs_the_setup_code_and_a_strong_password() {
    let appliance = Appliance::start();
    assert!(appliance.wait_for_log("the page asks for setup code"), "the code is in the log");
    let mut browser = Browser::open(&appliance).await;
    let root = browser.get("/").await;
    assert_eq!((root.status, root.header("location")), (303, Some("/setup")));
    assert_eq!(browser.get("/login").await.header("location"), Some("/setup"));

    let page = browser.get("/setup").await;
    assert_eq!(page.status, 200);
    let form = hidden(&page.text(), "form");
    let cookie = page.headers_named("set-cookie").find(|c| c.starts_with("__Host-provbox_form=")).unwrap().to_string();
    assert!(cookie.contains("Secure") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let code = cli_ok(&appliance.data, &["admin", "setup-code"]).trim().to_string();
    assert_eq!(code.len(), 12);

    let wrong = browser
        .post("/setup", &[("form", &form), ("code", "000000000000"), ("password", PASSWORD), ("confirm", PASSWORD)])
        .await;
    assert_eq!(wrong.status, 400);
    assert!(wrong.text().contains("wrong setup code"), "{}", wrong.text());
    let form = hidden(&wrong.text(), "form");
    let weak = browser
        .post("/setup", &[("form", &form), ("code", &code), ("password", "shortpw"), ("confirm", "shortpw")])
        .await;
    assert_eq!(weak.status, 400);
    assert!(weak.text().contains("weak password: use at least 12 characters; nothing was saved"), "{}", weak.text());
    let form = hidden(&weak.text(), "form");
    let forged = browser
        .post("/setup", &[("form", "forged"), ("code", &code), ("password", PASSWORD), ("confirm", PASSWORD)])
        .await;
    assert_eq!(forged.status, 403, "a form token that does not match its cookie is refused");

    let done = browser
        .post("/setup", &[("form", &form), ("code", &code), ("password", PASSWORD), ("confirm", PASSWORD)])
        .await;
    assert_eq!((done.status, done.header("location")), (303, Some("/")));
    let session =
        done.headers_named("set-cookie").find(|c| c.starts_with("__Host-provbox_session=")).unwrap().to_string();
    assert!(
        session.contains("Secure") && session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    let list = browser.get("/").await;
    assert_eq!(list.status, 200);
    assert!(list.text().contains("<h1>Devices"));
    assert_eq!(list.header("cache-control"), Some("no-store"));
    assert!(list.body.len() < 50 * 1024, "pages stay under 50 KB");
    // The code is spent.
    assert!(cli_ok(&appliance.data, &["admin", "setup-code"]).contains("an admin password is set"));
    assert_eq!(browser.get("/setup").await.header("location"), Some("/login"));
    assert!(!appliance.log().contains(PASSWORD), "the password never reaches the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_without_the_csrf_token_are_refused_and_unlock_shows_what_it_did() {
    let appliance = Appliance::start();
    let mut browser = set_up(&appliance).await;
    let phone = Phone::yealink("805ec0d57d72");
    cli_ok(
        &appliance.data,
        &[
            "device", "add", "--mac", &phone.mac, "--vendor", "yealink", "--model", "T54W", "--ext", "100", "--name",
            "Ann Lee",
        ],
    );
    let old = appliance.device(&phone.mac)["enrollment_url"].as_str().unwrap().to_string();

    let page = browser.get("/").await.text();
    assert!(page.contains("805ec0d57d72") && page.contains("Ann Lee") && page.contains("open"), "{page}");
    let csrf = hidden(&page, "csrf");
    let refused = browser.post("/devices/805ec0d57d72/unlock", &[]).await;
    assert_eq!(refused.status, 403);
    let forged = browser.post("/devices/805ec0d57d72/unlock", &[("csrf", "0123")]).await;
    assert_eq!(forged.status, 403);
    assert_eq!(appliance.device(&phone.mac)["enrollment_url"].as_str().unwrap(), old, "nothing changed");

    let unlocked = browser.post("/devices/805ec0d57d72/unlock", &[("csrf", &csrf)]).await;
    assert_eq!(unlocked.status, 200);
    let fresh = appliance.device(&phone.mac)["enrollment_url"].as_str().unwrap().to_string();
    assert_ne!(fresh, old);
    // HTML escaping writes '/' as &#x2f;; a browser shows the URL as it is.
    let text = unlocked.text().replace("&#x2f;", "/");
    assert!(text.contains("Enrollment reopened for 805ec0d57d72") && text.contains(&fresh), "{text}");
    // The phone enrolls through the new URL.
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let fetched = phone.boot(&mut connection, &Appliance::path_of(&fresh)).await;
    assert_eq!(fetched.last().unwrap().1.status, 200);

    // Adding a device with a weak SIP password says why and saves nothing.
    let weak = browser
        .post(
            "/devices",
            &[
                ("csrf", &csrf),
                ("mac", "805ec0d57d73"),
                ("vendor", "yealink"),
                ("model", "T54W"),
                ("extension", "101"),
                ("name", "Bo"),
                ("sip_password", "1234567890123"),
            ],
        )
        .await;
    assert_eq!(weak.status, 400);
    assert!(weak.text().contains("mix character classes"), "{}", weak.text());
    let (found, _, _) = cli(&appliance.data, &["device", "show", "805ec0d57d73"]);
    assert!(!found);

    // Logging out ends the session.
    let out = browser.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.header("location"), Some("/login"));
    assert_eq!(browser.get("/").await.header("location"), Some("/login"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_slow_down_and_are_logged() {
    let appliance = Appliance::start();
    drop(set_up(&appliance).await);
    let mut browser = Browser::open(&appliance).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let page = browser.get("/login").await;
        let form = hidden(&page.text(), "form");
        statuses.push(browser.post("/login", &[("form", &form), ("password", "Wrong-Passw0rd-1")]).await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 429], "three free failures, then a delay");
    let page = browser.get("/login").await;
    let form = hidden(&page.text(), "form");
    let locked = browser.post("/login", &[("form", &form), ("password", PASSWORD)]).await;
    assert_eq!(locked.status, 429, "even the right password waits out the delay");
    assert!(locked.text().contains("too many failed logins; try again in"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while appliance.log().matches("page login failed: wrong password").count() < 4 {
        assert!(std::time::Instant::now() < deadline, "every failure is logged: {}", appliance.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let page = browser.get("/login").await;
    let form = hidden(&page.text(), "form");
    let ok = browser.post("/login", &[("form", &form), ("password", PASSWORD)]).await;
    assert_eq!((ok.status, ok.header("location")), (303, Some("/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_page_import_seen_settings_and_system() {
    let appliance = Appliance::start();
    let mut browser = set_up(&appliance).await;
    let csrf = hidden(&browser.get("/").await.text(), "csrf");

    // CSV import with one bad line: every problem by line, nothing imported.
    let csv = "mac,vendor,model,extension,name\n805ec0000001,yealink,T54W,201,Ann\nnot-a-mac,yealink,T54W,202,Bo\n";
    let refused = browser.post("/import", &[("csrf", &csrf), ("csv", csv)]).await;
    assert_eq!(refused.status, 400);
    let text = refused.text();
    assert!(text.contains("Nothing imported: 1 problem(s)") && text.contains("line 3:"), "{text}");
    assert!(!cli_ok(&appliance.data, &["device", "list"]).contains("805ec0000001"));
    let partial = browser.post("/import", &[("csrf", &csrf), ("csv", csv), ("partial", "on")]).await;
    assert!(partial.text().contains("imported 1 device(s); line 3:"), "{}", partial.text());
    let export = browser.get("/export.csv").await;
    assert_eq!(export.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(export.text().contains("805ec0000001,yealink,T54W,201,Ann"));

    // The device page masks secrets until revealed, and says what the vendor cannot express.
    let page = browser.get("/devices/805ec0000001").await.text();
    assert!(page.contains("account.1.password = ********"), "{page}");
    assert!(!page.contains("config-warnings"), "nothing to warn about on the default site");
    cli_ok(&appliance.data, &["settings", "set", "time.language", "ja"]);
    let page = browser.get("/devices/805ec0000001").await.text();
    assert!(page.contains("<ul id=\"config-warnings\"><li>Yealink: no language &quot;ja&quot;; using the default &quot;English&quot;</li>"), "{page}");
    cli_ok(&appliance.data, &["settings", "set", "time.language", "en"]);
    let revealed = browser.post("/devices/805ec0000001/reveal", &[("csrf", &csrf)]).await.text();
    let password_line = revealed.lines().find(|l| l.starts_with("account.1.password = ")).unwrap();
    assert!(!password_line.contains("********"), "{password_line}");
    let consent = browser.post("/devices/805ec0000001/plain-http", &[("csrf", &csrf), ("allow", "on")]).await.text();
    assert!(
        consent.contains("Plain HTTP allowed") && consent.contains("<strong class=\"danger\">allowed</strong>"),
        "{consent}"
    );
    assert!(!appliance.device("805ec0000001")["plain_http"].is_null());
    let forged = browser.post("/devices/805ec0000001/plain-http", &[("csrf", "0123"), ("allow", "off")]).await;
    assert_eq!(forged.status, 403);
    let refused = browser.post("/devices/805ec0000001/plain-http", &[("csrf", &csrf), ("allow", "off")]).await.text();
    assert!(refused.contains("refused (HTTPS only)"), "{refused}");
    let window = browser.post("/devices/805ec0000001/lan-window", &[("csrf", &csrf), ("minutes", "15")]).await;
    assert!(window.text().contains("LAN window open until"));
    let reprovision = browser.post("/devices/805ec0000001/reprovision", &[("csrf", &csrf)]).await;
    assert!(reprovision.text().contains("has not contacted the appliance yet"), "{}", reprovision.text());

    // An unknown phone asks on the tokenless path; approving it adds it with a LAN window.
    let mut phone_connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let stranger = Phone::yealink("805ec0000002");
    phone_connection.get("/805ec0000002.cfg", &[("User-Agent", &stranger.user_agent())]).await.unwrap();
    let seen = browser.get("/seen").await.text();
    assert!(seen.contains("805ec0000002"), "{seen}");
    let approved =
        browser.post("/seen/805ec0000002/approve", &[("csrf", &csrf), ("extension", "203"), ("name", "Cy")]).await;
    assert!(approved.text().contains("added 805ec0000002; its LAN window is open until"), "{}", approved.text());
    assert_eq!(appliance.device("805ec0000002")["lines"][0]["extension"], "203");

    // Settings: a refused value saves nothing; secrets are write-only.
    let refused =
        browser.post("/settings", &[("csrf", &csrf), ("sip.server", "pbx.example.org"), ("sip.port", "99999")]).await;
    assert_eq!(refused.status, 400);
    assert!(refused.text().contains("sip.port: must be a whole number from 1 to 65535"));
    assert!(cli_ok(&appliance.data, &["settings", "show"]).contains("pbx.example.com"), "nothing saved");
    let saved = browser
        .post(
            "/settings",
            &[("csrf", &csrf), ("sip.server", "pbx.example.org"), ("nat.turn.password", "Turn-Secret-99")],
        )
        .await;
    assert!(saved.text().contains("saved 2 setting(s)"), "{}", saved.text());
    assert!(!saved.text().contains("Turn-Secret-99"), "secret fields are write-only");
    let weak = browser
        .post(
            "/settings/password",
            &[("csrf", &csrf), ("current", PASSWORD), ("password", "password"), ("confirm", "password")],
        )
        .await;
    assert!(weak.text().contains("weak password: use at least 12 characters; nothing was changed"), "{}", weak.text());
    let bad_cert =
        browser.post("/settings/certificate", &[("csrf", &csrf), ("certificate", "junk"), ("key", "junk")]).await;
    assert!(bad_cert.text().contains("the current certificate stays"), "{}", bad_cert.text());

    // System: version, clock, store and the audit log.
    let system = browser.get("/system").await.text();
    assert!(system.contains(concat!("provbox ", env!("CARGO_PKG_VERSION"))));
    assert!(
        system.contains("set sip.server = pbx.example.org") && system.contains("set nat.turn.password = ********"),
        "{system}"
    );
    assert!(system.contains("KiB live of"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_paging_reachability_and_the_cli_password() {
    let appliance = Appliance::start();
    // The CLI sets the first password (stdin); the setup code is then spent.
    let mut child = fleet::provbox_command()
        .arg("--data")
        .arg(&appliance.data)
        .args(["admin", "set-password"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(cli_ok(&appliance.data, &["admin", "setup-code"]).contains("an admin password is set"));
    let mut browser = Browser::open(&appliance).await;
    let page = browser.get("/login").await;
    let form = hidden(&page.text(), "form");
    assert_eq!(browser.post("/login", &[("form", &form), ("password", PASSWORD)]).await.status, 303);

    // 250 devices: the list pages by 50 and each page stays under 50 KB.
    let csv: String = std::iter::once("mac,vendor,model,extension,name\n".to_string())
        .chain((0..250).map(|i| format!("805ec02{i:05x},yealink,T54W,{},{}\n", 1000 + i, "Long Name ".repeat(4))))
        .collect();
    let file = appliance.data.join("many.csv");
    std::fs::write(&file, csv).unwrap();
    cli_ok(&appliance.data, &["device", "import", file.to_str().unwrap()]);
    let first = browser.get("/").await;
    assert!(first.body.len() < 50 * 1024, "{} bytes", first.body.len());
    assert!(first.text().contains("page 1 of 5") && first.text().contains("Devices <small>(250)"));
    let last = browser.get("/?page=5").await.text();
    assert!(last.contains("805ec02000f9") && !last.contains("805ec0200000"), "the last page holds the last devices");

    // Edit: a new name, the SIP password kept.
    let csrf = hidden(&first.text(), "csrf");
    let password_before = cli_ok(&appliance.data, &["render", "805ec0200000", "805ec0200000.cfg", "--reveal"]);
    let saved = browser
        .post(
            "/devices/805ec0200000/edit",
            &[("csrf", &csrf), ("model", "T57W"), ("extension", "1000"), ("name", "Renamed")],
        )
        .await;
    assert!(saved.text().contains("Saved"), "{}", saved.text());
    let device = appliance.device("805ec0200000");
    assert_eq!((device["model"].as_str(), device["lines"][0]["name"].as_str()), (Some("T57W"), Some("Renamed")));
    let password_after = cli_ok(&appliance.data, &["render", "805ec0200000", "805ec0200000.cfg", "--reveal"]);
    let password = |config: &str| config.lines().find(|l| l.starts_with("account.1.password")).unwrap().to_string();
    assert_eq!(password(&password_before), password(&password_after), "the SIP password is kept");

    // System: the configured redirect service's endpoint (a listener of this test) is reachable.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/xmlrpc", listener.local_addr().unwrap());
    for (name, value) in [
        ("redirect.yealink.url", endpoint.as_str()),
        ("redirect.yealink.username", "acme"),
        ("redirect.yealink.password", "rps-Passw0rd"),
    ] {
        cli_ok(&appliance.data, &["settings", "set", name, value]);
    }
    let system = browser.get("/system").await.text();
    assert!(system.contains("yealink (127.0.0.1:") && system.contains("reachable in"), "{system}");
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_tokens_are_made_and_revoked_on_the_page() {
    let appliance = Appliance::start();
    let mut browser = set_up(&appliance).await;
    let csrf = hidden(&browser.get("/").await.text(), "csrf");
    let made = browser.post("/settings/api-tokens", &[("csrf", &csrf), ("name", "pbx")]).await.text();
    let marker = "shown once, copy it now): <code>";
    let start = made.find(marker).unwrap_or_else(|| panic!("{made}")) + marker.len();
    let token = made[start..].split('<').next().unwrap().to_string();
    assert!(token.starts_with("pbx_"), "{token}");
    let api = |token: String| {
        let appliance = &appliance;
        async move {
            let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
            let auth = format!("Bearer {token}");
            connection.get("/api/v1/devices", &[("Authorization", &auth)]).await.unwrap().status
        }
    };
    assert_eq!(api(token.clone()).await, 200);
    let id = token.split('_').nth(1).unwrap().to_string();
    let revoked = browser.post(&format!("/settings/api-tokens/{id}/revoke"), &[("csrf", &csrf)]).await.text();
    assert!(revoked.contains("revoked 1 token(s)"), "{revoked}");
    assert_eq!(api(token).await, 401);
    // Dismissing a phone from the phones-seen list.
    let mut phone_connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let stranger = Phone::yealink("805ec0000009");
    phone_connection.get("/805ec0000009.cfg", &[("User-Agent", &stranger.user_agent())]).await.unwrap();
    let dismissed = browser.post("/seen/805ec0000009/dismiss", &[("csrf", &csrf)]).await.text();
    assert!(dismissed.contains("dismissed 805ec0000009"));
    assert!(!cli_ok(&appliance.data, &["device", "seen"]).contains("805ec0000009"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_are_all_counted_and_valid_tokens_still_work() {
    let appliance = Appliance::start();
    drop(set_up(&appliance).await);
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "pbx"]).trim().to_string();
    // Every page without a session leads to the login page.
    let mut anonymous = Browser::open(&appliance).await;
    for path in ["/", "/export.csv", "/devices/805ec0d57d72", "/settings", "/system", "/seen", "/import"] {
        assert_eq!(anonymous.get(path).await.header("location"), Some("/login"), "{path}");
    }
    // Ten guesses sent at once: only the free ones reach the password check.
    let mut guesses = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (config, address) = (appliance.client_config(), appliance.https);
        guesses.spawn(async move {
            let connection = Connection::open(config, address, None).await.unwrap();
            let mut browser = Browser { connection, cookies: Vec::new() };
            let form = hidden(&browser.get("/login").await.text(), "form");
            browser.post("/login", &[("form", &form), ("password", "Wrong-Passw0rd-1")]).await.status
        });
    }
    let statuses: Vec<u16> = guesses.join_all().await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(checked <= 4, "{statuses:?}: parallel guesses bypassed the throttle");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 10 - checked, "{statuses:?}");
    // A valid API token is never held up by failed logins.
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let auth = format!("Bearer {token}");
    assert_eq!(connection.get("/api/v1/devices", &[("Authorization", &auth)]).await.unwrap().status, 200);
    // Another address waits at most the account's own delay, a minute at most.
    let mut other = Browser {
        connection: Connection::open(appliance.client_config(), appliance.https, Some("127.0.0.2".parse().unwrap()))
            .await
            .unwrap(),
        cookies: Vec::new(),
    };
    let form = hidden(&other.get("/login").await.text(), "form");
    let answer = other.post("/login", &[("form", &form), ("password", PASSWORD)]).await;
    if answer.status == 429 {
        let text = answer.text();
        let seconds: u64 = text.split("try again in ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(seconds <= 61, "{seconds} s");
    } else {
        assert_eq!(answer.status, 303);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_keeps_other_lines_and_a_password_change_ends_other_sessions() {
    let appliance = Appliance::start();
    let mut browser = set_up(&appliance).await;
    let mut second = Browser::open(&appliance).await;
    let form = hidden(&second.get("/login").await.text(), "form");
    assert_eq!(second.post("/login", &[("form", &form), ("password", PASSWORD)]).await.status, 303);

    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "pbx"]).trim().to_string();
    let spec = r#"{"mac":"805ec0d57d72","vendor":"yealink","model":"T54W","lines":[
        {"extension":"100","name":"Ann","sip_user":"ann-custom","sip_password":"Line1-Passw0rd-x"},
        {"extension":"101","name":"Ann 2","sip_password":"Line2-Passw0rd-y"}]}"#;
    let mut api = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let auth = format!("Bearer {token}");
    let added = api.request("POST", "/api/v1/devices", &[("Authorization", &auth)], spec.as_bytes()).await.unwrap();
    assert_eq!(added.status, 200, "{}", added.text());

    let csrf = hidden(&browser.get("/").await.text(), "csrf");
    let saved = browser
        .post(
            "/devices/805ec0d57d72/edit",
            &[("csrf", &csrf), ("model", "T54W"), ("extension", "100"), ("name", "Ann Lee")],
        )
        .await;
    assert!(saved.text().contains("Saved"), "{}", saved.text());
    let device = appliance.device("805ec0d57d72");
    let lines = device["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "the second line stays: {device}");
    assert_eq!((lines[0]["name"].as_str(), lines[0]["sip_user"].as_str()), (Some("Ann Lee"), Some("ann-custom")));
    let config = cli_ok(&appliance.data, &["render", "805ec0d57d72", "805ec0d57d72.cfg", "--reveal"]);
    assert!(config.contains("Line1-Passw0rd-x") && config.contains("Line2-Passw0rd-y"), "passwords kept");

    // A password change ends the other session; this one goes on.
    let changed = browser
        .post(
            "/settings/password",
            &[
                ("csrf", &csrf),
                ("current", PASSWORD),
                ("password", "New-Passw0rd-2027"),
                ("confirm", "New-Passw0rd-2027"),
            ],
        )
        .await;
    assert!(changed.text().contains("admin password changed"), "{}", changed.text());
    assert_eq!(browser.get("/").await.status, 200, "the changing session continues");
    assert_eq!(second.get("/").await.header("location"), Some("/login"), "the other session ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preset_setup_code_claims_and_admin_reset_reopens_first_start() {
    // The image's start script makes the code and hands it over in a root-only file.
    let scratch = tempfile::tempdir().unwrap();
    let code_file = scratch.path().join("setup-code");
    std::fs::write(&code_file, "a1b2c3d4e5f6\n").unwrap();
    let appliance =
        Appliance::start_with(&["--key-type", "ecdsa-p256", "--setup-code-file", code_file.to_str().unwrap()]);
    assert_eq!(cli_ok(&appliance.data, &["admin", "setup-code"]).trim(), "a1b2c3d4e5f6");
    let (claimed, _, _) = cli(&appliance.data, &["admin", "claimed"]);
    assert!(!claimed, "a new appliance is not claimed");
    appliance.add("805ec0000042", "yealink", "T54W");
    let mut browser = Browser::open(&appliance).await;
    let form = hidden(&browser.get("/setup").await.text(), "form");
    let done = browser
        .post("/setup", &[("form", &form), ("code", "a1b2c3d4e5f6"), ("password", PASSWORD), ("confirm", PASSWORD)])
        .await;
    assert_eq!(done.status, 303, "{}", done.text());
    // The image's run script removes the code from the boot partition on this line.
    assert!(appliance.wait_for_log("appliance claimed: the setup code is spent"));
    assert!(cli_ok(&appliance.data, &["admin", "claimed"]).contains("claimed"));

    // `admin reset` needs the server stopped (sessions live in its memory), then clears the
    // password only.
    let (ok, _, err) = cli(&appliance.data, &["admin", "reset"]);
    assert!(!ok && err.contains("in use by another provbox process"), "{err}");
    let (_, data, dir) = appliance.stop();
    assert!(cli_ok(&data, &["admin", "reset"]).contains("admin password cleared"));
    let (claimed, _, err) = cli(&data, &["admin", "claimed"]);
    assert!(!claimed && err.contains("not claimed"), "{err}");
    let appliance = Appliance::start_on(data, dir, &["--key-type", "ecdsa-p256"]);
    let code = cli_ok(&appliance.data, &["admin", "setup-code"]).trim().to_string();
    assert_eq!(code.len(), 12);
    assert_ne!(code, "a1b2c3d4e5f6", "without the file the code is new");
    assert!(cli_ok(&appliance.data, &["device", "list"]).contains("805ec0000042"), "devices stay");
    let mut browser = Browser::open(&appliance).await;
    assert_eq!(browser.get("/login").await.header("location"), Some("/setup"));
}

/// The page, the CLI and the API validate a device with the same code: each bad device is
/// refused by all three, in the same words, and none of them saves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_device_is_refused_by_the_page_the_cli_and_the_api_in_the_same_words() {
    let appliance = Appliance::start();
    let mut browser = set_up(&appliance).await;
    let csrf = hidden(&browser.get("/").await.text(), "csrf");
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "pbx"]).trim().to_string();
    // (what is wrong, mac, vendor, model, extension, name, SIP password)
    let bad = [
        ("a MAC of 11 digits", "805ec0d57d7", "yealink", "T54W", "100", "Ann", "Kx7-plum9-Tango"),
        ("a vendor without a profile", "805ec0d57d72", "acme", "T54W", "100", "Ann", "Kx7-plum9-Tango"),
        ("a model with a slash", "805ec0d57d72", "yealink", "T54W/2", "100", "Ann", "Kx7-plum9-Tango"),
        ("an extension with a space", "805ec0d57d72", "yealink", "T54W", "1 00", "Ann", "Kx7-plum9-Tango"),
        ("a name of 49 bytes", "805ec0d57d72", "yealink", "T54W", "100", &"n".repeat(49), "Kx7-plum9-Tango"),
        ("a common password", "805ec0d57d72", "yealink", "T54W", "100", "Ann", "password1234"),
        ("the extension in the password", "805ec0d57d72", "yealink", "T54W", "100", "Ann", "Kx7-plum100-Tango"),
        ("a vendor in capitals", "805ec0d57d72", "Yealink", "T54W", "100", "Ann", "Kx7-plum9-Tango"),
        ("a short password padded to length", "805ec0d57d72", "yealink", "T54W", "100", "Ann", "     Kx7-plum     "),
    ];
    let unescape = |html: &str| {
        html.replace("&quot;", "\"")
            .replace("&#x27;", "'")
            .replace("&gt;", ">")
            .replace("&lt;", "<")
            .replace("&#x2f;", "/")
            .replace("&amp;", "&")
    };
    for (what, mac, vendor, model, extension, name, password) in bad {
        let spec = serde_json::json!({ "mac": mac, "vendor": vendor, "model": model,
            "lines": [{ "extension": extension, "name": name, "sip_password": password }] });
        let (status, body, _) = fleet::api(&appliance, "POST", "/api/v1/devices", &token, &spec.to_string()).await;
        assert_eq!(status, 422, "{what}: {body}");
        let message = body["error"].as_str().unwrap().to_string();

        let (added, _, said) = cli(
            &appliance.data,
            &[
                "device",
                "add",
                "--mac",
                mac,
                "--vendor",
                vendor,
                "--model",
                model,
                "--ext",
                extension,
                "--name",
                name,
                "--sip-password",
                password,
            ],
        );
        assert!(!added && said.contains(&message), "{what}: the CLI said {said:?}, the API {message:?}");

        let fields = [
            ("csrf", csrf.as_str()),
            ("mac", mac),
            ("vendor", vendor),
            ("model", model),
            ("extension", extension),
            ("name", name),
            ("sip_password", password),
        ];
        let page = browser.post("/devices", &fields).await;
        assert_eq!(page.status, 400, "{what}");
        assert!(unescape(&page.text()).contains(&message), "{what}: the page did not say {message:?}: {}", page.text());
    }
    assert_eq!(cli_ok(&appliance.data, &["device", "list", "--json"]).trim(), "[]", "nothing was saved");
}

/// Names and SIP users go into the CSV export; one a spreadsheet would run as a formula
/// (OWASP's "CSV Injection": a cell starting with = + - @) is written with a leading `'`,
/// and the page's import takes that `'` off again, so the export imports to the same values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_cells_never_run_as_formulas_and_import_back_unchanged() {
    let appliance = Appliance::start();
    let mut browser = set_up(&appliance).await;
    let csrf = hidden(&browser.get("/").await.text(), "csrf");
    let token = cli_ok(&appliance.data, &["admin", "api-token", "create", "pbx"]).trim().to_string();
    let hostile = [
        ("805ec0000001", "100", r#"=HYPERLINK("http://x.example","Hi")"#, "+4930123"),
        ("805ec0000002", "-200", "@SUM(1+1)*cmd", "-1"),
        ("805ec0000003", "300", "+1 Ann", "ann"),
    ];
    for (mac, extension, name, sip_user) in hostile {
        let spec = serde_json::json!({ "mac": mac, "vendor": "yealink", "model": "T54W",
            "lines": [{ "extension": extension, "name": name, "sip_user": sip_user }] });
        let (status, body, _) = fleet::api(&appliance, "POST", "/api/v1/devices", &token, &spec.to_string()).await;
        assert_eq!(status, 200, "{body}");
    }
    let export = browser.get("/export.csv").await.text();
    let mut reader = csv::Reader::from_reader(export.as_bytes());
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 3, "{export}");
    for row in &rows {
        for cell in row.iter() {
            assert!(!cell.starts_with(['=', '+', '-', '@']), "a formula cell: {cell:?} in {export}");
        }
    }
    assert_eq!(&rows[0][4], r#"'=HYPERLINK("http://x.example","Hi")"#);
    assert_eq!((&rows[1][3], &rows[1][5]), ("'-200", "'-1"));

    for (mac, _, _, _) in hostile {
        cli_ok(&appliance.data, &["device", "remove", mac]);
    }
    let imported = browser.post("/import", &[("csrf", &csrf), ("csv", &export)]).await;
    assert!(imported.text().contains("imported 3 device(s)"), "{}", imported.text());
    for (mac, extension, name, sip_user) in hostile {
        let device = appliance.device(mac);
        let line = &device["lines"][0];
        assert_eq!((line["extension"].as_str(), line["name"].as_str()), (Some(extension), Some(name)), "{device}");
        assert_eq!(line["sip_user"].as_str(), Some(sip_user));
    }
}

/// Logs in through the page from loopback address `local`; the status of the login POST.
async fn log_in_from(appliance: &Appliance, local: std::net::IpAddr, password: &str) -> (u16, Browser) {
    let mut browser = Browser::open_from(appliance, local).await;
    let form = hidden(&browser.get("/login").await.text(), "form");
    let status = browser.post("/login", &[("form", &form), ("password", password)]).await.status;
    (status, browser)
}

/// Sets the admin password from the CLI (stdin), as root on the appliance would.
fn set_password_from_the_cli(appliance: &Appliance, password: &str) {
    use std::io::Write;
    let mut child = fleet::provbox_command()
        .arg("--data")
        .arg(&appliance.data)
        .args(["admin", "set-password"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

/// An attacker spending 3 wrong passwords from each of 6 addresses arms the account-wide
/// delay; the admin typing the right password from the machine they logged in from before
/// still gets in, while the attackers' addresses, and fresh ones, wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_from_other_addresses_never_lock_the_admin_out() {
    let appliance = Appliance::start();
    drop(set_up(&appliance).await);
    let admin = std::net::IpAddr::from([127, 0, 0, 42]);
    assert_eq!(log_in_from(&appliance, admin, PASSWORD).await.0, 303, "the admin's machine, yesterday");
    for host in 2..=7u8 {
        let attacker = std::net::IpAddr::from([127, 0, 0, host]);
        for _ in 0..3 {
            // Wrong (401) until the account's delay holds this address back (429).
            let status = log_in_from(&appliance, attacker, "Wrong-Passw0rd-1").await.0;
            assert!(status == 401 || status == 429, "{status}");
        }
    }
    let attacker = std::net::IpAddr::from([127, 0, 0, 2]);
    assert_eq!(log_in_from(&appliance, attacker, PASSWORD).await.0, 429, "the attackers' addresses wait");
    let fresh = std::net::IpAddr::from([127, 0, 0, 43]);
    assert_eq!(log_in_from(&appliance, fresh, PASSWORD).await.0, 429, "a fresh address waits too");
    let (status, mut browser) = log_in_from(&appliance, admin, PASSWORD).await;
    assert_eq!(status, 303, "the admin gets in from their machine");
    assert_eq!(browser.get("/").await.status, 200);
}

/// A session opened with a password ends when another password is set, even within the
/// same second (the check compares the password, not the time of the change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_in_the_same_second_ends_the_session() {
    let appliance = Appliance::start();
    drop(set_up(&appliance).await);
    for round in 0..3 {
        let (status, mut browser) = log_in_from(&appliance, std::net::IpAddr::from([127, 0, 0, 1]), PASSWORD).await;
        assert_eq!(status, 303);
        set_password_from_the_cli(&appliance, &format!("Other-Passw0rd-{round}x"));
        assert_eq!(browser.get("/").await.header("location"), Some("/login"), "round {round}");
        set_password_from_the_cli(&appliance, PASSWORD);
    }
}

/// Wrong setup codes are throttled like wrong passwords: after three, the address waits,
/// even with the right code; another address still claims the appliance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_setup_codes_are_throttled() {
    let appliance = Appliance::start();
    let code = cli_ok(&appliance.data, &["admin", "setup-code"]).trim().to_string();
    let mut guesser = Browser::open_from(&appliance, std::net::IpAddr::from([127, 0, 0, 9])).await;
    let mut statuses = Vec::new();
    for guess in ["000000000000", "111111111111", "222222222222", "333333333333", code.as_str()] {
        let form = hidden(&guesser.get("/setup").await.text(), "form");
        let fields = [("form", form.as_str()), ("code", guess), ("password", PASSWORD), ("confirm", PASSWORD)];
        statuses.push(guesser.post("/setup", &fields).await.status);
    }
    assert_eq!(statuses, [400, 400, 400, 400, 429], "three free guesses, then a delay, whatever the code");
    assert!(cli_ok(&appliance.data, &["admin", "setup-code"]).contains(&code), "still unclaimed");
    let mut owner = Browser::open_from(&appliance, std::net::IpAddr::from([127, 0, 0, 10])).await;
    let form = hidden(&owner.get("/setup").await.text(), "form");
    let fields = [("form", form.as_str()), ("code", code.as_str()), ("password", PASSWORD), ("confirm", PASSWORD)];
    assert_eq!(owner.post("/setup", &fields).await.status, 303);
}

/// The page offers what the CLI does for a lost or stolen phone: both URLs revoked,
/// enrollment locked, and new SIP passwords shown this once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_revokes_a_stolen_phones_urls_and_passwords() {
    let appliance = Appliance::start();
    let mut browser = set_up(&appliance).await;
    let before = appliance.add("805ec0d57d72", "yealink", "T54W");
    let page = browser.get("/devices/805ec0d57d72").await.text();
    assert!(page.contains("action=\"/devices/805ec0d57d72/rekey\""), "the page offers it");
    let csrf = hidden(&page, "csrf");
    let done = browser.post("/devices/805ec0d57d72/rekey", &[("csrf", &csrf), ("new_sip_passwords", "on")]).await;
    let text = done.text();
    assert!(text.contains("Both URLs revoked") && text.contains("New SIP passwords, shown this once"), "{text}");
    let after = appliance.device("805ec0d57d72");
    assert_eq!(after["enrollment"]["state"], "locked");
    assert_ne!(after["steady_url"], before["steady_url"]);
    assert_ne!(after["enrollment_url"], before["enrollment_url"]);
    // The password shown is the one now served, and it is shown only on that answer.
    let shown = text.split("extension 100, user 100: ").nth(1).unwrap().split('<').next().unwrap().to_string();
    let revealed = browser.post("/devices/805ec0d57d72/reveal", &[("csrf", &csrf)]).await.text();
    assert!(revealed.contains(&format!("account.1.password = {shown}")), "{shown}");
    assert!(!browser.get("/devices/805ec0d57d72").await.text().contains(&shown));
}

/// A page form without a session is turned away before its body is read: the answer comes
/// at once although the body never arrives (it used to be read, up to its size, first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_without_a_session_is_refused_before_its_body_is_read() {
    let appliance = Appliance::start();
    drop(set_up(&appliance).await);
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let head = "POST /devices HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                Content-Length: 60000\r\n\r\n";
    connection.write_raw(head.as_bytes()).await.unwrap();
    let answer = connection.response_within(std::time::Duration::from_secs(3)).await.expect("an answer at once");
    assert_eq!((answer.status, answer.header("location")), (303, Some("/login")));
}

/// The operator may install an RSA and an ECDSA certificate: each replaces the one of its
/// own kind and keeps the other, and each client gets the one it can use (as OpenSSL's
/// s_client sees it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_certificates_of_both_kinds_are_served_side_by_side() {
    let appliance = Appliance::start();
    let mut browser = set_up(&appliance).await;
    let csrf = hidden(&browser.get("/settings").await.text(), "csrf");
    let made = tempfile::tempdir().unwrap();
    let trusted = made.path().join("trusted.pem");
    let mut install = async |cn: &str, kind: &str| {
        let (cert, key) = fleet::openssl_pair(made.path(), cn, kind);
        let mut bundle = std::fs::read_to_string(&trusted).unwrap_or_default();
        bundle.push_str(&cert);
        std::fs::write(&trusted, bundle).unwrap();
        let answer = browser
            .post("/settings/certificate", &[("csrf", &csrf), ("certificate", &cert), ("key", &key)])
            .await
            .text();
        assert!(answer.contains("operator certificate installed"), "{answer}");
    };
    let handshake = |args: &[&str]| fleet::openssl_handshake(appliance.https, &trusted, args);
    let rsa_only = ["-sigalgs", "RSA-PSS+SHA256:RSA+SHA256"];

    install("operator-rsa-1", "rsa:2048").await;
    let report = handshake(&[]);
    assert!(
        report.contains("Peer certificate: CN = operator-rsa-1") && report.contains("Verification: OK"),
        "{report}"
    );
    install("operator-ec", "ec").await;
    let report = handshake(&[]);
    assert!(
        report.contains("Peer certificate: CN = operator-ec") && report.contains("Signature type: ECDSA"),
        "{report}"
    );
    let report = handshake(&rsa_only);
    assert!(report.contains("Peer certificate: CN = operator-rsa-1"), "the RSA certificate was kept:\n{report}");
    install("operator-rsa-2", "rsa:2048").await;
    let report = handshake(&rsa_only);
    assert!(report.contains("Peer certificate: CN = operator-rsa-2"), "{report}");
    assert!(handshake(&[]).contains("Peer certificate: CN = operator-ec"), "the ECDSA certificate was kept");
    // A restart serves the same pair.
    let (_, data, dir) = appliance.stop();
    let appliance = Appliance::start_on(data, dir, &["--key-type", "ecdsa-p256"]);
    let report = fleet::openssl_handshake(appliance.https, &trusted, &rsa_only);
    assert!(
        report.contains("Peer certificate: CN = operator-rsa-2") && report.contains("Verification: OK"),
        "{report}"
    );
}
