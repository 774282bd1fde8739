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
//! cookies, the session and CSRF checks), [`session`] (sessions and the login throttle) and
//! `update` (streamed firmware uploads).

use std::sync::Arc;

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
mod system;
mod templates;
mod update;

/// Largest request body read (a CSV import of 5,000 devices fits).
const BODY_LIMIT: usize = 1024 * 1024;

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
        api_throttle: Arc::new(LoginThrottle::with_free_failures(api::FREE_TOKEN_FAILURES)),
        started: crate::clock::now(),
        updates,
    };
    Router::new()
        .route("/", get(devices::devices_page))
        .route("/static/style.css", get(page::stylesheet))
        .route("/setup", get(login::setup_page).post(login::setup))
        .route("/setup/restore", post(backup::restore))
        .route("/login", get(login::login_page).post(login::login))
        .route("/logout", post(login::logout))
        .route("/devices", post(devices::add_device))
        .route("/devices/{mac}", get(device::device_page))
        .route("/devices/{mac}/{action}", post(device::device_action))
        .route("/seen", get(seen::seen_page))
        .route("/seen/{mac}/{action}", post(seen::seen_action))
        .route("/import", get(import::import_page).post(import::import))
        .route("/export.csv", get(import::export))
        .route("/settings", get(settings::settings_page).post(settings::save_settings))
        .route("/settings/certificate", post(settings::certificate))
        .route("/settings/password", post(settings::change_password))
        .route("/settings/policy/rotate/{which}", post(settings::rotate_passwords))
        .route("/templates", get(templates::templates_page))
        .route("/templates/{vendor}/{file}", get(templates::template_page).post(templates::template_action))
        .route("/system", get(system::system_page))
        .route("/system/update", post(system::update_upload))
        .route("/system/backup", post(backup::download))
        .route("/system/backup/copy", post(backup::copy_now))
        .route("/settings/api-tokens", post(settings::create_api_token))
        .route("/settings/api-tokens/{id}/revoke", post(settings::revoke_api_token))
        .merge(api::routes())
        // Forms and API bodies are small; only an import may be larger.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(web)
}
