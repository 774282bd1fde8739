//! First start and login: `/setup` (the admin password, guarded by the setup code printed on
//! the console), `/login` (argon2id, throttled per address and for the account) and
//! `/logout`.

use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::Web;
use super::page::{FORM_COOKIE, HASHING, PreLoginForm, SessionForm, cookie, form_page, set_cookie};
use super::session::COOKIE;
use crate::app::admin::CredentialTag;

pub(super) async fn setup_page(State(web): State<Web>) -> Response {
    match web.app.admin_configured() {
        Ok(false) => form_page("setup.html", StatusCode::OK, None, minijinja::context! {}),
        _ => Redirect::to("/login").into_response(),
    }
}

pub(super) async fn setup(State(web): State<Web>, PreLoginForm { peer, fields: form }: PreLoginForm) -> Response {
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
    // The setup code is a secret like a password: wrong ones count against the address (and
    // the account) as failed logins do, before the check, so parallel guesses all count.
    if let Some(wait) = web.throttle.wait(ip, Instant::now(), web.app.known_peers.knows(ip)) {
        tracing::warn!(%ip, "page setup refused: too many failures, {} s to wait", wait.as_secs() + 1);
        let message = format!("too many failed attempts; try again in {} s", wait.as_secs() + 1);
        return form_page("setup.html", StatusCode::TOO_MANY_REQUESTS, Some(message), minijinja::context! {});
    }
    web.throttle.failed(ip, Instant::now());
    let app = web.app.clone();
    let (password, code) = (field("password"), field("code"));
    let _hashing = HASHING.acquire().await;
    let result =
        tokio::task::spawn_blocking(move || app.set_admin_password(&password, Some(&code), &format!("page {ip}")))
            .await;
    match result {
        Ok(Ok(credential)) => {
            web.throttle.succeeded(ip);
            web.app.known_peers.prove(ip);
            logged_in(&web, credential)
        }
        Ok(Err(error)) => {
            tracing::warn!(%ip, "page setup refused: {error}");
            refuse(format!("{error}; nothing was saved"))
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
    }
}

/// Starts a session opened with the password `credential` and goes to the device list.
pub(super) fn logged_in(web: &Web, credential: CredentialTag) -> Response {
    let id = web.sessions.start(credential);
    let mut response = Redirect::to("/").into_response();
    set_cookie(&mut response, COOKIE, &id, None);
    set_cookie(&mut response, FORM_COOKIE, "", Some(0));
    response
}

pub(super) async fn login_page(State(web): State<Web>) -> Response {
    match web.app.admin_configured() {
        Ok(true) => form_page("login.html", StatusCode::OK, None, minijinja::context! {}),
        _ => Redirect::to("/setup").into_response(),
    }
}

pub(super) async fn login(State(web): State<Web>, PreLoginForm { peer, fields: form }: PreLoginForm) -> Response {
    let ip = peer.ip();
    if let Some(wait) = web.throttle.wait(ip, Instant::now(), web.app.known_peers.knows(ip)) {
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
        Ok(Ok(Some(credential))) => {
            web.throttle.succeeded(ip);
            web.app.known_peers.prove(ip);
            tracing::info!(%ip, "page login");
            logged_in(&web, credential)
        }
        Ok(Ok(None)) => {
            tracing::warn!(%ip, "page login failed: wrong password");
            let message = "wrong password".to_string();
            form_page("login.html", StatusCode::UNAUTHORIZED, Some(message), minijinja::context! {})
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
    }
}

pub(super) async fn logout(State(web): State<Web>, headers: HeaderMap, _checked: SessionForm) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        web.sessions.end(&id);
    }
    let mut response = Redirect::to("/login").into_response();
    set_cookie(&mut response, COOKIE, "", Some(0));
    response
}
