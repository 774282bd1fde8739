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
//! One file per page: `devices` (the list), `device` (one phone and its actions),
//! `seen`, `import`, `settings`, `templates`, `system`, `login` (setup, login, logout), `backup`
//! (download on the system page, restore on the first-start page); [`api`]
//! is the JSON API and `/metrics`. The plumbing they share is in `page` (templates,
//! cookies, the session and CSRF checks), [`session`] (sessions and the login throttle),
//! `update` (streamed firmware uploads) and `stream` (streamed device lists).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::app::App;
use crate::pki::Pki;
use crate::update::Updates;
use session::{LoginThrottle, Sessions};

pub mod api;
mod backup;
mod device;
mod devices;
mod import;
mod login;
mod page;
mod seen;
pub mod session;
mod settings;
mod stream;
mod system;
mod templates;
mod update;

/// Largest request body read where a route says no other: a page form or an API call.
const BODY_LIMIT: usize = 64 * 1024;
/// Largest CSV import (5,000 devices fit).
const IMPORT_BODY_LIMIT: usize = 1024 * 1024;
/// Largest form before login (setup, login): a password and a token or two.
const LOGIN_BODY_LIMIT: usize = 8 * 1024;
/// The routes whose bodies are large uploads with their own time limits.
const UPLOAD_PATHS: [&str; 3] = ["/system/update", "/setup/restore", "/api/v1/update"];
/// How long an upload's connection may go without progress, either way: the uploads'
/// own wait for their next bytes (their handlers stop at that).
pub const UPLOAD_IDLE_LIMIT: Duration = Duration::from_secs(60);

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

/// The page's routes, for the HTTPS listener. A request body but an upload's must arrive
/// within `body_timeout`, whatever its pace: a client trickling one holds its connection no
/// longer (the firmware upload and the restore have their own limits).
pub fn routes(app: Arc<App>, pki: Arc<Pki>, updates: Option<Arc<Updates>>, body_timeout: Duration) -> Router {
    let web = Web {
        app,
        pki,
        sessions: Arc::default(),
        throttle: Arc::default(),
        api_throttle: Arc::new(LoginThrottle::with_free_failures(api::FREE_TOKEN_FAILURES)),
        started: crate::clock::now(),
        updates,
    };
    Router::new()
        .route("/", get(devices::devices_page))
        .route("/static/style.css", get(page::stylesheet))
        .route("/setup", get(login::setup_page).post(login::setup).layer(DefaultBodyLimit::max(LOGIN_BODY_LIMIT)))
        .route("/setup/restore", post(backup::restore))
        .route("/login", get(login::login_page).post(login::login).layer(DefaultBodyLimit::max(LOGIN_BODY_LIMIT)))
        .route("/logout", post(login::logout))
        .route("/devices", post(devices::add_device))
        .route("/devices/{mac}", get(device::device_page))
        .route("/devices/{mac}/{action}", post(device::device_action))
        .route("/seen", get(seen::seen_page))
        .route("/seen/{mac}/{action}", post(seen::seen_action))
        .route("/import", get(import::import_page).post(import::import).layer(DefaultBodyLimit::max(IMPORT_BODY_LIMIT)))
        .route("/export.csv", get(import::export))
        .route("/settings", get(settings::settings_page).post(settings::save_settings))
        .route("/settings/certificate", post(settings::certificate))
        .route("/settings/password", post(settings::change_password))
        .route("/settings/policy/rotate/{which}", post(settings::rotate_passwords))
        .route("/templates", get(templates::templates_page))
        .route(
            "/templates/{vendor}/{file}",
            get(templates::template_page)
                .post(templates::template_action)
                .layer(DefaultBodyLimit::max(api::TEMPLATE_BODY_LIMIT)),
        )
        .route("/system", get(system::system_page))
        .route("/system/update", post(system::update_upload))
        .route("/system/backup", post(backup::download))
        .route("/system/backup/copy", post(backup::copy_now))
        .route("/settings/api-tokens", post(settings::create_api_token))
        .route("/settings/api-tokens/{id}/revoke", post(settings::revoke_api_token))
        .merge(api::routes())
        // Forms and API bodies are small; routes that take more say so.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(body_timeout, body_deadline))
        .with_state(web)
}

/// Gives every request body but the uploads' `limit` to arrive in full.
async fn body_deadline(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if UPLOAD_PATHS.contains(&request.uri().path()) {
        // An upload stops reading while it writes what came (to flash, or to the install
        // service): the connection's idle limit must not count that against the client.
        if let Some(idle) = request.extensions().get::<crate::server::idle::IdleLimit>() {
            idle.extend_to(UPLOAD_IDLE_LIMIT);
        }
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = axum::body::Body::new(Deadline { inner: body, limit, expires: Box::pin(tokio::time::sleep(limit)) });
    next.run(axum::extract::Request::from_parts(parts, body)).await
}

/// A request body that fails once its deadline passes.
struct Deadline {
    inner: axum::body::Body,
    limit: Duration,
    expires: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl axum::body::HttpBody for Deadline {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if self.expires.as_mut().poll(cx).is_ready() {
            let late = format!("the request body took over {} s", self.limit.as_secs());
            return std::task::Poll::Ready(Some(Err(axum::Error::new(late))));
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
