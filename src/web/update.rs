//! Root-image updates over HTTPS: the page's upload form (multipart, streamed) and the
//! API's `POST /api/v1/update` (the raw bundle, streamed). Neither holds the image in
//! memory: each chunk goes on to the privileged install service ([`RemoteInstall`]), which
//! verifies it and writes the inactive slot as it arrives.

use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;

use super::Web;
use crate::update::service::RemoteInstall;
use crate::update::{Installed, UpdateError};

/// Largest multipart preamble (boundary, the CSRF field, the file part's headers).
const MAX_PREAMBLE: usize = 16 * 1024;
/// Longest wait for the next bytes of an upload.
const IDLE_LIMIT: Duration = super::UPLOAD_IDLE_LIMIT;
/// Longest an upload may take: it holds the install lock meanwhile.
const MAX_UPLOAD_TIME: Duration = Duration::from_secs(15 * 60);
/// Most bytes of a refused upload read and dropped before the answer. A client still
/// sending a body should watch for an early answer (RFC 9112, 9.5), but a server that
/// closes with unread data resets the connection, and a browser then shows the reset
/// instead of the reason; a bundle is a root slot, well below this.
const MAX_DRAIN: usize = 256 * 1024 * 1024;

/// The root slots as the page and the API show them.
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct UpdateStatus {
    /// Whether this system has A/B root slots (the firmware image); the rest is null without.
    available: bool,
    /// The board the image was built for.
    board: Option<String>,
    /// The slot running now.
    slot: Option<crate::update::Slot>,
    /// Whether this boot is a new slot's one try.
    trial: Option<bool>,
    /// A slot that was tried and failed at this boot, if one was.
    rolled_back: Option<crate::update::Slot>,
    /// The running release, when the image says.
    version: Option<String>,
    /// Whether the release was signed with the development key.
    devkey: Option<bool>,
}

/// The root slots as the page and the API show them.
pub fn status(web: &Web) -> UpdateStatus {
    match &web.updates {
        None => UpdateStatus {
            available: false,
            board: None,
            slot: None,
            trial: None,
            rolled_back: None,
            version: None,
            devkey: None,
        },
        Some(updates) => {
            let boot = updates.current();
            let version = crate::update::release();
            let devkey = version.as_deref().is_some_and(crate::update::is_devkey_release);
            UpdateStatus {
                available: true,
                board: Some(boot.board),
                slot: Some(boot.slot),
                trial: Some(boot.trial),
                rolled_back: boot.rolled_back,
                version,
                devkey: Some(devkey),
            }
        }
    }
}

/// Why an upload did not install.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// Not running from the firmware image.
    #[error("updates need the provbox firmware image: this system has no A/B root slots")]
    Unavailable,
    /// The bundle was refused.
    #[error(transparent)]
    Refused(#[from] UpdateError),
    /// The upload broke off or is malformed.
    #[error("upload: {0}")]
    Transfer(String),
    /// An update is installed and the appliance is restarting into it.
    #[error("an update is installed and the appliance is restarting into it")]
    Restarting,
    /// The page form's CSRF field did not check out.
    #[error("missing or wrong CSRF token; reload the page")]
    Csrf,
}

/// The next data of `body`, None at its end; `stalled` is the error when nothing arrives
/// within `wait`.
async fn next_chunk(body: &mut Body, wait: Duration, stalled: &str) -> Result<Option<Bytes>, UploadError> {
    match tokio::time::timeout(wait, body.frame()).await {
        Err(_) => Err(UploadError::Transfer(stalled.into())),
        Ok(None) => Ok(None),
        Ok(Some(Err(error))) => Err(UploadError::Transfer(error.to_string())),
        Ok(Some(Ok(frame))) => Ok(Some(frame.into_data().unwrap_or_default())),
    }
}

/// Streams `body`, which starts with `first` (bytes already read), into an installer.
async fn install_stream(
    web: &Web,
    first: &[u8],
    body: &mut Body,
    strip: Option<&[u8]>,
) -> Result<Installed, UploadError> {
    let updates = web.updates.clone().ok_or(UploadError::Unavailable)?;
    if updates.is_staged() {
        return Err(UploadError::Restarting);
    }
    let boot = updates.current();
    if boot.trial {
        return Err(UploadError::Refused(UpdateError::OnTrial(boot.slot)));
    }
    let deadline = tokio::time::Instant::now() + MAX_UPLOAD_TIME;
    let mut installer = match tokio::task::block_in_place(|| RemoteInstall::start(&updates.installer)) {
        Ok(installer) => installer,
        Err(refusal) => {
            drain(body, deadline).await;
            return Err(refusal.into());
        }
    };
    // A multipart body ends in its closing delimiter: hold back that many bytes until the
    // end, then check and drop them.
    let hold = strip.map_or(0, <[u8]>::len) + 2;
    let mut pending: Vec<u8> = first.to_vec();
    loop {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now()).min(IDLE_LIMIT);
        let Some(chunk) = next_chunk(body, wait, "no data for 60 s, or the upload took over 15 minutes").await? else {
            break;
        };
        pending.extend_from_slice(&chunk);
        let ready = if strip.is_some() { pending.len().saturating_sub(hold) } else { pending.len() };
        if ready > 0 {
            if let Err(refusal) = tokio::task::block_in_place(|| installer.feed(&pending[..ready])) {
                drain(body, deadline).await;
                return Err(refusal.into());
            }
            pending.drain(..ready);
        }
    }
    if let Some(delimiter) = strip {
        let tail = pending.strip_suffix(b"\r\n").unwrap_or(&pending);
        let content = tail
            .strip_suffix(delimiter)
            .ok_or_else(|| UploadError::Transfer("the form upload does not end with its boundary".into()))?;
        tokio::task::block_in_place(|| installer.feed(content))?;
    } else {
        tokio::task::block_in_place(|| installer.feed(&pending))?;
    }
    Ok(tokio::task::block_in_place(|| installer.finish())?)
}

/// Reads and drops the rest of a refused upload (at most [`MAX_DRAIN`] bytes, until
/// `deadline`), so that the client reads the refusal rather than a reset connection.
async fn drain(body: &mut Body, deadline: tokio::time::Instant) {
    let mut dropped = 0;
    while dropped < MAX_DRAIN {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now()).min(IDLE_LIMIT);
        match next_chunk(body, wait, "").await {
            Ok(Some(chunk)) => dropped += chunk.len(),
            _ => return,
        }
    }
}

/// Installs a raw bundle body (the API).
pub async fn install_raw(web: &Web, mut body: Body, actor: &str) -> Result<Installed, UploadError> {
    let installed = install_stream(web, &[], &mut body, None).await;
    settle(web, installed, actor)
}

/// Installs the bundle of a `multipart/form-data` page form: a `csrf` field, then the
/// `bundle` file. `csrf_ok` checks the CSRF field before any byte is written.
pub async fn install_form(
    web: &Web,
    content_type: &str,
    mut body: Body,
    actor: &str,
    csrf_ok: impl FnOnce(&str) -> bool,
) -> Result<Installed, UploadError> {
    let boundary = content_type
        .split(';')
        .find_map(|part| part.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty() && b.len() <= 70)
        .ok_or_else(|| UploadError::Transfer("not a multipart/form-data upload".into()))?;
    let delimiter = format!("\r\n--{boundary}--");
    let mut buffer = Vec::new();
    let (csrf, file_start) = loop {
        if let Some(found) = preamble(&buffer, boundary.as_bytes())? {
            break found;
        }
        if buffer.len() > MAX_PREAMBLE {
            return Err(UploadError::Transfer("the form's fields before the file are too large".into()));
        }
        match next_chunk(&mut body, IDLE_LIMIT, "no data for 60 s").await? {
            Some(chunk) => buffer.extend_from_slice(&chunk),
            None => return Err(UploadError::Transfer("the form has no bundle file".into())),
        }
    };
    if !csrf_ok(&csrf) {
        return Err(UploadError::Csrf);
    }
    let installed = install_stream(web, &buffer[file_start..], &mut body, Some(delimiter.as_bytes())).await;
    settle(web, installed, actor)
}

/// Notes the outcome, and asks for the reboot into the new slot a second later (so the
/// answer reaches the client first).
fn settle(web: &Web, installed: Result<Installed, UploadError>, actor: &str) -> Result<Installed, UploadError> {
    match &installed {
        Ok(done) => {
            let note = format!("installed update {} into root slot {}; rebooting into it", done.version, done.slot);
            if let Err(error) = web.app.record_audit(actor, &note) {
                tracing::warn!("cannot note the update in the audit log: {error}");
            }
            if let Some(updates) = web.updates.clone() {
                updates.mark_staged();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    updates.reboot.notify_one();
                });
            }
        }
        Err(error) => {
            tracing::warn!("update refused: {error}");
            if let Err(note_error) = web.app.record_audit(actor, &format!("update refused: {error}")) {
                tracing::warn!("cannot note the refusal in the audit log: {note_error}");
            }
        }
    }
    installed
}

/// Parses the form up to the file's first byte: the `csrf` field's value and where the
/// `bundle` file's content starts. None while more bytes are needed.
fn preamble(buffer: &[u8], boundary: &[u8]) -> Result<Option<(String, usize)>, UploadError> {
    let malformed = |what: &str| UploadError::Transfer(format!("malformed form upload: {what}"));
    let mut opening = b"--".to_vec();
    opening.extend_from_slice(boundary);
    let mut delimiter = b"\r\n".to_vec();
    delimiter.extend_from_slice(&opening);
    if buffer.len() < opening.len() + 2 {
        return Ok(None);
    }
    if !buffer.starts_with(&opening) {
        return Err(malformed("it does not start with its boundary"));
    }
    let mut at = opening.len() + 2; // past the boundary's CRLF
    let mut csrf = None;
    loop {
        let Some(headers_end) = find(&buffer[at..], b"\r\n\r\n") else { return Ok(None) };
        let headers = String::from_utf8_lossy(&buffer[at..at + headers_end]).to_ascii_lowercase();
        let content_start = at + headers_end + 4;
        if headers.contains("name=\"bundle\"") {
            return Ok(Some((csrf.ok_or_else(|| malformed("no CSRF field before the file"))?, content_start)));
        }
        let Some(content_len) = find(&buffer[content_start..], &delimiter) else { return Ok(None) };
        if headers.contains("name=\"csrf\"") {
            let value = &buffer[content_start..content_start + content_len];
            csrf = Some(String::from_utf8_lossy(value).into_owned());
        }
        at = content_start + content_len + delimiter.len() + 2; // past "\r\n--boundary\r\n"
        if at > buffer.len() {
            return Ok(None);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_finds_the_csrf_field_and_the_file() {
        let form = b"--XyZ\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\ntok123\r\n--XyZ\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"u.update\"\r\nContent-Type: application/octet-stream\r\n\r\nPBXUPD01...";
        let (csrf, start) = preamble(form, b"XyZ").unwrap().unwrap();
        assert_eq!(csrf, "tok123");
        assert!(form[start..].starts_with(b"PBXUPD01"));
        // Every shorter prefix asks for more bytes, or is the same answer once complete.
        for cut in 0..start {
            assert!(preamble(&form[..cut], b"XyZ").unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn preamble_refuses_a_file_without_csrf_and_foreign_bodies() {
        let no_csrf = b"--b\r\nContent-Disposition: form-data; name=\"bundle\"\r\n\r\nPBX";
        assert!(preamble(no_csrf, b"b").is_err());
        assert!(preamble(b"garbage that is long enough", b"b").is_err());
    }
}
