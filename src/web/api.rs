//! The JSON API under `/api/v1/` for a PBX or a script, and `/metrics`, both behind bearer
//! API tokens (made on the page or with `provbox admin api-token`). Errors are JSON
//! `{"error": "..."}` with the fitting status. `/api/v1/openapi.json` describes it.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Web;
use super::page::blocking;
use super::update::UploadError;
use crate::app::error::ErrorKind;
use crate::app::{App, AppError, listing};
use crate::devices::DeviceSpec;
use crate::mac::Mac;
use crate::server::Peer;

/// The API's routes and their handlers, one entry per path: what [`routes`] serves and what
/// the tests hold the OpenAPI document against.
fn api_routes() -> Vec<(&'static str, MethodRouter<Web>)> {
    vec![
        ("/api/v1/openapi.json", get(openapi)),
        ("/metrics", get(metrics)),
        ("/api/v1/devices", get(list_devices).post(add_device).layer(DefaultBodyLimit::max(DEVICE_BODY_LIMIT))),
        (
            "/api/v1/devices/{mac}",
            get(show_device).put(edit_device).delete(remove_device).layer(DefaultBodyLimit::max(DEVICE_BODY_LIMIT)),
        ),
        ("/api/v1/devices/{mac}/unlock", post(unlock)),
        ("/api/v1/devices/{mac}/reprovision", post(reprovision)),
        ("/api/v1/devices/{mac}/rotate-passwords", post(rotate_passwords)),
        ("/api/v1/settings", get(settings)),
        ("/api/v1/settings/{name}", put(set_setting).layer(DefaultBodyLimit::max(SETTING_BODY_LIMIT))),
        ("/api/v1/phones-seen", get(phones_seen)),
        ("/api/v1/redirect", get(redirect_status)),
        ("/api/v1/update", get(update_status).post(install_update)),
        ("/api/v1/backup", get(backup)),
        ("/api/v1/audit", get(audit_log)),
        ("/api/v1/password-policy", get(password_policy)),
        ("/api/v1/templates", get(list_templates)),
        (
            "/api/v1/templates/{vendor}/{file}",
            get(show_template)
                .put(save_template)
                .delete(revert_template)
                .layer(DefaultBodyLimit::max(TEMPLATE_BODY_LIMIT)),
        ),
        (
            "/api/v1/templates/{vendor}/{file}/preview",
            post(preview_template).layer(DefaultBodyLimit::max(TEMPLATE_BODY_LIMIT)),
        ),
        ("/api/v1/templates/{vendor}/{file}/reprovision", post(reprovision_template)),
    ]
}

/// The API's routes.
pub fn routes() -> Router<Web> {
    api_routes().into_iter().fold(Router::new(), |router, (path, handlers)| router.route(path, handlers))
}

/// Largest device body: four lines of bounded fields, with room for white space.
const DEVICE_BODY_LIMIT: usize = 16 * 1024;
/// Largest setting body: a certificate path or URL, never a file.
const SETTING_BODY_LIMIT: usize = 8 * 1024;
/// Largest template body: 256 KiB of text however a client escapes it in JSON (up to 12
/// bytes a character, as `\ud83d\ude00`); the handler then refuses text over 256 KiB.
pub(super) const TEMPLATE_BODY_LIMIT: usize = 12 * crate::app::templates::MAX_TEMPLATE_BYTES + 1024;

/// Wrong bearer tokens an address may send before it is slowed down. A token's secret is 128
/// random bits, beyond guessing; the delay only keeps a misconfigured or hostile client from
/// filling the log, so it starts later than the page's.
pub const FREE_TOKEN_FAILURES: u32 = 64;

/// The OpenAPI 3.1 document: `src/web/openapi.json`, generated from the handlers' and their
/// types' annotations by the test `openapi::the_document_is_generated_from_the_code` (which
/// fails when it is stale), embedded without indentation by `build.rs`.
const OPENAPI_DOCUMENT: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// An error answer: what every refusal carries.
#[derive(Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
struct ApiError {
    /// What was wrong, as advice.
    error: String,
}

/// A JSON error with `status`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ApiError { error: message.into() };
    (status, [(header::CONTENT_TYPE, "application/json")], serde_json::to_string(&body).unwrap_or_default())
        .into_response()
}

/// The status an appliance error deserves: 4xx for the request's fault, 5xx for the
/// appliance's or a service's.
fn app_error(failure: AppError) -> Response {
    let status = match failure.kind() {
        ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, failure.to_string())
}

fn json(value: impl Serialize) -> Response {
    match serde_json::to_string(&value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// An API request whose bearer token checked out: what every handler but the OpenAPI
/// document starts from. A valid token always passes; wrong ones slow their address down
/// (counted apart from page logins, and only when a token was sent). Being the first
/// extractor, the token is checked before the path or the body is read, so a request
/// without one gets 401 whatever else is wrong.
struct Caller {
    web: Web,
    /// `api:<token name>`, for the audit log.
    actor: String,
}

impl FromRequestParts<Web> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Caller, Response> {
        // The accept loop attaches the peer to every request.
        let Some(peer) = parts.extensions.get::<Peer>().copied() else {
            return Err(error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"));
        };
        let ip = peer.ip();
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or(""));
        let name = match bearer {
            Some(bearer) => web.app.api_token_name(bearer).map_err(app_error)?,
            None => None,
        };
        if let Some(name) = name {
            web.app.known_peers.prove(ip);
            return Ok(Caller { web: web.clone(), actor: format!("api:{name}") });
        }
        // A request without the header guesses nothing: it is never throttled.
        if bearer.is_some() {
            if let Some(wait) = web.api_throttle.wait(ip, Instant::now(), web.app.known_peers.knows(ip)) {
                let message = format!("too many bad tokens; try again in {} s", wait.as_secs() + 1);
                let mut response = error(StatusCode::TOO_MANY_REQUESTS, message);
                if let Ok(value) = HeaderValue::from_str(&(wait.as_secs() + 1).to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return Err(response);
            }
            web.api_throttle.failed(ip, Instant::now());
            tracing::warn!(%ip, "API: wrong bearer token");
        }
        let mut response =
            error(StatusCode::UNAUTHORIZED, "a valid API token is needed: Authorization: Bearer pbx_...");
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Err(response)
    }
}

impl Caller {
    /// Runs `work` as this caller on a blocking thread, answering with its JSON or its error.
    async fn run<T: Serialize + Send + 'static>(
        self,
        work: impl FnOnce(&App, &str) -> Result<T, AppError> + Send + 'static,
    ) -> Response {
        let Caller { web, actor } = self;
        match blocking(move || work(&web.app, &actor)).await {
            Ok(value) => json(value),
            Err(e) => app_error(e),
        }
    }
}

/// A JSON body of type `T`, read after the token check (an extractor after [`Caller`]).
/// A body that is not JSON, or not this operation's JSON, is a 400; too long a body is a 413.
struct Body<T>(T);

impl<T: DeserializeOwned> FromRequest<Web> for Body<T> {
    type Rejection = Response;

    async fn from_request(request: Request, web: &Web) -> Result<Body<T>, Response> {
        let bytes = Bytes::from_request(request, web)
            .await
            .map_err(|rejection| error(rejection.status(), rejection.body_text()))?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))
    }
}

/// The `{mac}` of the path, parsed (ASCII white space around it is ignored, as in a
/// device's fields); a malformed one is a JSON 400.
struct DeviceMac(Mac);

impl<S: Send + Sync> FromRequestParts<S> for DeviceMac {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Segments(text) = Segments::<String>::from_request_parts(parts, state).await?;
        text.trim_matches(|c: char| c.is_ascii_whitespace())
            .parse()
            .map(DeviceMac)
            .map_err(|e: crate::mac::MacError| error(StatusCode::BAD_REQUEST, e.to_string()))
    }
}

/// Path parameters of type `T`; one that cannot be read (not UTF-8) is a JSON 400.
struct Segments<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Segments<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Segments(value))
            .map_err(|rejection| error(rejection.status(), rejection.body_text()))
    }
}

/// This document.
///
/// The vendor ids are this site's: a site may add a vendor under `<data>/templates/`.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "This document", content_type = "application/json", body = Object))))]
async fn openapi(State(web): State<Web>) -> Response {
    let mut document: serde_json::Value = match serde_json::from_str(OPENAPI_DOCUMENT) {
        Ok(document) => document,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("the built-in document: {e}")),
    };
    let vendors: Vec<String> = web.app.templates.catalog().vendors.keys().cloned().collect();
    if let Some(schema) = document.pointer_mut("/components/schemas/VendorId") {
        schema["enum"] = serde_json::json!(vendors);
    }
    json(document)
}

/// Prometheus metrics.
#[cfg_attr(test, utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus metrics: fetches by result, enrollment events, TLS handshakes, SIP datagrams, outbox depth, devices, store usage",
        content_type = "text/plain; version=0.0.4", body = String))))]
async fn metrics(caller: Caller) -> Response {
    match blocking(move || caller.web.app.metrics_text()).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(failure) => app_error(failure),
    }
}

/// Lists every device.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/devices", tag = "devices",
    responses((status = 200, description = "Every device", body = Vec<crate::app::views::DeviceView>))))]
async fn list_devices(caller: Caller) -> Response {
    let app = caller.web.app.clone();
    let Some(turn) = app.heavy.turn().await else {
        let mut busy = error(StatusCode::SERVICE_UNAVAILABLE, listing::BUSY);
        busy.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(listing::BUSY_RETRY_SECONDS));
        return busy;
    };
    let pieces = listing::stream_devices(app, listing::ListFormat::Json { open: "", close: "" }, turn);
    super::stream::response(pieces, "application/json")
}

/// Adds a device; the answer carries its enrollment URL.
#[cfg_attr(test, utoipa::path(post, path = "/api/v1/devices", tag = "devices", request_body = DeviceSpec,
    responses(
        (status = 200, description = "The new device, with its enrollment URL", body = crate::app::views::DeviceView),
        (status = 409, description = "A device with this MAC exists, or the store is nearly full (its last room is kept for unlocks, settings and removals)", body = ApiError),
        (status = 422, description = "A field breaks its rule (vendor without a profile, a weak SIP password, a name too long in UTF-8 bytes, ...)", body = ApiError))))]
async fn add_device(caller: Caller, Body(spec): Body<DeviceSpec>) -> Response {
    caller.run(move |app, actor| app.add_device(&spec, actor)).await
}

/// Shows a device, with the static files it is offered.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/devices/{mac}", tag = "devices", params(openapi::MacPath),
    responses(
        (status = 200, description = "The device, with its static files", body = crate::app::views::DeviceView),
        (status = 404, description = "No such device", body = ApiError))))]
async fn show_device(caller: Caller, DeviceMac(mac): DeviceMac) -> Response {
    caller.run(move |app, _| app.device_view(&mac, true)).await
}

/// Changes a device's model and lines.
#[cfg_attr(test, utoipa::path(put, path = "/api/v1/devices/{mac}", tag = "devices", params(openapi::MacPath),
    request_body(content = DeviceSpec, description = "The device's model and lines (its MAC and vendor stay; a line without sip_password keeps its password)"),
    responses(
        (status = 200, description = "The device", body = crate::app::views::DeviceView),
        (status = 404, description = "No such device", body = ApiError),
        (status = 422, description = "A field breaks its rule, or the body names another MAC or vendor", body = ApiError))))]
async fn edit_device(caller: Caller, DeviceMac(mac): DeviceMac, Body(spec): Body<DeviceSpec>) -> Response {
    caller.run(move |app, actor| app.edit_device(&mac, &spec, actor)).await
}

/// A removed device.
#[derive(Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
struct Removed {
    /// Its MAC.
    removed: Mac,
}

/// Removes a device.
#[cfg_attr(test, utoipa::path(delete, path = "/api/v1/devices/{mac}", tag = "devices", params(openapi::MacPath),
    responses(
        (status = 200, description = "Removed; its redirect registration is withdrawn", body = Removed),
        (status = 404, description = "No such device", body = ApiError))))]
async fn remove_device(caller: Caller, DeviceMac(mac): DeviceMac) -> Response {
    caller.run(move |app, actor| app.remove_device(&mac, actor).map(|()| Removed { removed: mac })).await
}

/// Reopens a device's enrollment with a new URL, registered again with the redirect service.
#[cfg_attr(test, utoipa::path(post, path = "/api/v1/devices/{mac}/unlock", tag = "devices", params(openapi::MacPath),
    responses(
        (status = 200, description = "Enrollment reopened with a new URL, registered again with the redirect service", body = crate::app::views::DeviceView),
        (status = 404, description = "No such device", body = ApiError))))]
async fn unlock(caller: Caller, DeviceMac(mac): DeviceMac) -> Response {
    caller.run(move |app, actor| app.unlock(&mac, actor)).await
}

/// Sends the phone its vendor's check-sync NOTIFY and reports its answer.
#[cfg_attr(test, utoipa::path(post, path = "/api/v1/devices/{mac}/reprovision", tag = "devices", params(openapi::MacPath),
    responses(
        (status = 200, description = "The check-sync NOTIFY went out: whether the phone answered, and whether it then fetched (`fetched`, the only proof it was the phone)", body = crate::sip::checksync::CheckSync),
        (status = 404, description = "No such device", body = ApiError),
        (status = 409, description = "The phone has not contacted the appliance, so its address is unknown", body = ApiError))))]
async fn reprovision(caller: Caller, DeviceMac(mac): DeviceMac) -> Response {
    match caller.web.app.reprovision(&mac, Duration::from_secs(8)).await {
        Ok(sent) => json(sent),
        Err(e) => app_error(e),
    }
}

/// Lists every setting, secrets masked.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/settings", tag = "settings",
    responses((status = 200, description = "Every setting, secrets masked", body = Vec<crate::app::views::SettingView>))))]
async fn settings(caller: Caller) -> Response {
    caller.run(|app, _| app.settings_view()).await
}

/// A setting's new value.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
#[cfg_attr(test, schema(example = json!({"value": "pbx.example.com"})))]
struct SettingValue {
    /// The value, as `provbox settings set` takes it.
    value: String,
}

/// A changed setting.
#[derive(Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
struct SettingSet {
    /// Its name.
    set: String,
}

/// Changes a setting.
#[cfg_attr(test, utoipa::path(put, path = "/api/v1/settings/{name}", tag = "settings", params(openapi::SettingPath),
    request_body = SettingValue,
    responses(
        (status = 200, description = "Set", body = SettingSet),
        (status = 404, description = "No such setting", body = ApiError),
        (status = 422, description = "The value breaks the setting's rule", body = ApiError))))]
async fn set_setting(caller: Caller, Segments(name): Segments<String>, Body(body): Body<SettingValue>) -> Response {
    caller.run(move |app, actor| app.set_setting(&name, &body.value, actor).map(|()| SettingSet { set: name })).await
}

/// Lists the unknown phones that asked for a configuration.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/phones-seen", tag = "devices",
    responses((status = 200, description = "Unknown phones that asked for a configuration", body = Vec<crate::store::records::PhoneSeen>))))]
async fn phones_seen(caller: Caller) -> Response {
    caller.run(|app, _| app.phones_seen()).await
}

/// The redirect services, their queue and each device's state.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/redirect", tag = "redirect",
    responses((status = 200, description = "The clock, the redirect services, the queue and each device's state", body = crate::app::views::RedirectStatus))))]
async fn redirect_status(caller: Caller) -> Response {
    caller.run(|app, _| app.redirect_status()).await
}

/// The audit log, newest first.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/audit", tag = "system",
    responses((status = 200, description = "The audit log, newest first: when, who (page, cli, api:<token>), what", body = Vec<crate::store::records::AuditEntry>))))]
async fn audit_log(caller: Caller) -> Response {
    caller.run(|app, _| app.audit_log()).await
}

/// The password levels, and the devices whose SIP passwords fall short.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/password-policy", tag = "settings",
    responses((status = 200, description = "The password levels and the devices whose SIP passwords fall short", body = crate::app::views::PolicyReport))))]
async fn password_policy(caller: Caller) -> Response {
    caller.run(|app, _| app.password_policy()).await
}

/// Gives the lines below the SIP password policy new generated passwords, shown this once.
#[cfg_attr(test, utoipa::path(post, path = "/api/v1/devices/{mac}/rotate-passwords", tag = "devices", params(openapi::MacPath),
    responses(
        (status = 200, description = "New generated SIP passwords for the lines below the policy, shown this once", body = crate::app::views::RotatedPasswords),
        (status = 404, description = "No such device", body = ApiError))))]
async fn rotate_passwords(caller: Caller, DeviceMac(mac): DeviceMac) -> Response {
    caller.run(move |app, actor| app.rotate_sip_passwords(&mac, actor)).await
}

/// Lists every vendor's editable templates.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/templates", tag = "templates",
    responses((status = 200, description = "Every vendor's editable templates and which are overridden", body = Vec<crate::app::views::VendorTemplates>))))]
async fn list_templates(caller: Caller) -> Response {
    caller.run(|app, _| app.template_list()).await
}

/// Shows a template: its text, the stock text and the override as a diff.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/templates/{vendor}/{file}", tag = "templates", params(openapi::TemplatePath),
    responses(
        (status = 200, description = "The template: current text, stock text, the override as a diff", body = crate::app::views::TemplateView),
        (status = 404, description = "No such vendor or template", body = ApiError))))]
async fn show_template(caller: Caller, Segments((vendor, file)): Segments<(String, String)>) -> Response {
    caller.run(move |app, _| app.template_show(&vendor, &file)).await
}

/// A template's new text.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
#[cfg_attr(test, schema(example = json!({"source": "#!version:1.0.0.1\nlocal_time.ntp_server1 = {{ site[\"time.ntp\"] }}\n"})))]
struct TemplateSource {
    /// The template's text (at most 256 KiB).
    #[cfg_attr(test, schema(max_length = 262144))]
    source: String,
}

/// Checks and saves a template override.
#[cfg_attr(test, utoipa::path(put, path = "/api/v1/templates/{vendor}/{file}", tag = "templates", params(openapi::TemplatePath),
    request_body = TemplateSource,
    responses(
        (status = 200, description = "Saved: the fingerprints before and after, and the devices now pending", body = crate::app::views::TemplateSaved),
        (status = 404, description = "No such vendor or template", body = ApiError),
        (status = 422, description = "The template does not render, or renders a file its phones cannot parse: the line and the cause; nothing saved", body = ApiError))))]
async fn save_template(
    caller: Caller,
    Segments((vendor, file)): Segments<(String, String)>,
    Body(edit): Body<TemplateSource>,
) -> Response {
    caller.run(move |app, actor| app.template_save(&vendor, &file, &edit.source, actor)).await
}

/// An unsaved template and the device to render it for.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
#[cfg_attr(test, schema(example = json!({"source": "#!version:1.0.0.1\nlocal_time.ntp_server1 = {{ site[\"time.ntp\"] }}\n", "mac": "805ec0d57d72"})))]
struct TemplatePreviewRequest {
    /// The template's text (at most 256 KiB).
    #[cfg_attr(test, schema(max_length = 262144))]
    source: String,
    /// The device, one of the vendor's.
    #[cfg_attr(
        test,
        schema(pattern = r"^[ \t\n\f\r]*([0-9A-Fa-f]{12}|[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2}){5})[ \t\n\f\r]*$")
    )]
    mac: String,
}

/// Renders an unsaved template edit for one device, secrets masked.
#[cfg_attr(test, utoipa::path(post, path = "/api/v1/templates/{vendor}/{file}/preview", tag = "templates", params(openapi::TemplatePath),
    request_body = TemplatePreviewRequest,
    responses(
        (status = 200, description = "Each file the edit feeds, as the device would get it, secrets masked", body = crate::app::views::TemplatePreview),
        (status = 404, description = "No such vendor, template or device", body = ApiError),
        (status = 409, description = "The device is another vendor's, or gets no file from this template", body = ApiError),
        (status = 422, description = "The template does not render, or renders a file its phones cannot parse", body = ApiError))))]
async fn preview_template(
    caller: Caller,
    Segments((vendor, file)): Segments<(String, String)>,
    Body(edit): Body<TemplatePreviewRequest>,
) -> Response {
    let mac = match edit.mac.trim_matches(|c: char| c.is_ascii_whitespace()).parse::<Mac>() {
        Ok(mac) => mac,
        Err(e) => return app_error(e.into()),
    };
    caller.run(move |app, _| app.template_preview(&vendor, &file, &edit.source, &mac)).await
}

/// Removes a template override: back to stock.
#[cfg_attr(test, utoipa::path(delete, path = "/api/v1/templates/{vendor}/{file}", tag = "templates", params(openapi::TemplatePath),
    responses(
        (status = 200, description = "Back to stock: the fingerprints and the devices now pending", body = crate::app::views::TemplateSaved),
        (status = 404, description = "No such vendor or template", body = ApiError),
        (status = 409, description = "The template is not overridden, or has no stock version", body = ApiError))))]
async fn revert_template(caller: Caller, Segments((vendor, file)): Segments<(String, String)>) -> Response {
    caller.run(move |app, actor| app.template_revert(&vendor, &file, actor)).await
}

/// Sends check-sync to the phones a template change left pending.
#[cfg_attr(test, utoipa::path(post, path = "/api/v1/templates/{vendor}/{file}/reprovision", tag = "templates", params(openapi::TemplatePath),
    responses(
        (status = 200, description = "Each pending phone's check-sync result", body = Vec<crate::app::views::ReprovisionOutcome>),
        (status = 404, description = "No such vendor or template", body = ApiError))))]
async fn reprovision_template(caller: Caller, Segments((vendor, file)): Segments<(String, String)>) -> Response {
    let app = caller.web.app.clone();
    let affected = match blocking(move || app.template_affected(&vendor, &file)).await {
        Ok(affected) => affected,
        Err(e) => return app_error(e),
    };
    json(crate::app::sip::reprovision_each(&caller.web.app, &affected, Duration::from_secs(8)).await)
}

/// The header that carries a backup's passphrase (never a query parameter: URLs get logged).
const PASSPHRASE_HEADER: &str = "backup-passphrase";

/// What a backup download may ask for.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(utoipa::IntoParams))]
#[cfg_attr(test, into_params(parameter_in = Query))]
struct BackupQuery {
    /// Also the static files (firmware) under `<data>/files/`.
    files: Option<bool>,
}

/// Makes an encrypted backup.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/backup", tag = "system",
    params(BackupQuery, ("Backup-Passphrase" = String, Header, min_length = 12, description = "The passphrase the backup is encrypted with (at least 12 characters)")),
    responses(
        (status = 200, description = "An encrypted backup (age format) of the CA, devices with their URL tokens, settings, credentials and template overrides",
            content_type = "application/octet-stream", body = openapi::Binary),
        (status = 400, description = "No Backup-Passphrase header, or a malformed query", body = ApiError),
        (status = 409, description = "With the static files, the backup would be larger than a restore takes", body = ApiError),
        (status = 422, description = "The passphrase is too short", body = ApiError))))]
async fn backup(
    caller: Caller,
    headers: axum::http::HeaderMap,
    query: Result<Query<BackupQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "the query is at most files=true or files=false");
    };
    let Some(passphrase) = headers.get(PASSPHRASE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string) else {
        return error(StatusCode::BAD_REQUEST, "give the backup's passphrase in the Backup-Passphrase header");
    };
    let include_files = query.files.unwrap_or(false);
    let Caller { web, actor } = caller;
    match blocking(move || web.app.create_backup(&passphrase, include_files, &actor)).await {
        Ok(file) => super::backup::attachment(file),
        Err(e) => app_error(e),
    }
}

/// The root slots of the firmware image.
#[cfg_attr(test, utoipa::path(get, path = "/api/v1/update", tag = "system",
    responses((status = 200, description = "The root slots: running slot, trial, rollback, version", body = super::update::UpdateStatus))))]
async fn update_status(caller: Caller) -> Response {
    json(super::update::status(&caller.web))
}

/// An installed bundle.
#[derive(Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
struct InstallAnswer {
    /// The slot written, the version and its size.
    installed: crate::update::Installed,
    /// Always true: the appliance reboots into it, and falls back if it does not come up.
    rebooting: bool,
}

/// Installs a signed root-image bundle into the inactive slot and reboots into it.
#[cfg_attr(test, utoipa::path(post, path = "/api/v1/update", tag = "system",
    request_body(content = openapi::Binary, content_type = "application/octet-stream", description = "A signed root-image bundle (`provbox update sign`)"),
    responses(
        (status = 200, description = "Installed in the inactive slot; the appliance reboots into it", body = InstallAnswer),
        (status = 400, description = "The bundle is malformed, badly signed, older than the running one, or broke off", body = ApiError),
        (status = 409, description = "Not running from the firmware image, on trial, or already restarting", body = ApiError))))]
async fn install_update(Caller { web, actor }: Caller, request: Request) -> Response {
    match super::update::install_raw(&web, request.into_body(), &actor).await {
        Ok(installed) => json(InstallAnswer { installed, rebooting: true }),
        Err(
            failure @ (UploadError::Unavailable
            | UploadError::Restarting
            | UploadError::Refused(crate::update::UpdateError::OnTrial(_))),
        ) => error(StatusCode::CONFLICT, failure.to_string()),
        Err(failure) => error(StatusCode::BAD_REQUEST, failure.to_string()),
    }
}

#[cfg(test)]
pub mod openapi;
