//! The JSON API under `/api/v1/` for a PBX or a script, and `/metrics`, both behind bearer
//! API tokens (made on the page or with `provbox admin api-token`). Errors are JSON
//! `{"error": "..."}` with the fitting status. `/api/v1/openapi.json` describes it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Web;
use super::page::blocking;
use super::update::UploadError;
use crate::app::error::ErrorKind;
use crate::app::{App, AppError};
use crate::devices::DeviceSpec;
use crate::mac::Mac;
use crate::server::Peer;

/// The API's routes.
pub fn routes() -> Router<Web> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .route("/api/v1/devices", get(list_devices).post(add_device))
        .route("/api/v1/devices/{mac}", get(show_device).put(edit_device).delete(remove_device))
        .route("/api/v1/devices/{mac}/unlock", post(unlock))
        .route("/api/v1/devices/{mac}/reprovision", post(reprovision))
        .route("/api/v1/settings", get(settings))
        .route("/api/v1/settings/{name}", put(set_setting))
        .route("/api/v1/phones-seen", get(phones_seen))
        .route("/api/v1/redirect", get(redirect_status))
        .route("/api/v1/update", get(update_status).post(install_update))
        .route("/api/v1/backup", get(backup))
        .route("/api/v1/audit", get(audit_log))
        .route("/api/v1/password-policy", get(password_policy))
        .route("/api/v1/devices/{mac}/rotate-passwords", post(rotate_passwords))
        .route("/api/v1/templates", get(list_templates))
        .route("/api/v1/templates/{vendor}/{file}", get(show_template).put(save_template).delete(revert_template))
        .route("/api/v1/templates/{vendor}/{file}/preview", post(preview_template))
        .route("/api/v1/templates/{vendor}/{file}/reprovision", post(reprovision_template))
}

/// A JSON error with `status`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let mut response = (status, serde_json::json!({ "error": message.into() }).to_string()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The status an appliance error deserves: 4xx for the request's fault, 5xx for the
/// appliance's or a service's.
fn app_error(failure: AppError) -> Response {
    let status = match failure.kind() {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if let AppError::Import(problems) = &failure {
        let body = serde_json::json!({ "error": failure.to_string(), "problems": problems });
        return (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    }
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
/// (counted apart from page logins). Being the first extractor, the token is checked before
/// the path or the body is read, so a request without one gets 401 whatever else is wrong.
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
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        match web.app.api_token_name(bearer) {
            Ok(Some(name)) => Ok(Caller { web: web.clone(), actor: format!("api:{name}") }),
            Ok(None) => {
                if let Some(wait) = web.api_throttle.wait(ip, Instant::now()) {
                    let message = format!("too many bad tokens; try again in {} s", wait.as_secs() + 1);
                    return Err(error(StatusCode::TOO_MANY_REQUESTS, message));
                }
                web.api_throttle.failed(ip, Instant::now());
                tracing::warn!(%ip, "API: missing or wrong bearer token");
                let mut response =
                    error(StatusCode::UNAUTHORIZED, "a valid API token is needed: Authorization: Bearer pbx_...");
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Err(response)
            }
            Err(e) => Err(app_error(e)),
        }
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

/// A JSON body of type `T`, parsed after the token check; malformed is a JSON 400.
struct Body<T>(T);

impl<T: DeserializeOwned> FromRequest<Web> for Body<T> {
    type Rejection = Response;

    async fn from_request(request: Request, web: &Web) -> Result<Body<T>, Response> {
        let bytes = Bytes::from_request(request, web).await.map_err(IntoResponse::into_response)?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))
    }
}

/// The `{mac}` of the path, parsed; a malformed one is a JSON 400.
struct DeviceMac(Mac);

impl<S: Send + Sync> FromRequestParts<S> for DeviceMac {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let Path(text) = Path::<String>::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        text.parse().map(DeviceMac).map_err(|e: crate::mac::MacError| error(StatusCode::BAD_REQUEST, e.to_string()))
    }
}

async fn openapi() -> Response {
    json(openapi_document())
}

async fn metrics(caller: Caller) -> Response {
    match blocking(move || caller.web.app.metrics_text()).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(failure) => app_error(failure),
    }
}

async fn list_devices(caller: Caller) -> Response {
    caller.run(|app, _| app.devices()).await
}

async fn add_device(caller: Caller, Body(spec): Body<DeviceSpec>) -> Response {
    caller.run(move |app, actor| app.add_device(&spec, actor)).await
}

async fn show_device(caller: Caller, DeviceMac(mac): DeviceMac) -> Response {
    caller.run(move |app, _| app.device_view(&mac, true)).await
}

async fn edit_device(caller: Caller, DeviceMac(mac): DeviceMac, Body(spec): Body<DeviceSpec>) -> Response {
    caller.run(move |app, actor| app.edit_device(&mac, &spec, actor)).await
}

async fn remove_device(caller: Caller, DeviceMac(mac): DeviceMac) -> Response {
    caller
        .run(move |app, actor| {
            app.remove_device(&mac, actor).map(|()| serde_json::json!({ "removed": mac.to_string() }))
        })
        .await
}

async fn unlock(caller: Caller, DeviceMac(mac): DeviceMac) -> Response {
    caller.run(move |app, actor| app.unlock(&mac, actor)).await
}

async fn reprovision(caller: Caller, DeviceMac(mac): DeviceMac) -> Response {
    match caller.web.app.reprovision(&mac, Duration::from_secs(8)).await {
        Ok(sent) => json(sent),
        Err(e) => app_error(e),
    }
}

async fn settings(caller: Caller) -> Response {
    caller.run(|app, _| app.settings_view()).await
}

async fn set_setting(caller: Caller, Path(name): Path<String>, Body(body): Body<HashMap<String, String>>) -> Response {
    let Some(value) = body.get("value").cloned() else {
        return error(StatusCode::BAD_REQUEST, "the body is {\"value\": \"...\"}");
    };
    caller
        .run(move |app, actor| app.set_setting(&name, &value, actor).map(|()| serde_json::json!({ "set": name })))
        .await
}

async fn phones_seen(caller: Caller) -> Response {
    caller.run(|app, _| app.phones_seen()).await
}

async fn redirect_status(caller: Caller) -> Response {
    caller.run(|app, _| app.redirect_status()).await
}

async fn audit_log(caller: Caller) -> Response {
    caller.run(|app, _| app.audit_log()).await
}

async fn password_policy(caller: Caller) -> Response {
    caller.run(|app, _| app.password_policy()).await
}

async fn rotate_passwords(caller: Caller, DeviceMac(mac): DeviceMac) -> Response {
    caller.run(move |app, actor| app.rotate_sip_passwords(&mac, actor)).await
}

async fn list_templates(caller: Caller) -> Response {
    caller.run(|app, _| app.template_list()).await
}

async fn show_template(caller: Caller, Path((vendor, file)): Path<(String, String)>) -> Response {
    caller.run(move |app, _| app.template_show(&vendor, &file)).await
}

/// The body of a template save or preview.
#[derive(serde::Deserialize)]
struct TemplateEdit {
    /// The template's new text.
    source: String,
    /// The device to preview for.
    #[serde(default)]
    mac: Option<String>,
}

async fn save_template(
    caller: Caller,
    Path((vendor, file)): Path<(String, String)>,
    Body(edit): Body<TemplateEdit>,
) -> Response {
    caller.run(move |app, actor| app.template_save(&vendor, &file, &edit.source, actor)).await
}

async fn preview_template(
    caller: Caller,
    Path((vendor, file)): Path<(String, String)>,
    Body(edit): Body<TemplateEdit>,
) -> Response {
    let Some(mac) = edit.mac.as_deref().and_then(|text| text.parse::<Mac>().ok()) else {
        return error(StatusCode::BAD_REQUEST, "the body is {\"source\": \"...\", \"mac\": \"<device MAC>\"}");
    };
    caller.run(move |app, _| app.template_preview(&vendor, &file, &edit.source, &mac)).await
}

async fn revert_template(caller: Caller, Path((vendor, file)): Path<(String, String)>) -> Response {
    caller.run(move |app, actor| app.template_revert(&vendor, &file, actor)).await
}

/// Sends check-sync to the devices whose config a template change left pending.
async fn reprovision_template(caller: Caller, Path((vendor, file)): Path<(String, String)>) -> Response {
    let app = caller.web.app.clone();
    let affected = match blocking(move || app.template_affected(&vendor, &file)).await {
        Ok(affected) => affected,
        Err(e) => return app_error(e),
    };
    json(crate::app::sip::reprovision_each(&caller.web.app, &affected, Duration::from_secs(8)).await)
}

/// The OpenAPI 3 description of the API.
fn openapi_document() -> serde_json::Value {
    let mac = serde_json::json!({ "name": "mac", "in": "path", "required": true, "schema": { "type": "string" }, "example": "805ec0d57d72" });
    let template = serde_json::json!([
        { "name": "vendor", "in": "path", "required": true, "schema": { "type": "string" }, "example": "yealink" },
        { "name": "file", "in": "path", "required": true, "schema": { "type": "string" }, "example": "device.cfg" }
    ]);
    let template_body = serde_json::json!({ "required": true, "content": { "application/json": { "schema": { "type": "object", "required": ["source"], "properties": { "source": { "type": "string" }, "mac": { "type": "string" } } } } } });
    let ok = |what: &str| serde_json::json!({ "200": { "description": what }, "401": { "description": "no or wrong API token" }, "400": { "description": "refused input, as {\"error\": ...}" } });
    serde_json::json!({
        "openapi": "3.0.3",
        "info": { "title": "provbox API", "version": env!("CARGO_PKG_VERSION"), "description": "Manage the phones of a provbox appliance. Every call needs Authorization: Bearer <API token>." },
        "components": {
            "securitySchemes": { "token": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "DeviceSpec": {
                    "type": "object", "required": ["mac", "vendor", "model", "lines"],
                    "properties": {
                        "mac": { "type": "string" }, "vendor": { "type": "string" }, "model": { "type": "string" },
                        "lines": { "type": "array", "items": { "type": "object", "required": ["extension", "name"], "properties": {
                            "extension": { "type": "string" }, "name": { "type": "string" },
                            "sip_user": { "type": "string", "nullable": true }, "sip_password": { "type": "string", "nullable": true } } } }
                    }
                },
                "Error": { "type": "object", "properties": { "error": { "type": "string" } } }
            }
        },
        "security": [{ "token": [] }],
        "paths": {
            "/api/v1/devices": {
                "get": { "summary": "List devices", "responses": ok("the devices") },
                "post": { "summary": "Add a device", "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/DeviceSpec" } } } }, "responses": ok("the new device, with its enrollment URL") }
            },
            "/api/v1/devices/{mac}": {
                "get": { "summary": "Show a device", "parameters": [mac], "responses": ok("the device") },
                "put": { "summary": "Change a device's model and lines (a line without sip_password keeps its password)", "parameters": [mac], "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/DeviceSpec" } } } }, "responses": ok("the device") },
                "delete": { "summary": "Remove a device", "parameters": [mac], "responses": ok("removed") }
            },
            "/api/v1/devices/{mac}/unlock": { "post": { "summary": "Reopen enrollment with a new URL; re-registers with the redirect service", "parameters": [mac], "responses": ok("the device") } },
            "/api/v1/devices/{mac}/reprovision": { "post": { "summary": "Send the vendor's check-sync NOTIFY and report the phone's answer", "parameters": [mac], "responses": ok("the result") } },
            "/api/v1/settings": { "get": { "summary": "Every setting, secrets masked", "responses": ok("the settings") } },
            "/api/v1/settings/{name}": { "put": { "summary": "Change a setting", "parameters": [{ "name": "name", "in": "path", "required": true, "schema": { "type": "string" } }], "requestBody": { "required": true, "content": { "application/json": { "schema": { "type": "object", "properties": { "value": { "type": "string" } } } } } }, "responses": ok("set") } },
            "/api/v1/phones-seen": { "get": { "summary": "Unknown phones that asked for a configuration", "responses": ok("the list") } },
            "/api/v1/redirect": { "get": { "summary": "Redirect services, the queue and each device's state", "responses": ok("the status") } },
            "/api/v1/update": {
                "get": { "summary": "The root slots: running slot, trial, rollback, version", "responses": ok("the slots") },
                "post": {
                    "summary": "Install a signed root-image bundle into the inactive slot, then reboot into it",
                    "requestBody": { "required": true, "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } } },
                    "responses": ok("installed; the appliance reboots into it and falls back if it does not come up")
                }
            },
            "/api/v1/backup": { "get": {
                "summary": "An encrypted backup (age format) of the CA, devices with their URL tokens, settings, credentials and template overrides",
                "parameters": [
                    { "name": "Backup-Passphrase", "in": "header", "required": true, "schema": { "type": "string", "minLength": 12 } },
                    { "name": "files", "in": "query", "required": false, "schema": { "type": "boolean" }, "description": "also the static files (firmware)" }
                ],
                "responses": ok("the backup file, application/octet-stream")
            } },
            "/api/v1/audit": { "get": { "summary": "The audit log, newest first: when, who (page, cli, api:<token>), what", "responses": ok("the entries") } },
            "/api/v1/password-policy": { "get": { "summary": "The password levels (policy.sip_password, policy.admin_password) and the devices whose SIP passwords fall short", "responses": ok("the report") } },
            "/api/v1/devices/{mac}/rotate-passwords": { "post": { "summary": "New generated SIP passwords for the lines below the policy, shown this once", "parameters": [mac], "responses": ok("the new passwords") } },
            "/api/v1/templates": { "get": { "summary": "Every vendor's editable templates and which are overridden", "responses": ok("the templates") } },
            "/api/v1/templates/{vendor}/{file}": {
                "get": { "summary": "A template: current text, stock text, the override as a diff", "parameters": template, "responses": ok("the template") },
                "put": { "summary": "Check and save an override (refused with the line and cause if it does not render or parse)", "parameters": template, "requestBody": template_body, "responses": ok("the fingerprints before and after, and the devices now pending") },
                "delete": { "summary": "Remove the override: back to stock", "parameters": template, "responses": ok("the fingerprints and the devices now pending") }
            },
            "/api/v1/templates/{vendor}/{file}/preview": { "post": { "summary": "Render an unsaved edit for a device (body also names mac), secrets masked", "parameters": template, "requestBody": template_body, "responses": ok("the rendered files") } },
            "/api/v1/templates/{vendor}/{file}/reprovision": { "post": { "summary": "Send check-sync to the devices a template change left pending", "parameters": template, "responses": ok("each device's result") } },
            "/metrics": { "get": { "summary": "Prometheus metrics", "responses": ok("text exposition format") } }
        }
    })
}

/// The header that carries a backup's passphrase (never a query parameter: URLs get logged).
const PASSPHRASE_HEADER: &str = "backup-passphrase";

/// `GET /api/v1/backup[?files=true]`: an encrypted backup, with the passphrase in the
/// `Backup-Passphrase` header.
async fn backup(
    caller: Caller,
    headers: axum::http::HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(passphrase) = headers.get(PASSPHRASE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string) else {
        return error(StatusCode::BAD_REQUEST, "give the backup's passphrase in the Backup-Passphrase header");
    };
    let include_files = query.get("files").is_some_and(|v| v == "true");
    let Caller { web, actor } = caller;
    match blocking(move || web.app.create_backup(&passphrase, include_files, &actor)).await {
        Ok(file) => super::backup::attachment(file),
        Err(e) => app_error(e),
    }
}

async fn update_status(caller: Caller) -> Response {
    json(super::update::status(&caller.web))
}

/// Streams the bundle in the body to the inactive slot; see [`crate::update`].
async fn install_update(Caller { web, actor }: Caller, request: Request) -> Response {
    match super::update::install_raw(&web, request.into_body(), &actor).await {
        Ok(installed) => json(serde_json::json!({ "installed": installed, "rebooting": true })),
        Err(
            failure @ (UploadError::Unavailable
            | UploadError::Restarting
            | UploadError::Refused(crate::update::UpdateError::OnTrial(_))),
        ) => error(StatusCode::CONFLICT, failure.to_string()),
        Err(failure) => error(StatusCode::BAD_REQUEST, failure.to_string()),
    }
}
