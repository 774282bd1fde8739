//! Phones seen: unknown phones that asked for a configuration, to approve or dismiss.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Web;
use super::page::{MacAction, SessionForm, blocking, off_thread, page_error, render, session, to_entry};
use crate::clock::date_time;

pub(super) async fn seen_page(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = session(&web, &headers) else { return to_entry(&web) };
    seen_list(&web, &csrf, None).await
}

pub(super) async fn seen_list(web: &Web, csrf: &str, flash: Option<(String, &'static str)>) -> Response {
    let (web, csrf) = (web.clone(), csrf.to_string());
    off_thread(move || {
        let seen: Vec<minijinja::Value> = match web.app.phones_seen() {
            Ok(seen) => seen
                .iter()
                .map(|p| {
                    minijinja::context! {
                        mac => p.mac.to_string(), vendor => p.vendor.to_string(), model => p.model.to_string(),
                        ip => p.ip.to_string(), at => date_time(p.at),
                    }
                })
                .collect(),
            Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
        };
        let (flash, flash_kind) = flash.map_or((None, "ok"), |(text, kind)| (Some(text), kind));
        render(
            StatusCode::OK,
            "seen.html",
            minijinja::context! { title => "Phones seen", csrf, seen, flash, flash_kind },
        )
    })
    .await
}

pub(super) async fn seen_action(
    State(web): State<Web>,
    MacAction { mac, action }: MacAction,
    SessionForm { csrf, fields: form }: SessionForm,
) -> Response {
    let app = web.app.clone();
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let (extension, name) = (field("extension"), field("name"));
    let result = match action.as_str() {
        "approve" => blocking(move || app.approve_seen(&mac, &extension, &name, "page")).await.map(|device| {
            let until = device.lan_window_until.map(date_time).unwrap_or_default();
            format!("added {mac}; its LAN window is open until {until}")
        }),
        "dismiss" => blocking(move || app.dismiss_seen(&mac)).await.map(|()| format!("dismissed {mac}")),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    match result {
        Ok(text) => seen_list(&web, &csrf, Some((text, "ok"))).await,
        Err(error) => seen_list(&web, &csrf, Some(page_error(&error))).await,
    }
}
