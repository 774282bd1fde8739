//! The control protocol behind `provbox device|settings|render`: one JSON request, one JSON
//! response. While the server runs it holds the store and answers on a Unix socket in the
//! data directory (mode 0600, peers of another user refused); otherwise the CLI mounts the
//! store and calls [`handle`] itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::app::views::SyncReport;
use crate::app::{App, AppError};
use crate::devices::{CsvProblem, DeviceSpec, KeySpec};
use crate::mac::Mac;

/// Largest request accepted (a CSV import of the full 5,000 devices fits easily).
const MAX_REQUEST_BYTES: u64 = 8 * 1024 * 1024;

/// The socket's path in `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// One operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Add a device.
    DeviceAdd {
        /// What to add.
        spec: DeviceSpec,
    },
    /// List devices.
    DeviceList,
    /// Show one device with URLs and files.
    DeviceShow {
        /// Its MAC.
        mac: String,
    },
    /// Remove a device.
    DeviceRemove {
        /// Its MAC.
        mac: String,
    },
    /// Re-open enrollment with a new enrollment URL.
    DeviceUnlock {
        /// Its MAC.
        mac: String,
    },
    /// Revoke both URLs: new enrollment and steady tokens, enrollment locked.
    DeviceRekey {
        /// Its MAC.
        mac: String,
        /// Also give every line a new generated SIP password.
        new_sip_passwords: bool,
    },
    /// Let the tokenless LAN path serve the full config for a while.
    DeviceLanWindow {
        /// Its MAC.
        mac: String,
        /// How long.
        minutes: u64,
    },
    /// Give or withdraw the consent to serve the config over plain HTTP.
    DevicePlainHttp {
        /// Its MAC.
        mac: String,
        /// Give (true) or withdraw (false).
        allow: bool,
    },
    /// Set or clear a programmable key.
    DeviceKey {
        /// Its MAC.
        mac: String,
        /// Key number, from 1.
        number: usize,
        /// The key, or None to clear it.
        key: Option<KeySpec>,
    },
    /// Set or remove a per-device vendor key.
    DeviceOverride {
        /// Its MAC.
        mac: String,
        /// The vendor's key name.
        name: String,
        /// Its value, or None to remove it.
        value: Option<String>,
    },
    /// Import devices from CSV text.
    DeviceImport {
        /// The CSV.
        csv: String,
        /// Import the valid rows even if some are wrong.
        partial: bool,
    },
    /// Export devices as CSV.
    DeviceExport {
        /// Include SIP passwords.
        reveal: bool,
    },
    /// Show settings.
    SettingsShow,
    /// Change a setting.
    SettingsSet {
        /// Its name.
        name: String,
        /// The new value.
        value: String,
    },
    /// Render a file as a device would get it.
    Render {
        /// The device.
        mac: String,
        /// The file name.
        file: String,
        /// Show secrets.
        reveal: bool,
    },
    /// List unknown phones that asked for a config.
    PhonesSeen,
    /// Send the vendor's check-sync NOTIFY to a phone and wait for its answer.
    DeviceReprovision {
        /// Its MAC.
        mac: String,
        /// Seconds to wait for the answer.
        wait_seconds: u64,
    },
    /// The redirect queue and every device's redirect state.
    RedirectStatus,
    /// The first-start setup code of the running server.
    AdminSetupCode,
    /// Whether an admin password is set.
    AdminClaimed,
    /// Set the admin password.
    AdminSetPassword {
        /// The new password.
        password: String,
    },
    /// Make an API token.
    ApiTokenCreate {
        /// What it is for.
        name: String,
    },
    /// List API tokens.
    ApiTokenList,
    /// Revoke API tokens by name or id.
    ApiTokenRevoke {
        /// Name or id.
        which: String,
    },
    /// Queue what is missing and send everything queued now.
    RedirectSync,
    /// Ask the service what it holds for a MAC.
    RedirectCheck {
        /// The device's MAC.
        mac: String,
    },
    /// Register a MAC that belongs to another account, taking it over.
    RedirectOverride {
        /// The device's MAC.
        mac: String,
    },
    /// Turn redirect registration on or off for one device.
    RedirectEnable {
        /// The device's MAC.
        mac: String,
        /// On or off.
        enabled: bool,
    },
    /// Make an encrypted backup; answered with the file, base64.
    BackupCreate {
        /// What it is encrypted with.
        passphrase: String,
        /// Whether `<data>/files` goes in.
        include_files: bool,
    },
    /// Make the next scheduled backup copy due now.
    BackupCopyNow,
    /// The scheduled backup copies: target and last outcome.
    BackupCopyStatus,
    /// Restore a backup file (base64).
    BackupRestore {
        /// The backup file, base64.
        file: String,
        /// What opens it.
        key: crate::backup::BackupKey,
        /// Replace an appliance that is in use.
        replace: bool,
    },
    /// The audit log, newest first.
    AuditLog,
    /// The site's password levels and the devices below them.
    PasswordPolicy,
    /// New generated SIP passwords for a device's lines below the policy.
    DeviceRotatePasswords {
        /// Its MAC.
        mac: String,
    },
    /// Every vendor's editable templates.
    TemplateList,
    /// One template, stock and override.
    TemplateShow {
        /// Vendor id.
        vendor: String,
        /// Template file name.
        file: String,
    },
    /// Render an unsaved edit for a device.
    TemplatePreview {
        /// Vendor id.
        vendor: String,
        /// Template file name.
        file: String,
        /// The edited text.
        source: String,
        /// The device to render for.
        mac: String,
    },
    /// Check and save an override.
    TemplateSave {
        /// Vendor id.
        vendor: String,
        /// Template file name.
        file: String,
        /// The new text.
        source: String,
    },
    /// Remove an override: back to stock.
    TemplateRevert {
        /// Vendor id.
        vendor: String,
        /// Template file name.
        file: String,
    },
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    /// Done; the result depends on the request.
    Ok {
        /// The result.
        result: serde_json::Value,
    },
    /// Refused or failed.
    Error {
        /// What went wrong, for the user.
        message: String,
        /// Per-line problems of a CSV import.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        problems: Vec<CsvProblem>,
    },
}

impl From<AppError> for Response {
    fn from(error: AppError) -> Self {
        let problems = match &error {
            AppError::Import(problems) => problems.clone(),
            _ => Vec::new(),
        };
        Response::Error { message: error.to_string(), problems }
    }
}

/// How backup files travel over the socket's JSON lines.
pub const BASE64: base64::engine::general_purpose::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn ok(value: impl Serialize) -> Result<serde_json::Value, AppError> {
    // The views are plain data; serde_json cannot fail on them.
    Ok(serde_json::to_value(value).expect("views serialise to JSON"))
}

/// Carries out `request` on `app` as `actor` (`cli`, `page`, ...).
pub fn handle(app: &App, request: &Request, actor: &str) -> Response {
    let mac = |text: &str| text.trim().parse::<Mac>().map_err(AppError::from);
    let result = match request {
        Request::DeviceAdd { spec } => app.add_device(spec, actor).and_then(ok),
        Request::DeviceList => app.devices().and_then(ok),
        Request::DeviceShow { mac: m } => mac(m).and_then(|m| app.device_view(&m, true)).and_then(ok),
        Request::DeviceRemove { mac: m } => mac(m).and_then(|m| app.remove_device(&m, actor)).and_then(ok),
        Request::DeviceUnlock { mac: m } => mac(m).and_then(|m| app.unlock(&m, actor)).and_then(ok),
        Request::DeviceRekey { mac: m, new_sip_passwords } => {
            mac(m).and_then(|m| app.rekey(&m, *new_sip_passwords, actor)).and_then(ok)
        }
        Request::DeviceLanWindow { mac: m, minutes } => {
            mac(m).and_then(|m| app.open_lan_window(&m, *minutes, actor)).and_then(ok)
        }
        Request::DevicePlainHttp { mac: m, allow } => {
            mac(m).and_then(|m| app.set_plain_http(&m, *allow, actor)).and_then(ok)
        }
        Request::DeviceKey { mac: m, number, key } => {
            mac(m).and_then(|m| app.set_key(&m, *number, key.as_ref(), actor)).and_then(ok)
        }
        Request::DeviceOverride { mac: m, name, value } => {
            mac(m).and_then(|m| app.set_override(&m, name, value.as_deref(), actor)).and_then(ok)
        }
        Request::DeviceImport { csv, partial } => app.import(csv, *partial, actor).and_then(ok),
        Request::DeviceExport { reveal } => app.export(*reveal).and_then(ok),
        Request::SettingsShow => app.settings_view().and_then(ok),
        Request::SettingsSet { name, value } => app.set_setting(name, value, actor).and_then(ok),
        Request::Render { mac: m, file, reveal } => mac(m).and_then(|m| app.render(&m, file, *reveal)).and_then(ok),
        Request::PhonesSeen => app.phones_seen().and_then(ok),
        Request::DeviceReprovision { mac: m, wait_seconds } => mac(m)
            .and_then(|m| block_on(app.reprovision(&m, std::time::Duration::from_secs((*wait_seconds).clamp(1, 32))))?)
            .and_then(ok),
        Request::RedirectStatus => app.redirect_status().and_then(ok),
        Request::AdminSetupCode => app.setup_code().and_then(ok),
        Request::AdminClaimed => app.admin_configured().and_then(ok),
        Request::AdminSetPassword { password } => app.set_admin_password(password, None, actor).and_then(|_| ok(())),
        Request::ApiTokenCreate { name } => app.create_api_token(name, actor).and_then(ok),
        Request::ApiTokenList => app.api_tokens().and_then(ok),
        Request::ApiTokenRevoke { which } => app.revoke_api_token(which, actor).and_then(ok),
        Request::RedirectSync => app.reconcile_redirects(crate::redirect::outbox::Plan::Reconcile).and_then(|queued| {
            let delivery = block_on(app.deliver(true))??;
            ok(SyncReport { queued, delivery })
        }),
        Request::RedirectCheck { mac: m } => mac(m).and_then(|m| block_on(app.redirect_check(&m))?).and_then(ok),
        Request::RedirectOverride { mac: m } => mac(m).and_then(|m| app.redirect_override(&m, actor)).and_then(ok),
        Request::RedirectEnable { mac: m, enabled } => {
            mac(m).and_then(|m| app.redirect_enable(&m, *enabled, actor)).and_then(ok)
        }
        Request::BackupCreate { passphrase, include_files } => {
            app.create_backup(passphrase, *include_files, actor).map(|file| BASE64.encode(file)).and_then(ok)
        }
        Request::BackupCopyNow => app.copy_backup_now().and_then(ok),
        Request::BackupCopyStatus => app.backup_copy_status().and_then(ok),
        Request::BackupRestore { file, key, replace } => BASE64
            .decode(file)
            .map_err(|e| AppError::Refused(format!("the backup did not travel intact: {e}")))
            .and_then(|file| Ok(crate::backup::open(&file, key)?))
            .and_then(|snapshot| app.restore(snapshot, *replace, actor))
            .and_then(ok),
        Request::AuditLog => app.audit_log().and_then(ok),
        Request::PasswordPolicy => app.password_policy().and_then(ok),
        Request::DeviceRotatePasswords { mac: m } => {
            mac(m).and_then(|m| app.rotate_sip_passwords(&m, actor)).and_then(ok)
        }
        Request::TemplateList => app.template_list().and_then(ok),
        Request::TemplateShow { vendor, file } => app.template_show(vendor, file).and_then(ok),
        Request::TemplatePreview { vendor, file, source, mac: m } => {
            mac(m).and_then(|m| app.template_preview(vendor, file, source, &m)).and_then(ok)
        }
        Request::TemplateSave { vendor, file, source } => app.template_save(vendor, file, source, actor).and_then(ok),
        Request::TemplateRevert { vendor, file } => app.template_revert(vendor, file, actor).and_then(ok),
    };
    match result {
        Ok(result) => Response::Ok { result },
        Err(error) => error.into(),
    }
}

/// Runs WAN work to completion from synchronous code: on the server's runtime when called
/// from one of its blocking threads, else on a runtime of its own (the offline CLI).
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, AppError> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => Ok(handle.block_on(future)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|runtime| runtime.block_on(future))
            .map_err(|e| AppError::Internal(format!("cannot start a runtime for WAN calls: {e}"))),
    }
}

/// Why the control socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Socket I/O failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The server's answer did not parse.
    #[error("control socket {path}: unreadable answer: {reason}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Sends `request` to a running server. Returns None when no server listens, so the caller
/// may open the store itself.
pub fn call(data_dir: &Path, request: &Request) -> Result<Option<Response>, ControlError> {
    let path = socket_path(data_dir);
    let io = |source| ControlError::Io { path: path.clone(), source };
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(error) if matches!(error.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None);
        }
        Err(error) => return Err(io(error)),
    };
    let mut line = serde_json::to_vec(request)
        .map_err(|e| ControlError::Protocol { path: path.clone(), reason: e.to_string() })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream.take(MAX_REQUEST_BYTES * 2)).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| ControlError::Protocol { path: path.clone(), reason: e.to_string() })
}

/// Binds the control socket in `data_dir`, owner-only.
pub fn bind(data_dir: &Path) -> Result<UnixListener, ControlError> {
    let path = socket_path(data_dir);
    let io = |source| ControlError::Io { path: path.clone(), source };
    // A socket left by a crashed server: nobody listens (the store lock proves we are the
    // only server), so it can go.
    let _ = std::fs::remove_file(&path);
    // Created owner-only from the start (no window with the default umask), and chmod'ed
    // for good measure. The umask is process-wide; nothing else creates files at this point.
    let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&path);
    nix::sys::stat::umask(previous);
    let listener = bound.map_err(io)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Writes `response` as one JSON line; a client gone meanwhile is no error here.
async fn write_response(writer: &mut (impl tokio::io::AsyncWrite + Unpin), response: &Response) {
    // Responses are plain data; serialising cannot fail.
    let mut out = serde_json::to_vec(response).expect("responses serialise");
    out.push(b'\n');
    let _ = writer.write_all(&out).await;
}

/// Writes the `Ok` answer to [`Request::DeviceList`] a batch at a time, so that a long list
/// is never held whole. A failure half-way ends the line early: the client reports a
/// malformed answer.
async fn write_device_list(app: Arc<App>, writer: &mut (impl tokio::io::AsyncWrite + Unpin)) {
    use crate::app::listing::{BUSY, LONG_ANSWER_LIMIT, ListFormat, stream_devices};
    let Some(turn) = app.heavy.turn().await else {
        write_response(writer, &Response::Error { message: BUSY.into(), problems: Vec::new() }).await;
        return;
    };
    let format = ListFormat::Json { open: r#"{"status":"ok","result":"#, close: "}\n" };
    let mut pieces = stream_devices(app, format, turn);
    // A reader that stops reading (a suspended CLI) gives the turn back by the deadline.
    let sent = tokio::time::timeout(LONG_ANSWER_LIMIT, async {
        while let Some(piece) = pieces.recv().await {
            match piece {
                Ok(bytes) => writer.write_all(&bytes).await.map_err(|error| error.to_string())?,
                Err(error) => return Err(error.to_string()),
            }
        }
        Ok(())
    })
    .await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!("control socket: the device list was cut short: {error}"),
        Err(_) => {
            tracing::warn!("control socket: the device list was cut short: not read within {LONG_ANSWER_LIMIT:?}")
        }
    }
}

/// Answers control requests until `shutdown` turns true.
pub async fn serve(listener: UnixListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let own_uid = nix::unistd::geteuid().as_raw();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let Ok((mut stream, _)) = accepted else { continue };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == own_uid || cred.uid() == 0 => {}
            _ => {
                tracing::warn!("control socket: refused a peer of another user");
                continue;
            }
        }
        let app = app.clone();
        tokio::spawn(async move {
            let (reader, mut writer) = stream.split();
            let mut line = String::new();
            let read = tokio::io::BufReader::new(reader.take(MAX_REQUEST_BYTES)).read_line(&mut line).await;
            let response = match read.map(|_| serde_json::from_str::<Request>(&line)) {
                Ok(Ok(Request::DeviceList)) => return write_device_list(app, &mut writer).await,
                Ok(Ok(request)) => {
                    let app = app.clone();
                    tokio::task::spawn_blocking(move || handle(&app, &request, "cli"))
                        .await
                        .unwrap_or_else(|_| Response::Error { message: "internal error".into(), problems: Vec::new() })
                }
                Ok(Err(error)) => {
                    Response::Error { message: format!("malformed request: {error}"), problems: Vec::new() }
                }
                Err(error) => Response::Error { message: format!("read failed: {error}"), problems: Vec::new() },
            };
            write_response(&mut writer, &response).await;
        });
    }
}
