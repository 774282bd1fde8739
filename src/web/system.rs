//! The system page: version, clock, store usage, template overrides, redirect services and
//! their reachability, the audit log, and firmware updates by upload.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::page::{blocking, render, session, to_entry};
use super::{Web, update};
use crate::clock::date_time;

pub(super) async fn system_page(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = session(&web, &headers) else { return to_entry(&web) };
    system_view(&web, &csrf, None).await
}

/// The system page, with `flash` after an update upload.
pub(super) async fn system_view(web: &Web, csrf: &str, flash: Option<(String, &str)>) -> Response {
    let app = web.app.clone();
    let read = blocking(move || {
        let overrides = app.template_overrides()?;
        Ok((
            app.store_usage(),
            app.redirect_status()?,
            app.audit_log().unwrap_or_default(),
            app.backup_copy_status()?,
            overrides,
        ))
    });
    let ((live, capacity, low, high), status, audit, copies, overrides) = match read.await {
        Ok(read) => read,
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    };
    let reachability = web.app.redirect_reachability().await.unwrap_or_default();
    let audit: Vec<minijinja::Value> = audit
        .into_iter()
        .map(|e| minijinja::context! { at => date_time(e.at), actor => e.actor.to_string(), action => e.action.to_string() })
        .collect();
    let (flash, flash_kind) = flash.map_or((None, "ok"), |(text, kind)| (Some(text), kind));
    render(
        if flash_kind == "error" { StatusCode::BAD_REQUEST } else { StatusCode::OK },
        "system.html",
        minijinja::context! {
            title => "System", csrf, version => env!("CARGO_PKG_VERSION"), started => date_time(web.started),
            clock => status.clock, services => status.services, audit, reachability,
            store => format!("{} KiB live of {} KiB", live / 1024, capacity / 1024),
            erase => format!("{low} to {high}"), bootstrap => web.app.bootstrap_url(),
            firmware => update::status(web), flash, flash_kind, overrides,
            copies => minijinja::context! {
                target => copies.target, schedule => copies.schedule, recipient => copies.recipient,
                last_success => copies.last_success.map(date_time), last_error => copies.last_error,
                next_due => copies.next_due.map(|due| if due == 0 { "now".to_string() } else { date_time(due) }),
            },
        },
    )
}

/// The page's update form: a signed bundle, streamed to the inactive root slot.
pub(super) async fn update_upload(State(web): State<Web>, headers: HeaderMap, request: Request) -> Response {
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
