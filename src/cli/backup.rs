//! `provbox backup create|restore`: encrypted backups of the appliance's identity and state.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use clap::{Args, Subcommand};
use provbox::app::views::{BackupCopyView, RestoreSummary};
use provbox::backup::BackupKey;
use provbox::control::{BASE64, Request};

use provbox::clock;

use super::{Cli, CliError, or_dash, print_json};

#[derive(Subcommand)]
pub(super) enum BackupCommand {
    /// Write an encrypted backup (the age format: `age -d FILE | tar t` lists it).
    Create {
        /// Where to write it.
        file: PathBuf,
        /// Also take `<data>/files` (firmware): can make the backup large.
        #[arg(long)]
        files: bool,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Put a backup back: the same CA, phone URLs, devices, settings and credentials.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Replace an appliance that is already in use.
        #[arg(long)]
        replace: bool,
        /// A scheduled copy: the age identity file (age-keygen) it was encrypted to, instead
        /// of a passphrase.
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// The scheduled copies (settings backup.copy_*): where they go and how the last went.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send a scheduled copy now (the running server does, and retries if it fails).
    CopyNow,
}

/// Where the passphrase comes from; asked for on the terminal when neither is given.
#[derive(Args)]
pub(super) struct PassphraseArgs {
    /// Read the passphrase from the first line of this file.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

pub(super) fn run(cli: &Cli, command: &BackupCommand) -> Result<(), CliError> {
    match command {
        BackupCommand::Create { file, files, passphrase } => {
            let passphrase = passphrase.read(true)?;
            let request = Request::BackupCreate { passphrase, include_files: *files };
            let encoded: String = cli.call(&request)?;
            let bytes = BASE64.decode(encoded).map_err(|e| CliError::Refused { message: e.to_string() })?;
            write_private(file, &bytes)?;
            println!("wrote {} ({} bytes), encrypted with your passphrase", file.display(), bytes.len());
            Ok(())
        }
        BackupCommand::Restore { file, replace, identity, passphrase } => {
            let bytes = std::fs::read(file).map_err(|source| CliError::Read { path: file.clone(), source })?;
            let key = match identity {
                Some(path) => BackupKey::Identity(
                    std::fs::read_to_string(path).map_err(|source| CliError::Read { path: path.clone(), source })?,
                ),
                None => BackupKey::Passphrase(passphrase.read(false)?),
            };
            let request = Request::BackupRestore { file: BASE64.encode(bytes), key, replace: *replace };
            let summary: RestoreSummary = cli.call(&request)?;
            println!(
                "restored {} devices and {} files from a backup made by provbox {}",
                summary.devices, summary.files, summary.version
            );
            if !summary.admin_restored {
                println!("the backup had no admin password: the page asks for the setup code");
            }
            Ok(())
        }
        BackupCommand::Status { json } => {
            let status: BackupCopyView = cli.call(&Request::BackupCopyStatus)?;
            if *json {
                print_json(&status);
                return Ok(());
            }
            if status.target.is_empty() {
                println!("scheduled copies: off (set backup.copy_url and backup.copy_recipient)");
                return Ok(());
            }
            let when = |at: Option<u64>| at.map_or_else(|| "never".to_string(), clock::date_time);
            println!("copies:        {} to {}", status.schedule, status.target);
            println!("encrypted to:  {}", or_dash(status.recipient));
            println!("last copy:     {}", when(status.last_success));
            println!("last attempt:  {}", when(status.last_attempt));
            println!("last error:    {}", or_dash(status.last_error));
            println!(
                "next:          {}",
                or_dash(status.next_due.map(|due| if due == 0 { "now".into() } else { clock::date_time(due) }))
            );
            Ok(())
        }
        BackupCommand::CopyNow => {
            cli.call::<()>(&Request::BackupCopyNow)?;
            println!("a backup copy is due now; `provbox backup status` shows how it went");
            Ok(())
        }
    }
}

impl PassphraseArgs {
    /// The passphrase: from the file, or from `PROVBOX_BACKUP_PASSPHRASE`, or typed on the
    /// terminal without echo (twice when `confirm`).
    fn read(&self, confirm: bool) -> Result<String, CliError> {
        if let Some(path) = &self.passphrase_file {
            let text = std::fs::read_to_string(path).map_err(|source| CliError::Read { path: path.clone(), source })?;
            return Ok(text.lines().next().unwrap_or_default().to_string());
        }
        if let Ok(passphrase) = std::env::var("PROVBOX_BACKUP_PASSPHRASE") {
            return Ok(passphrase);
        }
        if !std::io::stdin().is_terminal() {
            return Err(CliError::Refused {
                message:
                    "no passphrase: give --passphrase-file FILE or PROVBOX_BACKUP_PASSPHRASE, or run on a terminal"
                        .into(),
            });
        }
        let first = prompt("backup passphrase: ")?;
        if confirm && prompt("again: ")? != first {
            return Err(CliError::Refused { message: "the two passphrases differ".into() });
        }
        Ok(first)
    }
}

/// Reads one line from the terminal with echo off.
fn prompt(text: &str) -> Result<String, CliError> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let terminal_error = |e: nix::Error| CliError::Refused { message: format!("the terminal: {e}") };
    let saved = tcgetattr(&stdin).map_err(terminal_error)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(terminal_error)?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    // Echo comes back whatever the read did.
    let restored = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    eprintln!();
    read.map_err(|source| CliError::Read { path: PathBuf::from("/dev/stdin"), source })?;
    restored.map_err(terminal_error)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Writes `bytes` to a new file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()));
    written.map_err(|source| CliError::Write { path: path.to_path_buf(), source })
}
