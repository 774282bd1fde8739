//! Yealink RPS, through any of its management APIs: the legacy XML-RPC one (Basic auth,
//! `[bool, text]` replies), the JSON open API (requests signed with HMAC-SHA256 in the
//! `X-Ca-*` headers), and YMCS v2 (OAuth client credentials, registrations batched by 100).
//! The wire formats are in `shared/reference/vendors.md`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use md5::Digest;
use serde_json::{Value as Json, json};

use super::wan::{Wan, WanRequest};
use super::xmlrpc::{Reply, Value};
use super::{
    ApiSpec, Failure, Holding, Lookup, RedirectClient, Registration, ServiceSettings, ServiceSpec, basic_auth,
    check_reply, status_pair, xmlrpc_call,
};
use crate::mac::Mac;
use crate::settings::{Rule, SettingSpec};

/// The public XML-RPC endpoint: sipwise/ngcp-panel moved here from rps.yealink.com in 2018
/// (239555fc, `Yealink.pm`); falconieri's deploy defaults and peoplefone agree.
pub const XMLRPC_ENDPOINT: &str = "https://api-dm.yealink.com:8443/xmlrpc";
/// The public JSON API base (yjcb22/YealinkRPS `models/YealinkRps.php`; fspbx f01af80).
pub const JSON_ENDPOINT: &str = "https://api-dm.yealink.com:8443";

/// Yealink RPS, through its XML-RPC API (the default), its signed JSON API or YMCS v2.
pub const SERVICE: ServiceSpec = ServiceSpec {
    name: "yealink",
    vendor: "yealink",
    settings: &[
        SettingSpec::plain(
            "redirect.yealink.api",
            "xmlrpc",
            Rule::OneOf(&["xmlrpc", "json", "ymcs", "off"]),
            "Yealink RPS API",
        ),
        SettingSpec::plain("redirect.yealink.url", "", Rule::Url, "Yealink RPS endpoint (empty: the API's public one)"),
        SettingSpec::plain("redirect.yealink.username", "", Rule::Text, "Yealink RPS user (xmlrpc)"),
        SettingSpec::secret("redirect.yealink.password", "Yealink RPS password (xmlrpc)"),
        SettingSpec::plain(
            "redirect.yealink.key",
            "",
            Rule::Text,
            "Yealink RPS API key (json) or YMCS client id (ymcs)",
        ),
        SettingSpec::secret("redirect.yealink.secret", "Yealink RPS API secret (json) or YMCS client secret (ymcs)"),
        SettingSpec::plain(
            "redirect.yealink.server_name",
            "provbox",
            Rule::Text,
            "server name URLs are registered under (xmlrpc)",
        ),
    ],
    apis: &[
        ApiSpec {
            name: "xmlrpc",
            needs: ["username", "password"],
            default_endpoint: Some(XMLRPC_ENDPOINT),
            build: |settings| Box::new(XmlRpc::new(settings)),
        },
        ApiSpec {
            name: "json",
            needs: ["key", "secret"],
            default_endpoint: Some(JSON_ENDPOINT),
            build: |settings| Box::new(JsonApi::new(settings)),
        },
        // YMCS has regional endpoints and no global one.
        ApiSpec {
            name: "ymcs",
            needs: ["key", "secret"],
            default_endpoint: None,
            build: |settings| Box::new(Ymcs::new(settings)),
        },
    ],
};

/// The XML-RPC API.
pub struct XmlRpc {
    endpoint: String,
    authorization: String,
    server_name: String,
}

impl XmlRpc {
    /// A client for `settings`.
    pub fn new(settings: ServiceSettings) -> XmlRpc {
        XmlRpc {
            endpoint: settings.url,
            authorization: basic_auth(&settings.username, &settings.password),
            server_name: server_name(&settings.server_name),
        }
    }

    async fn call(&self, wan: &Wan, method: &str, params: &[Value]) -> Result<Reply, Failure> {
        xmlrpc_call(wan, &self.endpoint, &self.authorization, method, params).await
    }

    async fn register_once(&self, wan: &Wan, registration: &Registration) -> Result<(bool, String), Failure> {
        let mac = Value::str(registration.mac.dashed_upper());
        let take_over = Value::str(if registration.take_over { "1" } else { "0" });
        let params = [mac.clone(), Value::str(&self.server_name), Value::str(&registration.url), take_over.clone()];
        match self.call(wan, "redirect.registerDeviceWithUniqueUrl", &params).await? {
            Reply::Fault { code, message }
                if code == -32601 || message.to_ascii_lowercase().contains("method not found") =>
            {
                // An RPS without per-device URLs (an assumption: no reference shows the fault):
                // a server entry per URL, named as ngcp-panel names them, then the device on it.
                let server = short_hash(&registration.url);
                let added = status_pair(
                    self.call(wan, "redirect.addServer", &[Value::str(&server), Value::str(&registration.url)]).await?,
                )?;
                if !added.0 && !added.1.to_ascii_lowercase().contains("exist") {
                    return Ok(added);
                }
                status_pair(self.call(wan, "redirect.registerDevice", &[mac, Value::str(&server), take_over]).await?)
            }
            reply => status_pair(reply),
        }
    }
}

/// Sorts an RPS refusal: someone else's MAC, or a refusal that will not change. Another
/// account's MAC reads as `Error:` and ten lowercase letters or digits in falconieri
/// (`utils/utils.go`), and as a question about overriding in Htek's RPS-alike.
fn refusal(text: &str, mac: &Mac) -> Failure {
    let coded = text.strip_prefix("Error:").is_some_and(|rest| {
        rest.len() >= 10 && rest.chars().take(10).all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    if text.contains("override") || coded {
        Failure::permanent(format!(
            "RPS: {text} (the MAC belongs to another RPS account; `provbox redirect override {mac}` takes it over)"
        ))
    } else {
        Failure::permanent(format!("RPS: {text}"))
    }
}

impl RedirectClient for XmlRpc {
    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn supports_take_over(&self) -> bool {
        true
    }

    async fn register(&self, wan: &Wan, registration: &Registration) -> Result<(), Failure> {
        let (ok, text) = self.register_once(wan, registration).await?;
        if ok {
            return Ok(());
        }
        if text.contains("Existing MAC") {
            // Already in this account (another account's MAC asks about overriding instead):
            // re-registering with the new URL means removing it first.
            self.deregister(wan, &registration.mac).await?;
            let (ok, text) = self.register_once(wan, registration).await?;
            return if ok { Ok(()) } else { Err(refusal(&text, &registration.mac)) };
        }
        Err(refusal(&text, &registration.mac))
    }

    async fn deregister(&self, wan: &Wan, mac: &Mac) -> Result<(), Failure> {
        // As peoplefone's removePhone: only a MAC the account holds is removed.
        let held = self.lookup(wan, mac).await?.map(|lookup| lookup.holding);
        if matches!(held, Some(Holding::Absent | Holding::Elsewhere)) {
            return Ok(());
        }
        let (ok, text) =
            status_pair(self.call(wan, "redirect.deRegisterDevice", &[Value::str(mac.dashed_upper())]).await?)?;
        if ok { Ok(()) } else { Err(refusal(&text, mac)) }
    }

    async fn lookup(&self, wan: &Wan, mac: &Mac) -> Result<Option<Lookup>, Failure> {
        // `redirect.checkDevice(mac)` answers a status, never the URL.
        let reply = match self.call(wan, "redirect.checkDevice", &[Value::str(mac.dashed_upper())]).await? {
            Reply::Value(value) => value,
            Reply::Fault { code, message } => {
                return Err(Failure::permanent(format!("XML-RPC fault {code}: {message}")));
            }
        };
        let text = match &reply {
            Value::Array(items) if items.len() == 2 => items[1].text(),
            other => other.text(),
        };
        Ok(Some(Lookup { holding: holding_of(&text)?, reply: reply.to_json() }))
    }
}

/// The server entry for a URL: the first 20 hex digits of its MD5, as ngcp-panel's
/// `Yealink.pm` names them (RPS takes at most 20 characters).
fn short_hash(url: &str) -> String {
    use md5::Digest;
    crate::hex::encode(&md5::Md5::digest(url.as_bytes()))[..20].to_string()
}

/// The server name per-device URLs are registered under: the setting, kept to the 20
/// characters of `A-z 0-9 - _ .` and space that RPS takes (ngcp-panel; peoplefone's error
/// text), or `provbox`.
fn server_name(configured: &str) -> String {
    let kept: String = configured
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '))
        .take(20)
        .collect();
    if kept.trim().is_empty() { "provbox".into() } else { kept }
}

/// What `redirect.checkDevice` says (peoplefone/provisioning-rpc compares these lowercased):
/// `registered`, `unregistered`, `unknown`, `registered elsewhere`, `error:invalid mac`.
fn holding_of(text: &str) -> Result<Holding, Failure> {
    match text.trim().to_ascii_lowercase().as_str() {
        "registered" => Ok(Holding::Held),
        "unregistered" | "unknown" => Ok(Holding::Absent),
        "registered elsewhere" => Ok(Holding::Elsewhere),
        other => Err(Failure::permanent(format!("RPS checkDevice: {other}"))),
    }
}

/// The JSON open API.
pub struct JsonApi {
    base: String,
    key: String,
    secret: String,
}

/// Error codes of the JSON API this client acts on: a MAC the account holds, and MACs held
/// by another account (fspbx f01af80's test fixtures; an untitled TypeScript client).
const MAC_EXISTED: &str = "device.mac.existed";
const MACS_OF_OTHERS: [&str; 2] = ["device.mac.added.by.other", "device.operate.forbidden"];

impl JsonApi {
    /// A client for `settings`.
    pub fn new(settings: ServiceSettings) -> JsonApi {
        JsonApi { base: settings.url.trim_end_matches('/').to_string(), key: settings.key, secret: settings.secret }
    }

    /// Sends a signed request and unwraps the `{ret, data, error}` envelope: `Ok(data)`, or
    /// `Err(code)` with the API's error code, or a failure.
    async fn call(
        &self,
        wan: &Wan,
        method: &'static str,
        path: &str,
        query: &[(&str, String)],
        body: Option<Json>,
    ) -> Result<Result<Json, String>, Failure> {
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let timestamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis()).to_string();
        let nonce = uuid_v4();
        let mut headers = sign(
            &SigningInput { method, path, query, body: &body, key: &self.key, nonce: &nonce, timestamp: &timestamp },
            &self.secret,
        );
        headers.push(("content-type", "application/json;charset=UTF-8".into()));
        let query_string = query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let url = if query.is_empty() {
            format!("{}{path}", self.base)
        } else {
            format!("{}{path}?{query_string}", self.base)
        };
        let reply = check_reply(wan.send(WanRequest { method, url, headers, body }).await?, "JSON")?;
        let envelope: Json = serde_json::from_slice(&reply.body)
            .map_err(|e| Failure::retry(format!("malformed JSON reply: {e}: {}", reply.excerpt())))?;
        let Some(object) = envelope.as_object() else {
            return Err(Failure::retry(format!("unexpected JSON reply: {}", reply.excerpt())));
        };
        let error = match object.get("error") {
            None | Some(Json::Null) => None,
            Some(Json::String(code)) => Some(code.clone()),
            Some(other) => Some(
                other
                    .get("msg")
                    .or_else(|| other.get("code"))
                    .and_then(Json::as_str)
                    .map_or_else(|| other.to_string().chars().take(120).collect(), str::to_string),
            ),
        };
        let ret = object.get("ret").and_then(Json::as_i64);
        match (error, ret) {
            (Some(code), _) => Ok(Err(code)),
            (None, Some(ret)) if ret < 0 => Ok(Err(format!("ret {ret}"))),
            (None, Some(_)) => Ok(Ok(object.get("data").cloned().unwrap_or(Json::Null))),
            (None, None) => Err(Failure::retry(format!("JSON reply without \"ret\": {}", reply.excerpt()))),
        }
    }

    /// The service's record of `mac`: `POST /api/open/v1/device/list {key: mac}` and the entry of
    /// `data.data` whose `mac` is exactly it (`key` matches loosely). yjcb22/YealinkRPS
    /// `run.php` and nemerald-voip/fspbx f01af80 `YealinkRpsCloudProvider.php` find a device's
    /// `id` so; `checkDevice` answers only a status string.
    async fn record(&self, wan: &Wan, mac: &Mac) -> Result<Option<Json>, Failure> {
        let wanted = mac.to_string();
        let body = json!({ "key": wanted, "skip": 0, "limit": 100, "autoCount": true });
        let data = match self.call(wan, "POST", "/api/open/v1/device/list", &[], Some(body)).await? {
            Ok(data) => data,
            Err(code) => return Err(json_refusal(&code, mac)),
        };
        let entries = data.get("data").and_then(Json::as_array).cloned().unwrap_or_default();
        Ok(entries.into_iter().find(|entry| {
            entry.get("mac").and_then(Json::as_str).is_some_and(|held| held.eq_ignore_ascii_case(&wanted))
        }))
    }

    /// The `id` of `mac`'s record, if the account holds it.
    async fn id_of(&self, wan: &Wan, mac: &Mac) -> Result<Option<Json>, Failure> {
        Ok(self.record(wan, mac).await?.and_then(|record| record.get("id").cloned()).filter(|id| !id.is_null()))
    }

    async fn edit(&self, wan: &Wan, registration: &Registration) -> Result<(), Failure> {
        let id = self
            .id_of(wan, &registration.mac)
            .await?
            .ok_or_else(|| Failure::retry("RPS said the MAC exists, but its device list has no record of it"))?;
        let body = json!({ "id": id, "uniqueServerUrl": registration.url });
        match self.call(wan, "POST", "/api/open/v1/device/edit", &[], Some(body)).await? {
            Ok(_) => Ok(()),
            Err(code) => Err(json_refusal(&code, &registration.mac)),
        }
    }
}

/// What a device record of the JSON API or YMCS says: its `uniqueServerUrl`, or that the
/// account does not hold the MAC (no record).
fn lookup_of(record: Option<Json>) -> Lookup {
    let holding = match record.as_ref().map(|record| record.get("uniqueServerUrl").and_then(Json::as_str)) {
        None => Holding::Absent,
        Some(Some(url)) if !url.is_empty() => Holding::Url(url.to_string()),
        Some(_) => Holding::Held,
    };
    Lookup { holding, reply: record.unwrap_or(Json::Null) }
}

fn json_refusal(code: &str, mac: &Mac) -> Failure {
    if MACS_OF_OTHERS.contains(&code) {
        Failure::permanent(format!(
            "RPS: {code} (the MAC belongs to another RPS account; the JSON API cannot take it over: release it in the RPS portal, or use redirect.yealink.api=xmlrpc and `provbox redirect override {mac}`)"
        ))
    } else {
        Failure::permanent(format!("RPS: {code}"))
    }
}

impl RedirectClient for JsonApi {
    fn endpoint(&self) -> &str {
        &self.base
    }

    async fn register(&self, wan: &Wan, registration: &Registration) -> Result<(), Failure> {
        let body = json!({ "macs": [registration.mac.to_string()], "uniqueServerUrl": registration.url });
        match self.call(wan, "POST", "/api/open/v1/device/add", &[], Some(body)).await? {
            Ok(_) => Ok(()),
            Err(code) if code == MAC_EXISTED => self.edit(wan, registration).await,
            Err(code) => Err(json_refusal(&code, &registration.mac)),
        }
    }

    async fn deregister(&self, wan: &Wan, mac: &Mac) -> Result<(), Failure> {
        // Nothing in the account's list: nothing to remove.
        let Some(id) = self.id_of(wan, mac).await? else { return Ok(()) };
        // `device/delete {ids}` (yjcb22/YealinkRPS; fspbx f01af80 `deleteOrganization`).
        match self.call(wan, "POST", "/api/open/v1/device/delete", &[], Some(json!({ "ids": [id] }))).await? {
            Ok(_) => Ok(()),
            Err(code) => Err(json_refusal(&code, mac)),
        }
    }

    async fn lookup(&self, wan: &Wan, mac: &Mac) -> Result<Option<Lookup>, Failure> {
        Ok(Some(lookup_of(self.record(wan, mac).await?)))
    }
}

/// YMCS v2: a bearer token from `/v2/token`, then `/v2/rps/addDevicesByMac` with up to
/// [`YMCS_BATCH`] MACs, each with its own URL, and `/v2/rps/delDevices`.
pub struct Ymcs {
    base: String,
    key: String,
    secret: String,
    token: tokio::sync::Mutex<Option<(String, std::time::Instant)>>,
}

/// Most devices one YMCS call carries.
pub const YMCS_BATCH: usize = 100;

impl Ymcs {
    /// A client for `settings`; the regional endpoint must be configured.
    pub fn new(settings: ServiceSettings) -> Ymcs {
        Ymcs {
            base: settings.url.trim_end_matches('/').to_string(),
            key: settings.key,
            secret: settings.secret,
            token: tokio::sync::Mutex::new(None),
        }
    }

    /// The headers every YMCS call carries: `timestamp` (ms), `nonce` (32 hex digits), and
    /// JSON both ways (falconieri `libs/ymcs/client.go`; fspbx 24614c4 `requestHeaders`).
    fn headers() -> Vec<(&'static str, String)> {
        let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        vec![
            ("timestamp", timestamp.to_string()),
            ("nonce", crate::hex::encode(&rand::random::<[u8; 16]>())),
            ("content-type", "application/json".into()),
            ("accept", "application/json".into()),
        ]
    }

    /// A bearer token, kept until a minute before it expires (falconieri `libs/ymcs/auth.go`).
    async fn token(&self, wan: &Wan) -> Result<String, Failure> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && std::time::Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let mut headers = Ymcs::headers();
        headers.push(("authorization", basic_auth(&self.key, &self.secret)));
        let body = json!({ "grant_type": "client_credentials" }).to_string().into_bytes();
        let request = WanRequest { method: "POST", url: format!("{}/v2/token", self.base), headers, body };
        let reply = check_reply(wan.send(request).await?, "JSON")?;
        let parsed: Option<Json> = serde_json::from_slice(&reply.body).ok();
        let token = parsed
            .as_ref()
            .and_then(|reply| reply.get("access_token")?.as_str().map(str::to_string))
            .ok_or_else(|| Failure::retry(format!("YMCS token reply without access_token: {}", reply.excerpt())))?;
        let lifetime = parsed.as_ref().and_then(|reply| reply.get("expires_in")?.as_u64()).unwrap_or(3600);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(lifetime.saturating_sub(60));
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    async fn post(&self, wan: &Wan, path: &str, body: Json) -> Result<Json, Failure> {
        let send = |token: String| {
            let mut headers = Ymcs::headers();
            headers.push(("authorization", format!("Bearer {token}")));
            let url = format!("{}{path}", self.base);
            wan.send(WanRequest { method: "POST", url, headers, body: body.to_string().into_bytes() })
        };
        let mut reply = send(self.token(wan).await?).await?;
        if reply.status == 401 {
            // A token the service dropped early: fetch a new one and try once more (fspbx).
            *self.token.lock().await = None;
            reply = send(self.token(wan).await?).await?;
        }
        let reply = check_reply(reply, "JSON")?;
        if reply.body.is_empty() {
            return Ok(Json::Null);
        }
        serde_json::from_slice(&reply.body)
            .map_err(|e| Failure::retry(format!("malformed JSON reply: {e}: {}", reply.excerpt())))
    }

    /// Adds `registrations` in one call; returns the refused ones with the service's words.
    async fn add(&self, wan: &Wan, registrations: &[&Registration]) -> Result<Vec<(Mac, String)>, Failure> {
        let devices: Vec<Json> =
            registrations.iter().map(|r| json!({ "mac": r.mac.to_string(), "uniqueServerUrl": r.url })).collect();
        let reply = self.post(wan, "/v2/rps/addDevicesByMac", Json::Array(devices)).await?;
        let Some(errors) = reply.get("errors").and_then(Json::as_array) else {
            return match reply.get("successCount").and_then(Json::as_u64) {
                Some(_) => Ok(Vec::new()),
                None => {
                    let text: String = reply.to_string().chars().take(120).collect();
                    Err(Failure::retry(format!("unexpected YMCS reply: {text}")))
                }
            };
        };
        errors
            .iter()
            .map(|error| {
                let mac = error.get("mac").and_then(Json::as_str).and_then(|mac| mac.parse::<Mac>().ok());
                let info = error.get("errorInfo").and_then(Json::as_str).unwrap_or("refused");
                match mac {
                    Some(mac) => Ok((mac, info.chars().take(120).collect())),
                    // An error that names no MAC of ours: which device failed is unknown.
                    None => Err(Failure::retry(format!(
                        "YMCS error without a known MAC: {}",
                        error.to_string().chars().take(120).collect::<String>()
                    ))),
                }
            })
            .collect()
    }

    /// `delDevices {deviceIdType: "mac", deviceIds}`; a reply with `failureCount` above 0 is a
    /// refused removal (falconieri `libs/ymcs/devices.go` and `types.go`).
    async fn delete(&self, wan: &Wan, macs: &[Mac]) -> Result<(), Failure> {
        let ids: Vec<String> = macs.iter().map(Mac::to_string).collect();
        let reply = self.post(wan, "/v2/rps/delDevices", json!({ "deviceIdType": "mac", "deviceIds": ids })).await?;
        match reply.get("failureCount").and_then(Json::as_u64) {
            Some(0) | None => Ok(()),
            Some(failed) => {
                let errors: String =
                    reply.get("errors").map(Json::to_string).unwrap_or_default().chars().take(120).collect();
                Err(Failure::retry(format!("YMCS refused to remove {failed} device(s): {errors}")))
            }
        }
    }

    /// `listDevices {filter: {mac}}` and the entry whose `mac` is exactly it (falconieri
    /// `libs/ymcs/devices.go`).
    async fn record(&self, wan: &Wan, mac: &Mac) -> Result<Option<Json>, Failure> {
        let wanted = mac.to_string();
        let body = json!({ "skip": 0, "limit": 10, "autoCount": true, "filter": { "mac": wanted } });
        let reply = self.post(wan, "/v2/rps/listDevices", body).await?;
        let entries = reply.get("data").and_then(Json::as_array).cloned().unwrap_or_default();
        Ok(entries.into_iter().find(|entry| {
            entry.get("mac").and_then(Json::as_str).is_some_and(|held| held.eq_ignore_ascii_case(&wanted))
        }))
    }
}

/// Whether an `errorInfo` says the MAC is already in this account: code 800003 "resource
/// already exists", or those words (falconieri `utils/utils.go`, `libs/ymcs/errors.go`; fspbx's
/// fixture "Device already exists."). 800004, "already managed by another organization", is
/// someone else's.
fn already_ours(info: &str) -> bool {
    let lower = info.to_ascii_lowercase();
    info.contains("800003") || lower.contains("already exists")
}

/// The result for `registration` given the MACs the service refused, with its words.
fn refusal_of(refused: &[(Mac, String)], registration: &Registration) -> Result<(), Failure> {
    match refused.iter().find(|(mac, _)| *mac == registration.mac) {
        Some((_, info)) => Err(Failure::permanent(format!("YMCS: {info}"))),
        None => Ok(()),
    }
}

impl RedirectClient for Ymcs {
    fn endpoint(&self) -> &str {
        &self.base
    }

    fn batch_limit(&self) -> usize {
        YMCS_BATCH
    }

    async fn register(&self, wan: &Wan, registration: &Registration) -> Result<(), Failure> {
        self.register_batch(wan, std::slice::from_ref(registration)).await.remove(0)
    }

    async fn register_batch(&self, wan: &Wan, registrations: &[Registration]) -> Vec<Result<(), Failure>> {
        let all: Vec<&Registration> = registrations.iter().collect();
        let refused = match self.add(wan, &all).await {
            Ok(refused) => refused,
            Err(failure) => return vec![Err(failure); registrations.len()],
        };
        // MACs already in the account move to the new URL: delete, then add again.
        let existing: Vec<&Registration> = all
            .iter()
            .copied()
            .filter(|r| refused.iter().any(|(mac, info)| *mac == r.mac && already_ours(info)))
            .collect();
        let mut refused_again = Vec::new();
        if !existing.is_empty() {
            let macs: Vec<Mac> = existing.iter().map(|r| r.mac).collect();
            let retried = match self.delete(wan, &macs).await {
                Ok(()) => self.add(wan, &existing).await,
                Err(failure) => Err(failure),
            };
            match retried {
                Ok(refused) => refused_again = refused,
                // The move failed on the way (the WAN, the service): those MACs try again later.
                Err(failure) => {
                    return registrations
                        .iter()
                        .map(|r| if macs.contains(&r.mac) { Err(failure.clone()) } else { refusal_of(&refused, r) })
                        .collect();
                }
            }
        }
        registrations
            .iter()
            .map(|registration| {
                if existing.iter().any(|r| r.mac == registration.mac) {
                    refusal_of(&refused_again, registration)
                } else {
                    refusal_of(&refused, registration)
                }
            })
            .collect()
    }

    async fn deregister(&self, wan: &Wan, mac: &Mac) -> Result<(), Failure> {
        // How delDevices answers for a MAC the account does not hold is in no reference: ask.
        if self.record(wan, mac).await?.is_none() {
            return Ok(());
        }
        self.delete(wan, std::slice::from_ref(mac)).await
    }

    async fn lookup(&self, wan: &Wan, mac: &Mac) -> Result<Option<Lookup>, Failure> {
        Ok(Some(lookup_of(self.record(wan, mac).await?)))
    }
}

/// What the `X-Ca-*` signature covers.
pub struct SigningInput<'a> {
    /// `GET` or `POST`.
    pub method: &'a str,
    /// Path with its leading `/`.
    pub path: &'a str,
    /// Query parameters.
    pub query: &'a [(&'a str, String)],
    /// The body, empty for none.
    pub body: &'a [u8],
    /// `X-Ca-Key`.
    pub key: &'a str,
    /// `X-Ca-Nonce`.
    pub nonce: &'a str,
    /// `X-Ca-Timestamp`, milliseconds.
    pub timestamp: &'a str,
}

/// The signing headers for a request: `X-Ca-Key`, `-Nonce`, `-Timestamp`, `-Signature`, and
/// `Content-MD5` when there is a body. The signed string is
/// `METHOD\n[Content-MD5:<md5>\n]X-Ca-Key:<k>\nX-Ca-Nonce:<n>\nX-Ca-Timestamp:<t>\n<path without
/// leading slash>[\n<sorted query>]`.
pub fn sign(input: &SigningInput<'_>, secret: &str) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    let mut signed = format!("{}\n", input.method);
    if !input.body.is_empty() {
        let md5 = BASE64.encode(md5::Md5::digest(input.body));
        signed.push_str(&format!("Content-MD5:{md5}\n"));
        headers.push(("content-md5", md5));
    }
    signed
        .push_str(&format!("X-Ca-Key:{}\nX-Ca-Nonce:{}\nX-Ca-Timestamp:{}\n", input.key, input.nonce, input.timestamp));
    signed.push_str(input.path.trim_start_matches('/'));
    if !input.query.is_empty() {
        let mut pairs: Vec<String> = input.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.sort();
        signed.push('\n');
        signed.push_str(&pairs.join("&"));
    }
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()), signed.as_bytes());
    headers.push(("x-ca-key", input.key.to_string()));
    headers.push(("x-ca-nonce", input.nonce.to_string()));
    headers.push(("x-ca-timestamp", input.timestamp.to_string()));
    headers.push(("x-ca-signature", BASE64.encode(tag.as_ref())));
    headers
}

/// A random (version 4) UUID.
fn uuid_v4() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = crate::hex::encode(&bytes);
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_covers_the_documented_string() {
        let input = SigningInput {
            method: "POST",
            path: "/api/open/v1/device/add",
            query: &[],
            body: b"{}",
            key: "k1",
            nonce: "n1",
            timestamp: "1700000000000",
        };
        let headers = sign(&input, "s3cret");
        let md5 = BASE64.encode(md5::Md5::digest(b"{}"));
        let expected_string = format!(
            "POST\nContent-MD5:{md5}\nX-Ca-Key:k1\nX-Ca-Nonce:n1\nX-Ca-Timestamp:1700000000000\napi/open/v1/device/add"
        );
        let expected = BASE64.encode(
            ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret"), expected_string.as_bytes())
                .as_ref(),
        );
        let signature = headers.iter().find(|(name, _)| *name == "x-ca-signature").map(|(_, v)| v.clone());
        assert_eq!(signature, Some(expected));
        let query = [("mac", "805ec0d57d72".to_string()), ("a", "1".to_string())];
        let get = sign(&SigningInput { method: "GET", query: &query, body: b"", ..input }, "s3cret");
        assert!(get.iter().all(|(name, _)| *name != "content-md5"), "no Content-MD5 without a body");
    }

    /// The two vectors nemerald-voip/fspbx (f01af80, `tests/Unit/YealinkRpsRequestSignerTest.php`)
    /// calls Yealink's official examples: signatures provbox did not compute.
    #[test]
    fn signatures_match_the_published_test_vectors() {
        let (key, secret) = ("2df23f2d9c255e7138dc603b3847b58a", "d4a4be460a8d43609d8e8a5e7d0d4ad1");
        let header = |headers: &[(&str, String)], name: &str| {
            headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone()).unwrap_or_default()
        };
        let post = sign(
            &SigningInput {
                method: "POST",
                path: "/api/open/v1/server/list",
                query: &[],
                body: br#"{"key":"TestServer","skip":0}"#,
                key,
                nonce: "b681e77450a04d22aaffc914a3379561",
                timestamp: "1544008291631",
            },
            secret,
        );
        assert_eq!(header(&post, "content-md5"), "SsPhq3/DEuS3yHj3kYOV9w==");
        assert_eq!(header(&post, "x-ca-signature"), "JVPj8C4CVKbFJW6A33yZcdSsde7Hfxy9EoJiE0epeKM=");
        let query = [("mac", "001565123123".to_string())];
        let get = sign(
            &SigningInput {
                method: "GET",
                path: "/api/open/v1/device/checkMac",
                query: &query,
                body: b"",
                key,
                nonce: "9e730a223b48433785494801fb016d39",
                timestamp: "1544094691000",
            },
            secret,
        );
        assert_eq!(header(&get, "x-ca-signature"), "+speRmYv89rutzPc9u5Ij1JrtnrUw7nhJnqQfD1h5AU=");
    }

    #[test]
    fn server_names_keep_to_what_rps_takes() {
        assert_eq!(server_name(""), "provbox");
        assert_eq!(server_name("Head office, floor 3 (east wing)"), "Head office floor 3 ");
        assert_eq!(short_hash("https://192.0.2.1/e/x/").len(), 20);
    }

    #[test]
    fn uuids_are_version_4() {
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, uuid_v4());
    }
}
