//! Scheduled off-box backup copies: daily or weekly, a backup encrypted to the operator's
//! age public key (`backup.copy_recipient`) is PUT to a WebDAV or plain HTTPS URL
//! (`backup.copy_url`). Making a copy needs no secret on the appliance: only the identity,
//! kept elsewhere, opens it.
//!
//! The schedule is a record in the store ([`BackupCopyState`]), like the redirect outbox: a
//! copy that fails (the WAN is down, the server refuses) is retried with the outbox's
//! backoff, across restarts, until one arrives; then the next is due a period later.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::sync::watch;

use super::views::BackupCopyView;
use super::{App, AppError};
use crate::backup::{self, age::Recipient};
use crate::clock::{self, now};
use crate::redirect::outbox::{CLOCK_RECHECK, ERROR_PAUSE, backoff};
use crate::redirect::wan::{Wan, WanRequest};
use crate::settings::Settings;
use crate::store::records::{BackupCopyState, Txn, truncated};

/// How long one upload may take: a backup with firmware is many megabytes.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the worker sleeps when nothing is configured or due soon; a settings change or
/// "copy now" wakes it earlier.
const IDLE: Duration = Duration::from_secs(3600);

/// Where and how copies go, from the settings; None when copies are off.
struct CopyTarget {
    url: String,
    recipient: Recipient,
    period: u64,
    include_files: bool,
    authorization: Option<String>,
    ca_file: String,
}

impl CopyTarget {
    /// The target the settings describe; `Err` names what is missing.
    fn from_settings(settings: &Settings) -> Result<Option<CopyTarget>, String> {
        let url = settings.get("backup.copy_url").to_string();
        if url.is_empty() {
            return Ok(None);
        }
        let recipient = settings
            .get("backup.copy_recipient")
            .parse::<Recipient>()
            .map_err(|_| "backup.copy_recipient is not set: copies are encrypted to an age public key".to_string())?;
        let (user, password, token) = (
            settings.get("backup.copy_username"),
            settings.get("backup.copy_password"),
            settings.get("backup.copy_token"),
        );
        let authorization = if !token.is_empty() {
            Some(format!("Bearer {token}"))
        } else if !user.is_empty() {
            Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))))
        } else {
            None
        };
        let period = if settings.get("backup.copy_schedule") == "weekly" { 7 * 86_400 } else { 86_400 };
        Ok(Some(CopyTarget {
            url,
            recipient,
            period,
            include_files: settings.is_on("backup.copy_files"),
            authorization,
            ca_file: settings.get("backup.copy_ca_file").to_string(),
        }))
    }

    /// The URL a copy made at `at` goes to: a folder URL gets a dated file name.
    fn file_url(&self, at: u64) -> String {
        if self.url.ends_with('/') {
            format!("{}provbox-backup-{}.age", self.url, clock::date(at))
        } else {
            self.url.clone()
        }
    }
}

impl App {
    /// Makes and sends the scheduled copy if one is due; returns how long until the next
    /// look.
    pub async fn copy_backup_if_due(&self) -> Result<Duration, AppError> {
        let (settings, state) = {
            let state = self.lock();
            (state.settings()?, state.db.backup_copy()?)
        };
        let target = match CopyTarget::from_settings(&settings) {
            Ok(Some(target)) => target,
            Ok(None) => return Ok(IDLE),
            Err(reason) => {
                self.note_misconfigured(&state, &reason)?;
                return Ok(IDLE);
            }
        };
        let at = now();
        if state.due > at {
            return Ok(Duration::from_secs(state.due - at).min(IDLE));
        }
        if clock::check(at).is_err() {
            return Ok(CLOCK_RECHECK);
        }
        let outcome = self.send_copy(&target, at).await;
        let next = self.note_attempt(&state, outcome, target.period)?;
        Ok(Duration::from_secs(next.saturating_sub(now()).max(1)).min(IDLE))
    }

    /// Makes one copy and PUTs it; `Err` says why it did not arrive.
    async fn send_copy(&self, target: &CopyTarget, at: u64) -> Result<(), String> {
        // Reading the files and encrypting them blocks: off the async workers.
        let body = tokio::task::block_in_place(|| {
            self.backup_snapshot(target.include_files).map(|snapshot| backup::seal_to(&snapshot, &target.recipient))
        })
        .map_err(|e| e.to_string())?;
        let ca_file = Some(target.ca_file.as_str()).filter(|path| !path.is_empty()).map(std::path::Path::new);
        let wan = Wan::new("backup.copy_ca_file", ca_file, UPLOAD_TIMEOUT).map_err(|failure| failure.message)?;
        let mut headers = vec![("content-type", "application/octet-stream".to_string())];
        if let Some(authorization) = &target.authorization {
            headers.push(("authorization", authorization.clone()));
        }
        let url = target.file_url(at);
        let reply = wan.send(WanRequest { method: "PUT", url, headers, body }).await.map_err(|f| f.message)?;
        match reply.status {
            200..=299 => Ok(()),
            401 | 403 => Err(format!(
                "the server refused the credentials ({}): check backup.copy_username, _password or _token",
                reply.status
            )),
            404 | 409 => {
                Err(format!("the server has no such folder ({}): create it, or fix backup.copy_url", reply.status))
            }
            status => Err(format!("the server answered {status}: {}", reply.excerpt())),
        }
    }

    /// Records what keeps copies from being made (once, not on every look).
    fn note_misconfigured(&self, before: &BackupCopyState, reason: &str) -> Result<(), AppError> {
        if before.last_error.as_str() == truncated::<160>(reason).as_str() {
            return Ok(());
        }
        tracing::warn!("backup copies: {reason}");
        let after = BackupCopyState { last_error: truncated(reason), ..before.clone() };
        self.lock().db.commit(Txn::new().set_backup_copy(&after))?;
        Ok(())
    }

    /// Records how an attempt went and when the next is due; returns that time.
    fn note_attempt(
        &self,
        before: &BackupCopyState,
        outcome: Result<(), String>,
        period: u64,
    ) -> Result<u64, AppError> {
        let at = now();
        let mut after = match &outcome {
            Ok(()) => BackupCopyState {
                due: at + period,
                attempts: 0,
                last_success: Some(at),
                last_attempt: Some(at),
                last_error: truncated(""),
            },
            Err(reason) => {
                let attempts = before.attempts.saturating_add(1);
                BackupCopyState {
                    due: at + backoff(attempts),
                    attempts,
                    last_success: before.last_success,
                    last_attempt: Some(at),
                    last_error: truncated(reason),
                }
            }
        };
        match &outcome {
            Ok(()) => tracing::info!("backup copy sent"),
            Err(reason) => tracing::warn!(attempt = after.attempts, "backup copy failed: {reason}"),
        }
        let mut state = self.lock();
        // A "Copy now" that came during the upload still stands.
        if state.db.backup_copy()?.due == 0 && before.due != 0 {
            after.due = 0;
        }
        state.db.commit(Txn::new().set_backup_copy(&after))?;
        Ok(after.due)
    }

    /// Makes the next copy due now and wakes the worker ("Copy now").
    pub fn copy_backup_now(&self) -> Result<(), AppError> {
        let mut state = self.lock();
        let settings = state.settings()?;
        if CopyTarget::from_settings(&settings).map_err(AppError::Refused)?.is_none() {
            return Err(AppError::Refused("no backup.copy_url is set: copies are off".into()));
        }
        let mut copy = state.db.backup_copy()?;
        copy.due = 0;
        state.db.commit(Txn::new().set_backup_copy(&copy))?;
        drop(state);
        self.backup_copy_wake.notify_one();
        Ok(())
    }

    /// The copies' target and how the last went.
    pub fn backup_copy_status(&self) -> Result<BackupCopyView, AppError> {
        let state = self.lock();
        let settings = state.settings()?;
        let copy = state.db.backup_copy()?;
        let target = CopyTarget::from_settings(&settings).ok().flatten();
        Ok(BackupCopyView {
            target: settings.get("backup.copy_url").to_string(),
            schedule: settings.get("backup.copy_schedule").to_string(),
            recipient: target.as_ref().map(|t| t.recipient.to_string()),
            last_success: copy.last_success,
            last_attempt: copy.last_attempt,
            last_error: Some(copy.last_error.to_string()).filter(|e| !e.is_empty()),
            next_due: target.map(|_| copy.due),
        })
    }
}

/// Sends copies as they fall due until `stopped`.
pub async fn run_copy_worker(app: Arc<App>, mut stopped: watch::Receiver<bool>) {
    loop {
        let wait = match app.copy_backup_if_due().await {
            Ok(wait) => wait,
            Err(error) => {
                tracing::error!("backup copies: {error}");
                ERROR_PAUSE
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = app.backup_copy_wake.notified() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}
