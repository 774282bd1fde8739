//! Backups on the page: "Download backup" on the system page, and "Restore from a backup"
//! on the first-start page, the alternative to setting up anew. The file format is
//! [`crate::backup`]'s; what goes in and comes back is `app::backup`'s.

use std::collections::HashMap;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::Web;
use super::page::{SessionForm, blocking, form_page, form_token_ok, page_error};
use super::system::system_view;
use crate::app::AppError;
use crate::backup::{BackupKey, MAX_BACKUP_BYTES};

/// Largest restore upload: the backup and the form's few other fields.
const MAX_RESTORE_BODY: usize = MAX_BACKUP_BYTES + 64 * 1024;
/// Most parts a restore form has (form token, code, file, passphrase, identity).
const MAX_PARTS: usize = 8;

/// Longest a restore upload may take: 64 MiB crosses a LAN in seconds.
const UPLOAD_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);
/// One restore at a time: each holds the backup in memory two or three times over.
static RESTORING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// The system page's "Download backup": the encrypted file as an attachment.
pub(super) async fn download(State(web): State<Web>, SessionForm { csrf, fields }: SessionForm) -> Response {
    let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
    let (passphrase, include_files) = (field("passphrase"), field("files") == "on");
    if passphrase != field("confirm") {
        let flash = ("the two passphrases differ; no backup was made".to_string(), "error");
        return system_view(&web, &csrf, Some(flash)).await;
    }
    let app = web.app.clone();
    match blocking(move || app.create_backup(&passphrase, include_files, "page")).await {
        Ok(file) => attachment(file),
        Err(error) => system_view(&web, &csrf, Some(page_error(&error))).await,
    }
}

/// The system page's "Copy now": the next scheduled copy is due at once.
pub(super) async fn copy_now(State(web): State<Web>, SessionForm { csrf, .. }: SessionForm) -> Response {
    let app = web.app.clone();
    let flash = match blocking(move || app.copy_backup_now()).await {
        Ok(()) => ("A backup copy is being sent; reload to see how it went.".to_string(), "ok"),
        Err(error) => page_error(&error),
    };
    system_view(&web, &csrf, Some(flash)).await
}

/// A backup file as a download named for the day it was made.
pub(super) fn attachment(file: Vec<u8>) -> Response {
    let name = format!("provbox-backup-{}.age", crate::clock::date_time(crate::clock::now()).replace([' ', ':'], "-"));
    let mut response = file.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// The first-start page's "Restore from a backup": a multipart form with the double-submit
/// token, the setup code, the file, and its passphrase or (for a scheduled copy) the
/// identity file it was encrypted to. Only while no admin password is set;
/// wrong codes count against the address like failed logins.
pub(super) async fn restore(State(web): State<Web>, headers: HeaderMap, request: Request) -> Response {
    if !matches!(web.app.admin_configured(), Ok(false)) {
        return Redirect::to("/login").into_response();
    }
    let refuse = |status: StatusCode, message: String| {
        form_page("setup.html", status, Some(format!("{message}; nothing was restored")), minijinja::context! {})
    };
    // The accept loop attaches the peer to every request.
    let Some(peer) = request.extensions().get::<crate::server::Peer>().copied() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response();
    };
    let ip = peer.ip();
    if let Some(wait) = web.throttle.wait(ip, Instant::now(), web.app.known_peers.knows(ip)) {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed attempts; try again in {} s", wait.as_secs() + 1),
        );
    }
    let Ok(_one_at_a_time) = RESTORING.try_acquire() else {
        return refuse(StatusCode::CONFLICT, "another restore is running".into());
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    // Bounded in time too: the one restore slot is not held by a client that trickles.
    let read = tokio::time::timeout(UPLOAD_LIMIT, axum::body::to_bytes(request.into_body(), MAX_RESTORE_BODY));
    let body: Bytes = match read.await {
        Ok(Ok(body)) => body,
        _ => {
            let reason = format!(
                "the upload broke off, took over {} s or is over {MAX_BACKUP_BYTES} bytes",
                UPLOAD_LIMIT.as_secs()
            );
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, reason);
        }
    };
    let mut fields = match form_data(&content_type, &body) {
        Ok(fields) => fields,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    let mut text = |name: &str| String::from_utf8(fields.remove(name).unwrap_or_default()).unwrap_or_default();
    let (form_token, code, passphrase) = (text("form"), text("code"), text("passphrase"));
    if !form_token_ok(&headers, &form_token) {
        return (StatusCode::FORBIDDEN, "missing or wrong form token; reload the page").into_response();
    }
    let file = fields.remove("backup").unwrap_or_default();
    let identity = String::from_utf8_lossy(&fields.remove("identity").unwrap_or_default()).into_owned();
    let key =
        if identity.trim().is_empty() { BackupKey::Passphrase(passphrase) } else { BackupKey::Identity(identity) };
    // Counted as failed before the check, like a login; a success clears it.
    web.throttle.failed(ip, Instant::now());
    let app = web.app.clone();
    let actor = format!("page {ip}");
    let restored = blocking(move || app.restore_on_first_start(&file, &key, &code, &actor)).await;
    match restored {
        Ok(summary) => {
            web.throttle.succeeded(ip);
            tracing::info!(%ip, devices = summary.devices, "page: restored a backup");
            Redirect::to(if summary.admin_restored { "/login" } else { "/setup" }).into_response()
        }
        // Refusals come before anything is written; a failure while writing leaves the
        // appliance unclaimed, and this page offers the restore again.
        Err(error @ (AppError::Backup(_) | AppError::Admin(_) | AppError::Refused(_) | AppError::Invalid(_))) => {
            tracing::warn!(%ip, "page restore refused: {error}");
            refuse(StatusCode::BAD_REQUEST, error.to_string())
        }
        Err(error) => {
            tracing::error!(%ip, "page restore failed while writing: {error}");
            let message = format!("{error}; the restore stopped part way: restore again");
            form_page("setup.html", StatusCode::INTERNAL_SERVER_ERROR, Some(message), minijinja::context! {})
        }
    }
}

/// The fields of a `multipart/form-data` body held in memory (RFC 7578), by name. Refuses
/// what a browser's form would not send: no boundary, a part without a name, too many
/// parts, a body that does not end with its closing delimiter.
fn form_data(content_type: &str, body: &[u8]) -> Result<HashMap<String, Vec<u8>>, String> {
    let (kind, parameters) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err("the form must be sent as multipart/form-data".into());
    }
    let boundary = parameters
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(name, _)| name.eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|b| (1..=70).contains(&b.len()))
        .ok_or("the form's content type has no boundary")?;
    let delimiter = format!("\r\n--{boundary}");
    let finder = memchr::memmem::Finder::new(delimiter.as_bytes());
    // The body's first delimiter has no CRLF before it.
    let start = body.strip_prefix(&delimiter.as_bytes()[2..]).ok_or("the form does not start with its boundary")?;
    let mut rest = start;
    let mut fields = HashMap::new();
    loop {
        if rest.starts_with(b"--") {
            return Ok(fields);
        }
        rest = rest.strip_prefix(b"\r\n").ok_or("a form part does not start on a new line")?;
        let end = finder.find(rest).ok_or("the form does not end with its boundary")?;
        let (part, tail) = rest.split_at(end);
        rest = &tail[delimiter.len()..];
        let split = memchr::memmem::find(part, b"\r\n\r\n").ok_or("a form part has no header end")?;
        let (head, content) = (&part[..split], &part[split + 4..]);
        let head = std::str::from_utf8(head).map_err(|_| "a form part's headers are not text")?;
        let name = head
            .lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(header, _)| header.trim().eq_ignore_ascii_case("content-disposition"))
            .and_then(|(_, value)| value.split(';').find_map(|p| p.trim().strip_prefix("name=")))
            .map(|name| name.trim_matches('"').to_string())
            .ok_or("a form part has no name")?;
        if fields.len() == MAX_PARTS {
            return Err(format!("the form has more than {MAX_PARTS} parts"));
        }
        fields.insert(name, content.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body as Firefox sends `<form enctype="multipart/form-data">` (RFC 7578, 4.1).
    const FIREFOX: &[u8] = b"-----------------------------9051914041544843365972754266\r\n\
Content-Disposition: form-data; name=\"code\"\r\n\r\n\
ab12cd34ef56\r\n\
-----------------------------9051914041544843365972754266\r\n\
Content-Disposition: form-data; name=\"backup\"; filename=\"site.age\"\r\n\
Content-Type: application/octet-stream\r\n\r\n\
age-encryption.org/v1\r\n--not the boundary\r\n\
-----------------------------9051914041544843365972754266--\r\n";
    const FIREFOX_TYPE: &str = "multipart/form-data; boundary=---------------------------9051914041544843365972754266";

    #[test]
    fn reads_a_browser_form_with_a_file_holding_dashes_and_newlines() {
        let fields = form_data(FIREFOX_TYPE, FIREFOX).unwrap();
        assert_eq!(fields["code"], b"ab12cd34ef56");
        assert_eq!(fields["backup"], b"age-encryption.org/v1\r\n--not the boundary");
    }

    #[test]
    fn refuses_forms_a_browser_would_not_send() {
        assert!(form_data("application/x-www-form-urlencoded", b"code=1").is_err());
        assert!(form_data("multipart/form-data", FIREFOX).is_err(), "no boundary");
        let cut = &FIREFOX[..FIREFOX.len() - 70];
        assert!(form_data(FIREFOX_TYPE, cut).unwrap_err().contains("does not end"));
        let nameless = String::from_utf8_lossy(FIREFOX).replace("name=\"code\"", "filename=\"x\"");
        assert!(form_data(FIREFOX_TYPE, nameless.as_bytes()).unwrap_err().contains("no name"));
    }
}
