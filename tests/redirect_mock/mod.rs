//! A mock vendor cloud on loopback: Yealink RPS (XML-RPC and the signed JSON API), Snom SRAPS
//! (Hawk) and legacy XML-RPC, and Fanvil FDPS, over real HTTP or HTTPS. It checks each wire
//! format independently of provbox's own encoders (Basic auth, XML-RPC bodies, the X-Ca
//! signature and the Hawk MAC are recomputed here) and keeps a registry of MAC -> URL per
//! account. Faults (refused connections, 5xx, stalls, garbage replies) are switchable.
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
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Mock vendor CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), &ca_key).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
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
    s.registry.insert(mac.into(), Entry { account: OWN.into(), url: url.into(), id });
    Ok(())
}

async fn yealink_xmlrpc(state: &Arc<Mutex<State>>, request: Request<Incoming>) -> Handled {
    let (method, params) = xmlrpc_request(request, USER, PASSWORD).await?;
    let arity = |n: usize| {
        if params.len() == n { Ok(()) } else { Err((400, format!("{method} takes {n} string params, got {params:?}"))) }
    };
    let mut s = state.lock().unwrap();
    let invalid = |mac: &str| xml_pair(false, &format!("Error:Invalid MAC(s):{mac}"));
    let register = |s: &mut State, raw_mac: &str, url: &str, take_over: &str| -> Reply {
        let Some(mac) = yealink_mac(raw_mac) else { return invalid(raw_mac) };
        match s.registry.get(&mac) {
            Some(entry) if entry.account == OWN => return xml_pair(false, &format!("Existing MAC(s):{raw_mac}")),
            Some(_) if take_over != "1" => return xml_pair(false, "Are you sure you want to override MAC addresses"),
            _ => {}
        }
        let _ = put_entry(s, &mac, url, true);
        xml_pair(true, "OK")
    };
    let answer = match method.as_str() {
        "redirect.registerDeviceWithUniqueUrl" if s.without_unique_url => {
            return Ok(xml_fault(-32601, "Method not found"));
        }
        "redirect.registerDeviceWithUniqueUrl" => {
            arity(4)?;
            register(&mut s, &params[0], &params[2], &params[3])
        }
        "redirect.addServer" => {
            arity(2)?;
            s.servers.insert(params[0].clone(), params[1].clone());
            xml_pair(true, "OK")
        }
        "redirect.registerDevice" => {
            arity(3)?;
            let Some(url) = s.servers.get(&params[1]).cloned() else {
                return Ok(xml_pair(false, "Error: Invalid server"));
            };
            register(&mut s, &params[0], &url, &params[2])
        }
        "redirect.deRegisterDevice" if s.refuse_deregister.is_some() => {
            xml_pair(false, s.refuse_deregister.as_deref().unwrap_or_default())
        }
        "redirect.deRegisterDevice" => {
            arity(1)?;
            match yealink_mac(&params[0]) {
                Some(mac) if s.registry.get(&mac).is_some_and(|e| e.account == OWN) => {
                    s.registry.remove(&mac);
                    xml_pair(true, "OK")
                }
                _ => invalid(&params[0]),
            }
        }
        "redirect.checkDevice" => {
            arity(1)?;
            let status = match yealink_mac(&params[0]).and_then(|mac| s.registry.get(&mac).cloned()) {
                Some(entry) if entry.account == OWN => "registered",
                Some(_) => "registered elsewhere",
                None => "unregistered",
            };
            xml_pair(true, status)
        }
        other => return Ok(xml_fault(-32601, &format!("Method {other} not found"))),
    };
    drop(s);
    record(state, "yealink-xmlrpc", &method, &params);
    Ok(answer)
}

/// Checks the X-Ca signature of a JSON API request by recomputing it.
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
    let nonce = header("x-ca-nonce");
    if nonce.len() != 36 || !s.nonces.insert(nonce.clone()) {
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
    let error = |code: &str| json_reply(200, serde_json::json!({"ret": -1, "data": null, "error": {"msg": code}}));
    let answer = match (method.as_str(), path.as_str()) {
        ("POST", "/api/open/v1/device/add") => {
            let macs = json["macs"].as_array().ok_or((400, "add without macs".to_string()))?;
            let url = json["uniqueServerUrl"].as_str().ok_or((400, "add without uniqueServerUrl".to_string()))?;
            let mac = macs.first().and_then(|m| m.as_str()).and_then(plain_mac).ok_or((400, "bad mac".to_string()))?;
            match s.registry.get(&mac) {
                Some(entry) if entry.account == OWN => error("device.mac.existed"),
                Some(_) => error("device.mac.added.by.other"),
                None => {
                    let _ = put_entry(&mut s, &mac, url, false);
                    ok(serde_json::Value::Null)
                }
            }
        }
        ("POST", "/api/open/v1/device/edit") => {
            let id = json["id"].as_u64().ok_or((400, "edit without id".to_string()))?;
            let url =
                json["uniqueServerUrl"].as_str().ok_or((400, "edit without uniqueServerUrl".to_string()))?.to_string();
            match s.registry.values_mut().find(|e| e.id == id && e.account == OWN) {
                Some(entry) => {
                    entry.url = url;
                    ok(serde_json::Value::Null)
                }
                None => error("device.not.found"),
            }
        }
        ("POST", "/api/open/v1/device/delete") => {
            let ids: Vec<u64> = json["ids"]
                .as_array()
                .ok_or((400, "delete without ids".to_string()))?
                .iter()
                .filter_map(|i| i.as_u64())
                .collect();
            s.registry.retain(|_, e| !(e.account == OWN && ids.contains(&e.id)));
            ok(serde_json::Value::Null)
        }
        ("GET", "/api/open/v1/device/checkDevice") => {
            let mac =
                query.strip_prefix("mac=").and_then(plain_mac).ok_or((400, "checkDevice without mac".to_string()))?;
            match s.registry.get(&mac) {
                Some(e) if e.account == OWN => {
                    ok(serde_json::json!({"id": e.id, "mac": mac, "uniqueServerUrl": e.url}))
                }
                _ => ok(serde_json::Value::Null),
            }
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
    let mut payload = format!("hawk.1.payload\n{content_type}\n").into_bytes();
    payload.extend_from_slice(body);
    payload.push(b'\n');
    let hash = BASE64.encode(ring::digest::digest(&ring::digest::SHA256, &payload).as_ref());
    if field("hash")? != hash {
        return Err("Hawk payload hash mismatch".into());
    }
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

async fn sraps(state: &Arc<Mutex<State>>, request: Request<Incoming>) -> Handled {
    let method = request.method().to_string();
    let resource = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let path = request.uri().path().to_string();
    let headers = request.headers().clone();
    let body = body_of(request).await?;
    check_hawk(&method, &resource, &headers, &body).map_err(|why| (401, why))?;
    const ENDPOINTS: &str = "/api/v1/companies/c1/endpoints/";
    let answer = if method == "GET" && path == format!("/api/v1/tokens/{HAWK_ID}") {
        json_reply(200, serde_json::json!({"id": HAWK_ID, "links": {"company": "/api/v1/companies/c1"}}))
    } else if method == "GET" && path == "/api/v1/companies/c1" {
        json_reply(200, serde_json::json!({"name": "ACME", "links": {"endpoints": ENDPOINTS}}))
    } else if let Some(mac) = path.strip_prefix(ENDPOINTS).and_then(plain_mac) {
        let mut s = state.lock().unwrap();
        match method.as_str() {
            "PUT" => {
                let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| (400, e.to_string()))?;
                if json["mac"] != mac.as_str() || json["autoprovisioning_enabled"] != true {
                    return Err((400, format!("PUT body does not match the endpoint: {json}")));
                }
                let url = json["provisioning_url"].as_str().ok_or((400, "no provisioning_url".to_string()))?;
                match put_entry(&mut s, &mac, url, false) {
                    Ok(()) => json_reply(200, json),
                    Err(owner) => {
                        json_reply(409, serde_json::json!({"message": format!("endpoint belongs to company {owner}")}))
                    }
                }
            }
            "DELETE" => match s.registry.get(&mac) {
                Some(e) if e.account == OWN => {
                    s.registry.remove(&mac);
                    reply(204, "application/json", "")
                }
                _ => json_reply(404, serde_json::json!({"message": "not found"})),
            },
            "GET" => match s.registry.get(&mac) {
                Some(e) if e.account == OWN => {
                    json_reply(200, serde_json::json!({"mac": mac, "provisioning_url": e.url}))
                }
                _ => json_reply(404, serde_json::json!({"message": "not found"})),
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
    let (method, params) = xmlrpc_request(request, USER, PASSWORD).await?;
    let mut s = state.lock().unwrap();
    let mac = params.first().and_then(|m| plain_mac(m).filter(|_| m.chars().all(|c| !c.is_ascii_lowercase())));
    let answer = match (method.as_str(), mac) {
        (_, None) => xml_pair(false, "Error:malformed_mac"),
        ("redirect.registerPhone", Some(mac)) if params.len() == 2 => {
            match put_entry(&mut s, &mac, &params[1], false) {
                Ok(()) => xml_pair(true, "OK"),
                Err(_) => xml_pair(false, "Error:owned_by_other_user"),
            }
        }
        ("redirect.deregisterPhone", Some(mac)) => match s.registry.get(&mac) {
            Some(e) if e.account == OWN => {
                s.registry.remove(&mac);
                xml_pair(true, "OK")
            }
            _ => xml_pair(false, "Error:no_such_mac"),
        },
        ("redirect.checkPhone", Some(mac)) => xml_pair(
            s.registry.contains_key(&mac),
            if s.registry.contains_key(&mac) { "registered" } else { "unknown" },
        ),
        _ => return Ok(xml_fault(-32601, "Method not found")),
    };
    drop(s);
    record(state, "snom-xmlrpc", &method, &params);
    Ok(answer)
}

async fn fanvil(state: &Arc<Mutex<State>>, request: Request<Incoming>) -> Handled {
    let sent_password = md5_hex(md5_hex(PASSWORD.as_bytes()).as_bytes());
    let (method, params) = xmlrpc_request(request, USER, &sent_password).await?;
    let mut s = state.lock().unwrap();
    let answer = match method.as_str() {
        "redirect.deleteServer" => {
            if s.servers.remove(&params[0]).is_some() {
                xml_pair(true, "OK")
            } else {
                xml_pair(false, "Error: server_not_exist")
            }
        }
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
            let scheme = match protocol.as_str() {
                "4" => "http",
                "5" => "https",
                _ => return Ok(xml_pair(false, "Error: url_format_error")),
            };
            if !path.starts_with('/') {
                return Err((400, format!("cfgPfName {path:?} must be an absolute path")));
            }
            s.servers.insert(name, format!("{scheme}://{server}{path}"));
            xml_pair(true, "OK")
        }
        "redirect.deRegisterDevice" => match s.registry.get(&params[0]) {
            Some(e) if e.account == OWN => {
                s.registry.remove(&params[0]);
                xml_pair(true, "OK")
            }
            _ => xml_pair(false, "Error: device_not_exist"),
        },
        "redirect.registerDevice" => {
            let Some(url) = s.servers.get(&params[1]).cloned() else {
                return Ok(xml_pair(false, "Error: server_not_exist"));
            };
            match plain_mac(&params[0]).map(|mac| put_entry(&mut s, &mac, &url, false)) {
                Some(Ok(())) => xml_pair(true, "OK"),
                Some(Err(_)) => xml_pair(false, "Error: device_had_existed"),
                None => xml_pair(false, "Error: mac_format_error"),
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
    if header("timestamp").parse::<u64>().is_err() || header("nonce").len() != 32 {
        return Err((400, "timestamp and nonce headers are required".into()));
    }
    let body = body_of(request).await?;
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| (400, e.to_string()))?;
    let mut s = state.lock().unwrap();
    if path == "/v2/token" {
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
                    Some(_) => {
                        errors.push(serde_json::json!({"mac": mac, "sn": "", "errorInfo": "device already exists"}))
                    }
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
        "/v2/rps/delDevices" => {
            if json["deviceIdType"] != "mac" {
                return Err((400, "deviceIdType must be mac".into()));
            }
            for id in json["deviceIds"].as_array().into_iter().flatten() {
                if let Some(mac) = id.as_str().and_then(plain_mac)
                    && s.registry.get(&mac).is_some_and(|e| e.account == OWN)
                {
                    s.registry.remove(&mac);
                }
            }
            json_reply(200, serde_json::json!({}))
        }
        _ => return Err((404, format!("no such endpoint {path}"))),
    };
    drop(s);
    record(state, "ymcs", &format!("POST {path}"), &[json.to_string()]);
    Ok(answer)
}
