//! Vendor redirect services: registering a phone's MAC with its vendor's cloud so that a
//! factory-new phone is sent to this appliance.
//!
//! - Each service is data, a [`ServiceSpec`] (its settings and APIs), plus a
//!   [`RedirectClient`] per API; [`client_for`] builds the configured one. One module per
//!   service: [`yealink`] (RPS XML-RPC, JSON and YMCS APIs), [`snom`] (SRAPS with Hawk, and
//!   the legacy XML-RPC), [`fanvil`] (FDPS). Adding a service adds one module and one entry
//!   in [`SERVICES`].
//! - [`wan`] is the bounded HTTPS client they share; [`xmlrpc`] the legacy wire format.
//! - [`outbox`] holds the durable queue's rules (backoff, batching, the worker's wake-up);
//!   the appliance plans and delivers the queue in `crate::app::redirect`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::mac::Mac;
use crate::settings::{SettingSpec, Settings};

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

/// What a service holds for a MAC, as read back from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// The MAC points at this URL.
    Url(String),
    /// The service holds the MAC but does not say where it points.
    Held,
    /// Another account holds the MAC.
    Elsewhere,
    /// The service does not hold the MAC.
    Absent,
}

/// A lookup's answer: what it means, and the service's reply as it gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// What the reply means.
    pub holding: Holding,
    /// The reply, for `provbox redirect check`.
    pub reply: serde_json::Value,
}

/// What every redirect service's client does. A service's module implements it with
/// `async fn`s; [`Client`] is the boxed form the appliance holds.
pub trait RedirectClient: Send + Sync {
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
    fn register(&self, wan: &Wan, registration: &Registration) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Registers several, one result per registration in order. Services without a batch
    /// call register one by one.
    fn register_batch(
        &self,
        wan: &Wan,
        registrations: &[Registration],
    ) -> impl Future<Output = Vec<Result<(), Failure>>> + Send {
        async move {
            let mut results = Vec::with_capacity(registrations.len());
            for registration in registrations {
                results.push(self.register(wan, registration).await);
            }
            results
        }
    }

    /// Removes `mac` from the service. A MAC the service does not hold counts as removed.
    fn deregister(&self, wan: &Wan, mac: &Mac) -> impl Future<Output = Result<(), Failure>> + Send;

    /// What the service holds for `mac`, read back after every registration and removal;
    /// None when the API has no lookup.
    fn lookup(&self, wan: &Wan, mac: &Mac) -> impl Future<Output = Result<Option<Lookup>, Failure>> + Send;
}

/// A future the appliance awaits from a boxed client.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`RedirectClient`] in a form that can be boxed, implemented for every client.
pub trait DynClient: Send + Sync {
    /// See [`RedirectClient::endpoint`].
    fn endpoint(&self) -> &str;
    /// See [`RedirectClient::batch_limit`].
    fn batch_limit(&self) -> usize;
    /// See [`RedirectClient::supports_take_over`].
    fn supports_take_over(&self) -> bool;
    /// See [`RedirectClient::register_batch`].
    fn register_batch<'a>(
        &'a self,
        wan: &'a Wan,
        registrations: &'a [Registration],
    ) -> BoxFuture<'a, Vec<Result<(), Failure>>>;
    /// See [`RedirectClient::deregister`].
    fn deregister<'a>(&'a self, wan: &'a Wan, mac: &'a Mac) -> BoxFuture<'a, Result<(), Failure>>;
    /// See [`RedirectClient::lookup`].
    fn lookup<'a>(&'a self, wan: &'a Wan, mac: &'a Mac) -> BoxFuture<'a, Result<Option<Lookup>, Failure>>;
}

impl<T: RedirectClient> DynClient for T {
    fn endpoint(&self) -> &str {
        RedirectClient::endpoint(self)
    }

    fn batch_limit(&self) -> usize {
        RedirectClient::batch_limit(self)
    }

    fn supports_take_over(&self) -> bool {
        RedirectClient::supports_take_over(self)
    }

    fn register_batch<'a>(
        &'a self,
        wan: &'a Wan,
        registrations: &'a [Registration],
    ) -> BoxFuture<'a, Vec<Result<(), Failure>>> {
        Box::pin(RedirectClient::register_batch(self, wan, registrations))
    }

    fn deregister<'a>(&'a self, wan: &'a Wan, mac: &'a Mac) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(RedirectClient::deregister(self, wan, mac))
    }

    fn lookup<'a>(&'a self, wan: &'a Wan, mac: &'a Mac) -> BoxFuture<'a, Result<Option<Lookup>, Failure>> {
        Box::pin(RedirectClient::lookup(self, wan, mac))
    }
}

/// A configured client of one service's API.
pub type Client = Box<dyn DynClient>;

/// One redirect service, as data: a new service is one module that declares its
/// `ServiceSpec` and is listed in [`SERVICES`].
pub struct ServiceSpec {
    /// Its name in settings (`redirect.<name>.*`) and on the page.
    pub name: &'static str,
    /// The vendor (template directory) whose phones it redirects.
    pub vendor: &'static str,
    /// Its settings, `redirect.<name>.api` first; the api setting's words are the
    /// [`ApiSpec`] names and `off`.
    pub settings: &'static [SettingSpec],
    /// Its APIs, the default first.
    pub apis: &'static [ApiSpec],
}

/// One API of a service.
pub struct ApiSpec {
    /// Its word in `redirect.<service>.api`.
    pub name: &'static str,
    /// The two settings it needs set: `["username", "password"]` or `["key", "secret"]`.
    pub needs: [&'static str; 2],
    /// Where calls go when `redirect.<service>.url` is empty; None when the URL must be set
    /// (a regional endpoint).
    pub default_endpoint: Option<&'static str>,
    /// Makes the client from the service's settings.
    pub build: fn(ServiceSettings) -> Client,
}

/// The redirect services provbox speaks.
pub const SERVICES: &[&ServiceSpec] = &[&yealink::SERVICE, &snom::SERVICE, &fanvil::SERVICE];

/// The service that redirects phones of `vendor`, if provbox speaks one.
pub fn service_for_vendor(vendor: &str) -> Option<&'static ServiceSpec> {
    SERVICES.iter().copied().find(|service| service.vendor == vendor)
}

/// The client of the service named `name` (as stored in a queued item), or why there is none.
pub fn client_named(name: &str, settings: &Settings) -> Result<Client, String> {
    match SERVICES.iter().find(|service| service.name == name) {
        Some(service) => client_for(service, settings),
        None => Err(format!("{name:?} is not a redirect service this version speaks")),
    }
}

impl fmt::Display for ServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// One service's settings (`redirect.<service>.*`).
#[derive(Clone)]
pub struct ServiceSettings {
    /// Endpoint URL: the configured one, or the API's public default.
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

/// The client for `service` as configured in `settings`, or why there is none: the site or
/// the service is off, or credentials or a needed endpoint are missing.
pub fn client_for(service: &ServiceSpec, settings: &Settings) -> Result<Client, String> {
    let name = service.name;
    let get = |field: &str| settings.get(&format!("redirect.{name}.{field}")).to_string();
    if !settings.is_on("redirect.enabled") {
        return Err("redirect services are off for this site (redirect.enabled)".into());
    }
    let api_name = get("api");
    if api_name == "off" {
        return Err(format!("redirect.{name}.api is off"));
    }
    let Some(api) = service.apis.iter().find(|api| api.name == api_name) else {
        return Err(format!("redirect.{name}.api {api_name:?} is not an API provbox speaks"));
    };
    let [first, second] = api.needs;
    if get(first).is_empty() || get(second).is_empty() {
        return Err(format!("redirect.{name}.{first} and .{second} are not set"));
    }
    let url = match (get("url"), api.default_endpoint) {
        (url, _) if !url.is_empty() => url,
        (_, Some(default)) => default.to_string(),
        (_, None) => return Err(format!("redirect.{name}.url must name the {api_name} API's regional endpoint")),
    };
    Ok((api.build)(ServiceSettings {
        url,
        username: get("username"),
        password: get("password"),
        key: get("key"),
        secret: get("secret"),
        server_name: get("server_name"),
    }))
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

#[cfg(test)]
mod service_tests {
    use super::*;
    use crate::settings::{Rule, SITE, Table};

    fn settings(stored: &[(&str, &str)]) -> Settings {
        static TABLE: std::sync::LazyLock<Table> = std::sync::LazyLock::new(|| {
            let mut groups = vec![SITE];
            groups.extend(SERVICES.iter().map(|service| service.settings));
            Table::new(&groups)
        });
        let stored: Vec<(String, String)> = stored.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        TABLE.effective(&stored)
    }

    #[test]
    fn every_service_declares_its_api_words_and_only_its_own_settings() {
        for service in SERVICES {
            let prefix = format!("redirect.{}.", service.name);
            assert!(service.settings.iter().all(|spec| spec.name.starts_with(&prefix)), "{service}");
            let api = &service.settings[0];
            assert_eq!(api.name, format!("{prefix}api"));
            let Rule::OneOf(words) = api.rule else { panic!("{service}: the api setting is a choice") };
            let mut expected: Vec<&str> = service.apis.iter().map(|api| api.name).collect();
            expected.push("off");
            assert_eq!(words, expected.as_slice(), "{service}");
            assert_eq!(api.default, service.apis[0].name, "{service}: the first API is the default");
            for api in service.apis {
                for field in api.needs {
                    assert!(service.settings.iter().any(|spec| spec.name == format!("{prefix}{field}")), "{field}");
                }
            }
        }
    }

    #[test]
    fn clients_come_from_settings_or_say_what_is_missing() {
        let yealink = service_for_vendor("yealink").expect("Yealink is a service");
        let unset = client_for(yealink, &settings(&[])).err().unwrap_or_default();
        assert!(unset.contains("redirect.yealink.username and .password"), "{unset}");
        let configured = [("redirect.yealink.username", "u"), ("redirect.yealink.password", "p")];
        let client = client_for(yealink, &settings(&configured)).unwrap_or_else(|why| panic!("{why}"));
        assert_eq!(client.endpoint(), yealink::XMLRPC_ENDPOINT);
        let ymcs = [("redirect.yealink.api", "ymcs"), ("redirect.yealink.key", "k"), ("redirect.yealink.secret", "s")];
        assert!(client_for(yealink, &settings(&ymcs)).err().unwrap_or_default().contains("regional endpoint"));
        let off = [("redirect.enabled", "off"), ("redirect.yealink.username", "u"), ("redirect.yealink.password", "p")];
        assert!(client_for(yealink, &settings(&off)).err().unwrap_or_default().contains("redirect.enabled"));
        assert!(client_named("nokia", &settings(&[])).is_err());
        let fanvil = [("redirect.fanvil.username", "u"), ("redirect.fanvil.password", "p")];
        let plain = client_named("fanvil", &settings(&fanvil)).unwrap_or_else(|why| panic!("{why}"));
        assert!(plain.endpoint().starts_with("http://"), "FDPS's public endpoint is plain HTTP");
    }
}
