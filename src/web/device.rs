//! One device's page: its URLs, state and rendered configuration (masked unless
//! revealed), and its actions: unlock, remove, reveal, reprovision, edit, LAN window, plain
//! HTTP.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Web;
use super::devices::{device_list, row};
use super::page::{MacAction, SessionForm, blocking, off_thread, page_error, render, session, to_entry};
use crate::app::AppError;
use crate::clock::date_time;
use crate::devices::{DeviceSpec, LineSpec};
use crate::mac::Mac;

/// What an action on a device did, shown above its page.
pub(super) struct ActionResult {
    title: String,
    lines: Vec<String>,
}

/// The device page, optionally with secrets revealed and an action's result.
pub(super) async fn device_detail(
    web: &Web,
    csrf: &str,
    mac: &Mac,
    revealed: bool,
    result: Option<ActionResult>,
) -> Response {
    let (web, csrf, mac) = (web.clone(), csrf.to_string(), *mac);
    off_thread(move || {
        let mac = &mac;
        let device = match web.app.device_view(mac, false) {
            Ok(device) => device,
            Err(AppError::NoDevice(_)) => return StatusCode::NOT_FOUND.into_response(),
            Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
        };
        let catalog = web.app.templates.catalog();
        let file = catalog
            .vendor(&device.vendor)
            .ok()
            .and_then(|v| v.device_file_name(mac, &device.model))
            .unwrap_or_default();
        let (config_text, config_warnings) = match web.app.render(mac, &file, revealed) {
            Ok(rendered) => (rendered.body, rendered.warnings),
            Err(error) => (format!("(cannot render {file}: {error})"), Vec::new()),
        };
        let row = row(&device);
        let lan_window = device
            .lan_window_until
            .map_or_else(|| "closed".to_string(), |until| format!("open until {}", date_time(until)));
        let result = result.map(|r| minijinja::context! { title => r.title, lines => r.lines });
        render(
            StatusCode::OK,
            "device.html",
            minijinja::context! {
                title => device.mac.clone(), csrf, d => device, contact => row.contact, config => row.config,
                enrollment => row.enrollment, redirect => row.redirect, lan_window, file, config_text, config_warnings, revealed,
                result,
            },
        )
    })
    .await
}

pub(super) async fn device_page(State(web): State<Web>, Path(mac): Path<String>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = session(&web, &headers) else { return to_entry(&web) };
    match mac.parse::<Mac>() {
        Ok(mac) => device_detail(&web, &csrf, &mac, false, None).await,
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

pub(super) async fn device_action(
    State(web): State<Web>,
    MacAction { mac, action }: MacAction,
    SessionForm { csrf, fields: form }: SessionForm,
) -> Response {
    let app = web.app.clone();
    let outcome: Result<Option<ActionResult>, AppError> = match action.as_str() {
        "unlock" => {
            return match blocking(move || app.unlock(&mac, "page")).await {
                Ok(device) => device_list(&web, &csrf, None, Some(&device)).await,
                Err(error) => device_list(&web, &csrf, Some(page_error(&error)), None).await,
            };
        }
        "remove" => {
            return match blocking(move || app.remove_device(&mac, "page")).await {
                Ok(()) => device_list(&web, &csrf, Some((format!("removed {mac}"), "ok")), None).await,
                Err(error) => device_list(&web, &csrf, Some(page_error(&error)), None).await,
            };
        }
        "rekey" => {
            let new_sip_passwords = form.get("new_sip_passwords").is_some_and(|value| value == "on");
            blocking(move || app.rekey(&mac, new_sip_passwords, "page")).await.map(|rekeyed| {
                let mut lines = vec![
                    "Both URLs are new; the phone's old ones answer nothing.".to_string(),
                    "Enrollment is locked: unlock it when the phone in hand should enroll.".to_string(),
                ];
                if rekeyed.passwords.is_empty() {
                    lines.push("The SIP passwords are unchanged.".into());
                } else {
                    lines.push("New SIP passwords, shown this once: set them on the PBX.".into());
                    lines.extend(rekeyed.passwords.iter().map(|line| {
                        format!("extension {}, user {}: {}", line.extension, line.sip_user, line.password)
                    }));
                }
                Some(ActionResult { title: "Both URLs revoked".into(), lines })
            })
        }
        "reveal" => {
            tracing::info!(%mac, "page: configuration revealed");
            return device_detail(&web, &csrf, &mac, true, None).await;
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
                let until = device.lan_window_until.map(date_time).unwrap_or_default();
                Some(ActionResult { title: format!("LAN window open until {until}"), lines: Vec::new() })
            })
        }
        "plain-http" => {
            let allow = form.get("allow").is_some_and(|value| value == "on");
            blocking(move || app.set_plain_http(&mac, allow, "page")).await.map(|device| {
                let title = match &device.plain_http {
                    Some(_) => "Plain HTTP allowed: this phone's SIP password now crosses the LAN unencrypted",
                    None => "Plain HTTP refused again",
                };
                Some(ActionResult { title: title.into(), lines: Vec::new() })
            })
        }
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    match outcome {
        Ok(result) => device_detail(&web, &csrf, &mac, false, result).await,
        Err(error) => {
            let result = ActionResult { title: "Refused".into(), lines: vec![page_error(&error).0] };
            device_detail(&web, &csrf, &mac, false, Some(result)).await
        }
    }
}
