//! The device list (`/`, paged) and adding a device from it.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Web;
use super::page::{SessionForm, off_thread, page_error, render, session, to_entry};
use crate::app::views::{ConfigState, DeviceView, EnrollmentView};
use crate::clock::date_time;
use crate::devices::{DeviceSpec, LineSpec};

/// One row of the device table, in words.
#[derive(Serialize)]
pub(super) struct Row {
    pub(super) mac: String,
    pub(super) vendor: String,
    pub(super) model: String,
    pub(super) extensions: String,
    pub(super) name: String,
    pub(super) contact: String,
    pub(super) config: &'static str,
    pub(super) enrollment: String,
    pub(super) redirect: String,
}

pub(super) fn row(device: &DeviceView) -> Row {
    let contact = device.last_contact.as_ref().map_or_else(
        || "never".to_string(),
        |c| format!("{}, {}, {}", date_time(c.at), c.ip, if c.firmware.is_empty() { "-" } else { c.firmware.as_str() }),
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
            EnrollmentView::Grace { until } => format!("in grace until {}", date_time(*until)),
            EnrollmentView::Locked { since } => format!("locked since {}", date_time(*since)),
        },
        redirect: device.redirect.to_string(),
    }
}

/// Devices per page of the list: keeps a page well under 50 KB.
pub(super) const PAGE_SIZE: usize = 50;

/// The device list with `flash` and, after an unlock, what it did.
pub(super) async fn device_list(
    web: &Web,
    csrf: &str,
    flash: Option<(String, &'static str)>,
    unlocked: Option<&DeviceView>,
) -> Response {
    device_page_of(web, csrf, flash, unlocked, 1).await
}

/// Page `page` (from 1) of the device list.
pub(super) async fn device_page_of(
    web: &Web,
    csrf: &str,
    flash: Option<(String, &'static str)>,
    unlocked: Option<&DeviceView>,
    page: usize,
) -> Response {
    let (web, csrf, unlocked) = (web.clone(), csrf.to_string(), unlocked.cloned());
    off_thread(move || {
    // Views for the shown page only: a site's whole list is never built here.
    let macs = web.app.device_macs();
    let total = macs.len();
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let page = page.clamp(1, pages);
    let shown = macs.iter().skip((page - 1) * PAGE_SIZE).take(PAGE_SIZE).copied().collect::<Vec<_>>();
    let devices = match web.app.device_views(&shown) {
        Ok(devices) => devices,
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    };
    let rows: Vec<Row> = devices.iter().map(row).collect();
    let vendors: Vec<String> = web.app.templates.catalog().vendors.keys().cloned().collect();
    let unlocked = unlocked.map(|device| {
        minijinja::context! {
            mac => device.mac.clone(),
            enrollment_url => device.enrollment_url.clone(),
            redirect => device.redirect.to_string(),
        }
    });
    let (flash, flash_kind) = flash.map_or((None, "ok"), |(text, kind)| (Some(text), kind));
    let status = if flash_kind == "error" { StatusCode::BAD_REQUEST } else { StatusCode::OK };
    render(
        status,
        "devices.html",
        minijinja::context! { title => "Devices", csrf, devices => rows, total, page, pages, vendors, flash, flash_kind, unlocked },
    )
    })
    .await
}

pub(super) async fn devices_page(
    State(web): State<Web>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let page = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    match session(&web, &headers) {
        Some((_, csrf)) => device_page_of(&web, &csrf, None, None, page).await,
        None => to_entry(&web),
    }
}

pub(super) async fn add_device(State(web): State<Web>, SessionForm { csrf, fields: form }: SessionForm) -> Response {
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
        Ok(Ok(device)) => device_list(&web, &csrf, Some((format!("added {}", device.mac), "ok")), None).await,
        Ok(Err(error)) => device_list(&web, &csrf, Some(page_error(&error)), None).await,
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response(),
    }
}
