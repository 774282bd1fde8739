//! A small W3C WebDriver client for headless Chromium through chromedriver, both from
//! Debian (`scripts/test-browser` installs them). chromedriver listens on loopback; the
//! browser only visits the appliance on loopback.
#![allow(dead_code)] // each test binary uses its own part

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The key W3C WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running chromedriver and one browser session.
pub struct Browser {
    driver: Child,
    address: SocketAddr,
    session: String,
}

/// Where screenshots are saved.
pub fn artifacts() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

impl Browser {
    /// Starts chromedriver (`CHROMEDRIVER` or `chromedriver` on PATH) and a headless session.
    pub fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let exe = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let driver = Command::new(exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/test-browser installs it)");
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(address).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut browser = Browser { driver, address, session: String::new() };
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            // The appliance's certificate is issued by its own CA; the page, not TLS, is under test here.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": { "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"] }
        } } });
        let session = browser.command("POST", "/session", Some(capabilities));
        browser.session = session["sessionId"].as_str().expect("a session id").to_string();
        browser
    }

    /// One WebDriver command; returns its `value`.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(self.address).expect("chromedriver reachable");
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.address,
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        // chromedriver may keep the connection open: read the head, then Content-Length bytes.
        let mut response = Vec::new();
        let mut byte = [0u8; 1];
        while !response.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).expect("a WebDriver reply"), 1, "WebDriver closed early");
            response.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&response).to_string();
        let length: usize = head
            .lines()
            .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
            .and_then(|v| v.parse().ok())
            .expect("a Content-Length");
        let mut body_bytes = vec![0u8; length];
        stream.read_exact(&mut body_bytes).expect("the WebDriver reply body");
        let text = String::from_utf8_lossy(&body_bytes);
        let json_text: &str = &text;
        let value: Value = serde_json::from_str(json_text).unwrap_or_else(|e| panic!("WebDriver reply {text}: {e}"));
        if let Some(error) = value["value"]["error"].as_str() {
            panic!("WebDriver {method} {path}: {error}: {}", value["value"]["message"]);
        }
        value["value"].clone()
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.command("POST", &self.session_path("/url"), Some(json!({ "url": url })));
    }

    /// The current URL.
    pub fn url(&self) -> String {
        self.command("GET", &self.session_path("/url"), None).as_str().unwrap_or_default().to_string()
    }

    /// Waits (at most 10 s) until the URL ends with `suffix`; returns whether it did.
    pub fn wait_for_url(&self, suffix: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.url().ends_with(suffix) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Waits (at most 10 s) until the element matching `selector` exists and its text
    /// contains `needle`; returns that text, or the page's text if it never did.
    pub fn wait_for(&self, selector: &str, needle: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.innerText : null;",
            serde_json::Value::from(selector)
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(text) = self.run(&script).as_str().filter(|text| text.contains(needle)) {
                return text.to_string();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.page_text()
    }

    /// The element matching the CSS `selector`.
    pub fn find(&self, selector: &str) -> String {
        let found = self.command(
            "POST",
            &self.session_path("/element"),
            Some(json!({ "using": "css selector", "value": selector })),
        );
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("an element reference in {found}")).to_string()
    }

    /// Types `text` into the element matching `selector`.
    pub fn fill(&self, selector: &str, text: &str) {
        let element = self.find(selector);
        self.command("POST", &self.session_path(&format!("/element/{element}/clear")), Some(json!({})));
        self.command("POST", &self.session_path(&format!("/element/{element}/value")), Some(json!({ "text": text })));
    }

    /// Clicks the element matching `selector`.
    pub fn click(&self, selector: &str) {
        let element = self.find(selector);
        self.command("POST", &self.session_path(&format!("/element/{element}/click")), Some(json!({})));
    }

    /// The visible text of the element matching `selector`.
    pub fn text(&self, selector: &str) -> String {
        let element = self.find(selector);
        self.command("GET", &self.session_path(&format!("/element/{element}/text")), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's visible text.
    pub fn page_text(&self) -> String {
        self.text("body")
    }

    /// Runs `script` in the page.
    pub fn run(&self, script: &str) -> Value {
        self.command("POST", &self.session_path("/execute/sync"), Some(json!({ "script": script, "args": [] })))
    }

    /// Saves a PNG screenshot as `name` in the artifacts directory; returns its size.
    pub fn screenshot(&self, name: &str) -> usize {
        use base64::Engine;
        let data = self.command("GET", &self.session_path("/screenshot"), None);
        let png =
            base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap_or_default()).expect("base64 PNG");
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(artifacts().join(name), &png).expect("screenshot written");
        png.len()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = self.session_path("");
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.command("DELETE", &path, None)));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
