//! CSV import (all or nothing, or the valid rows) and export.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Web;
use super::devices::device_list;
use super::page::{SessionForm, blocking, page_error, render, session, to_entry};
use crate::app::{AppError, listing};

pub(super) async fn import_page(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = session(&web, &headers) else { return to_entry(&web) };
    render(StatusCode::OK, "import.html", minijinja::context! { title => "Import", csrf })
}

pub(super) async fn import(State(web): State<Web>, SessionForm { csrf, fields: form }: SessionForm) -> Response {
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
            device_list(&web, &csrf, Some((flash, "ok")), None).await
        }
        Err(AppError::Import(problems)) => render(
            StatusCode::BAD_REQUEST,
            "import.html",
            minijinja::context! { title => "Import", csrf, problems, csv },
        ),
        Err(error) => device_list(&web, &csrf, Some(page_error(&error)), None).await,
    }
}

pub(super) async fn export(State(web): State<Web>, headers: HeaderMap) -> Response {
    if session(&web, &headers).is_none() {
        return to_entry(&web);
    }
    let app = web.app.clone();
    let Some(turn) = app.heavy.turn().await else {
        let busy = [(header::RETRY_AFTER, HeaderValue::from_static(listing::BUSY_RETRY_SECONDS))];
        return (StatusCode::SERVICE_UNAVAILABLE, busy, listing::BUSY).into_response();
    };
    let pieces = listing::stream_devices(app, listing::ListFormat::Csv, turn);
    let mut response = super::stream::response(pieces, "text/csv; charset=utf-8");
    response
        .headers_mut()
        .insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"devices.csv\""));
    response
}
