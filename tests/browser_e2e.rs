//! The technician's page in a real headless Chromium, driven over WebDriver. Ignored by a
//! plain `cargo test` (it needs Debian's chromium and chromium-driver); `scripts/test-browser`
//! installs them and runs these, and CI runs that script.

mod browser;
mod fleet;

use browser::Browser;
use fleet::{Appliance, Connection, Phone, cli_ok};

const PASSWORD: &str = "Tech-Passw0rd-2026";
const MAC: &str = "805ec0d57d72";

fn page(appliance: &Appliance, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", appliance.https.port())
}

/// First start in the browser: the setup code, a refused weak password, then a good one.
fn set_up(appliance: &Appliance, browser: &Browser) {
    browser.goto(&page(appliance, "/"));
    assert!(browser.url().ends_with("/setup"), "a new appliance asks for setup: {}", browser.url());
    let code = cli_ok(&appliance.data, &["admin", "setup-code"]).trim().to_string();
    browser.fill("input[name=code]", &code);
    browser.fill("input[name=password]", "weakpassword");
    browser.fill("input[name=confirm]", "weakpassword");
    browser.click("form button");
    let text = browser.wait_for(".flash", "weak password");
    assert!(text.contains("weak password: mix character classes"), "{text}");
    browser.fill("input[name=code]", &code);
    browser.fill("input[name=password]", PASSWORD);
    browser.fill("input[name=confirm]", PASSWORD);
    browser.click("form button");
    assert!(browser.wait_for("h1", "Devices").starts_with("Devices"), "{}", browser.page_text());
}

fn log_in(appliance: &Appliance, browser: &Browser) {
    browser.goto(&page(appliance, "/login"));
    browser.fill("input[name=password]", PASSWORD);
    browser.click("main form button");
    assert!(browser.wait_for("h1", "Devices").starts_with("Devices"), "{}", browser.page_text());
}

#[test]
#[ignore = "needs chromium and chromium-driver: scripts/test-browser"]
fn setup_add_unlock_and_enroll_again_then_log_out() {
    let appliance = Appliance::start();
    let browser = Browser::start();
    set_up(&appliance, &browser);

    // Add a device.
    browser.fill("input[name=mac]", MAC);
    browser.run("document.querySelector('select[name=vendor]').value = 'yealink'");
    browser.fill("input[name=model]", "T54W");
    browser.fill("input[name=extension]", "100");
    browser.fill("input[name=name]", "Ann Lee");
    browser.click("form.grid button");
    assert!(browser.wait_for(".flash", "added").contains(&format!("added {MAC}")));
    let row = browser.text(&format!("#device-{MAC}"));
    assert!(row.contains("Ann Lee") && row.contains("open"), "{row}");
    assert!(browser.screenshot("device-list.png") > 1000);

    // The phone enrolls, enrollment locks; the technician unlocks it in the browser.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let phone = Phone::yealink(MAC);
    let enroll = |path: String| {
        runtime.block_on(async {
            let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
            let responses = phone.boot(&mut connection, &path).await;
            let config = responses.last().unwrap().1.text();
            if let Some(steady) = phone.steady_path_in(&config) {
                phone.boot(&mut connection, &steady).await;
            }
            responses.last().unwrap().1.status
        })
    };
    let first = appliance.device(MAC)["enrollment_url"].as_str().unwrap().to_string();
    assert_eq!(enroll(Appliance::path_of(&first)), 200);
    assert_eq!(enroll(Appliance::path_of(&first)), 404, "locked after the first enrollment");
    browser.goto(&page(&appliance, "/"));
    assert!(browser.text(&format!("#device-{MAC} .enrollment")).starts_with("locked"));
    browser.click(&format!("#device-{MAC} button[name=unlock]"));
    let shown = browser.wait_for("#unlocked", "Enrollment reopened");
    let fresh = appliance.device(MAC)["enrollment_url"].as_str().unwrap().to_string();
    assert!(shown.contains("Enrollment reopened") && shown.contains(&fresh), "{shown}");
    assert_eq!(enroll(Appliance::path_of(&fresh)), 200, "the phone enrolls again through the new URL");

    browser.goto(&page(&appliance, "/settings"));
    assert!(browser.text("h1") == "Settings");
    assert!(browser.screenshot("settings.png") > 1000);

    // Log out: the page asks for the password again.
    browser.click("header form button");
    assert!(browser.wait_for_url("/login"), "{}: {}", browser.url(), browser.page_text());
    browser.goto(&page(&appliance, "/"));
    assert!(browser.url().ends_with("/login"));
}

#[test]
#[ignore = "needs chromium and chromium-driver: scripts/test-browser"]
fn import_errors_csrf_and_login_throttling() {
    let appliance = Appliance::start();
    let browser = Browser::start();
    set_up(&appliance, &browser);

    // CSV import with one bad line: the line and why, and nothing imported.
    browser.goto(&page(&appliance, "/import"));
    browser.run(
        "document.querySelector('textarea[name=csv]').value = \
         'mac,vendor,model,extension,name\\n805ec0000001,yealink,T54W,201,Ann\\n805ec0000002,nokia,X,202,Bo\\n'",
    );
    browser.click("main form button");
    let problems = browser.wait_for("#problems", "Nothing imported");
    assert!(problems.contains("Nothing imported: 1 problem(s)") && problems.contains("line 3:"), "{problems}");
    assert!(!cli_ok(&appliance.data, &["device", "list"]).contains("805ec0000001"));

    // A form posted without the CSRF token is refused.
    cli_ok(
        &appliance.data,
        &["device", "add", "--mac", MAC, "--vendor", "yealink", "--model", "T54W", "--ext", "100", "--name", "Ann Lee"],
    );
    let before = appliance.device(MAC)["enrollment_url"].clone();
    browser.goto(&page(&appliance, "/"));
    browser.run(&format!(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/devices/{MAC}/unlock'; document.body.appendChild(f); f.submit();"
    ));
    let refused = browser.wait_for("body", "CSRF");
    assert!(refused.contains("missing or wrong CSRF token"), "{refused}");
    assert_eq!(appliance.device(MAC)["enrollment_url"], before, "nothing changed");

    // Brute force: after three failures each try waits longer, even with the right password.
    browser.goto(&page(&appliance, "/"));
    browser.click("header form button");
    let mut messages = Vec::new();
    for _ in 0..5 {
        browser.goto(&page(&appliance, "/login"));
        browser.fill("input[name=password]", "Wrong-Passw0rd-1");
        browser.click("main form button");
        browser.wait_for_url("/login");
        messages.push(browser.wait_for(".flash", ""));
    }
    assert_eq!(messages[..4], ["wrong password"; 4], "{messages:?}");
    assert!(messages[4].starts_with("too many failed logins; try again in"), "{messages:?}");
    browser.goto(&page(&appliance, "/login"));
    browser.fill("input[name=password]", PASSWORD);
    browser.click("main form button");
    assert!(browser.wait_for(".flash", "too many").starts_with("too many failed logins"));
    std::thread::sleep(std::time::Duration::from_secs(3));
    log_in(&appliance, &browser);
    assert!(appliance.log().matches("page login failed").count() >= 4);
}

#[test]
#[ignore = "needs chromium and chromium-driver: scripts/test-browser"]
fn a_template_is_edited_previewed_refused_saved_fetched_and_reverted() {
    const MARKER: &str = "features.browser_marker = 1";
    let appliance = Appliance::start();
    let browser = Browser::start();
    set_up(&appliance, &browser);
    appliance.add(MAC, "yealink", "T54W");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let phone = Phone::yealink(MAC);
    runtime.block_on(appliance.enroll(&phone));
    assert_eq!(appliance.device(MAC)["config"], "current");

    // The list, then the editor of the device file.
    browser.goto(&page(&appliance, "/templates"));
    let row = browser.wait_for("#template-yealink-device-cfg", "device.cfg");
    assert!(row.contains("{mac}.cfg") && row.contains("stock"), "{row}");
    browser.click("#template-yealink-device-cfg a");
    assert!(browser.wait_for("h1", "yealink/device.cfg").contains("yealink/device.cfg"));
    let set_source =
        |script: &str| browser.run(&format!("const t = document.querySelector('textarea[name=source]'); {script}"));

    // Preview against the device: the edit shows, secrets masked, nothing saved.
    set_source(&format!("t.value = t.value + '{MARKER}\\n';"));
    browser.click("#preview-button");
    let preview = browser.wait_for("pre.preview", MARKER);
    assert!(preview.contains("account.1.password = ********"), "{preview}");
    assert!(browser.text("#state").starts_with("Stock"), "{}", browser.text("#state"));
    assert!(
        browser.run("return document.querySelector('textarea[name=source]').value").as_str().unwrap().contains(MARKER)
    );

    // A broken edit is refused with its line; the text typed stays in the editor.
    set_source("t.value = t.value + ' = orphan\\n';");
    browser.click("#save-button");
    let problem = browser.wait_for("#problem", "refused");
    assert!(problem.contains("805ec0d57d72.cfg as rendered, line") && problem.contains("no key"), "{problem}");
    let kept = browser.run("return document.querySelector('textarea[name=source]').value");
    assert!(kept.as_str().unwrap().contains(" = orphan"), "the edit is kept");
    assert!(appliance.device(MAC)["config"] == "current", "nothing saved");

    // Save: the device is pending, then current once the phone fetched the new file.
    set_source("t.value = t.value.replace(' = orphan\\n', '');");
    browser.click("#save-button");
    let saved = browser.wait_for("#saved", "Saved");
    assert!(saved.contains("1 of 1 device(s) get a changed file of their own") && saved.contains(MAC), "{saved}");
    assert!(saved.contains("Reprovision affected phones (1)"), "{saved}");
    assert!(browser.text("#state").starts_with("Overridden"));
    assert!(browser.text("#diff").contains(&format!("+{MARKER}")));
    assert!(browser.screenshot("template-saved.png") > 1000);
    // Reprovision: check-sync to the pending phone (nothing answers SIP on loopback here).
    browser.click("#reprovision");
    let sent = browser.wait_for("#reprovisioned", "check-sync");
    assert!(sent.contains("1 phone(s) sent check-sync") && sent.contains(MAC), "{sent}");
    browser.goto(&page(&appliance, "/"));
    assert!(browser.text(&format!("#device-{MAC}")).contains("pending"), "{}", browser.text(&format!("#device-{MAC}")));
    runtime.block_on(async {
        let steady = Appliance::path_of(appliance.device(MAC)["steady_url"].as_str().unwrap());
        let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
        let config = phone.boot(&mut connection, &steady).await.pop().unwrap().1.text();
        assert!(config.contains(MARKER), "{config}");
    });
    browser.goto(&page(&appliance, "/"));
    assert!(browser.text(&format!("#device-{MAC}")).contains("current"));
    browser.goto(&page(&appliance, "/system"));
    assert!(browser.text("#overrides").contains("yealink/device.cfg"));

    // Revert to stock.
    browser.goto(&page(&appliance, "/templates/yealink/device.cfg"));
    browser.click("#revert-button");
    assert!(browser.wait_for("#saved", "Reverted").contains("Reverted to stock"));
    assert!(browser.text("#state").starts_with("Stock"));
    assert!(!cli_ok(&appliance.data, &["render", MAC, &format!("{MAC}.cfg")]).contains(MARKER));
}

#[test]
#[ignore = "needs chromium and chromium-driver: scripts/test-browser"]
fn the_password_policy_is_chosen_from_a_list_and_warns_under_pbx() {
    let appliance = Appliance::start();
    let browser = Browser::start();
    set_up(&appliance, &browser);
    cli_ok(&appliance.data, &["settings", "set", "policy.sip_password", "pbx"]);
    let args = [
        "device",
        "add",
        "--mac",
        MAC,
        "--vendor",
        "yealink",
        "--model",
        "T54W",
        "--ext",
        "100",
        "--name",
        "Ann Lee",
        "--sip-password",
        "48213907",
    ];
    cli_ok(&appliance.data, &args);
    browser.goto(&page(&appliance, "/settings"));
    let warning = browser.wait_for("#policy-warning", "not checked");
    assert!(warning.contains("1 device(s)"), "{warning}");
    assert!(browser.text("#below-policy").contains(MAC));
    // The level is a list, not free text; choosing strong and saving is audited.
    let options = browser
        .run("return [...document.querySelectorAll('select[name=\"policy.sip_password\"] option')].map(o => o.value)");
    assert_eq!(options, serde_json::json!(["strong", "standard", "pbx"]));
    browser.run("document.querySelector('select[name=\"policy.sip_password\"]').value = 'strong'");
    browser.click("form.settings button");
    browser.wait_for(".flash", "saved");
    assert!(browser.text("#policy-levels").contains("SIP passwords: strong"));
    assert!(cli_ok(&appliance.data, &["audit"]).contains("set policy.sip_password = strong"));
    // Rotate the weak one: the new password is shown once and the list empties.
    browser.click(&format!("#weak-{MAC} button"));
    let rotated = browser.wait_for("#rotated", "New SIP passwords");
    let password = browser.text("#rotated code");
    assert!(password.len() >= 12 && rotated.contains(MAC), "{rotated}");
    assert!(browser.text("#policy-ok").contains("meet the strong level"));
    browser.goto(&page(&appliance, "/settings"));
    assert!(!browser.page_text().contains(&password), "shown once");
}
