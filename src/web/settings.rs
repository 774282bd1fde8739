//! Settings: site settings (secrets write-only), the operator certificate, the admin
//! password and API tokens.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Web;
use super::page::{HASHING, SessionForm, blocking, off_thread, page_error, render, session, set_cookie, to_entry};
use super::session::COOKIE;
use crate::app::AppError;
use crate::app::views::RotatedPasswords;
use crate::clock::date_time;

/// The settings page with `flash`; an error flash answers 400.
pub(super) async fn settings_form(web: &Web, csrf: &str, flash: Option<(String, &'static str)>) -> Response {
    settings_form_with(web, csrf, flash, ShownOnce::Nothing).await
}

/// A secret the page shows this once, right after it was made.
pub(super) enum ShownOnce {
    Nothing,
    /// A new API token.
    Token(String),
    /// New SIP passwords after a rotation, per device.
    Passwords(Vec<RotatedPasswords>),
}

/// The settings page, with what was just made shown once.
pub(super) async fn settings_form_with(
    web: &Web,
    csrf: &str,
    flash: Option<(String, &'static str)>,
    shown_once: ShownOnce,
) -> Response {
    let (web, csrf) = (web.clone(), csrf.to_string());
    off_thread(move || {
    let tokens: Vec<minijinja::Value> = web
        .app
        .api_tokens()
        .unwrap_or_default()
        .into_iter()
        .map(|t| minijinja::context! { name => t.name, id => t.id, created => date_time(t.created) })
        .collect();
    let settings: Vec<minijinja::Value> = match web.app.settings_view() {
        Ok(views) => views
            .into_iter()
            .map(|view| {
                let secret = view.secret;
                minijinja::context! {
                    name => view.name, help => view.help, secret, is_set => secret && !view.default && view.value == crate::token::MASK,
                    value => if secret { String::new() } else { view.value }, choices => view.choices,
                }
            })
            .collect(),
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    };
    let policy = match web.app.password_policy() {
        Ok(policy) => policy,
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    };
    let (new_token, rotated) = match shown_once {
        ShownOnce::Nothing => (None, None),
        ShownOnce::Token(token) => (Some(token), None),
        ShownOnce::Passwords(rotated) => (None, Some(rotated)),
    };
    let (flash, flash_kind) = flash.map_or((None, "ok"), |(text, kind)| (Some(text), kind));
    let status = if flash_kind == "error" { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    render(
        status,
        "settings.html",
        minijinja::context! {
            title => "Settings", csrf, settings, flash, flash_kind, suggestion => crate::devices::generate_password(),
            tokens, new_token, policy, rotated,
            admin_minimum => if policy.admin_level == crate::policy::Level::Standard { 8 } else { 12 },
        },
    )
    })
    .await
}

pub(super) async fn settings_page(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = session(&web, &headers) else { return to_entry(&web) };
    settings_form(&web, &csrf, None).await
}

pub(super) async fn save_settings(State(web): State<Web>, SessionForm { csrf, fields: form }: SessionForm) -> Response {
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
        Ok(changed) => settings_form(&web, &csrf, Some((format!("saved {changed} setting(s)"), "ok"))).await,
        Err(error) => settings_form(&web, &csrf, Some(page_error(&error))).await,
    }
}

pub(super) async fn certificate(State(web): State<Web>, SessionForm { csrf, fields: form }: SessionForm) -> Response {
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
                Some(("operator certificate installed; served from the next connection".into(), "ok")),
            )
            .await
        }
        Err(error) => {
            settings_form(&web, &csrf, Some((format!("{error}; the current certificate stays"), "error"))).await
        }
    }
}

pub(super) async fn change_password(
    State(web): State<Web>,
    SessionForm { csrf, fields: form }: SessionForm,
) -> Response {
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    if field("password") != field("confirm") {
        return settings_form(&web, &csrf, Some(("the two passwords differ; nothing was saved".into(), "error"))).await;
    }
    let app = web.app.clone();
    let (current, password) = (field("current"), field("password"));
    let _hashing = HASHING.acquire().await;
    let result = blocking(move || {
        if app.verify_admin(&current)?.is_none() {
            return Err(AppError::Admin(crate::admin::AdminError::SetupCode));
        }
        app.set_admin_password(&password, None, "page")
    })
    .await;
    match result {
        Ok(credential) => {
            // Every other session ends with the old password; this one continues as a new one.
            web.sessions.end_all();
            let id = web.sessions.start(credential);
            let csrf = web.sessions.touch(&id).unwrap_or_default();
            let message = "admin password changed; other sessions are logged out".to_string();
            let mut response = settings_form(&web, &csrf, Some((message, "ok"))).await;
            set_cookie(&mut response, COOKIE, &id, None);
            response
        }
        Err(AppError::Admin(crate::admin::AdminError::SetupCode)) => {
            settings_form(&web, &csrf, Some(("the current password is wrong; nothing was saved".into(), "error"))).await
        }
        Err(error) => settings_form(&web, &csrf, Some(page_error(&error))).await,
    }
}

pub(super) async fn create_api_token(
    State(web): State<Web>,
    SessionForm { csrf, fields: form }: SessionForm,
) -> Response {
    let name = form.get("name").cloned().unwrap_or_default();
    let app = web.app.clone();
    match blocking(move || app.create_api_token(&name, "page")).await {
        Ok(token) => settings_form_with(&web, &csrf, None, ShownOnce::Token(token)).await,
        Err(error) => settings_form(&web, &csrf, Some(page_error(&error))).await,
    }
}

pub(super) async fn revoke_api_token(
    State(web): State<Web>,
    Path(id): Path<String>,
    SessionForm { csrf, .. }: SessionForm,
) -> Response {
    let app = web.app.clone();
    match blocking(move || app.revoke_api_token(&id, "page")).await {
        Ok(count) => settings_form(&web, &csrf, Some((format!("revoked {count} token(s)"), "ok"))).await,
        Err(error) => settings_form(&web, &csrf, Some(page_error(&error))).await,
    }
}

/// Rotates the SIP passwords of one device below the policy, or of every such device
/// (`all`), and shows the new ones once.
pub(super) async fn rotate_passwords(
    State(web): State<Web>,
    Path(which): Path<String>,
    SessionForm { csrf, .. }: SessionForm,
) -> Response {
    let app = web.app.clone();
    let result = blocking(move || {
        let macs: Vec<crate::mac::Mac> = if which == "all" {
            app.password_policy()?.devices.into_iter().map(|device| device.mac).collect()
        } else {
            vec![which.parse()?]
        };
        // Every device is tried, and every new password shown: one that was rotated must
        // reach the PBX even when another device failed.
        let (mut rotated, mut failed) = (Vec::new(), Vec::new());
        for mac in &macs {
            match app.rotate_sip_passwords(mac, "page") {
                Ok(done) => rotated.push(done),
                Err(error) => failed.push(format!("{mac}: {error}")),
            }
        }
        Ok((rotated, failed))
    })
    .await;
    match result {
        Ok((rotated, failed)) => {
            let count: usize = rotated.iter().map(|device| device.lines.len()).sum();
            let flash = if failed.is_empty() {
                (format!("{count} SIP password(s) rotated"), "ok")
            } else {
                (format!("{count} SIP password(s) rotated; not rotated: {}", failed.join("; ")), "error")
            };
            settings_form_with(&web, &csrf, Some(flash), ShownOnce::Passwords(rotated)).await
        }
        Err(error) => settings_form(&web, &csrf, Some(page_error(&error))).await,
    }
}
