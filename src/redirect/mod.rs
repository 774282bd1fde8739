//! Vendor redirect services: registering a phone's MAC with its vendor's cloud so that a
//! factory-new phone is sent to this appliance.
//!
//! - [`RedirectClient`] is what every service implements; [`Client`] picks one from the
//!   settings. One module per service: [`yealink`] (RPS XML-RPC, JSON and YMCS APIs), [`snom`]
//!   (SRAPS with Hawk, and the legacy XML-RPC), [`fanvil`] (FDPS).
//! - [`wan`] is the bounded HTTPS client they share; [`xmlrpc`] the legacy wire format.
//! - [`outbox`] holds the durable queue's rules (backoff, batching, the worker's wake-up);
//!   the appliance plans and delivers the queue in `crate::app::redirect`.

use std::collections::BTreeMap;
use std::fmt;

use crate::mac::Mac;

pub mod fanvil;
pub mod outbox;
pub mod snom;
pub mod wan;
pub mod xmlrpc;
pub mod yealink;

use wan::{Wan, WanReply};

/// How a failed attempt is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Worth retrying later: the WAN, the service or the clock may recover.
    Retry,
    /// Will never succeed as it is (invalid credentials, an invalid MAC, another account's
    /// MAC): given up, with the service's words.
    Permanent,
}

/// A failed redirect call, in words for the technician.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Retry, give up, or ask for an override.
    pub kind: FailureKind,
    /// What happened, with the service's own words where it gave any.
    pub message: String,
}

impl Failure {
    /// A failure worth retrying.
    pub fn retry(message: impl Into<String>) -> Failure {
        Failure { kind: FailureKind::Retry, message: message.into() }
    }

    /// A failure that will not go away by retrying.
    pub fn permanent(message: impl Into<String>) -> Failure {
        Failure { kind: FailureKind::Permanent, message: message.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// One MAC to point at a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The phone.
    pub mac: Mac,
    /// Where it is sent: its enrollment URL.
    pub url: String,
    /// Take the MAC over from another account.
    pub take_over: bool,
}

/// What every redirect service offers.
// The futures are only awaited on concrete clients inside provbox, where the compiler sees
// that they are Send; no caller needs a Send bound on the trait itself.
#[allow(async_fn_in_trait)]
pub trait RedirectClient {
    /// The URL calls go to.
    fn endpoint(&self) -> &str;

    /// Most registrations one call carries.
    fn batch_limit(&self) -> usize {
        1
    }

    /// Whether [`Registration::take_over`] means anything to this API.
    fn supports_take_over(&self) -> bool {
        false
    }

    /// Points `registration.mac` at `registration.url`. Repeating it is harmless.
    async fn register(&self, wan: &Wan, registration: &Registration) -> Result<(), Failure>;

    /// Registers several, one result per registration in order. Services without a batch
    /// call register one by one.
    async fn register_batch(&self, wan: &Wan, registrations: &[Registration]) -> Vec<Result<(), Failure>> {
        let mut results = Vec::with_capacity(registrations.len());
        for registration in registrations {
            results.push(self.register(wan, registration).await);
        }
        results
    }

    /// Removes `mac` from the service. A MAC the service does not hold counts as removed.
    async fn deregister(&self, wan: &Wan, mac: &Mac) -> Result<(), Failure>;

    /// What the service holds for `mac`, as it says it.
    async fn check(&self, wan: &Wan, mac: &Mac) -> Result<serde_json::Value, Failure>;
}

/// A configured client of one service.
pub enum Client {
    /// Yealink RPS over XML-RPC.
    YealinkXmlRpc(yealink::XmlRpc),
    /// Yealink RPS over the signed JSON API.
    YealinkJson(yealink::JsonApi),
    /// Yealink YMCS v2, batched.
    YealinkYmcs(yealink::Ymcs),
    /// Snom SRAPS (REST, Hawk).
    SnomSraps(snom::Sraps),
    /// Snom's legacy XML-RPC.
    SnomXmlRpc(snom::XmlRpc),
    /// Fanvil FDPS.
    Fanvil(fanvil::Fdps),
}

macro_rules! dispatch {
    ($client:expr, $inner:ident => $call:expr) => {
        match $client {
            Client::YealinkXmlRpc($inner) => $call,
            Client::YealinkJson($inner) => $call,
            Client::YealinkYmcs($inner) => $call,
            Client::SnomSraps($inner) => $call,
            Client::SnomXmlRpc($inner) => $call,
            Client::Fanvil($inner) => $call,
        }
    };
}

impl Client {
    /// Most registrations one call carries.
    pub fn batch_limit(&self) -> usize {
        dispatch!(self, c => c.batch_limit())
    }

    /// See [`RedirectClient::endpoint`].
    pub fn endpoint(&self) -> &str {
        dispatch!(self, c => c.endpoint())
    }

    /// See [`RedirectClient::supports_take_over`].
    pub fn supports_take_over(&self) -> bool {
        dispatch!(self, c => c.supports_take_over())
    }

    /// See [`RedirectClient::register_batch`].
    pub async fn register_batch(&self, wan: &Wan, registrations: &[Registration]) -> Vec<Result<(), Failure>> {
        dispatch!(self, c => c.register_batch(wan, registrations).await)
    }

    /// See [`RedirectClient::deregister`].
    pub async fn deregister(&self, wan: &Wan, mac: &Mac) -> Result<(), Failure> {
        dispatch!(self, c => c.deregister(wan, mac).await)
    }

    /// See [`RedirectClient::check`].
    pub async fn check(&self, wan: &Wan, mac: &Mac) -> Result<serde_json::Value, Failure> {
        dispatch!(self, c => c.check(wan, mac).await)
    }
}

/// The redirect services provbox speaks, by name, with their APIs (the first is the default).
pub const SERVICES: &[(&str, &[&str])] = &[
    ("yealink", &["xmlrpc", "json", "ymcs", "off"]),
    ("snom", &["sraps", "xmlrpc", "off"]),
    ("fanvil", &["fdps", "off"]),
];

/// The service that redirects phones of `vendor`, if provbox speaks one.
pub fn service_for_vendor(vendor: &str) -> Option<&'static str> {
    SERVICES.iter().map(|(name, _)| *name).find(|name| *name == vendor)
}

/// One service's settings (`redirect.<service>.*`).
#[derive(Clone)]
pub struct ServiceSettings {
    /// Endpoint URL; empty means the API's public default.
    pub url: String,
    /// Basic-auth user (XML-RPC APIs).
    pub username: String,
    /// Basic-auth password.
    pub password: String,
    /// API key or id (JSON and Hawk APIs).
    pub key: String,
    /// API secret.
    pub secret: String,
    /// Server name under which URLs are registered (Yealink XML-RPC).
    pub server_name: String,
}

impl ServiceSettings {
    /// The endpoint: the configured one or `default`.
    pub fn endpoint(&self, default: &str) -> String {
        if self.url.is_empty() { default.to_string() } else { self.url.clone() }
    }
}

/// The client for `service` as configured in `settings` (effective values), or why there
/// is none: the site or the service is off, or credentials are missing.
pub fn client_for(service: &str, settings: &BTreeMap<String, String>) -> Result<Client, String> {
    let get = |name: &str| settings.get(&format!("redirect.{service}.{name}")).cloned().unwrap_or_default();
    if settings.get("redirect.enabled").is_some_and(|v| v == "off") {
        return Err("redirect services are off for this site (redirect.enabled)".into());
    }
    let api = get("api");
    let config = ServiceSettings {
        url: get("url"),
        username: get("username"),
        password: get("password"),
        key: get("key"),
        secret: get("secret"),
        server_name: get("server_name"),
    };
    let needs = |first: &str, second: &str, value: (&str, &str)| {
        if value.0.is_empty() || value.1.is_empty() {
            Err(format!("redirect.{service}.{first} and .{second} are not set"))
        } else {
            Ok(())
        }
    };
    let basic = (config.username.as_str(), config.password.as_str());
    let keyed = (config.key.as_str(), config.secret.as_str());
    match (service, api.as_str()) {
        (_, "off") => Err(format!("redirect.{service}.api is off")),
        ("yealink", "xmlrpc") => {
            needs("username", "password", basic).map(|()| Client::YealinkXmlRpc(yealink::XmlRpc::new(config)))
        }
        ("yealink", "json") => {
            needs("key", "secret", keyed).map(|()| Client::YealinkJson(yealink::JsonApi::new(config)))
        }
        ("yealink", "ymcs") if config.url.is_empty() => {
            Err("redirect.yealink.url must name the YMCS regional endpoint".into())
        }
        ("yealink", "ymcs") => needs("key", "secret", keyed).map(|()| Client::YealinkYmcs(yealink::Ymcs::new(config))),
        ("snom", "sraps") => needs("key", "secret", keyed).map(|()| Client::SnomSraps(snom::Sraps::new(config))),
        ("snom", "xmlrpc") => {
            needs("username", "password", basic).map(|()| Client::SnomXmlRpc(snom::XmlRpc::new(config)))
        }
        ("fanvil", "fdps") => needs("username", "password", basic).map(|()| Client::Fanvil(fanvil::Fdps::new(config))),
        _ => Err(format!("redirect.{service}.api {api:?} is not an API provbox speaks")),
    }
}

/// Turns HTTP-level trouble into a failure: credentials refused (permanent), the service
/// down or overloaded (retry), an HTML page where `expected` was due (retry), any other
/// error status (permanent). Passes a 2xx reply through.
pub fn check_reply(reply: WanReply, expected: &str) -> Result<WanReply, Failure> {
    let status = reply.status;
    let excerpt = reply.excerpt();
    match status {
        200..=299 if reply.content_type.starts_with("text/html") => {
            Err(Failure::retry(format!("an HTML page instead of {expected} (a proxy or captive portal?): {excerpt}")))
        }
        200..=299 => Ok(reply),
        401 | 403 => Err(Failure::permanent(format!("credentials refused (HTTP {status}): {excerpt}"))),
        408 | 429 | 500..=599 => Err(Failure::retry(format!("service unavailable (HTTP {status}): {excerpt}"))),
        _ => Err(Failure::permanent(format!("HTTP {status}: {excerpt}"))),
    }
}

/// `text` with URL tokens (`/e/<hex>/`, `/p/<hex>/`) replaced, for logs and stored
/// messages: a vendor may echo the URL it was given.
pub fn redact(text: &str) -> String {
    static TOKEN: std::sync::OnceLock<regex_lite::Regex> = std::sync::OnceLock::new();
    // The pattern is a literal that compiles.
    let token = TOKEN.get_or_init(|| regex_lite::Regex::new(r"/([ep])/[0-9a-fA-F]{32}").expect("valid pattern"));
    token.replace_all(text, "/$1/<token>").into_owned()
}

/// `Basic` authorization header value.
pub fn basic_auth(username: &str, password: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")))
}

/// Calls an XML-RPC `method` at `endpoint` with Basic auth and decodes the reply.
pub async fn xmlrpc_call(
    wan: &Wan,
    endpoint: &str,
    authorization: &str,
    method: &str,
    params: &[xmlrpc::Value],
) -> Result<xmlrpc::Reply, Failure> {
    let request = wan::WanRequest {
        method: "POST",
        url: endpoint.to_string(),
        headers: vec![("content-type", "text/xml".into()), ("authorization", authorization.to_string())],
        body: xmlrpc::encode_call(method, params).into_bytes(),
    };
    let reply = check_reply(wan.send(request).await?, "XML-RPC")?;
    xmlrpc::decode_reply(&reply.body).map_err(|e| Failure::retry(e.to_string()))
}

/// The `[bool, string]` pair most redirect XML-RPC methods answer with.
pub fn status_pair(reply: xmlrpc::Reply) -> Result<(bool, String), Failure> {
    match reply {
        xmlrpc::Reply::Value(xmlrpc::Value::Array(items)) if items.len() == 2 => {
            Ok((items[0].truthy(), items[1].text()))
        }
        xmlrpc::Reply::Value(other) => {
            Err(Failure::retry(format!("unexpected reply {:?}; expected [bool, text]", other.text())))
        }
        xmlrpc::Reply::Fault { code, message } => Err(Failure::permanent(format!("XML-RPC fault {code}: {message}"))),
    }
}
