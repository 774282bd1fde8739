//! A mock vendor cloud on loopback: Yealink RPS (XML-RPC, the signed JSON API and YMCS v2),
//! Snom SRAPS (Hawk) and legacy XML-RPC, and Fanvil FDPS, over real HTTP or HTTPS. It checks
//! each wire format independently of provbox's own encoders (Basic auth, XML-RPC bodies, the
//! X-Ca signature and the Hawk MAC are recomputed here) and keeps a registry of MAC -> URL per
//! account. Faults (refused connections, 5xx, stalls, garbage replies) are switchable.
//!
//! Each service accepts only what independent clients send, and answers as they expect to be
//! answered; the rule's source is cited beside it (repository @ commit, path). Where no
//! reference settles a point the code says "assumed". The references:
//! - [F] nethesis/falconieri @ 856677b (Go: Yealink, YMCS, Snom SRAPS, Fanvil);
//! - [N] sipwise/ngcp-panel @ f677173, `lib/NGCP/Panel/Utils/DeviceBootstrap/` (Perl);
//! - [P] peoplefone/provisioning-rpc @ c0ab81b (PHP: Yealink, Snom);
//! - [S] nemerald-voip/fspbx @ f01af80 (RPS JSON) and 24614c4 (YMCS) (PHP);
//! - [Y] yjcb22/YealinkRPS @ f9a5460 (PHP, RPS JSON);
//! - [W] Snom's wiki, "XML-RPC API"; [C] Snomio/RDS-CLI @ 346489f `cli.py`.
#![allow(dead_code)] // each test binary uses its own part of the mock

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use md5::Digest;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const USER: &str = "acme";
pub const PASSWORD: &str = "rps-Passw0rd";
pub const KEY: &str = "ak-provbox";
pub const SECRET: &str = "json-Secret-1";
pub const HAWK_ID: &str = "hawk-id-1";
pub const HAWK_KEY: &str = "hawk-Key-1";
/// The account every request above authenticates as; MACs of `OTHER` belong to someone else.
pub const OWN: &str = "acme";
pub const OTHER: &str = "other";

/// What the mock does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answers properly.
    None,
    /// Answers with this status and a short text.
    Status(u16),
    /// Never answers (until the client gives up).
    Stall,
    /// A 200 HTML page.
    Html,
    /// A 200 reply of the right type whose body is cut mid-document.
    Malformed,
    /// Announces a longer body than it sends, then closes.
    Truncated,
    /// A 1 MiB body.
    Huge,
    /// A 200 `image/png` of junk.
    WrongType,
}

/// One call that passed authentication and the wire-format checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `yealink-xmlrpc`, `yealink-json`, `sraps`, `snom-xmlrpc`, `fanvil`.
    pub api: &'static str,
    /// XML-RPC method, or `METHOD /path`.
    pub method: String,
    /// String parameters (XML-RPC), or the JSON body.
    pub params: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub account: String,
    pub url: String,
    pub id: u64,
}

#[derive(Default)]
struct State {
    fault: Option<Fault>,
    delay: Duration,
    calls: Vec<Call>,
    /// Requests refused for bad auth or a wrong wire format, with the reason.
    refused: Vec<String>,
    /// MAC (12 lowercase hex) -> entry.
    registry: BTreeMap<String, Entry>,
    /// Yealink XML-RPC server entries and Fanvil material servers: name -> URL.
    servers: BTreeMap<String, String>,
    nonces: HashSet<String>,
    /// YMCS bearer tokens issued.
    tokens: HashSet<String>,
    next_id: u64,
    requests: usize,
    /// Yealink XML-RPC answers registerDeviceWithUniqueUrl with "method not found".
    without_unique_url: bool,
    /// Yealink XML-RPC refuses deRegisterDevice with this text.
    refuse_deregister: Option<String>,
    /// Services accept removals but keep the MAC (a cloud that says yes and does nothing).
    ignore_removals: bool,
    /// Services accept registrations but point the MAC here instead.
    misdirect: Option<String>,
}

/// The running mock.
pub struct Mock {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<watch::Sender<bool>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The CA file to trust for an HTTPS mock.
    pub ca_file: Option<std::path::PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl Mock {
    /// A plain-HTTP mock on a free loopback port.
    pub async fn start() -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut mock = Mock {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            stop: None,
            tls: None,
            ca_file: None,
            _dir: None,
        };
        mock.serve(listener);
        mock
    }

    /// An HTTPS mock whose certificate (for 127.0.0.1) is issued by a private CA, written to
    /// `ca_file`.
    pub async fn start_tls() -> Mock {
        let crate::fleet::LoopbackTls { ca, cert, key } = crate::fleet::LoopbackTls::new("Mock vendor CA");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("vendor-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut mock = Mock {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            stop: None,
            tls: Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
            ca_file: Some(ca_file),
            _dir: Some(dir),
        };
        mock.serve(listener);
        mock
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop, mut stopped) = watch::channel(false);
        self.stop = Some(stop);
        let state = self.state.clone();
        let tls = self.tls.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    _ = stopped.wait_for(|s| *s) => return,
                };
                let Ok((tcp, _)) = accepted else { continue };
                let state = state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| handle(state.clone(), request));
                    let builder = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
    }

    /// Stops listening: connections are refused until [`Mock::come_up`].
    pub async fn go_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        // Bounded wait until the port refuses.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(self.addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("mock still accepts after going down");
    }

    /// Listens again on the same port.
    pub async fn come_up(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// Base URL, e.g. `http://127.0.0.1:4567`.
    pub fn base(&self) -> String {
        format!("{}://{}", if self.tls.is_some() { "https" } else { "http" }, self.addr)
    }

    pub fn set_fault(&self, fault: Fault) {
        self.state.lock().unwrap().fault = Some(fault).filter(|f| *f != Fault::None);
    }

    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    /// Makes Yealink XML-RPC refuse deregistrations with `text` (None: accept again).
    pub fn refuse_deregister(&self, text: Option<&str>) {
        self.state.lock().unwrap().refuse_deregister = text.map(str::to_string);
    }

    /// Makes every service answer removals with success while keeping the MAC.
    pub fn ignore_removals(&self, ignore: bool) {
        self.state.lock().unwrap().ignore_removals = ignore;
    }

    /// Makes every service accept registrations but keep `url` for the MAC instead.
    pub fn misdirect(&self, url: Option<&str>) {
        self.state.lock().unwrap().misdirect = url.map(str::to_string);
    }

    pub fn without_unique_url(&self) {
        self.state.lock().unwrap().without_unique_url = true;
    }

    /// Puts `mac` into `account`'s registry.
    pub fn seed(&self, mac: &str, account: &str, url: &str) {
        let mut state = self.state.lock().unwrap();
        state.next_id += 1;
        let id = state.next_id;
        state.registry.insert(mac.into(), Entry { account: account.into(), url: url.into(), id });
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn refused(&self) -> Vec<String> {
        self.state.lock().unwrap().refused.clone()
    }

    pub fn registry(&self) -> BTreeMap<String, Entry> {
        self.state.lock().unwrap().registry.clone()
    }

    /// Every request received, good or bad.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
}

type Reply = Response<BoxBody<Bytes, std::io::Error>>;

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let body = Full::new(body.into()).map_err(|never| match never {}).boxed();
    Response::builder().status(status).header("content-type", content_type).body(body).unwrap()
}

/// A body that sends its first bytes, waits for them to go out, then fails: the connection
/// is cut mid-reply.
struct CutShort(Option<Bytes>, std::pin::Pin<Box<tokio::time::Sleep>>);

impl hyper::body::Body for CutShort {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        if let Some(bytes) = self.0.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes))));
        }
        std::task::ready!(self.1.as_mut().poll(context));
        std::task::Poll::Ready(Some(Err(std::io::Error::other("cut short"))))
    }
}

fn xml_pair(ok: bool, text: &str) -> Reply {
    let body = format!(
        "<?xml version=\"1.0\"?>\n<methodResponse><params><param><value><array><data>\
         <value><boolean>{}</boolean></value><value><string>{}</string></value>\
         </data></array></value></param></params></methodResponse>",
        u8::from(ok),
        text.replace('&', "&amp;").replace('<', "&lt;")
    );
    reply(200, "text/xml", body)
}

/// `[boolean, text]` with the text untyped, as RPS answers: [F] `providers/yealink.go` reads
/// `<value><boolean>(.*)</boolean></value><value>(.*)</value>` and compares the raw text.
fn xml_pair_untyped(ok: bool, text: &str) -> Reply {
    let body = format!(
        "<?xml version=\"1.0\"?>\n<methodResponse><params><param><value><array><data>\
         <value><boolean>{}</boolean></value><value>{}</value>\
         </data></array></value></param></params></methodResponse>",
        u8::from(ok),
        text.replace('&', "&amp;").replace('<', "&lt;")
    );
    reply(200, "text/xml", body)
}

/// A `[true, company, url]` reply ([W] getPhoneRedirection; [C] l.406-416).
fn xml_triple(company: &str, url: &str) -> Reply {
    let body = format!(
        "<?xml version=\"1.0\"?>\n<methodResponse><params><param><value><array><data>\
         <value><boolean>1</boolean></value><value><string>{company}</string></value>\
         <value><string>{}</string></value></data></array></value></param></params></methodResponse>",
        url.replace('&', "&amp;").replace('<', "&lt;")
    );
    reply(200, "text/xml", body)
}

fn xml_fault(code: i32, text: &str) -> Reply {
    let body = format!(
        "<?xml version=\"1.0\"?>\n<methodResponse><fault><value><struct>\
         <member><name>faultCode</name><value><int>{code}</int></value></member>\
         <member><name>faultString</name><value><string>{text}</string></value></member>\
         </struct></value></fault></methodResponse>"
    );
    reply(200, "text/xml", body)
}

fn json_reply(status: u16, value: serde_json::Value) -> Reply {
    reply(status, "application/json", value.to_string())
}

/// The method name and the string parameters, in order, of an XML-RPC call (nested arrays
/// flattened). Refuses anything that is not a plain `<methodCall>`.
fn parse_call(body: &str) -> Result<(String, Vec<String>), String> {
    if !body.starts_with("<?xml") || !body.contains("<methodCall>") || !body.trim_end().ends_with("</methodCall>") {
        return Err("not an XML-RPC methodCall document".into());
    }
    let method = regex_lite::Regex::new(r"<methodName>([A-Za-z0-9_.]+)</methodName>")
        .unwrap()
        .captures(body)
        .ok_or("no methodName")?[1]
        .to_string();
    let params = regex_lite::Regex::new(r"<string>([^<]*)</string>")
        .unwrap()
        .captures_iter(body)
        .map(|c| {
            c[1].replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&")
        })
        .collect();
    Ok((method, params))
}

fn basic_ok(request: &Request<Incoming>, user: &str, password: &str) -> bool {
    let expected = format!("Basic {}", BASE64.encode(format!("{user}:{password}")));
    request.headers().get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

fn md5_hex(text: &[u8]) -> String {
    md5::Md5::digest(text).iter().map(|b| format!("{b:02x}")).collect()
}

/// `AA-BB-CC-DD-EE-FF` -> `aabbccddeeff`, or None.
fn yealink_mac(text: &str) -> Option<String> {
    let re = regex_lite::Regex::new(r"^[0-9A-F]{2}(-[0-9A-F]{2}){5}$").unwrap();
    re.is_match(text).then(|| text.replace('-', "").to_ascii_lowercase())
}

fn plain_mac(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    (lower.len() == 12 && lower.bytes().all(|b| b.is_ascii_hexdigit())).then_some(lower)
}

async fn handle(state: Arc<Mutex<State>>, request: Request<Incoming>) -> Result<Reply, hyper::Error> {
    let (fault, delay) = {
        let mut s = state.lock().unwrap();
        s.requests += 1;
        (s.fault, s.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let xml = request.uri().path().contains("xmlrpc");
    match fault {
        Some(Fault::Status(code)) => return Ok(reply(code, "text/plain", format!("mock says {code}"))),
        Some(Fault::Stall) => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return Ok(reply(504, "text/plain", "stalled"));
        }
        Some(Fault::Html) => {
            return Ok(reply(
                200,
                "text/html",
                "<!DOCTYPE html><html><body><h1>Proxy login required</h1></body></html>",
            ));
        }
        Some(Fault::Malformed) if xml => {
            return Ok(reply(200, "text/xml", "<?xml version=\"1.0\"?><methodResponse><params><param><value><array>"));
        }
        Some(Fault::Malformed) => return Ok(reply(200, "application/json", "{\"ret\":1,\"data\":")),
        Some(Fault::Truncated) => {
            return Ok(Response::builder()
                .status(200)
                .header("content-type", "text/xml")
                .header("content-length", "5000")
                .body(
                    CutShort(
                        Some(Bytes::from_static(b"<?xml version=\"1.0\"?><methodResponse>")),
                        Box::pin(tokio::time::sleep(Duration::from_millis(200))),
                    )
                    .boxed(),
                )
                .unwrap());
        }
        Some(Fault::Huge) => {
            return Ok(reply(200, if xml { "text/xml" } else { "application/json" }, vec![b' '; 1 << 20]));
        }
        Some(Fault::WrongType) => return Ok(reply(200, "image/png", vec![0x89, b'P', b'N', b'G', 0, 0xff, 0xfe])),
        Some(Fault::None) | None => {}
    }
    let path = request.uri().path().to_string();
    let result = if path == "/xmlrpc" {
        yealink_xmlrpc(&state, request).await
    } else if path.starts_with("/api/open/v1/") {
        yealink_json(&state, request).await
    } else if path.starts_with("/api/v1/") {
        sraps(&state, request).await
    } else if path == "/snom/xmlrpc/" {
        snom_xmlrpc(&state, request).await
    } else if path == "/xmlrpc.php" {
        fanvil(&state, request).await
    } else if path.starts_with("/v2/") {
        ymcs(&state, request).await
    } else {
        Err((404, format!("no such path {path}")))
    };
    Ok(result.unwrap_or_else(|(status, reason)| {
        state.lock().unwrap().refused.push(reason.clone());
        reply(status, "text/plain", reason)
    }))
}

type Handled = Result<Reply, (u16, String)>;

async fn body_of(request: Request<Incoming>) -> Result<Vec<u8>, (u16, String)> {
    Ok(request.into_body().collect().await.map_err(|e| (400, e.to_string()))?.to_bytes().to_vec())
}

async fn xmlrpc_request(
    request: Request<Incoming>,
    user: &str,
    password: &str,
) -> Result<(String, Vec<String>), (u16, String)> {
    if !basic_ok(&request, user, password) {
        return Err((401, "Unauthorized: invalid user name or password".into()));
    }
    let content_type = request.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if !content_type.starts_with("text/xml") {
        return Err((400, format!("content type {content_type:?} is not text/xml")));
    }
    let body = body_of(request).await?;
    parse_call(&String::from_utf8_lossy(&body)).map_err(|e| (400, e))
}

fn record(state: &Arc<Mutex<State>>, api: &'static str, method: &str, params: &[String]) {
    state.lock().unwrap().calls.push(Call { api, method: method.into(), params: params.to_vec() });
}

/// Registers `mac` for our account unless it is someone else's and `take_over` is false.
/// Returns Err(owner) on a conflict.
fn put_entry(s: &mut State, mac: &str, url: &str, take_over: bool) -> Result<(), String> {
    if let Some(entry) = s.registry.get(mac)
        && entry.account != OWN
        && !take_over
    {
        return Err(entry.account.clone());
    }
    s.next_id += 1;
    let id = s.next_id;
    let url = s.misdirect.clone().unwrap_or_else(|| url.to_string());
    s.registry.insert(mac.into(), Entry { account: OWN.into(), url, id });
    Ok(())
}

/// RPS takes server names of at most 20 characters of `A-z 0-9 - _ .` and space: [N]
/// `Yealink.pm` (md5 prefixes of 20), [P] (its error text, quoted below).
fn yealink_server_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 20
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '))
}

async fn yealink_xmlrpc(state: &Arc<Mutex<State>>, request: Request<Incoming>) -> Handled {
    // Basic auth and text/xml: [F] `providers/yealink.go`, [N] `VendorRPC.pm`, [P].
    let (method, params) = xmlrpc_request(request, USER, PASSWORD).await?;
    let arity = |counts: &[usize]| {
        if counts.contains(&params.len()) {
            Ok(())
        } else {
            Err((400, format!("{method} takes {counts:?} string params, got {params:?}")))
        }
    };
    let mut s = state.lock().unwrap();
    // [P]: `Error:Invalid MAC(s):<mac>`.
    let invalid = |mac: &str| xml_pair_untyped(false, &format!("Error:Invalid MAC(s):{mac}"));
    let bad_server = "Error:The server name can only contain 'A-z 0-9 - _ . '(include space)";
    let register = |s: &mut State, raw_mac: &str, url: &str, take_over: &str| -> Reply {
        // MACs as [F] sends them: uppercase, dash-separated.
        let Some(mac) = yealink_mac(raw_mac) else { return invalid(raw_mac) };
        match s.registry.get(&mac) {
            // Assumed: no reference quotes the reply for a MAC already in the account.
            Some(entry) if entry.account == OWN => {
                return xml_pair_untyped(false, &format!("Existing MAC(s):{raw_mac}"));
            }
            // Another account's MAC without override: [F] reads `Error:` and ten lowercase
            // letters or digits as "owned by another user".
            Some(_) if take_over != "1" => return xml_pair_untyped(false, "Error:macinuse01 MAC of another account"),
            _ => {}
        }
        let _ = put_entry(s, &mac, url, true);
        xml_pair_untyped(true, "OK")
    };
    let answer = match method.as_str() {
        // Assumed: no reference shows an RPS without this method.
        "redirect.registerDeviceWithUniqueUrl" if s.without_unique_url => {
            return Ok(xml_fault(-32601, "Method not found"));
        }
        // [F]: (mac, serverName, url, override).
        "redirect.registerDeviceWithUniqueUrl" => {
            arity(&[4])?;
            if !yealink_server_name_ok(&params[1]) {
                return Ok(xml_pair_untyped(false, bad_server));
            }
            register(&mut s, &params[0], &params[2], &params[3])
        }
        // [N]: addServer(serverName, url).
        "redirect.addServer" => {
            arity(&[2])?;
            if !yealink_server_name_ok(&params[0]) {
                return Ok(xml_pair_untyped(false, bad_server));
            }
            s.servers.insert(params[0].clone(), params[1].clone());
            xml_pair_untyped(true, "OK")
        }
        // registerDevice(mac, serverName) in [N], with an override flag third in [P].
        "redirect.registerDevice" => {
            arity(&[2, 3])?;
            let Some(url) = s.servers.get(&params[1]).cloned() else {
                return Ok(xml_pair_untyped(false, "Error:Invalid server"));
            };
            register(&mut s, &params[0], &url, params.get(2).map_or("0", String::as_str))
        }
        "redirect.deRegisterDevice" if s.refuse_deregister.is_some() => {
            xml_pair_untyped(false, s.refuse_deregister.as_deref().unwrap_or_default())
        }
        // [N], [P]: deRegisterDevice(mac).
        "redirect.deRegisterDevice" => {
            arity(&[1])?;
            let ignore = s.ignore_removals;
            match yealink_mac(&params[0]) {
                Some(mac) if s.registry.get(&mac).is_some_and(|e| e.account == OWN) => {
                    if !ignore {
                        s.registry.remove(&mac);
                    }
                    xml_pair_untyped(true, "OK")
                }
                // Assumed: what RPS answers for a MAC it does not hold is in no reference.
                _ => invalid(&params[0]),
            }
        }
        // [P]: checkDevice(mac) answers `registered`, `unregistered`, `unknown`,
        // `registered elsewhere`.
        "redirect.checkDevice" => {
            arity(&[1])?;
            let status = match yealink_mac(&params[0]).and_then(|mac| s.registry.get(&mac).cloned()) {
                Some(entry) if entry.account == OWN => "registered",
                Some(_) => "registered elsewhere",
                None => "unregistered",
            };
            xml_pair_untyped(true, status)
        }
        other => return Ok(xml_fault(-32601, &format!("Method {other} not found"))),
    };
    drop(s);
    record(state, "yealink-xmlrpc", &method, &params);
    Ok(answer)
}

/// Checks the X-Ca signature of a JSON API request by recomputing it, in the layout of [S]
/// `app/Services/YealinkRpsRequestSigner.php` and [Y] `createStrToSign`.
fn check_signature(
    s: &mut State,
    method: &str,
    path: &str,
    query: &str,
    headers: &hyper::HeaderMap,
    body: &[u8],
) -> Result<(), (u16, String)> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let unauthorized = |why: &str| Err((401, format!("{{\"ret\":-1,\"data\":null,\"error\":{{\"msg\":\"{why}\"}}}}")));
    if header("x-ca-key") != KEY {
        return unauthorized("invalid X-Ca-Key");
    }
    // Nonces differ in form across clients ([S] a dashless UUID, [Y] uniqid()); any fresh one.
    let nonce = header("x-ca-nonce");
    if nonce.is_empty() || !s.nonces.insert(nonce.clone()) {
        return unauthorized("nonce missing or replayed");
    }
    let timestamp: u128 = header("x-ca-timestamp").parse().unwrap_or(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    if timestamp.abs_diff(now) > 5 * 60 * 1000 {
        return unauthorized("timestamp out of range");
    }
    if header("content-type") != "application/json;charset=UTF-8" {
        return Err((400, format!("content type {:?}", header("content-type"))));
    }
    let mut signed = format!("{method}\n");
    if !body.is_empty() {
        let md5 = BASE64.encode(md5::Md5::digest(body));
        if header("content-md5") != md5 {
            return unauthorized("Content-MD5 mismatch");
        }
        signed += &format!("Content-MD5:{md5}\n");
    }
    signed += &format!("X-Ca-Key:{KEY}\nX-Ca-Nonce:{nonce}\nX-Ca-Timestamp:{timestamp}\n{}", &path[1..]);
    if !query.is_empty() {
        let mut pairs: Vec<&str> = query.split('&').collect();
        pairs.sort();
        signed += &format!("\n{}", pairs.join("&"));
    }
    let expected = BASE64.encode(
        ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes()), signed.as_bytes()).as_ref(),
    );
    if header("x-ca-signature") != expected {
        return unauthorized("Invalid signature");
    }
    Ok(())
}

async fn yealink_json(state: &Arc<Mutex<State>>, request: Request<Incoming>) -> Handled {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let headers = request.headers().clone();
    let body = body_of(request).await?;
    let mut s = state.lock().unwrap();
    if let Err((status, why)) = check_signature(&mut s, &method, &path, &query, &headers, &body) {
        s.refused.push(why.clone());
        return Ok(reply(status, "application/json", why));
    }
    let json: serde_json::Value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| (400, e.to_string()))?
    };
    let ok = |data: serde_json::Value| json_reply(200, serde_json::json!({"ret": 1, "data": data, "error": null}));
    // Refusals come with HTTP 200 and `ret: -1` ([S] `tests/Unit/YealinkRpsCloudProviderTest.php`).
    let error = |code: &str| {
        json_reply(
            200,
            serde_json::json!({"ret": -1, "data": null, "error": {"msg": code, "errorCode": 409, "fieldErrors": []}}),
        )
    };
    let record_of =
        |mac: &str, e: &Entry| serde_json::json!({"id": e.id, "mac": mac, "uniqueServerUrl": e.url, "serverId": null});
    let answer = match (method.as_str(), path.as_str()) {
        // `device/add {macs, uniqueServerUrl}`, MACs lowercase ([S], [Y]).
        ("POST", "/api/open/v1/device/add") => {
            let macs = json["macs"].as_array().ok_or((400, "add without macs".to_string()))?;
            let url = json["uniqueServerUrl"].as_str().ok_or((400, "add without uniqueServerUrl".to_string()))?;
            let raw = macs.first().and_then(|m| m.as_str()).ok_or((400, "bad mac".to_string()))?;
            let mac = plain_mac(raw).filter(|_| raw.chars().all(|c| !c.is_ascii_uppercase()));
            let mac = mac.ok_or((400, format!("mac {raw:?} is not 12 lowercase hex digits")))?;
            match s.registry.get(&mac) {
                Some(entry) if entry.account == OWN => error("device.mac.existed"),
                Some(_) => error("device.mac.added.by.other"),
                None => {
                    let _ = put_entry(&mut s, &mac, url, false);
                    let id = s.registry[&mac].id;
                    ok(serde_json::json!([{"id": id, "mac": mac}]))
                }
            }
        }
        // `device/list {key, skip, limit, autoCount}`: `key` matches loosely ([Y] `run.php`
        // reads `data.data[0].id`; an untitled TypeScript client notes the loose match).
        ("POST", "/api/open/v1/device/list") => {
            let key = json["key"].as_str().ok_or((400, "list without key".to_string()))?.to_ascii_lowercase();
            let found: Vec<serde_json::Value> = s
                .registry
                .iter()
                .filter(|(mac, e)| e.account == OWN && mac.contains(&key))
                .map(|(mac, e)| record_of(mac, e))
                .collect();
            ok(serde_json::json!({"skip": 0, "limit": json["limit"], "total": found.len(), "data": found}))
        }
        // `device/edit {id, uniqueServerUrl}`.
        ("POST", "/api/open/v1/device/edit") => {
            let id = json["id"].as_u64().ok_or((400, "edit without id".to_string()))?;
            let url =
                json["uniqueServerUrl"].as_str().ok_or((400, "edit without uniqueServerUrl".to_string()))?.to_string();
            match s.registry.values_mut().find(|e| e.id == id && e.account == OWN) {
                Some(entry) => {
                    entry.url = url;
                    ok(serde_json::Value::Null)
                }
                None => error("device.operate.forbidden"),
            }
        }
        // `device/delete {ids}` ([Y]; [S] `deleteOrganization`): `ret: 0, data: null`.
        ("POST", "/api/open/v1/device/delete") => {
            let ids: Vec<u64> = json["ids"]
                .as_array()
                .ok_or((400, "delete without ids".to_string()))?
                .iter()
                .filter_map(|i| i.as_u64())
                .collect();
            if !s.ignore_removals {
                s.registry.retain(|_, e| !(e.account == OWN && ids.contains(&e.id)));
            }
            json_reply(200, serde_json::json!({"ret": 0, "data": null, "error": null}))
        }
        // `checkDevice` answers a status string, never a record (two untitled clients in the
        // index; no repository). Kept so that a client reading a record from it fails.
        ("GET", "/api/open/v1/device/checkDevice") => {
            let mac =
                query.strip_prefix("mac=").and_then(plain_mac).ok_or((400, "checkDevice without mac".to_string()))?;
            ok(serde_json::json!(if s.registry.get(&mac).is_some_and(|e| e.account == OWN) {
                "bound"
            } else {
                "unbound"
            }))
        }
        _ => return Err((404, format!("no such endpoint {method} {path}"))),
    };
    drop(s);
    record(state, "yealink-json", &format!("{method} {path}"), &[json.to_string()]);
    Ok(answer)
}

/// Checks a Hawk header by recomputing the payload hash and the MAC.
fn check_hawk(method: &str, resource: &str, headers: &hyper::HeaderMap, body: &[u8]) -> Result<(), String> {
    let header = headers.get("authorization").and_then(|v| v.to_str().ok()).ok_or("no Authorization")?;
    let fields: BTreeMap<String, String> = regex_lite::Regex::new(r#"(\w+)="([^"]*)""#)
        .unwrap()
        .captures_iter(header.strip_prefix("Hawk ").ok_or("not Hawk")?)
        .map(|c| (c[1].to_string(), c[2].to_string()))
        .collect();
    let field = |name: &str| fields.get(name).cloned().ok_or(format!("Hawk header without {name}"));
    if field("id")? != HAWK_ID {
        return Err("unknown Hawk id".into());
    }
    let ts: u64 = field("ts")?.parse().map_err(|_| "bad ts")?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    if ts.abs_diff(now) > 60 {
        return Err("stale Hawk ts".into());
    }
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .to_string();
    // The payload hash is optional: [F] `libs/grape/auth.go` always sends it, [N] `Snom.pm`
    // never does (an empty line in the normalized string); a hash that is sent must match.
    let hash = match fields.get("hash") {
        Some(sent) => {
            let mut payload = format!("hawk.1.payload\n{content_type}\n").into_bytes();
            payload.extend_from_slice(body);
            payload.push(b'\n');
            let hash = BASE64.encode(ring::digest::digest(&ring::digest::SHA256, &payload).as_ref());
            if *sent != hash {
                return Err("Hawk payload hash mismatch".into());
            }
            hash
        }
        None => String::new(),
    };
    let host_header = headers.get("host").and_then(|v| v.to_str().ok()).ok_or("no Host")?;
    let (host, port) = host_header.rsplit_once(':').ok_or("Host without port")?;
    let normalized =
        format!("hawk.1.header\n{ts}\n{}\n{method}\n{resource}\n{host}\n{port}\n{hash}\n\n", field("nonce")?);
    let mac = BASE64.encode(
        ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, HAWK_KEY.as_bytes()), normalized.as_bytes())
            .as_ref(),
    );
    if field("mac")? != mac {
        return Err("Hawk MAC mismatch".into());
    }
    Ok(())
}

/// The two SRAPS settings named `setting_server` ([N] f1e00a0408's commit message quotes
/// both): the global one, which does not redirect desk phones, and the one in section
/// `phone-settings`, which does.
const SRAPS_GLOBAL_SERVER: &str = "5683038c-0000-4000-8000-000000000001";
const SRAPS_PHONE_SERVER: &str = "50a40056-0000-4000-8000-000000000002";

/// `settings/`: more than a page of settings, both `setting_server`s on the last page, as in
/// the real list of some 1,200 ([F] b77d513).
fn sraps_settings() -> Vec<serde_json::Value> {
    let mut settings: Vec<serde_json::Value> = (0..230)
        .map(|i| serde_json::json!({"uuid": format!("00000000-0000-4000-8000-{i:012}"), "param_name": format!("setting_{i}"), "section": "phone-settings", "name": format!("Setting {i}")}))
        .collect();
    settings.push(serde_json::json!({"uuid": SRAPS_GLOBAL_SERVER, "param_name": "setting_server", "section": "global", "name": "Setting Server URL", "field_type": "url"}));
    settings.push(serde_json::json!({"uuid": SRAPS_PHONE_SERVER, "param_name": "setting_server", "section": "phone-settings", "name": "Setting Server", "field_type": "url"}));
    settings
}

/// A page of `items` with `page_size` (default 20, at most 1,000 [F] b77d513) from `query`,
/// and the `Link: <next>; rel="next"` header [F] `devices.go` follows.
fn sraps_page(path: &str, query: &str, items: &[serde_json::Value]) -> Reply {
    let param = |name: &str| {
        query.split('&').find_map(|pair| pair.strip_prefix(&format!("{name}="))).and_then(|v| v.parse::<usize>().ok())
    };
    let size = param("page_size").unwrap_or(20).clamp(1, 1000);
    let page = param("page").unwrap_or(1).max(1);
    let chunk: Vec<serde_json::Value> = items.iter().skip((page - 1) * size).take(size).cloned().collect();
    let mut response = json_reply(200, serde_json::Value::Array(chunk));
    if page * size < items.len() {
        let next = format!("<{path}?page_size={size}&page={}>; rel=\"next\"", page + 1);
        response.headers_mut().insert("link", next.parse().unwrap());
    }
    response
}

async fn sraps(state: &Arc<Mutex<State>>, request: Request<Incoming>) -> Handled {
    let method = request.method().to_string();
    let resource = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let headers = request.headers().clone();
    let body = body_of(request).await?;
    check_hawk(&method, &resource, &headers, &body).map_err(|why| (401, why))?;
    const ENDPOINTS: &str = "/api/v1/companies/c1/endpoints/";
    let endpoint_of = |mac: &str, e: &Entry| {
        let mut settings = serde_json::Map::new();
        if !e.url.is_empty() {
            settings.insert(SRAPS_PHONE_SERVER.into(), serde_json::json!({"value": e.url, "attrs": {"perm": "RW"}}));
        }
        serde_json::json!({"mac": mac, "autoprovisioning_enabled": true, "settings_manager": settings})
    };
    let answer = if method == "GET" && path == format!("/api/v1/tokens/{HAWK_ID}") {
        // [F] `devices.go`, [N]: `tokens/<id>` → `links.company`.
        json_reply(200, serde_json::json!({"id": HAWK_ID, "links": {"company": "/api/v1/companies/c1"}}))
    } else if method == "GET" && path == "/api/v1/companies/c1" {
        // [F]: the company → `links.endpoints`.
        json_reply(200, serde_json::json!({"name": "ACME", "links": {"endpoints": ENDPOINTS}}))
    } else if method == "GET" && path == "/api/v1/settings/" {
        sraps_page(&path, &query, &sraps_settings())
    } else if method == "GET" && path == ENDPOINTS {
        // [N] `Snom.pm` deregister: the company's endpoint list, each with its `mac`.
        let s = state.lock().unwrap();
        let list: Vec<serde_json::Value> =
            s.registry.iter().filter(|(_, e)| e.account == OWN).map(|(mac, e)| endpoint_of(mac, e)).collect();
        sraps_page(&path, &query, &list)
    } else if let Some(raw) = path.strip_prefix(ENDPOINTS) {
        let mac = plain_mac(raw).ok_or((400, format!("{raw:?} is not a MAC")))?;
        let mut s = state.lock().unwrap();
        match method.as_str() {
            "PUT" => {
                let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| (400, e.to_string()))?;
                if !json["mac"].as_str().is_some_and(|m| m.eq_ignore_ascii_case(&mac))
                    || !(json["autoprovisioning_enabled"] == true || json["autoprovisioning_enabled"] == "true")
                {
                    return Err((400, format!("PUT body does not match the endpoint: {json}")));
                }
                // [F] `devices.go` / `types.go`, [N] `Snom.pm`: the URL goes in
                // settings_manager under a setting's UUID; no reference sends provisioning_url.
                let Some(manager) = json["settings_manager"].as_object() else {
                    return Err((
                        400,
                        format!("an endpoint's provisioning URL is set through settings_manager: {json}"),
                    ));
                };
                let url = manager
                    .get(SRAPS_PHONE_SERVER)
                    .and_then(|setting| setting["value"].as_str())
                    .unwrap_or_default()
                    .to_string();
                match put_entry(&mut s, &mac, &url, false) {
                    Ok(()) => json_reply(200, json),
                    // [F] `utils/utils.go` (b7bee26) reads this text; no reference gives the status.
                    Err(_) => json_reply(403, serde_json::json!({"detail": "taken_mac_or_forbidden"})),
                }
            }
            // [N] `Snom.pm`: DELETE the endpoint. A 404 for an unknown one is assumed.
            "DELETE" => match s.registry.get(&mac) {
                Some(e) if e.account == OWN => {
                    if !s.ignore_removals {
                        s.registry.remove(&mac);
                    }
                    reply(204, "application/json", "")
                }
                _ => json_reply(404, serde_json::json!({"detail": "Not found."})),
            },
            _ => return Err((405, "method not allowed".into())),
        }
    } else {
        return Err((404, format!("no such resource {method} {path}")));
    };
    record(state, "sraps", &format!("{method} {path}"), &[String::from_utf8_lossy(&body).into_owned()]);
    Ok(answer)
}

async fn snom_xmlrpc(state: &Arc<Mutex<State>>, request: Request<Incoming>) -> Handled {
    // [W]: POST to `/xmlrpc/` (the trailing slash is mandatory), text/xml, Basic auth.
    let (method, params) = xmlrpc_request(request, USER, PASSWORD).await?;
    let mut s = state.lock().unwrap();
    // MAC case differs among clients ([N] and [F] upper, [P] lower): both are taken.
    let mac = params.first().and_then(|m| plain_mac(m));
    let answer = match (method.as_str(), mac) {
        (_, None) => xml_pair(false, "Error:malformed_mac"),
        // [W], [P]: registerPhone(mac, url) → `[true, "Ok"]` or `[false, "Error:..."]`.
        ("redirect.registerPhone", Some(mac)) if params.len() == 2 => {
            if !params[1].starts_with("http://") && !params[1].starts_with("https://") {
                xml_pair(false, "Error:malformed_url")
            } else {
                match put_entry(&mut s, &mac, &params[1], false) {
                    Ok(()) => xml_pair(true, "Ok"),
                    Err(_) => xml_pair(false, "Error:owned_by_other_user"),
                }
            }
        }
        // [W], [P]: deregisterPhone(mac); [P] handles `Error:no_such_mac`.
        ("redirect.deregisterPhone", Some(mac)) => match s.registry.get(&mac) {
            Some(e) if e.account == OWN => {
                if !s.ignore_removals {
                    s.registry.remove(&mac);
                }
                xml_pair(true, "Ok")
            }
            Some(_) => xml_pair(false, "Error:owned_by_other_user"),
            None => xml_pair(false, "Error:no_such_mac"),
        },
        // [P], [C]: checkPhone(mac) → `[bool, "Ok" | "Error:..."]`, no URL.
        ("redirect.checkPhone", Some(mac)) => match s.registry.get(&mac) {
            Some(e) if e.account == OWN => xml_pair(true, "Ok"),
            Some(_) => xml_pair(false, "Error:owned_by_other_user"),
            None => xml_pair(false, "Error:no_such_mac"),
        },
        // [W], [C]: getPhoneRedirection(mac) → `[true, company, url]` or `[false, text]`.
        ("redirect.getPhoneRedirection", Some(mac)) => match s.registry.get(&mac) {
            Some(e) if e.account == OWN => xml_triple("ACME", &e.url),
            Some(_) => xml_pair(false, "Error:owned_by_other_user"),
            None => xml_pair(false, "Error:no_such_mac"),
        },
        _ => return Ok(xml_fault(-32601, "Method not found")),
    };
    drop(s);
    record(state, "snom-xmlrpc", &method, &params);
    Ok(answer)
}

/// FDPS MACs: 12 uppercase hex digits, no separators ([F] `utils.GetMacAddress`).
fn fanvil_mac(text: &str) -> Option<String> {
    plain_mac(text).filter(|_| text.chars().all(|c| !c.is_ascii_lowercase()))
}

async fn fanvil(state: &Arc<Mutex<State>>, request: Request<Incoming>) -> Handled {
    // [F] `providers/fanvil.go`: Basic auth with hex(md5(hex(md5(password)))), text/xml.
    let sent_password = md5_hex(md5_hex(PASSWORD.as_bytes()).as_bytes());
    let (method, params) = xmlrpc_request(request, USER, &sent_password).await?;
    let mut s = state.lock().unwrap();
    let answer = match method.as_str() {
        // deleteServer(name); `Error:server_not_exist` when there is none ([F] 1a9d759).
        "redirect.deleteServer" => {
            if s.servers.remove(&params[0]).is_some() {
                xml_pair(true, "OK")
            } else {
                xml_pair(false, "Error:server_not_exist")
            }
        }
        // addMaterialServer([key=value, ...]) in [F]'s fields.
        "redirect.addMaterialServer" => {
            let field =
                |name: &str| params.iter().find_map(|p| p.strip_prefix(&format!("{name}="))).map(str::to_string);
            let (Some(name), Some(server), Some(path), Some(protocol)) =
                (field("cfgName"), field("cfgPfSrv"), field("cfgPfName"), field("cfgPfProt"))
            else {
                return Err((400, format!("addMaterialServer fields missing: {params:?}")));
            };
            if field("cfgPfMode").as_deref() != Some("1") {
                return Err((400, "cfgPfMode must be 1".into()));
            }
            // [F] cb9798a: without these some phones (X3) wait for DHCP or PnP instead.
            if field("cfgDhcpOpt").as_deref() != Some("false") || field("cfgPnpEnable").as_deref() != Some("false") {
                return Err((400, format!("cfgDhcpOpt=false and cfgPnpEnable=false are required: {params:?}")));
            }
            let scheme = match protocol.as_str() {
                "4" => "http",
                "5" => "https",
                _ => return Ok(xml_pair(false, "Error: url_format_error")),
            };
            // FDPS rebuilds the URL as host + "/" + path ([F] 6848ed5): a leading slash doubles,
            // and the phone then asks for `//e/...`.
            if path.starts_with('/') || server.contains('/') {
                return Err((
                    400,
                    format!("cfgPfSrv {server:?} and cfgPfName {path:?}: host, and path without its leading /"),
                ));
            }
            s.servers.insert(name, format!("{scheme}://{server}/{path}"));
            xml_pair(true, "OK")
        }
        // deRegisterDevice(mac): [F] checks only the HTTP status. The reply texts are assumed.
        "redirect.deRegisterDevice" => {
            let mac = fanvil_mac(&params[0]).ok_or((400, format!("{:?} is not an uppercase MAC", params[0])))?;
            let ignore = s.ignore_removals;
            match s.registry.get(&mac) {
                Some(e) if e.account == OWN => {
                    if !ignore {
                        s.registry.remove(&mac);
                    }
                    xml_pair(true, "OK")
                }
                _ => xml_pair(false, "Error:device_not_exist"),
            }
        }
        // registerDevice(mac, server name) ([F]); `Error: device_had_existed` for another
        // account's device, `Error: mac_format_error` ([F] 96ef971).
        "redirect.registerDevice" => {
            let Some(mac) = fanvil_mac(&params[0]) else { return Ok(xml_pair(false, "Error: mac_format_error")) };
            let Some(url) = s.servers.get(&params[1]).cloned() else {
                return Ok(xml_pair(false, "Error:server_not_exist"));
            };
            match put_entry(&mut s, &mac, &url, false) {
                Ok(()) => xml_pair(true, "OK"),
                Err(_) => xml_pair(false, "Error: device_had_existed"),
            }
        }
        _ => return Ok(xml_fault(-32601, "Method not found")),
    };
    drop(s);
    record(state, "fanvil", &method, &params);
    Ok(answer)
}

async fn ymcs(state: &Arc<Mutex<State>>, request: Request<Incoming>) -> Handled {
    let path = request.uri().path().to_string();
    let headers = request.headers().clone();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    // Every call, the token call too, carries `timestamp` (ms), `nonce` (32 hex) and JSON both
    // ways ([F] `libs/ymcs/client.go`, `auth.go`; [S] 24614c4 `requestHeaders`).
    if header("timestamp").parse::<u64>().is_err() || header("nonce").len() != 32 {
        return Err((400, "timestamp and nonce headers are required".into()));
    }
    if !header("content-type").starts_with("application/json") || header("accept") != "application/json" {
        return Err((400, "Content-Type and Accept: application/json are required".into()));
    }
    let body = body_of(request).await?;
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| (400, e.to_string()))?;
    let mut s = state.lock().unwrap();
    if path == "/v2/token" {
        // Basic client_id:client_secret and `{"grant_type":"client_credentials"}` ([F], [S]).
        let expected = format!("Basic {}", BASE64.encode(format!("{KEY}:{SECRET}")));
        if header("authorization") != expected || json["grant_type"] != "client_credentials" {
            return Err((401, "{\"error\":\"invalid_client\"}".into()));
        }
        let token = format!("tok-{}", s.tokens.len() + 1);
        s.tokens.insert(token.clone());
        drop(s);
        record(state, "ymcs", "POST /v2/token", &[]);
        return Ok(json_reply(
            200,
            serde_json::json!({"access_token": token, "token_type": "bearer", "expires_in": 7200}),
        ));
    }
    let bearer = header("authorization");
    if !bearer.strip_prefix("Bearer ").is_some_and(|token| s.tokens.contains(token)) {
        return Err((401, "{\"message\":\"invalid token\"}".into()));
    }
    let answer = match path.as_str() {
        // A top-level array of `{mac, uniqueServerUrl}`, at most 100; the reply counts, and
        // names each refused MAC with its `errorInfo` ([F] `libs/ymcs/devices.go`, `types.go`;
        // [S] 24614c4's fixtures).
        "/v2/rps/addDevicesByMac" => {
            let devices = json.as_array().ok_or((400, "body is not an array".to_string()))?;
            if devices.len() > 100 {
                return Err((400, format!("{} devices; at most 100", devices.len())));
            }
            let mut errors = Vec::new();
            for device in devices {
                let mac = device["mac"].as_str().and_then(plain_mac).ok_or((400, format!("bad device {device}")))?;
                let url = device["uniqueServerUrl"].as_str().ok_or((400, "no uniqueServerUrl".to_string()))?;
                match s.registry.get(&mac) {
                    // [S]'s fixture text for a MAC already in the account.
                    Some(e) if e.account == OWN => {
                        errors.push(serde_json::json!({"mac": mac, "sn": "", "errorInfo": "Device already exists."}))
                    }
                    // [F] `libs/ymcs/errors.go`: 800004, managed by another organization.
                    Some(_) => errors.push(serde_json::json!({"mac": mac, "sn": "", "errorInfo": "800004"})),
                    None => {
                        let _ = put_entry(&mut s, &mac, url, false);
                    }
                }
            }
            json_reply(
                200,
                serde_json::json!({"total": devices.len(), "successCount": devices.len() - errors.len(), "failureCount": errors.len(), "errors": errors}),
            )
        }
        // `{deviceIdType: "mac", deviceIds}` → `{total, successCount, failureCount, errors}`
        // ([F]); a MAC the account does not hold counts as a failure (assumed).
        "/v2/rps/delDevices" => {
            if json["deviceIdType"] != "mac" {
                return Err((400, "deviceIdType must be mac".into()));
            }
            let ids = json["deviceIds"].as_array().cloned().unwrap_or_default();
            let mut errors = Vec::new();
            for id in &ids {
                match id.as_str().and_then(plain_mac) {
                    Some(mac) if s.registry.get(&mac).is_some_and(|e| e.account == OWN) => {
                        if !s.ignore_removals {
                            s.registry.remove(&mac);
                        }
                    }
                    _ => errors.push(serde_json::json!({"field": id, "msg": "device not found"})),
                }
            }
            json_reply(
                200,
                serde_json::json!({"total": ids.len(), "successCount": ids.len() - errors.len(), "failureCount": errors.len(), "errors": errors}),
            )
        }
        // `listDevices {skip, limit, autoCount, filter: {mac}}` → `{skip, limit, total, data}`
        // ([F] `libs/ymcs/devices.go`).
        "/v2/rps/listDevices" => {
            let wanted = json["filter"]["mac"].as_str().unwrap_or("").to_ascii_lowercase();
            let found: Vec<serde_json::Value> = s
                .registry
                .iter()
                .filter(|(mac, e)| e.account == OWN && mac.contains(&wanted))
                .map(|(mac, e)| serde_json::json!({"id": e.id, "mac": mac, "uniqueServerUrl": e.url, "serverId": null}))
                .collect();
            json_reply(200, serde_json::json!({"skip": 0, "limit": json["limit"], "total": found.len(), "data": found}))
        }
        _ => return Err((404, format!("no such endpoint {path}"))),
    };
    drop(s);
    record(state, "ymcs", &format!("POST {path}"), &[json.to_string()]);
    Ok(answer)
}
