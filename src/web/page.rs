//! The page's plumbing: the compiled-in templates and the headers every page carries,
//! cookies, the session and CSRF checks (the [`SessionForm`] extractor), pre-login forms with
//! a double-submit token, and running appliance work off the async workers.

use std::collections::HashMap;
use std::sync::OnceLock;

use axum::extract::{Form, FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use super::Web;
use super::session::COOKIE;
use crate::app::AppError;

/// Argon2 checks running at once: each takes about 19 MiB and a good fraction of a core,
/// so a burst of logins queues instead of exhausting a small board.
pub(super) static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// The pre-login double-submit cookie.
pub(super) const FORM_COOKIE: &str = "__Host-provbox_form";

pub(super) fn environment() -> &'static minijinja::Environment<'static> {
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
            ("templates.html", include_str!("pages/templates.html")),
            ("template.html", include_str!("pages/template.html")),
        ] {
            // The pages are part of the binary; a broken one fails every test that opens it.
            environment.add_template(name, source).expect("page templates parse");
        }
        environment
    })
}

/// Headers every page carries: never cached, never framed, no referrer, no foreign content.
pub(super) fn page_response(status: StatusCode, body: String) -> Response {
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

pub(super) fn render(status: StatusCode, template: &str, context: minijinja::Value) -> Response {
    match environment().get_template(template).and_then(|t| t.render(context)) {
        Ok(body) => page_response(status, body),
        Err(error) => {
            tracing::error!("page {template}: {error:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, "page error").into_response()
        }
    }
}

pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

pub(super) fn set_cookie(response: &mut Response, name: &str, value: &str, max_age: Option<u64>) {
    let age = max_age.map(|seconds| format!("; Max-Age={seconds}")).unwrap_or_default();
    let text = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict{age}");
    if let Ok(value) = HeaderValue::from_str(&text) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The session id and its CSRF token, if the request carries a live session. Sessions opened
/// with another admin password than the one in force are ended first, and every session
/// ends when no admin password is set (a restored backup without one).
pub(super) fn session(web: &Web, headers: &HeaderMap) -> Option<(String, String)> {
    let id = cookie(headers, COOKIE)?;
    web.sessions.end_unless(web.app.admin_credential().ok()?);
    let csrf = web.sessions.touch(&id)?;
    Some((id, csrf))
}

/// Where to go without a session: setup on a new appliance, else login.
pub(super) fn to_entry(web: &Web) -> Response {
    match web.app.admin_configured() {
        Ok(false) => Redirect::to("/setup").into_response(),
        _ => Redirect::to("/login").into_response(),
    }
}

/// A logged-in form post whose CSRF field checked out: the session's CSRF token (for the
/// page answered) and the form's fields. Without a live session the request goes to the
/// login page, whatever its form carried; with a wrong or missing token it is refused.
pub(super) struct SessionForm {
    /// The session's CSRF token, for the page answered.
    pub(super) csrf: String,
    /// The form's fields.
    pub(super) fields: HashMap<String, String>,
}

impl FromRequest<Web> for SessionForm {
    type Rejection = Response;

    async fn from_request(request: Request, web: &Web) -> Result<Self, Response> {
        // The session first: a request without one never gets its body read.
        let Some((id, _)) = session(web, request.headers()) else { return Err(to_entry(web)) };
        let Form(fields) =
            Form::<HashMap<String, String>>::from_request(request, web).await.map_err(IntoResponse::into_response)?;
        let token = fields.get("csrf").map(String::as_str).unwrap_or("");
        if !web.sessions.csrf_ok(&id, token) {
            tracing::warn!("page: a form post without a valid CSRF token was refused");
            return Err((StatusCode::FORBIDDEN, "missing or wrong CSRF token; reload the page").into_response());
        }
        let csrf = web.sessions.touch(&id).ok_or_else(|| to_entry(web))?;
        Ok(SessionForm { csrf, fields })
    }
}

/// A page path `/<kind>/{mac}/{action}`: the MAC parsed, or the same bare 404 as any other
/// unknown page.
pub(super) struct MacAction {
    /// The device or seen phone.
    pub(super) mac: crate::mac::Mac,
    /// What to do with it.
    pub(super) action: String,
}

impl FromRequestParts<Web> for MacAction {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<MacAction, Response> {
        let Path((mac, action)) = Path::<(String, String)>::from_request_parts(parts, web)
            .await
            .map_err(|_| StatusCode::NOT_FOUND.into_response())?;
        let mac = mac.parse().map_err(|_| StatusCode::NOT_FOUND.into_response())?;
        Ok(MacAction { mac, action })
    }
}

/// A pre-login form post (setup, login) whose double-submit token checked out: the
/// cookie's token and the form's `form` field agree (constant-time). Anything else is
/// refused before the form is looked at.
pub(super) struct PreLoginForm {
    /// The client.
    pub(super) peer: crate::server::Peer,
    /// The form's fields.
    pub(super) fields: HashMap<String, String>,
}

impl FromRequest<Web> for PreLoginForm {
    type Rejection = Response;

    async fn from_request(request: Request, web: &Web) -> Result<Self, Response> {
        let headers = request.headers().clone();
        // The accept loop attaches the peer to every request.
        let peer = request.extensions().get::<crate::server::Peer>().copied();
        // Without the double-submit cookie the form cannot match: its body is not read.
        if cookie(&headers, FORM_COOKIE).is_none_or(|value| value.is_empty()) {
            return Err((StatusCode::FORBIDDEN, "missing or wrong form token; reload the page").into_response());
        }
        let Form(fields) =
            Form::<HashMap<String, String>>::from_request(request, web).await.map_err(IntoResponse::into_response)?;
        let matches = form_token_ok(&headers, fields.get("form").map(String::as_str).unwrap_or(""));
        match (matches, peer) {
            (true, Some(peer)) => Ok(PreLoginForm { peer, fields }),
            _ => Err((StatusCode::FORBIDDEN, "missing or wrong form token; reload the page").into_response()),
        }
    }
}

/// Whether a pre-login form's `form` field equals its double-submit cookie (constant-time).
pub(super) fn form_token_ok(headers: &HeaderMap, field: &str) -> bool {
    let cookie = cookie(headers, FORM_COOKIE).unwrap_or_default();
    !cookie.is_empty() && bool::from(cookie.as_bytes().ct_eq(field.as_bytes()))
}

/// A pre-login form page with a fresh double-submit token.
pub(super) fn form_page(
    template: &str,
    status: StatusCode,
    flash: Option<String>,
    extra: minijinja::Value,
) -> Response {
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

pub(super) async fn stylesheet() -> Response {
    let mut response = include_str!("pages/style.css").into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css"));
    response
}

pub(super) fn page_error(error: &AppError) -> (String, &'static str) {
    (format!("{error}; nothing was changed"), "error")
}

/// Builds a page on a blocking thread, so that its store reads and rendering stay off the
/// async workers, as the API's do.
pub(super) async fn off_thread(build: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(build)
        .await
        .unwrap_or_else(|_| (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response())
}

/// Runs blocking appliance work (store writes, argon2, rendering) off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AppError> + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| Err(AppError::Internal(e.to_string())))
}
