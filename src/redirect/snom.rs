//! Snom's redirect services: SRAPS, a REST API signed with Hawk (SHA-256), and the legacy
//! XML-RPC API (Basic auth, `[bool, text]` replies).
//!
//! The request forms follow independent clients, cited beside each rule:
//! - nethesis/falconieri `libs/grape/` (at 856677b): Hawk, the token → company → endpoints
//!   chain, the paged `settings/` list, the endpoint PUT with `settings_manager`, and how
//!   another company's MAC reads;
//! - sipwise/ngcp-panel `lib/NGCP/Panel/Utils/DeviceBootstrap/Snom.pm` (at f677173; the
//!   section rule since f1e00a0408): the `setting_server` of section `phone-settings`, and
//!   removal by `DELETE` of the endpoint after reading the endpoint list;
//! - Snom's XML-RPC API (service.snom.com wiki, "XML-RPC API"), Snomio/RDS-CLI `cli.py` and
//!   peoplefone/provisioning-rpc `src/ProvisioningRPCDeviceSnom.php`: `registerPhone`,
//!   `deregisterPhone`, `getPhoneRedirection` and their replies.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value as Json, json};

use super::wan::{Wan, WanReply, WanRequest};
use super::xmlrpc::{Reply, Value};
use super::{
    ApiSpec, Failure, Holding, Lookup, RedirectClient, Registration, ServiceSettings, ServiceSpec, basic_auth,
    check_reply, status_pair, xmlrpc_call,
};
use crate::mac::Mac;
use crate::settings::{Rule, SettingSpec};

/// The public SRAPS API base.
pub const SRAPS_ENDPOINT: &str = "https://api.sraps.snom.com/api/v1/";
/// The public legacy XML-RPC endpoint.
pub const XMLRPC_ENDPOINT: &str = "https://secure-provisioning.snom.com:8083/xmlrpc/";

/// Snom's redirection service, through SRAPS (the default) or the legacy XML-RPC API.
pub const SERVICE: ServiceSpec = ServiceSpec {
    name: "snom",
    vendor: "snom",
    settings: &[
        SettingSpec::plain("redirect.snom.api", "sraps", Rule::OneOf(&["sraps", "xmlrpc", "off"]), "Snom redirect API"),
        SettingSpec::plain("redirect.snom.url", "", Rule::Url, "Snom endpoint (empty: the API's public one)"),
        SettingSpec::plain("redirect.snom.username", "", Rule::Text, "Snom user (xmlrpc)"),
        SettingSpec::secret("redirect.snom.password", "Snom password (xmlrpc)"),
        SettingSpec::plain("redirect.snom.key", "", Rule::Text, "SRAPS access key id (sraps)"),
        SettingSpec::secret("redirect.snom.secret", "SRAPS access key secret (sraps)"),
    ],
    apis: &[
        ApiSpec {
            name: "sraps",
            needs: ["key", "secret"],
            default_endpoint: Some(SRAPS_ENDPOINT),
            build: |settings| Box::new(Sraps::new(settings)),
        },
        ApiSpec {
            name: "xmlrpc",
            needs: ["username", "password"],
            default_endpoint: Some(XMLRPC_ENDPOINT),
            build: |settings| Box::new(XmlRpc::new(settings)),
        },
    ],
};

/// SRAPS: `tokens/<id>` leads to the company, the company to its endpoints, and each phone
/// is the endpoint `<endpoints><mac>`, whose `settings_manager` carries the provisioning URL
/// under the UUID of the `setting_server` setting.
pub struct Sraps {
    base: String,
    id: String,
    key: String,
    /// The endpoints collection and the setting's UUID, found once per client.
    found: tokio::sync::Mutex<Option<(String, String)>>,
}

/// Settings per page of `settings/` (falconieri b77d513: 20 by default, 1,000 at most, some
/// 1,200 in all); small enough for the WAN client's reply cap.
const SETTINGS_PAGE: usize = 200;
/// Endpoints per page of the endpoint list: 5,000 devices in 10 pages, each well under the
/// WAN client's reply cap.
const ENDPOINTS_PAGE: usize = 500;
/// Pages of any SRAPS list read before giving up.
const MAX_PAGES: usize = 50;

/// What a Hawk `Authorization` header covers.
pub struct HawkInput<'a> {
    /// `GET`, `PUT`, `DELETE`.
    pub method: &'a str,
    /// Path and query.
    pub resource: &'a str,
    /// Host as in the URL.
    pub host: &'a str,
    /// Port (the scheme's default when the URL names none).
    pub port: u16,
    /// Content type of the body, empty without one.
    pub content_type: &'a str,
    /// The body.
    pub payload: &'a [u8],
    /// Unix time, seconds.
    pub ts: u64,
    /// A fresh random nonce.
    pub nonce: &'a str,
}

/// The Hawk payload hash: base64(SHA-256(`hawk.1.payload\n<content type>\n<payload>\n`)).
pub fn hawk_payload_hash(content_type: &str, payload: &[u8]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(format!("hawk.1.payload\n{content_type}\n").as_bytes());
    context.update(payload);
    context.update(b"\n");
    BASE64.encode(context.finish().as_ref())
}

/// The `Authorization: Hawk id=.., ts=.., nonce=.., hash=.., mac=..` value, with mac =
/// base64(HMAC-SHA256(key, `hawk.1.header\n<ts>\n<nonce>\n<METHOD>\n<resource>\n<host>\n<port>\n<hash>\n\n`)).
pub fn hawk_header(id: &str, key: &str, input: &HawkInput<'_>) -> String {
    let hash = hawk_payload_hash(input.content_type, input.payload);
    let normalized = format!(
        "hawk.1.header\n{}\n{}\n{}\n{}\n{}\n{}\n{hash}\n\n",
        input.ts, input.nonce, input.method, input.resource, input.host, input.port
    );
    let mac = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes()), normalized.as_bytes());
    format!(
        "Hawk id=\"{id}\", ts=\"{}\", nonce=\"{}\", hash=\"{hash}\", mac=\"{}\"",
        input.ts,
        input.nonce,
        BASE64.encode(mac.as_ref())
    )
}

impl Sraps {
    /// A client for `settings`: `key` is the Hawk id, `secret` the Hawk key.
    pub fn new(settings: ServiceSettings) -> Sraps {
        let mut base = settings.url;
        if !base.ends_with('/') {
            base.push('/');
        }
        Sraps { base, id: settings.key, key: settings.secret, found: tokio::sync::Mutex::new(None) }
    }

    async fn send(&self, wan: &Wan, method: &'static str, url: &str, body: Option<Json>) -> Result<WanReply, Failure> {
        let uri: hyper::Uri = url.parse().map_err(|e| Failure::permanent(format!("bad SRAPS URL {url}: {e}")))?;
        let host = uri.host().unwrap_or_default();
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("http") { 80 } else { 443 });
        let resource = uri.path_and_query().map_or("/", |p| p.as_str());
        let payload = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let content_type = if payload.is_empty() { "" } else { "application/json" };
        let nonce = crate::hex::encode(&rand::random::<[u8; 6]>());
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let input = HawkInput { method, resource, host, port, content_type, payload: &payload, ts, nonce: &nonce };
        let mut headers = vec![("authorization", hawk_header(&self.id, &self.key, &input))];
        if !payload.is_empty() {
            headers.push(("content-type", content_type.to_string()));
        }
        headers.push(("accept", "application/json".into()));
        wan.send(WanRequest { method, url: url.to_string(), headers, body: payload }).await
    }

    async fn get_json(&self, wan: &Wan, url: &str) -> Result<Json, Failure> {
        let reply = check_reply(self.send(wan, "GET", url, None).await?, "JSON")?;
        serde_json::from_slice(&reply.body)
            .map_err(|e| Failure::retry(format!("malformed SRAPS reply: {e}: {}", reply.excerpt())))
    }

    /// Resolves a link from a SRAPS document against the API base.
    fn resolve(&self, link: &str) -> String {
        if link.starts_with("http://") || link.starts_with("https://") {
            link.to_string()
        } else if let Some(path) = link.strip_prefix('/') {
            let origin_end = self.base.find("://").map_or(0, |i| i + 3);
            let origin = &self.base[..self.base[origin_end..].find('/').map_or(self.base.len(), |i| origin_end + i)];
            format!("{origin}/{path}")
        } else {
            format!("{}{link}", self.base)
        }
    }

    /// The URL of this account's endpoint collection, ending in `/` (falconieri
    /// `devices.go`: `GET tokens/<id>` → `links.company`, `GET <company>` → `links.endpoints`).
    async fn endpoints(&self, wan: &Wan) -> Result<String, Failure> {
        let link = |document: &Json, name: &str| {
            document
                .pointer(&format!("/links/{name}"))
                .and_then(Json::as_str)
                .map(str::to_string)
                .ok_or_else(|| Failure::retry(format!("SRAPS reply without links.{name}")))
        };
        let token = self.get_json(wan, &format!("{}tokens/{}", self.base, self.id)).await?;
        let company = self.get_json(wan, &self.resolve(&link(&token, "company")?)).await?;
        let mut endpoints = self.resolve(&link(&company, "endpoints")?);
        if !endpoints.ends_with('/') {
            endpoints.push('/');
        }
        Ok(endpoints)
    }

    /// Every item of a paged list from `first`: a JSON array, or `{results, next}`, with the
    /// next page in a `Link: <...>; rel="next"` header or in `next` (falconieri `devices.go`).
    async fn list(&self, wan: &Wan, first: String) -> Result<Vec<Json>, Failure> {
        let mut items = Vec::new();
        let mut url = Some(first);
        for _ in 0..MAX_PAGES {
            let Some(page_url) = url.take() else { return Ok(items) };
            let reply = check_reply(self.send(wan, "GET", &page_url, None).await?, "JSON")?;
            let page: Json = serde_json::from_slice(&reply.body)
                .map_err(|e| Failure::retry(format!("malformed SRAPS reply: {e}: {}", reply.excerpt())))?;
            let next_in_body = page.get("next").and_then(Json::as_str).map(str::to_string);
            match page {
                Json::Array(page) => items.extend(page),
                Json::Object(mut page) => match page.remove("results") {
                    Some(Json::Array(results)) => items.extend(results),
                    _ => return Err(Failure::retry("SRAPS list reply without results")),
                },
                _ => return Err(Failure::retry("SRAPS list reply is neither an array nor {results}")),
            }
            url = next_link(&reply.link).or(next_in_body).map(|next| self.resolve(&next));
        }
        Err(Failure::retry(format!("SRAPS list longer than {MAX_PAGES} pages")))
    }

    /// The endpoints collection and the UUID of the setting that holds the provisioning URL:
    /// `param_name` `setting_server` in section `phone-settings`. There is a second
    /// `setting_server`, in section `global`, which is the wrong one (ngcp-panel f1e00a0408).
    async fn targets(&self, wan: &Wan) -> Result<(String, String), Failure> {
        let mut found = self.found.lock().await;
        if let Some(found) = found.as_ref() {
            return Ok(found.clone());
        }
        let endpoints = self.endpoints(wan).await?;
        let settings = self.list(wan, format!("{}settings/?page_size={SETTINGS_PAGE}", self.base)).await?;
        let uuid = settings
            .iter()
            .find(|setting| {
                setting.get("param_name").and_then(Json::as_str) == Some("setting_server")
                    && setting.get("section").and_then(Json::as_str) == Some("phone-settings")
            })
            .and_then(|setting| setting.get("uuid").and_then(Json::as_str))
            .ok_or_else(|| Failure::retry("SRAPS lists no setting_server in section phone-settings"))?
            .to_string();
        *found = Some((endpoints, uuid));
        Ok(found.clone().unwrap_or_default())
    }
}

/// The `rel="next"` target of a `Link` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find(|part| part.contains("rel=\"next\"")).and_then(|part| {
        let start = part.find('<')? + 1;
        let end = part[start..].find('>')? + start;
        Some(part[start..end].to_string())
    })
}

/// Whether a SRAPS refusal says the MAC belongs to another company: falconieri
/// `utils/utils.go` (b7bee26) reads the body's text, whatever the status.
fn taken_by_other(reply: &WanReply) -> bool {
    let text = String::from_utf8_lossy(&reply.body).to_ascii_lowercase();
    text.contains("taken_mac_or_forbidden") || (text.contains("permission") && text.contains("endpoint"))
}

impl RedirectClient for Sraps {
    fn endpoint(&self) -> &str {
        &self.base
    }

    async fn register(&self, wan: &Wan, registration: &Registration) -> Result<(), Failure> {
        let (endpoints, setting) = self.targets(wan).await?;
        // falconieri `devices.go`: a full PUT of the endpoint, MAC in lowercase; the URL goes in
        // settings_manager, never a provisioning_url field.
        let mac = registration.mac.to_string();
        let body = json!({
            "mac": mac,
            "autoprovisioning_enabled": true,
            "settings_manager": { setting: { "value": registration.url, "attrs": { "perm": "RW" } } },
        });
        let reply = self.send(wan, "PUT", &format!("{endpoints}{mac}"), Some(body)).await?;
        if reply.status >= 400 && taken_by_other(&reply) {
            return Err(Failure::permanent(format!(
                "SRAPS: {} (the MAC belongs to another SRAPS company; release it there)",
                reply.excerpt()
            )));
        }
        check_reply(reply, "JSON").map(|_| ())
    }

    async fn deregister(&self, wan: &Wan, mac: &Mac) -> Result<(), Failure> {
        // ngcp-panel Snom.pm: DELETE the endpoint. A 404 (nothing to remove) is an assumption:
        // no reference says how SRAPS answers for an unknown MAC.
        let (endpoints, _) = self.targets(wan).await?;
        let reply = self.send(wan, "DELETE", &format!("{endpoints}{mac}"), None).await?;
        if reply.status == 404 {
            return Ok(());
        }
        check_reply(reply, "JSON").map(|_| ())
    }

    async fn lookup(&self, wan: &Wan, mac: &Mac) -> Result<Option<Lookup>, Failure> {
        // ngcp-panel Snom.pm reads the endpoint list and matches `mac` ignoring case; the URL
        // is read from the entry's settings_manager where the list carries it.
        let (endpoints, setting) = self.targets(wan).await?;
        let entries = self.list(wan, format!("{endpoints}?page_size={ENDPOINTS_PAGE}")).await?;
        let wanted = mac.to_string();
        let entry = entries.into_iter().find(|entry| {
            entry.get("mac").and_then(Json::as_str).is_some_and(|held| held.eq_ignore_ascii_case(&wanted))
        });
        let Some(entry) = entry else { return Ok(Some(Lookup { holding: Holding::Absent, reply: Json::Null })) };
        let url = entry.pointer(&format!("/settings_manager/{setting}/value")).and_then(Json::as_str);
        let holding = url.map_or(Holding::Held, |url| Holding::Url(url.to_string()));
        Ok(Some(Lookup { holding, reply: entry }))
    }
}

/// The legacy XML-RPC API: `redirect.registerPhone(mac, url)`, `redirect.deregisterPhone(mac)`,
/// `redirect.getPhoneRedirection(mac)`.
pub struct XmlRpc {
    endpoint: String,
    authorization: String,
}

impl XmlRpc {
    /// A client for `settings`.
    pub fn new(settings: ServiceSettings) -> XmlRpc {
        XmlRpc { endpoint: settings.url, authorization: basic_auth(&settings.username, &settings.password) }
    }

    async fn call(&self, wan: &Wan, method: &str, params: &[Value]) -> Result<Reply, Failure> {
        xmlrpc_call(wan, &self.endpoint, &self.authorization, method, params).await
    }
}

/// The MAC in uppercase, as ngcp-panel and falconieri send it.
fn mac_param(mac: &Mac) -> Value {
    Value::str(mac.to_string().to_ascii_uppercase())
}

impl RedirectClient for XmlRpc {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn register(&self, wan: &Wan, registration: &Registration) -> Result<(), Failure> {
        let params = [mac_param(&registration.mac), Value::str(&registration.url)];
        match status_pair(self.call(wan, "redirect.registerPhone", &params).await?)? {
            (true, _) => Ok(()),
            (false, text) if text.contains("owned_by_other_user") => Err(Failure::permanent(format!(
                "Snom: {text} (the MAC belongs to another Snom account; release it there)"
            ))),
            (false, text) => Err(Failure::permanent(format!("Snom: {text}"))),
        }
    }

    async fn deregister(&self, wan: &Wan, mac: &Mac) -> Result<(), Failure> {
        match status_pair(self.call(wan, "redirect.deregisterPhone", &[mac_param(mac)]).await?)? {
            (true, _) => Ok(()),
            (false, text) if text.contains("no_such_mac") => Ok(()),
            (false, text) => Err(Failure::permanent(format!("Snom: {text}"))),
        }
    }

    async fn lookup(&self, wan: &Wan, mac: &Mac) -> Result<Option<Lookup>, Failure> {
        // `redirect.getPhoneRedirection(mac)`: `[true, company, url]`, or `[false, text]`
        // (Snom wiki "XML-RPC API"; Snomio/RDS-CLI cli.py). `checkPhone` says only "Ok".
        let reply = match self.call(wan, "redirect.getPhoneRedirection", &[mac_param(mac)]).await? {
            Reply::Value(value) => value,
            Reply::Fault { code, message } => {
                return Err(Failure::permanent(format!("XML-RPC fault {code}: {message}")));
            }
        };
        let holding = match &reply {
            Value::Array(items) if items.len() == 3 && items[0].truthy() => Holding::Url(items[2].text()),
            Value::Array(items) if items.len() == 2 && !items[0].truthy() => match items[1].text() {
                text if text.contains("no_such_mac") => Holding::Absent,
                text if text.contains("owned_by_other_user") => Holding::Elsewhere,
                text => return Err(Failure::permanent(format!("Snom getPhoneRedirection: {text}"))),
            },
            other => return Err(Failure::retry(format!("unexpected getPhoneRedirection reply {:?}", other.text()))),
        };
        Ok(Some(Lookup { holding, reply: reply.to_json() }))
    }
}
