//! The templates page: every vendor's templates and which are overridden, and one
//! template's editor with preview against a device, save, revert and "reprovision affected
//! phones". The edited text stays in the form after a refusal, so nothing typed is lost.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Web;
use super::page::{SessionForm, blocking, off_thread, page_error, render, session, to_entry};
use crate::app::AppError;
use crate::app::views::{ReprovisionOutcome, TemplatePreview, TemplateSaved};
use crate::mac::Mac;

pub(super) async fn templates_page(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((_, csrf)) = session(&web, &headers) else { return to_entry(&web) };
    off_thread(move || match web.app.template_list() {
        Ok(vendors) => {
            render(StatusCode::OK, "templates.html", minijinja::context! { title => "Templates", csrf, vendors })
        }
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    })
    .await
}

pub(super) async fn template_page(
    State(web): State<Web>,
    Path((vendor, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some((_, csrf)) = session(&web, &headers) else { return to_entry(&web) };
    editor(&web, csrf, vendor, file, Outcome::default()).await
}

/// What the last action left to show on the editor.
#[derive(Default)]
struct Outcome {
    /// The text in the editor, when it is not the saved one (a preview or a refusal).
    source: Option<String>,
    /// The device previewed for.
    mac: Option<Mac>,
    preview: Option<TemplatePreview>,
    saved: Option<(&'static str, TemplateSaved)>,
    reprovisioned: Option<Vec<ReprovisionOutcome>>,
    /// Why the action was refused.
    problem: Option<String>,
}

pub(super) async fn template_action(
    State(web): State<Web>,
    Path((vendor, file)): Path<(String, String)>,
    SessionForm { csrf, fields }: SessionForm,
) -> Response {
    let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
    // Browsers send a textarea's line breaks as CRLF; templates keep the phone's own.
    let source = field("source").replace("\r\n", "\n");
    let mac = field("mac").parse::<Mac>().ok();
    let app = web.app.clone();
    let (v, f) = (vendor.clone(), file.clone());
    let outcome = match field("action").as_str() {
        "preview" => {
            let Some(mac) = mac else {
                let problem = Some("choose a device to preview for; add one of this vendor first".to_string());
                return editor(
                    &web,
                    csrf,
                    vendor,
                    file,
                    Outcome { source: Some(source), problem, ..Outcome::default() },
                )
                .await;
            };
            let text = source.clone();
            match blocking(move || app.template_preview(&v, &f, &text, &mac)).await {
                Ok(preview) => {
                    Outcome { source: Some(source), mac: Some(mac), preview: Some(preview), ..Outcome::default() }
                }
                Err(error) => refused(error, Some(source), Some(mac)),
            }
        }
        "save" => {
            let text = source.clone();
            match blocking(move || app.template_save(&v, &f, &text, "page")).await {
                Ok(saved) => Outcome { mac, saved: Some(("Saved", saved)), ..Outcome::default() },
                Err(error) => refused(error, Some(source), mac),
            }
        }
        "revert" => match blocking(move || app.template_revert(&v, &f, "page")).await {
            Ok(saved) => Outcome { saved: Some(("Reverted to stock", saved)), ..Outcome::default() },
            Err(error) => refused(error, None, None),
        },
        "reprovision" => match blocking(move || app.template_affected(&v, &f)).await {
            Ok(affected) => {
                let outcomes =
                    crate::app::sip::reprovision_each(&web.app, &affected, std::time::Duration::from_secs(8)).await;
                Outcome { reprovisioned: Some(outcomes), ..Outcome::default() }
            }
            Err(error) => refused(error, None, None),
        },
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    editor(&web, csrf, vendor, file, outcome).await
}

fn refused(error: AppError, source: Option<String>, mac: Option<Mac>) -> Outcome {
    Outcome { source, mac, problem: Some(page_error(&error).0), ..Outcome::default() }
}

/// The editor of `vendor/file` with `outcome`; 400 when it holds a refusal.
async fn editor(web: &Web, csrf: String, vendor: String, file: String, outcome: Outcome) -> Response {
    let web = web.clone();
    off_thread(move || {
        let view = match web.app.template_show(&vendor, &file) {
            Ok(view) => view,
            Err(AppError::NoTemplate { .. }) => return StatusCode::NOT_FOUND.into_response(),
            Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
        };
        let devices: Vec<minijinja::Value> = web
            .app
            .devices()
            .unwrap_or_default()
            .into_iter()
            .filter(|device| device.vendor == vendor)
            .map(|device| {
                let name = device.lines.first().map(|line| line.name.clone()).unwrap_or_default();
                minijinja::context! { mac => device.mac, model => device.model, name, config => device.config }
            })
            .collect();
        let diff: Vec<minijinja::Value> = view
            .diff
            .lines()
            .map(|line| {
                let kind = match line.chars().next() {
                    Some('+') if !line.starts_with("+++") => "added",
                    Some('-') if !line.starts_with("---") => "removed",
                    Some('@') => "hunk",
                    _ => "same",
                };
                minijinja::context! { kind, text => line }
            })
            .collect();
        let status = if outcome.problem.is_some() { StatusCode::BAD_REQUEST } else { StatusCode::OK };
        let saved = outcome.saved.map(|(title, saved)| {
            minijinja::context! {
                title, before => saved.before, after => saved.after, vendor_devices => saved.vendor_devices,
                changed => saved.changed_devices.iter().map(ToString::to_string).collect::<Vec<_>>(),
                affected => saved.affected.len(),
            }
        });
        render(
            status,
            "template.html",
            minijinja::context! {
                title => format!("{vendor}/{file}"), csrf, vendor, file,
                source => outcome.source.unwrap_or_else(|| view.current.clone()),
                mac => outcome.mac.map(|mac| mac.to_string()),
                overridden => view.overridden, sha256 => view.sha256, served_as => view.served_as,
                stock => view.stock, diff, devices, preview => outcome.preview, saved,
                reprovisioned => outcome.reprovisioned, problem => outcome.problem,
            },
        )
    })
    .await
}
