//! The phone-fleet simulator: a real provbox process, and phones that speak HTTP/1.1 over
//! real TLS (trusting only the appliance's CA) with their vendors' User-Agents and request
//! sequences. Everything runs on loopback.
#![allow(dead_code)] // each test binary uses its own part of the simulator

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A private CA and a certificate for 127.0.0.1 it issued, with the certificate's key: for
/// the TLS servers tests run on loopback (mock vendor services, a WebDAV server).
pub struct LoopbackTls {
    pub ca: rcgen::Certificate,
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

impl LoopbackTls {
    /// A new CA named `ca_name` (ECDSA P-256) and its certificate for 127.0.0.1.
    pub fn new(ca_name: &str) -> LoopbackTls {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
        LoopbackTls { ca, cert, key }
    }
}

/// A running `provbox serve` on loopback with its own data directory.
pub struct Appliance {
    pub data: PathBuf,
    pub https: SocketAddr,
    pub http: SocketAddr,
    /// The SIP PnP responder (loopback).
    pub sip: SocketAddr,
    /// The mDNS responder (loopback) and the name it answers for.
    pub mdns: (String, SocketAddr),
    child: Child,
    log: Arc<Mutex<String>>,
    _dir: Option<tempfile::TempDir>,
}

/// The provbox under test: this build, or `PROVBOX_EXE` (e.g. the aarch64 appliance
/// binary) run through `PROVBOX_RUNNER` (e.g. `qemu-aarch64-static`).
pub fn provbox_command() -> Command {
    let exe = std::env::var_os("PROVBOX_EXE").unwrap_or_else(|| env!("CARGO_BIN_EXE_provbox").into());
    match std::env::var_os("PROVBOX_RUNNER") {
        Some(runner) => {
            let mut command = Command::new(runner);
            command.arg(exe);
            command
        }
        None => Command::new(exe),
    }
}

/// One JSON API call with bearer `token` over a fresh HTTPS connection: the status, the
/// body as JSON (Null when it is not JSON) and as text.
pub async fn api(
    appliance: &Appliance,
    method: &str,
    path: &str,
    token: &str,
    body: &str,
) -> (u16, serde_json::Value, String) {
    let mut connection = Connection::open(appliance.client_config(), appliance.https, None).await.unwrap();
    let auth = format!("Bearer {token}");
    let response = connection
        .request(method, path, &[("Authorization", &auth), ("Content-Type", "application/json")], body.as_bytes())
        .await
        .unwrap();
    let text = response.text();
    (response.status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null), text)
}

/// Runs the provbox CLI against `data`; returns (success, stdout, stderr).
pub fn cli(data: &Path, args: &[&str]) -> (bool, String, String) {
    cli_env(data, args, &[])
}

/// [`cli`] with extra environment variables.
pub fn cli_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = provbox_command();
    command.arg("--data").arg(data).args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("provbox runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

/// A new data directory in `parent`, owner-only. Only `serve` makes one itself; commands run
/// before its first start need it to exist.
pub fn data_dir(parent: &Path) -> PathBuf {
    let data = parent.join("data");
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&data).expect("data dir");
    data
}

/// Like [`cli`], but fails the test on error and returns stdout.
pub fn cli_ok(data: &Path, args: &[&str]) -> String {
    let (ok, out, err) = cli(data, args);
    assert!(ok, "provbox {args:?} failed: {err}");
    out
}

impl Appliance {
    /// Starts provbox on a fresh data directory with `sip.server` set.
    pub fn start() -> Appliance {
        Appliance::start_with(&["--key-type", "ecdsa-p256"])
    }

    /// Starts provbox on a fresh data directory with `sip.server` set and `serve` flags.
    pub fn start_with(flags: &[&str]) -> Appliance {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = data_dir(dir.path());
        cli_ok(&data, &["settings", "set", "sip.server", "pbx.example.com"]);
        Appliance::start_on(data, Some(dir), flags)
    }

    /// Starts provbox on `data` with extra `serve` flags.
    pub fn start_on(data: PathBuf, dir: Option<tempfile::TempDir>, extra: &[&str]) -> Appliance {
        // Every listener on loopback: tests never announce or answer on the LAN.
        Appliance::start_in(None, "127.0.0.1:0", data, dir, extra)
    }

    /// Starts provbox inside network namespace `netns` (or here), its SIP responder on `sip`.
    pub fn start_in(
        netns: Option<&Netns>,
        sip: &str,
        data: PathBuf,
        dir: Option<tempfile::TempDir>,
        extra: &[&str],
    ) -> Appliance {
        let command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &netns.appliance]).arg(provbox_command().get_program());
                command
            }
            None => provbox_command(),
        };
        Appliance::launch(command, sip, data, dir, extra)
    }

    /// Starts another provbox binary, `exe` (a benchmark's musl build), on `data`.
    pub fn start_binary_on(exe: &Path, data: PathBuf, dir: Option<tempfile::TempDir>, extra: &[&str]) -> Appliance {
        Appliance::launch(Command::new(exe), "127.0.0.1:0", data, dir, extra)
    }

    /// Runs `command` as `serve` on `data` and waits for its listeners.
    fn launch(
        mut command: Command,
        sip: &str,
        data: PathBuf,
        dir: Option<tempfile::TempDir>,
        extra: &[&str],
    ) -> Appliance {
        let mut child = command
            .arg("--data")
            .arg(&data)
            .args(["serve", "--https", "127.0.0.1:0", "--http", "127.0.0.1:0", "--sip", sip])
            .args(["--mdns", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("provbox starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut https = None;
        let mut http = None;
        let mut sip = None;
        let mut mdns = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while https.is_none() || http.is_none() || sip.is_none() || mdns.is_none() {
            assert!(Instant::now() < deadline, "provbox did not report its listeners");
            let Some(Ok(line)) = lines.next() else { panic!("provbox exited before listening") };
            let address = |marker: &str| {
                let rest = line.split(marker).nth(1)?;
                rest.trim_end_matches(')').trim().parse::<SocketAddr>().ok()
            };
            https = https.or(address("(HTTPS on "));
            http = http.or(address("(HTTP on "));
            sip = sip.or(address("SIP PnP on udp "));
            if let Some(rest) = line.trim().strip_prefix("mDNS: ") {
                let (name, bound) = rest.split_once(" (udp ").expect("mDNS line");
                mdns =
                    Some((name.to_string(), bound.trim_end_matches(')').parse::<SocketAddr>().expect("mDNS address")));
            }
        }
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        std::thread::spawn(move || for _ in lines {});
        Appliance {
            data,
            https: https.unwrap(),
            http: http.unwrap(),
            sip: sip.unwrap(),
            mdns: mdns.unwrap(),
            child,
            log,
            _dir: dir,
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits (bounded) until the log contains `text`.
    pub fn wait_for_log(&self, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).expect("signal");
    }

    /// SIGTERM and wait; returns whether it exited cleanly, and the data directory kept.
    pub fn stop(mut self) -> (bool, PathBuf, Option<tempfile::TempDir>) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let data = self.data.clone();
        let dir = self._dir.take();
        (status.is_some_and(|s| s.success()), data, dir)
    }

    /// The CA certificate the phones are told to trust.
    pub fn ca(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(self.data.join("tls/ca.crt")).unwrap().map(Result::unwrap).collect()
    }

    /// A TLS client configuration trusting only the appliance's CA.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config_trusting(&self.ca(), None)
    }

    /// `device show MAC --json`.
    pub fn device(&self, mac: &str) -> serde_json::Value {
        serde_json::from_str(&cli_ok(&self.data, &["device", "show", mac, "--json"])).unwrap()
    }

    /// `device add` with one line (extension 100, "Ann Lee"); returns `device show`.
    pub fn add(&self, mac: &str, vendor: &str, model: &str) -> serde_json::Value {
        let args =
            ["device", "add", "--mac", mac, "--vendor", vendor, "--model", model, "--ext", "100", "--name", "Ann Lee"];
        cli_ok(&self.data, &args);
        self.device(mac)
    }

    /// The phone fetches its enrollment URL, then its steady URL: enrollment closes.
    pub async fn enroll(&self, phone: &Phone) {
        let device = self.device(&phone.mac);
        let enrollment = Appliance::path_of(device["enrollment_url"].as_str().unwrap());
        let mut connection = Connection::open(self.client_config(), self.https, None).await.unwrap();
        let config = phone.boot(&mut connection, &enrollment).await.last().unwrap().1.text();
        let steady = phone.steady_path_in(&config).expect("steady URL in the config");
        phone.boot(&mut connection, &steady).await;
        assert_eq!(self.device(&phone.mac)["enrollment"]["state"], "locked");
    }

    /// Path part of a URL printed by provbox, e.g. `/e/<token>/`.
    pub fn path_of(url: &str) -> String {
        let after_scheme = url.split("://").nth(1).expect("absolute URL");
        format!("/{}", after_scheme.split_once('/').map_or("", |(_, path)| path))
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser-like client: one TLS connection and its cookies.
pub struct Browser {
    pub connection: Connection,
    pub cookies: Vec<(String, String)>,
}

impl Browser {
    pub async fn open(appliance: &Appliance) -> Browser {
        Browser::open_at(appliance.client_config(), appliance.https).await
    }

    /// A browser whose connection comes from loopback address `local` (127.0.0.0/8).
    pub async fn open_from(appliance: &Appliance, local: IpAddr) -> Browser {
        let connection = Connection::open(appliance.client_config(), appliance.https, Some(local)).await.unwrap();
        Browser { connection, cookies: Vec::new() }
    }

    /// A browser for the page at `https`, trusting `config`'s roots.
    pub async fn open_at(config: Arc<rustls::ClientConfig>, https: SocketAddr) -> Browser {
        let connection = Connection::open(config, https, None).await.unwrap();
        Browser { connection, cookies: Vec::new() }
    }

    /// Any request, with the browser's cookies, answered within `limit`.
    pub async fn request_within(
        &mut self,
        limit: Duration,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let cookies = self.cookie_header();
        let mut headers = headers.to_vec();
        headers.push(("Cookie", &cookies));
        let response = self.connection.request_within(limit, method, path, &headers, body).await.unwrap();
        self.remember(&response);
        response
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ")
    }

    fn remember(&mut self, response: &Response) {
        for set in response.headers_named("set-cookie") {
            let (pair, _) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != name);
            if !value.is_empty() {
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
    }

    pub async fn get(&mut self, path: &str) -> Response {
        let cookies = self.cookie_header();
        let response = self.connection.get(path, &[("Cookie", &cookies)]).await.unwrap();
        self.remember(&response);
        response
    }

    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Response {
        let cookies = self.cookie_header();
        let response = self.connection.post_form(path, &[("Cookie", &cookies)], fields).await.unwrap();
        self.remember(&response);
        response
    }
}

/// The value of hidden field `name` in a page.
pub fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker).unwrap_or_else(|| panic!("no {name} field in {page}")) + marker.len();
    page[start..].split('"').next().unwrap().to_string()
}

/// A client configuration trusting `roots`, optionally limited to one TLS version.
pub fn client_config_trusting(
    roots: &[CertificateDer<'static>],
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("CA parses");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        version.map_or(vec![&rustls::version::TLS13, &rustls::version::TLS12], |v| vec![v]);
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    Arc::new(config)
}

/// Shakes hands with `https` using OpenSSL's `s_client` (a TLS client provbox did not
/// write), trusting only `ca_file`, with extra `args` (`-sigalgs`, `-tls1_2`, `-cipher`);
/// returns its `-brief` report ("Signature type: ECDSA", "Verification: OK", "Peer
/// certificate: CN = ..."). Bounded at 30 s.
pub fn openssl_handshake(https: SocketAddr, ca_file: &Path, args: &[&str]) -> String {
    let mut child = Command::new("openssl")
        .args(["s_client", "-brief", "-verify_return_error", "-connect", &https.to_string(), "-CAfile"])
        .arg(ca_file)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client (Debian's openssl package) runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("openssl's output");
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A self-signed certificate and key made by OpenSSL (`openssl req`), for `CN`: `kind` is
/// `rsa:2048` or `ec`.
pub fn openssl_pair(dir: &std::path::Path, cn: &str, kind: &str) -> (String, String) {
    let (cert, key) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    let mut command = std::process::Command::new("openssl");
    command.args(["req", "-x509", "-nodes", "-days", "30", "-subj", &format!("/CN={cn}"), "-newkey", kind]);
    if kind == "ec" {
        command.args(["-pkeyopt", "ec_paramgen_curve:P-256"]);
    }
    let output = command
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian's openssl package) runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    (std::fs::read_to_string(cert).unwrap(), std::fs::read_to_string(key).unwrap())
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Every value of header `name`.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One keep-alive HTTPS connection, as a phone opens it.
pub struct Connection {
    stream: AsyncBufReader<TlsStream<TcpStream>>,
}

impl Connection {
    /// Connects from `local` (a loopback address) to `server` with a full TLS handshake.
    pub async fn open(
        config: Arc<rustls::ClientConfig>,
        server: SocketAddr,
        local: Option<IpAddr>,
    ) -> std::io::Result<Connection> {
        let socket = TcpSocket::new_v4()?;
        if let Some(local) = local {
            socket.bind(SocketAddr::new(local, 0))?;
        }
        let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(server)).await??;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost").unwrap();
        let tls =
            tokio::time::timeout(Duration::from_secs(10), TlsConnector::from(config).connect(name, tcp)).await??;
        Ok(Connection { stream: AsyncBufReader::new(tls) })
    }

    /// The server's certificate, as it was served in this handshake.
    pub fn peer_certificate(&self) -> CertificateDer<'static> {
        let (_, connection) = self.stream.get_ref().get_ref();
        connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .expect("a server certificate")
            .clone()
            .into_owned()
    }

    /// The negotiated TLS version and whether the session was resumed.
    pub fn handshake(&self) -> (Option<rustls::ProtocolVersion>, Option<rustls::HandshakeKind>) {
        let (_, connection) = self.stream.get_ref().get_ref();
        (connection.protocol_version(), connection.handshake_kind())
    }

    /// Sends a GET with `headers` and reads the response.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
        self.request("GET", path, headers, b"").await
    }

    /// A form POST (`application/x-www-form-urlencoded`) of `fields`.
    pub async fn post_form(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        fields: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let body: String = fields
            .iter()
            .map(|(name, value)| format!("{}={}", form_escape(name), form_escape(value)))
            .collect::<Vec<_>>()
            .join("&");
        let mut headers = headers.to_vec();
        headers.push(("Content-Type", "application/x-www-form-urlencoded"));
        self.request("POST", path, &headers, body.as_bytes()).await
    }

    /// Any request with a body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        self.request_within(Duration::from_secs(20), method, path, headers, body).await
    }

    /// Any request with a body, answered within `limit` (large uploads to an emulated board).
    pub async fn request_within(
        &mut self,
        limit: Duration,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method != "GET" {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        tokio::time::timeout(limit, async {
            match self.stream.get_mut().write_all(&bytes).await {
                Ok(()) => read_response(&mut self.stream).await,
                // A server may answer before the body is all sent (a 413, a 401) and close:
                // its answer is still there to read.
                Err(error) if matches!(error.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                    read_response(&mut self.stream).await.map_err(|_| error)
                }
                Err(error) => Err(error),
            }
        })
        .await?
    }

    /// Writes `bytes` as they are (part of a request, for slow-client tests).
    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.get_mut().write_all(bytes).await?;
        self.stream.get_mut().flush().await
    }

    /// Reads the next response, waiting at most `limit`.
    pub async fn response_within(&mut self, limit: Duration) -> std::io::Result<Response> {
        tokio::time::timeout(limit, read_response(&mut self.stream)).await?
    }
}

/// Reads one HTTP/1.1 response with a Content-Length or a chunked body.
pub async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Response> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut status_line = String::new();
    if reader.read_line(&mut status_line).await? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| invalid("status"))?;
    let mut headers = Vec::new();
    for _ in 0..100 {
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| invalid("header"))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    if header("transfer-encoding").is_some_and(|coding| coding.eq_ignore_ascii_case("chunked")) {
        let body = read_chunked(reader).await?;
        return Ok(Response { status, headers, body });
    }
    let length: usize = header("content-length").map_or(Ok(0), |v| v.parse().map_err(|_| invalid("length")))?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok(Response { status, headers, body })
}

/// A chunked body (RFC 9112, section 7.1): hex sizes, each chunk followed by CRLF, a zero
/// size and the (empty) trailer section at the end. At most 64 MiB.
async fn read_chunked<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> std::io::Result<Vec<u8>> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "body cut short"));
        }
        let size = line.trim_end().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16).map_err(|_| invalid("chunk size"))?;
        if size == 0 {
            break;
        }
        if body.len().checked_add(size).is_none_or(|total| total > 64 << 20) {
            return Err(invalid("body over 64 MiB"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).await?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf).await?;
        if crlf != *b"\r\n" {
            return Err(invalid("chunk not ended by CRLF"));
        }
    }
    // The trailer section, up to its empty line.
    for _ in 0..100 {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 || line.trim_end().is_empty() {
            break;
        }
    }
    Ok(body)
}

/// A simulated phone: vendor, model, MAC, firmware, and its vendor's boot sequence.
#[derive(Debug, Clone)]
pub struct Phone {
    pub vendor: &'static str,
    pub model: &'static str,
    pub mac: String,
    pub firmware: &'static str,
}

impl Phone {
    pub fn yealink(mac: &str) -> Phone {
        Phone { vendor: "yealink", model: "T54W", mac: mac.into(), firmware: "96.86.0.15" }
    }
    pub fn snom(mac: &str) -> Phone {
        Phone { vendor: "snom", model: "D785", mac: mac.into(), firmware: "10.1.33.33" }
    }
    pub fn poly(mac: &str) -> Phone {
        Phone { vendor: "polycom", model: "VVX400", mac: mac.into(), firmware: "6.4.3.5156" }
    }
    pub fn grandstream(mac: &str) -> Phone {
        Phone { vendor: "grandstream", model: "GXP2135", mac: mac.into(), firmware: "1.0.7.97" }
    }

    fn colon_mac(&self) -> String {
        self.mac.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(":")
    }

    /// The User-Agent its firmware sends.
    pub fn user_agent(&self) -> String {
        match self.vendor {
            "yealink" => format!("Yealink SIP-{} {} {}", self.model, self.firmware, self.colon_mac()),
            "snom" => format!(
                "Mozilla/4.0 (compatible; snom{}-SIP {} 2010.12-00004-g9ba52f5 {} SXM:0 UXM:0)",
                self.model,
                self.firmware,
                self.mac.to_uppercase()
            ),
            "polycom" => format!("FileTransport PolycomVVX-VVX_400-UA/{} Type/Application", self.firmware),
            "grandstream" => format!("Grandstream Model HW {} SW {} DevId {}", self.model, self.firmware, self.mac),
            other => panic!("no simulator for {other}"),
        }
    }

    /// The files it requests at boot, in order.
    pub fn boot_files(&self) -> Vec<String> {
        match self.vendor {
            "yealink" => vec![
                format!("{}.boot", self.mac),
                "y000000000000.boot".into(),
                "y000000000096.cfg".into(),
                format!("{}.cfg", self.mac),
            ],
            "snom" => {
                vec![format!("snom{}.htm", self.model), format!("snom{}-{}.htm", self.model, self.mac.to_uppercase())]
            }
            "polycom" => vec![format!("{}.cfg", self.mac), format!("{}-user.cfg", self.mac)],
            "grandstream" => vec![format!("cfg{}.xml", self.mac)],
            other => panic!("no simulator for {other}"),
        }
    }

    /// The file carrying its account.
    pub fn device_file(&self) -> String {
        self.boot_files().pop().unwrap()
    }

    /// Boots against `base_path` (`/e/<token>/`, `/p/<token>/` or `/`) over one
    /// keep-alive connection; returns each file's response.
    pub async fn boot(&self, connection: &mut Connection, base_path: &str) -> Vec<(String, Response)> {
        let user_agent = self.user_agent();
        let mut responses = Vec::new();
        for file in self.boot_files() {
            let response =
                connection.get(&format!("{base_path}{file}"), &[("User-Agent", &user_agent)]).await.expect("request");
            responses.push((file, response));
        }
        responses
    }

    /// The steady URL path written into its config, as the phone would read it.
    pub fn steady_path_in(&self, config: &str) -> Option<String> {
        let url = match self.vendor {
            "yealink" => config.lines().find_map(|l| l.strip_prefix("static.auto_provision.server.url = "))?,
            "snom" => config.split("<setting_server perm=\"R\">").nth(1)?.split('<').next()?,
            "polycom" => config.split("device.prov.serverName=\"").nth(1)?.split('"').next()?,
            "grandstream" => {
                return Some(format!("/{}", config.split("<P237>").nth(1)?.split('<').next()?.split_once('/')?.1));
            }
            _ => return None,
        };
        Some(Appliance::path_of(url.trim()))
    }
}

/// Two network namespaces made by the test, joined by a veth pair: the phones' side (`v0`,
/// 10.99.0.1, multicast routed out of it) and the appliance's (`v1`, 10.99.0.2). Deleted on
/// drop.
pub struct Netns {
    /// Where the phones are.
    pub phone: String,
    /// Where provbox runs.
    pub appliance: String,
}

impl Netns {
    /// Creates them (needs root and iproute2).
    pub fn with_veth() -> Netns {
        let base = format!("provbox-test-{}-{}", std::process::id(), rand_suffix());
        let netns = Netns { phone: format!("{base}-p"), appliance: format!("{base}-a") };
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("iproute2 runs");
            assert!(status.success(), "ip {args:?} failed");
        };
        let (p, a) = (netns.phone.as_str(), netns.appliance.as_str());
        ip(&["netns", "add", p]);
        ip(&["netns", "add", a]);
        ip(&["-n", p, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", a]);
        ip(&["-n", p, "addr", "add", "10.99.0.1/24", "dev", "v0"]);
        ip(&["-n", a, "addr", "add", "10.99.0.2/24", "dev", "v1"]);
        for (ns, link) in [(p, "v0"), (a, "v1"), (p, "lo"), (a, "lo")] {
            ip(&["-n", ns, "link", "set", link, "up"]);
        }
        ip(&["-n", p, "route", "add", "224.0.0.0/4", "dev", "v0"]);
        netns
    }

    /// A UDP socket bound to `address` in the phones' namespace (made on a thread of its
    /// own, which enters the namespace; the socket stays in it).
    pub fn phone_socket(&self, address: SocketAddr) -> std::net::UdpSocket {
        let path = format!("/var/run/netns/{}", self.phone);
        std::thread::spawn(move || {
            let netns = std::fs::File::open(path).expect("namespace file");
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            std::net::UdpSocket::bind(address).expect("bind in the namespace")
        })
        .join()
        .expect("socket thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for name in [&self.phone, &self.appliance] {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
}

/// Percent-encodes a form field.
fn form_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Yealink-style PnP SUBSCRIBE: MAC in the Request-URI, rport, full header names.
pub fn yealink_subscribe(mac: &str, port: u16) -> String {
    format!(
        "SUBSCRIBE sip:MAC%3a{mac}@224.0.1.75 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{mac};rport\r\n\
         From: <sip:MAC%3a{mac}@224.0.1.75>;tag=y1\r\n\
         To: <sip:MAC%3a{mac}@224.0.1.75>\r\n\
         Call-ID: pnp-{mac}@127.0.0.1\r\n\
         CSeq: 1 SUBSCRIBE\r\n\
         Contact: <sip:127.0.0.1:{port}>\r\n\
         Event: ua-profile;profile-type=\"device\";vendor=\"Yealink\";model=\"T54W\";version=\"96.86.0.1\"\r\n\
         Accept: application/url\r\n\
         Expires: 0\r\n\
         Content-Length: 0\r\n\r\n"
    )
}
