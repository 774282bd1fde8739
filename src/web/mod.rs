//! The technician's page on the HTTPS listener: server-rendered HTML (minijinja templates
//! compiled in, one stylesheet, no script needed).
//!
//! - First start: with no admin password, `/setup` asks for one plus the setup code printed
//!   on the console ([`crate::admin`]).
//! - Login: argon2id check, a session cookie (Secure, HttpOnly, SameSite=Strict, idle
//!   timeout), progressive delays after failures per address and for the account.
//! - Every form that changes something carries a CSRF token: the session's, or before login
//!   a double-submit token in its own cookie.
//!
//! [`session`] holds the sessions and the login throttle.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Extension, Form, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::app::views::RedirectView;
use crate::app::views::{ConfigState, DeviceView, EnrollmentView};
use crate::app::{App, AppError};
use crate::devices::{DeviceSpec, LineSpec};
use crate::mac::Mac;
use crate::pki::Pki;
use crate::server::Peer;
use crate::update::Updates;

pub mod api;
pub mod session;
mod update;

use session::{COOKIE, LoginThrottle, Sessions};

/// Largest request body read (a CSV import of 5,000 devices fits).
const BODY_LIMIT: usize = 1024 * 1024;

/// Argon2 checks running at once: each takes about 19 MiB and a good fraction of a core,
/// so a burst of logins queues instead of exhausting a small board.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The pre-login double-submit cookie.
const FORM_COOKIE: &str = "__Host-provbox_form";

/// What the page handlers share.
#[derive(Clone)]
pub struct Web {
    app: Arc<App>,
    pki: Arc<Pki>,
    sessions: Arc<Sessions>,
    /// Failed page logins.
    throttle: Arc<LoginThrottle>,
    /// Bad API tokens, counted apart: they never delay the page or valid tokens.
    api_throttle: Arc<LoginThrottle>,
    started: u64,
    /// Root-image updates, when running from the firmware image.
    updates: Option<Arc<Updates>>,
}

/// The page's routes, for the HTTPS listener.
pub fn routes(app: Arc<App>, pki: Arc<Pki>, updates: Option<Arc<Updates>>) -> Router {
    let web = Web {
        app,
        pki,
        sessions: Arc::default(),
        throttle: Arc::default(),
        api_throttle: Arc::default(),
        started: crate::clock::now(),
        updates,
    };
    Router::new()
        .route("/", get(devices_page))
        .route("/static/style.css", get(stylesheet))
        .route("/setup", get(setup_page).post(setup))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/devices", post(add_device))
        .route("/devices/{mac}", get(device_page))
        .route("/devices/{mac}/{action}", post(device_action))
        .route("/seen", get(seen_page))
        .route("/seen/{mac}/{action}", post(seen_action))
        .route("/import", get(import_page).post(import))
        .route("/export.csv", get(export))
        .route("/settings", get(settings_page).post(save_settings))
        .route("/settings/certificate", post(certificate))
        .route("/settings/password", post(change_password))
        .route("/system", get(system_page))
        .route("/system/update", post(update_upload))
        .route("/settings/api-tokens", post(create_api_token))
        .route("/settings/api-tokens/{id}/revoke", post(revoke_api_token))
        .merge(api::routes())
        // Forms and API bodies are small; only an import may be larger.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(web)
}

fn environment() -> &'static minijinja::Environment<'static> {
    static ENVIRONMENT: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let mut environment = minijinja::Environment::new();
        for (name, source) in [
            ("layout.html", include_str!("pages/layout.html")),
            ("setup.html", include_str!("pages/setup.html")),
            ("login.html", include_str!("pages/login.html")),
            ("devices.html", include_str!("pages/devices.html")),
            ("device.html", include_str!("pages/device.html")),
            ("seen.html", include_str!("pages/seen.html")),
            ("import.html", include_str!("pages/import.html")),
            ("settings.html", include_str!("pages/settings.html")),
            ("system.html", include_str!("pages/system.html")),
        ] {
            // The pages are part of the binary; a broken one fails every test that opens it.
            environment.add_template(name, source).expect("page templates parse");
        }
        environment
    })
}

/// Headers every page carries: never cached, never framed, no referrer, no foreign content.
fn page_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    );
    response
}

fn render(status: StatusCode, template: &str, context: minijinja::Value) -> Response {
    match environment().get_template(template).and_then(|t| t.render(context)) {
        Ok(body) => page_response(status, body),
        Err(error) => {
            tracing::error!("page {template}: {error:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, "page error").into_response()
        }
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

fn set_cookie(response: &mut Response, name: &str, value: &str, max_age: Option<u64>) {
    let age = max_age.map(|seconds| format!("; Max-Age={seconds}")).unwrap_or_default();
    let text = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict{age}");
    if let Ok(value) = HeaderValue::from_str(&text) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The session id and its CSRF token, if the request carries a live session. Sessions that
/// started before the admin password last changed are ended first.
fn session(web: &Web, headers: &HeaderMap) -> Option<(String, String)> {
    let id = cookie(headers, COOKIE)?;
    if let Ok(Some(changed)) = web.app.admin_changed_at() {
        web.sessions.end_before(changed);
    }
    let csrf = web.sessions.touch(&id)?;
    Some((id, csrf))
}

/// Where to go without a session: setup on a new appliance, else login.
fn to_entry(web: &Web) -> Response {
    match web.app.admin_configured() {
        Ok(false) => Redirect::to("/setup").into_response(),
        _ => Redirect::to("/login").into_response(),
    }
}

/// A logged-in form post whose CSRF field checked out: the session's CSRF token (for the
/// page answered) and the form's fields. Without a live session the request goes to the
/// login page, whatever its form carried; with a wrong or missing token it is refused.
struct SessionForm {
    csrf: String,
    fields: HashMap<String, String>,
}

impl FromRequest<Web> for SessionForm {
    type Rejection = Response;

    async fn from_request(request: Request, web: &Web) -> Result<Self, Response> {
        let headers = request.headers().clone();
        let Form(fields) =
            Form::<HashMap<String, String>>::from_request(request, web).await.map_err(IntoResponse::into_response)?;
        let Some((id, _)) = session(web, &headers) else { return Err(to_entry(web)) };
        let token = fields.get("csrf").map(String::as_str).unwrap_or("");
        if !web.sessions.csrf_ok(&id, token) {
            tracing::warn!("page: a form post without a valid CSRF token was refused");
            return Err((StatusCode::FORBIDDEN, "missing or wrong CSRF token; reload the page").into_response());
        }
        let csrf = web.sessions.touch(&id).ok_or_else(|| to_entry(web))?;
        Ok(SessionForm { csrf, fields })
    }
}

/// Checks the double-submit token of a pre-login form.
fn form_token_ok(headers: &HeaderMap, form: &HashMap<String, String>) -> bool {
    let cookie = cookie(headers, FORM_COOKIE).unwrap_or_default();
    let field = form.get("form").map(String::as_str).unwrap_or("");
    !cookie.is_empty() && bool::from(cookie.as_bytes().ct_eq(field.as_bytes()))
}

/// A pre-login form page with a fresh double-submit token.
fn form_page(template: &str, status: StatusCode, flash: Option<String>, extra: minijinja::Value) -> Response {
    let token = crate::hex::encode(&crate::random::bytes::<16>());
    let title = if template == "setup.html" { "Set up" } else { "Log in" };
    let context = minijinja::context! {
        title, form_token => token, flash, flash_kind => "error",
        suggestion => crate::devices::generate_password(), ..extra
    };
    let mut response = render(status, template, context);
    set_cookie(&mut response, FORM_COOKIE, &token, Some(3600));
    response
}

async fn stylesheet() -> Response {
    let mut response = include_str!("pages/style.css").into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css"));
    response
}

async fn setup_page(State(web): State<Web>) -> Response {
    match web.app.admin_configured() {
        Ok(false) => form_page("setup.html", StatusCode::OK, None, minijinja::context! {}),
        _ => Redirect::to("/login").into_response(),
    }
}

async fn setup(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !form_token_ok(&headers, &form) {
        return (StatusCode::FORBIDDEN, "missing or wrong form token; reload the page").into_response();
    }
    if !matches!(web.app.admin_configured(), Ok(false)) {
        return Redirect::to("/login").into_response();
    }
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let refuse =
        |message: String| form_page("setup.html", StatusCode::BAD_REQUEST, Some(message), minijinja::context! {});
    if field("password") != field("confirm") {
        return refuse("the two passwords differ; nothing was saved".into());
    }
    let ip = peer.ip();
    let app = web.app.clone();
    let (password, code) = (field("password"), field("code"));
    let _hashing = HASHING.acquire().await;
    let result =
        tokio::task::spawn_blocking(move || app.set_admin_password(&password, Some(&code), &format!("page {ip}")))
            .await;
    match result {
        Ok(Ok(())) => logged_in(&web),
        Ok(Err(error)) => {
            tracing::warn!(%ip, "page setup refused: {error}");
            refuse(format!("{error}; nothing was saved"))
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
    }
}

/// Starts a session and goes to the device list.
fn logged_in(web: &Web) -> Response {
    let id = web.sessions.start();
    let mut response = Redirect::to("/").into_response();
    set_cookie(&mut response, COOKIE, &id, None);
    set_cookie(&mut response, FORM_COOKIE, "", Some(0));
    response
}

async fn login_page(State(web): State<Web>) -> Response {
    match web.app.admin_configured() {
        Ok(true) => form_page("login.html", StatusCode::OK, None, minijinja::context! {}),
        _ => Redirect::to("/setup").into_response(),
    }
}

async fn login(
    State(web): State<Web>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !form_token_ok(&headers, &form) {
        return (StatusCode::FORBIDDEN, "missing or wrong form token; reload the page").into_response();
    }
    let ip = peer.ip();
    if let Some(wait) = web.throttle.wait(ip, Instant::now()) {
        tracing::warn!(%ip, "page login refused: too many failures, {} s to wait", wait.as_secs() + 1);
        let message = format!("too many failed logins; try again in {} s", wait.as_secs() + 1);
        return form_page("login.html", StatusCode::TOO_MANY_REQUESTS, Some(message), minijinja::context! {});
    }
    let app = web.app.clone();
    let password = form.get("password").cloned().unwrap_or_default();
    // Counted as failed before the check, so attempts sent in parallel are all counted;
    // a success clears it.
    web.throttle.failed(ip, Instant::now());
    let _hashing = HASHING.acquire().await;
    let verified = tokio::task::spawn_blocking(move || app.verify_admin(&password)).await;
    match verified {
        Ok(Ok(true)) => {
            web.throttle.succeeded(ip);
            tracing::info!(%ip, "page login");
            logged_in(&web)
        }
        Ok(Ok(false)) => {
            tracing::warn!(%ip, "page login failed: wrong password");
            let message = "wrong password".to_string();
            form_page("login.html", StatusCode::UNAUTHORIZED, Some(message), minijinja::context! {})
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
    }
}

async fn logout(State(web): State<Web>, headers: HeaderMap, _checked: SessionForm) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        web.sessions.end(&id);
    }
    let mut response = Redirect::to("/login").into_response();
    set_cookie(&mut response, COOKIE, "", Some(0));
    response
}

/// One row of the device table, in words.
#[derive(Serialize)]
struct Row {
    mac: String,
    vendor: String,
    model: String,
    extensions: String,
    name: String,
    contact: String,
    config: &'static str,
    enrollment: String,
    redirect: String,
}

/// `2026-11-23 14:05 UTC`.
fn when(unix: u64) -> String {
    format!("{} {:02}:{:02} UTC", crate::clock::date(unix), unix / 3600 % 24, unix / 60 % 60)
}

/// A redirect state in words.
pub fn redirect_words(view: &RedirectView) -> String {
    match view {
        RedirectView::Off { reason } => format!("off: {reason}"),
        RedirectView::NotRegistered => "not registered".into(),
        RedirectView::Pending { action, attempts, next_try, last_error } => {
            let error = if last_error.is_empty() { String::new() } else { format!("; last error: {last_error}") };
            let next = if *next_try == 0 { "now".to_string() } else { when(*next_try) };
            format!("pending {action} (attempts {attempts}, next try {next}{error})")
        }
        RedirectView::Registered { at } => format!("registered {}", when(*at)),
        RedirectView::Deregistered { at } => format!("deregistered {}", when(*at)),
        RedirectView::Failed { message, .. } => format!("failed: {message}"),
    }
}

fn row(device: &DeviceView) -> Row {
    let contact = device.last_contact.as_ref().map_or_else(
        || "never".to_string(),
        |c| format!("{}, {}, {}", when(c.at), c.ip, if c.firmware.is_empty() { "-" } else { c.firmware.as_str() }),
    );
    Row {
        mac: device.mac.clone(),
        vendor: device.vendor.clone(),
        model: device.model.clone(),
        extensions: device.lines.iter().map(|l| l.extension.clone()).collect::<Vec<_>>().join(", "),
        name: device.lines.first().map(|l| l.name.clone()).unwrap_or_default(),
        contact,
        config: match device.config {
            ConfigState::NeverFetched => "never fetched",
            ConfigState::Current => "current",
            ConfigState::Pending => "pending",
        },
        enrollment: match &device.enrollment {
            EnrollmentView::Open => "open".into(),
            EnrollmentView::Grace { until } => format!("in grace until {}", when(*until)),
            EnrollmentView::Locked { since } => format!("locked since {}", when(*since)),
        },
        redirect: redirect_words(&device.redirect),
    }
}

/// Devices per page of the list: keeps a page well under 50 KB.
const PAGE_SIZE: usize = 50;

/// The device list with `flash` and, after an unlock, what it did.
fn device_list(web: &Web, csrf: &str, flash: Option<(String, &str)>, unlocked: Option<&DeviceView>) -> Response {
    device_page_of(web, csrf, flash, unlocked, 1)
}

/// Page `page` (from 1) of the device list.
fn device_page_of(
    web: &Web,
    csrf: &str,
    flash: Option<(String, &str)>,
    unlocked: Option<&DeviceView>,
    page: usize,
) -> Response {
    let devices = match web.app.devices() {
        Ok(devices) => devices,
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    };
    let pages = devices.len().div_ceil(PAGE_SIZE).max(1);
    let page = page.clamp(1, pages);
    let rows: Vec<Row> = devices.iter().skip((page - 1) * PAGE_SIZE).take(PAGE_SIZE).map(row).collect();
    let total = devices.len();
    let vendors: Vec<String> = web.app.templates.catalog().vendors.keys().cloned().collect();
    let unlocked = unlocked.map(|device| {
        minijinja::context! {
            mac => device.mac.clone(),
            enrollment_url => device.enrollment_url.clone(),
            redirect => redirect_words(&device.redirect),
        }
    });
    let (flash, flash_kind) = flash.map_or((None, "ok"), |(text, kind)| (Some(text), kind));
    let status = if flash_kind == "error" { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    render(
        status,
        "devices.html",
        minijinja::context! { title => "Devices", csrf, devices => rows, total, page, pages, vendors, flash, flash_kind, unlocked },
    )
}

async fn devices_page(
    State(web): State<Web>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let page = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    match session(&web, &headers) {
        Some((_, csrf)) => device_page_of(&web, &csrf, None, None, page),
        None => to_entry(&web),
    }
}

fn page_error(error: &AppError) -> (String, &'static str) {
    (format!("{error}; nothing was changed"), "error")
}

async fn add_device(State(web): State<Web>, SessionForm { csrf, fields: form }: SessionForm) -> Response {
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let password = field("sip_password");
    let spec = DeviceSpec {
        mac: field("mac"),
        vendor: field("vendor"),
        model: field("model"),
        lines: vec![LineSpec {
            extension: field("extension"),
            name: field("name"),
            sip_user: None,
            sip_password: (!password.is_empty()).then_some(password),
        }],
    };
    let app = web.app.clone();
    match tokio::task::spawn_blocking(move || app.add_device(&spec, "page")).await {
        Ok(Ok(device)) => device_list(&web, &csrf, Some((format!("added {}", device.mac), "ok")), None),
        Ok(Err(error)) => device_list(&web, &csrf, Some(page_error(&error)), None),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
    }
}

/// Runs blocking appliance work (store writes, argon2, rendering) off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AppError> + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| Err(AppError::Internal(e.to_string())))
}

/// What an action on a device did, shown above its page.
struct ActionResult {
    title: String,
    lines: Vec<String>,
}

/// The device page, optionally with secrets revealed and an action's result.
fn device_detail(web: &Web, csrf: &str, mac: &Mac, revealed: bool, result: Option<ActionResult>) -> Response {
    let device = match web.app.device_view(mac, false) {
        Ok(device) => device,
        Err(AppError::NoDevice(_)) => return StatusCode::NOT_FOUND.into_response(),
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    };
    let catalog = web.app.templates.catalog();
    let file =
        catalog.vendor(&device.vendor).ok().and_then(|v| v.device_file_name(mac, &device.model)).unwrap_or_default();
    let config_text = match web.app.render(mac, &file, revealed) {
        Ok(text) => text,
        Err(error) => format!("(cannot render {file}: {error})"),
    };
    let row = row(&device);
    let lan_window =
        device.lan_window_until.map_or_else(|| "closed".to_string(), |until| format!("open until {}", when(until)));
    let result = result.map(|r| minijinja::context! { title => r.title, lines => r.lines });
    render(
        StatusCode::OK,
        "device.html",
        minijinja::context! {
            title => device.mac.clone(), csrf, d => device, contact => row.contact, config => row.config,
            enrollment => row.enrollment, redirect => row.redirect, lan_window, file, config_text, revealed, result,
        },
    )
}

async fn device_page(State(web): State<Web>, Path(mac): Path<String>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = session(&web, &headers) else { return to_entry(&web) };
    match mac.parse::<Mac>() {
        Ok(mac) => device_detail(&web, &csrf, &mac, false, None),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn device_action(
    State(web): State<Web>,
    Path((mac, action)): Path<(String, String)>,
    SessionForm { csrf, fields: form }: SessionForm,
) -> Response {
    let Ok(mac) = mac.parse::<Mac>() else { return StatusCode::NOT_FOUND.into_response() };
    let app = web.app.clone();
    let outcome: Result<Option<ActionResult>, AppError> = match action.as_str() {
        "unlock" => {
            return match blocking(move || app.unlock(&mac, "page")).await {
                Ok(device) => device_list(&web, &csrf, None, Some(&device)),
                Err(error) => device_list(&web, &csrf, Some(page_error(&error)), None),
            };
        }
        "remove" => {
            return match blocking(move || app.remove_device(&mac, "page")).await {
                Ok(()) => device_list(&web, &csrf, Some((format!("removed {mac}"), "ok")), None),
                Err(error) => device_list(&web, &csrf, Some(page_error(&error)), None),
            };
        }
        "reveal" => {
            tracing::info!(%mac, "page: configuration revealed");
            return device_detail(&web, &csrf, &mac, true, None);
        }
        "reprovision" => app.reprovision(&mac, std::time::Duration::from_secs(8)).await.map(|sync| {
            Some(ActionResult {
                title: format!("Reprovision: {}", sync.result),
                lines: [format!("NOTIFY {} to {}", sync.event, sync.target), sync.advice]
                    .into_iter()
                    .filter(|line| !line.is_empty())
                    .collect(),
            })
        }),
        "edit" => {
            let field = |name: &str| form.get(name).cloned().unwrap_or_default();
            let password = field("sip_password");
            let current = match web.app.device(&mac) {
                Ok(device) => device,
                Err(_) => return StatusCode::NOT_FOUND.into_response(),
            };
            // The form edits the first line; its SIP user stays, and its password unless a
            // new one is given. The other lines stay as they are.
            let mut lines: Vec<LineSpec> = current
                .lines
                .iter()
                .map(|line| LineSpec {
                    extension: line.extension.to_string(),
                    name: line.display_name.to_string(),
                    sip_user: Some(line.sip_user.to_string()),
                    sip_password: Some(line.sip_password.to_string()),
                })
                .collect();
            if let Some(first) = lines.first_mut() {
                first.extension = field("extension");
                first.name = field("name");
                if !password.is_empty() {
                    first.sip_password = Some(password);
                }
            }
            let spec =
                DeviceSpec { mac: mac.to_string(), vendor: current.vendor.to_string(), model: field("model"), lines };
            blocking(move || app.edit_device(&mac, &spec, "page"))
                .await
                .map(|_| Some(ActionResult { title: "Saved".into(), lines: Vec::new() }))
        }
        "lan-window" => {
            let minutes = form.get("minutes").and_then(|m| m.parse().ok()).unwrap_or(15);
            blocking(move || app.open_lan_window(&mac, minutes, "page")).await.map(|device| {
                let until = device.lan_window_until.map(when).unwrap_or_default();
                Some(ActionResult { title: format!("LAN window open until {until}"), lines: Vec::new() })
            })
        }
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    match outcome {
        Ok(result) => device_detail(&web, &csrf, &mac, false, result),
        Err(error) => {
            let result = ActionResult { title: "Refused".into(), lines: vec![page_error(&error).0] };
            device_detail(&web, &csrf, &mac, false, Some(result))
        }
    }
}

async fn seen_page(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = session(&web, &headers) else { return to_entry(&web) };
    seen_list(&web, &csrf, None)
}

fn seen_list(web: &Web, csrf: &str, flash: Option<(String, &str)>) -> Response {
    let seen: Vec<minijinja::Value> = match web.app.phones_seen() {
        Ok(seen) => seen
            .iter()
            .map(|p| {
                minijinja::context! {
                    mac => p.mac.to_string(), vendor => p.vendor.to_string(), model => p.model.to_string(),
                    ip => p.ip.to_string(), at => when(p.at),
                }
            })
            .collect(),
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    };
    let (flash, flash_kind) = flash.map_or((None, "ok"), |(text, kind)| (Some(text), kind));
    render(StatusCode::OK, "seen.html", minijinja::context! { title => "Phones seen", csrf, seen, flash, flash_kind })
}

async fn seen_action(
    State(web): State<Web>,
    Path((mac, action)): Path<(String, String)>,
    SessionForm { csrf, fields: form }: SessionForm,
) -> Response {
    let Ok(mac) = mac.parse::<Mac>() else { return StatusCode::NOT_FOUND.into_response() };
    let app = web.app.clone();
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let (extension, name) = (field("extension"), field("name"));
    let result = match action.as_str() {
        "approve" => blocking(move || app.approve_seen(&mac, &extension, &name, "page")).await.map(|device| {
            let until = device.lan_window_until.map(when).unwrap_or_default();
            format!("added {mac}; its LAN window is open until {until}")
        }),
        "dismiss" => blocking(move || app.dismiss_seen(&mac)).await.map(|()| format!("dismissed {mac}")),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    match result {
        Ok(text) => seen_list(&web, &csrf, Some((text, "ok"))),
        Err(error) => seen_list(&web, &csrf, Some(page_error(&error))),
    }
}

async fn import_page(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = session(&web, &headers) else { return to_entry(&web) };
    render(StatusCode::OK, "import.html", minijinja::context! { title => "Import", csrf })
}

async fn import(State(web): State<Web>, SessionForm { csrf, fields: form }: SessionForm) -> Response {
    let csv = form.get("csv").cloned().unwrap_or_default();
    let partial = form.get("partial").is_some_and(|v| v == "on");
    let app = web.app.clone();
    let text = csv.clone();
    match blocking(move || app.import(&text, partial, "page")).await {
        Ok(report) => {
            let skipped = report.problems.iter().map(|p| format!("line {}: {} (skipped)", p.line, p.reason));
            let lines: Vec<String> = skipped.collect();
            let flash = format!(
                "imported {} device(s){}",
                report.imported,
                if lines.is_empty() { String::new() } else { format!("; {}", lines.join("; ")) }
            );
            device_list(&web, &csrf, Some((flash, "ok")), None)
        }
        Err(AppError::Import(problems)) => render(
            StatusCode::BAD_REQUEST,
            "import.html",
            minijinja::context! { title => "Import", csrf, problems, csv },
        ),
        Err(error) => device_list(&web, &csrf, Some(page_error(&error)), None),
    }
}

async fn export(State(web): State<Web>, headers: HeaderMap) -> Response {
    if session(&web, &headers).is_none() {
        return to_entry(&web);
    }
    match web.app.export(false) {
        Ok(csv) => {
            let mut response = csv.into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
            headers
                .insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"devices.csv\""));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

fn settings_form(web: &Web, csrf: &str, status: StatusCode, flash: Option<(String, &str)>) -> Response {
    settings_form_with(web, csrf, status, flash, None)
}

fn settings_form_with(
    web: &Web,
    csrf: &str,
    status: StatusCode,
    flash: Option<(String, &str)>,
    new_token: Option<String>,
) -> Response {
    let tokens: Vec<minijinja::Value> = web
        .app
        .api_tokens()
        .unwrap_or_default()
        .into_iter()
        .map(|t| minijinja::context! { name => t.name, id => t.id, created => when(t.created) })
        .collect();
    let settings: Vec<minijinja::Value> = match web.app.settings_view() {
        Ok(views) => views
            .into_iter()
            .map(|view| {
                let secret = view.secret;
                minijinja::context! {
                    name => view.name, help => view.help, secret, is_set => secret && !view.default && view.value == crate::token::MASK,
                    value => if secret { String::new() } else { view.value },
                }
            })
            .collect(),
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    };
    let (flash, flash_kind) = flash.map_or((None, "ok"), |(text, kind)| (Some(text), kind));
    render(
        status,
        "settings.html",
        minijinja::context! {
            title => "Settings", csrf, settings, flash, flash_kind, suggestion => crate::devices::generate_password(),
            tokens, new_token,
        },
    )
}

async fn settings_page(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = session(&web, &headers) else { return to_entry(&web) };
    settings_form(&web, &csrf, StatusCode::OK, None)
}

async fn save_settings(State(web): State<Web>, SessionForm { csrf, fields: form }: SessionForm) -> Response {
    let app = web.app.clone();
    let result = blocking(move || {
        // Validate everything first: a refused value saves nothing.
        let current: HashMap<String, String> =
            app.settings_view()?.into_iter().map(|view| (view.name, view.value)).collect();
        let mut changes = Vec::new();
        let table = crate::app::config::settings_table();
        for spec in table.specs() {
            let Some(value) = form.get(spec.name) else { continue };
            // Secret fields are write-only: empty keeps the stored value.
            if spec.secret && value.is_empty() {
                continue;
            }
            let value = table.validate(spec.name, value)?;
            if spec.secret || current.get(spec.name) != Some(&value) {
                changes.push((spec.name, value));
            }
        }
        for (name, value) in &changes {
            app.set_setting(name, value, "page")?;
        }
        Ok(changes.len())
    })
    .await;
    match result {
        Ok(changed) => settings_form(&web, &csrf, StatusCode::OK, Some((format!("saved {changed} setting(s)"), "ok"))),
        Err(error) => settings_form(&web, &csrf, StatusCode::BAD_REQUEST, Some(page_error(&error))),
    }
}

async fn certificate(State(web): State<Web>, SessionForm { csrf, fields: form }: SessionForm) -> Response {
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    match web.pki.install_operator(&field("certificate"), &field("key")) {
        Ok(()) => {
            if let Err(error) = web.app.record_audit("page", "installed an operator certificate") {
                tracing::error!("audit log: {error}");
            }
            tracing::info!("page: operator certificate installed");
            settings_form(
                &web,
                &csrf,
                StatusCode::OK,
                Some(("operator certificate installed; served from the next connection".into(), "ok")),
            )
        }
        Err(error) => settings_form(
            &web,
            &csrf,
            StatusCode::BAD_REQUEST,
            Some((format!("{error}; the current certificate stays"), "error")),
        ),
    }
}

async fn change_password(State(web): State<Web>, SessionForm { csrf, fields: form }: SessionForm) -> Response {
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    if field("password") != field("confirm") {
        return settings_form(
            &web,
            &csrf,
            StatusCode::BAD_REQUEST,
            Some(("the two passwords differ; nothing was saved".into(), "error")),
        );
    }
    let app = web.app.clone();
    let (current, password) = (field("current"), field("password"));
    let _hashing = HASHING.acquire().await;
    let result = blocking(move || {
        if !app.verify_admin(&current)? {
            return Err(AppError::Admin(crate::admin::AdminError::SetupCode));
        }
        app.set_admin_password(&password, None, "page")
    })
    .await;
    match result {
        Ok(()) => {
            // Every other session ends with the old password; this one continues as a new one.
            web.sessions.end_all();
            let id = web.sessions.start();
            let csrf = web.sessions.touch(&id).unwrap_or_default();
            let message = "admin password changed; other sessions are logged out".to_string();
            let mut response = settings_form(&web, &csrf, StatusCode::OK, Some((message, "ok")));
            set_cookie(&mut response, COOKIE, &id, None);
            response
        }
        Err(AppError::Admin(crate::admin::AdminError::SetupCode)) => settings_form(
            &web,
            &csrf,
            StatusCode::BAD_REQUEST,
            Some(("the current password is wrong; nothing was saved".into(), "error")),
        ),
        Err(error) => settings_form(&web, &csrf, StatusCode::BAD_REQUEST, Some(page_error(&error))),
    }
}

async fn create_api_token(State(web): State<Web>, SessionForm { csrf, fields: form }: SessionForm) -> Response {
    let name = form.get("name").cloned().unwrap_or_default();
    let app = web.app.clone();
    match blocking(move || app.create_api_token(&name, "page")).await {
        Ok(token) => settings_form_with(&web, &csrf, StatusCode::OK, None, Some(token)),
        Err(error) => settings_form(&web, &csrf, StatusCode::BAD_REQUEST, Some(page_error(&error))),
    }
}

async fn revoke_api_token(
    State(web): State<Web>,
    Path(id): Path<String>,
    SessionForm { csrf, .. }: SessionForm,
) -> Response {
    let app = web.app.clone();
    match blocking(move || app.revoke_api_token(&id, "page")).await {
        Ok(count) => settings_form(&web, &csrf, StatusCode::OK, Some((format!("revoked {count} token(s)"), "ok"))),
        Err(error) => settings_form(&web, &csrf, StatusCode::BAD_REQUEST, Some(page_error(&error))),
    }
}

async fn system_page(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = session(&web, &headers) else { return to_entry(&web) };
    system_view(&web, &csrf, None).await
}

/// The system page, with `flash` after an update upload.
async fn system_view(web: &Web, csrf: &str, flash: Option<(String, &str)>) -> Response {
    let (live, capacity, low, high) = web.app.store_usage();
    let status = match web.app.redirect_status() {
        Ok(status) => status,
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    };
    let reachability = web.app.redirect_reachability().await.unwrap_or_default();
    let audit: Vec<minijinja::Value> = web
        .app
        .audit_log()
        .unwrap_or_default()
        .into_iter()
        .map(|e| minijinja::context! { at => when(e.at), actor => e.actor.to_string(), action => e.action.to_string() })
        .collect();
    let (flash, flash_kind) = flash.map_or((None, "ok"), |(text, kind)| (Some(text), kind));
    render(
        if flash_kind == "error" { StatusCode::BAD_REQUEST } else { StatusCode::OK },
        "system.html",
        minijinja::context! {
            title => "System", csrf, version => env!("CARGO_PKG_VERSION"), started => when(web.started),
            clock => status.clock, services => status.services, audit, reachability,
            store => format!("{} KiB live of {} KiB", live / 1024, capacity / 1024),
            erase => format!("{low} to {high}"), bootstrap => web.app.site.bootstrap_url.clone(),
            firmware => update::status(web), flash, flash_kind,
        },
    )
}

/// The page's update form: a signed bundle, streamed to the inactive root slot.
async fn update_upload(State(web): State<Web>, headers: HeaderMap, request: Request) -> Response {
    let Some((id, _)) = session(&web, &headers) else { return to_entry(&web) };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let sessions = web.sessions.clone();
    let outcome =
        update::install_form(&web, content_type, request.into_body(), "page", |token| sessions.csrf_ok(&id, token))
            .await;
    if let Err(update::UploadError::Csrf) = outcome {
        tracing::warn!("page: an update upload without a valid CSRF token was refused");
        return (StatusCode::FORBIDDEN, "missing or wrong CSRF token; reload the page").into_response();
    }
    let Some(csrf) = web.sessions.touch(&id) else { return to_entry(&web) };
    let flash = match outcome {
        Ok(done) => (
            format!(
                "Update {} written to root slot {}. The appliance restarts into it now; reload in a minute.",
                done.version, done.slot
            ),
            "ok",
        ),
        Err(error) => (format!("Update refused: {error}"), "error"),
    };
    system_view(&web, &csrf, Some(flash)).await
}
