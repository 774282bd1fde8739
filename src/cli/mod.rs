//! The `provbox` command line: one file per command group. Every command that touches the
//! appliance's state sends a typed [`Request`] to the running server over the control
//! socket, or, with no server running, mounts the store and carries it out itself; either
//! way the answer is one of the `app::views` types, printed from the type.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use provbox::app::App;
use provbox::app::views::Rendered;
use provbox::control::{self, Request, Response};
use provbox::daemon;
use provbox::store::backend::{self, AnyFlash, DEFAULT_CAPACITY};
use provbox::store::records::Db;
use provbox::store::{Store, StoreError};
use provbox::update;
use serde::de::DeserializeOwned;

mod admin;
mod backup;
mod device;
mod ntp_cmd;
mod redirect;
mod serve;
mod settings;
mod store;
mod template;
mod update_cmd;

/// Provisioning appliance for SIP desk phones.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    /// Data directory: the store, certificates and template overrides live here. Only `serve`
    /// and `store format` create it; other commands need it to exist.
    #[arg(long, global = true, env = "PROVBOX_DATA", default_value = "./provbox-data")]
    data: PathBuf,
    /// Store device: a file, a raw block partition or /dev/mtdN [default: <data>/store.bin].
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance (the default).
    Serve(serve::ServeArgs),
    /// Manage phones.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Show and change site settings.
    #[command(subcommand)]
    Settings(settings::SettingsCommand),
    /// Show exactly what a phone would be served, secrets masked unless --reveal.
    Render {
        /// The device's MAC.
        mac: String,
        /// The file name the phone requests, e.g. 805ec0d57d72.cfg.
        file: String,
        /// Show passwords and tokens.
        #[arg(long)]
        reveal: bool,
    },
    /// Inspect and maintain the on-flash store.
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Vendor redirect services: the queue, retries and lookups.
    #[command(subcommand)]
    Redirect(redirect::RedirectCommand),
    /// The page's administrator.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Encrypted backups: the CA, phone URLs, devices, settings and credentials.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// The audit log: who changed what, newest first.
    Audit {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Vendor templates and the site's overrides: list, show, preview, edit, revert.
    #[command(subcommand)]
    Template(template::TemplateCommand),
    /// Signed root-image updates of the firmware image (A/B slots).
    #[command(subcommand)]
    Update(update_cmd::UpdateCommand),
    /// Keep the clock set from NTP servers (SNTP; needs root to set the clock).
    Ntp(ntp_cmd::NtpArgs),
}

/// An error for the user: what went wrong and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Open(#[from] backend::OpenError),
    #[error("{path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Update(#[from] update::UpdateError),
    #[error("store check found corruption in {0}")]
    Corrupt(PathBuf),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0:?} is not a listen address; write it as IP:PORT, e.g. 0.0.0.0:443 or [::]:8443")]
    Address(String),
    #[error(transparent)]
    Daemon(#[from] daemon::DaemonError),
    #[error(transparent)]
    App(#[from] provbox::app::AppError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("the server's answer to this command did not have the expected shape: {0}")]
    Answer(serde_json::Error),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "no provbox data directory at {0}: run this where `provbox serve` keeps its data, or name it with --data DIR or PROVBOX_DATA=DIR (only `provbox serve` and `provbox store format` create one)"
    )]
    NoDataDir(PathBuf),
    #[error("{message}")]
    Refused { message: String },
    #[error("no user {0:?} on this system")]
    UnknownUser(String),
}

impl CliError {
    /// Wraps a store error with the device it concerns.
    fn store(path: &Path) -> impl FnOnce(StoreError) -> CliError + '_ {
        move |source| CliError::Store { path: path.to_path_buf(), source }
    }
}

/// Parses the command line and runs it.
pub fn run() -> ExitCode {
    // Leaked once per process: clap takes the version as a &'static str.
    let version: &'static str = Box::leak(provbox::update::version_text().into_boxed_str());
    let cli = Cli::from_arg_matches(&Cli::command().version(version).get_matches()).unwrap_or_else(|e| e.exit());
    let result = match &cli.command {
        // A bare `provbox` serves with the flags' defaults.
        None => serve::run(&cli, &serve::ServeArgs::parse_from(["provbox"])),
        Some(Command::Serve(args)) => serve::run(&cli, args),
        Some(Command::Store(command)) => store::run(&cli, command).map(done),
        Some(Command::Device(command)) => device::run(&cli, command).map(done),
        Some(Command::Settings(command)) => settings::run(&cli, command).map(done),
        Some(Command::Redirect(command)) => redirect::run(&cli, command).map(done),
        Some(Command::Admin(command)) => admin::run(&cli, command).map(done),
        Some(Command::Backup(command)) => backup::run(&cli, command).map(done),
        Some(Command::Template(command)) => template::run(&cli, command).map(done),
        Some(Command::Audit { json }) => audit(&cli, *json).map(done),
        Some(Command::Update(command)) => update_cmd::run(command).map(done),
        Some(Command::Ntp(args)) => ntp_cmd::run(args),
        Some(Command::Render { mac, file, reveal }) => {
            let request = Request::Render { mac: mac.clone(), file: file.clone(), reveal: *reveal };
            cli.call::<Rendered>(&request)
                .map(|rendered| {
                    for warning in &rendered.warnings {
                        eprintln!("provbox: warning: {warning}");
                    }
                    print!("{}", rendered.body);
                })
                .map(done)
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("provbox: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `provbox audit`: the audit log, newest first.
fn audit(cli: &Cli, json: bool) -> Result<(), CliError> {
    let entries: Vec<provbox::store::records::AuditEntry> = cli.call(&Request::AuditLog)?;
    if json {
        print_json(&entries);
        return Ok(());
    }
    for entry in &entries {
        println!("{}  {:12} {}", provbox::clock::date_time(entry.at), entry.actor, entry.action);
    }
    Ok(())
}

/// The exit status of a command that succeeded.
fn done((): ()) -> ExitCode {
    ExitCode::SUCCESS
}

/// Where the store lives and whether it may be created.
struct StorePath {
    path: PathBuf,
    /// Only the default file in the data directory is created when missing; an explicit
    /// device path must exist, so a typo never turns into a new file.
    create: bool,
}

impl Cli {
    fn store_path(&self) -> StorePath {
        match &self.store {
            Some(path) => StorePath { path: path.clone(), create: false },
            None => StorePath { path: self.data.join("store.bin"), create: true },
        }
    }

    fn open_flash(&self, allow_create: bool) -> Result<(AnyFlash, PathBuf), CliError> {
        let StorePath { path, create } = self.store_path();
        let create = create && allow_create;
        if create {
            ensure_private_dir(&self.data)?;
        } else if self.store.is_none() && !self.data.is_dir() {
            // A command run from the wrong directory must not start a second, empty store.
            return Err(CliError::NoDataDir(absolute(&self.data)));
        }
        let flash = backend::open(&path, create.then_some(DEFAULT_CAPACITY))?;
        Ok((flash, path))
    }

    fn mount(&self, allow_create: bool) -> Result<(Store<AnyFlash>, PathBuf), CliError> {
        let (flash, path) = self.open_flash(allow_create)?;
        let store = Store::mount(flash).map_err(CliError::store(&path))?;
        Ok((store, path))
    }

    /// Runs `request` on the running server, or on the store directly when none runs, and
    /// reads the answer as the view type `T` the request is answered with. A server that is
    /// still starting (it holds the store but has no control socket yet: making its CA takes
    /// a moment) is waited for, a few seconds at most.
    fn call<T: DeserializeOwned>(&self, request: &Request) -> Result<T, CliError> {
        let mut waited = 0;
        let response = loop {
            if let Some(response) = control::call(&self.data, request)? {
                break response;
            }
            // In an existing data directory a first command may start the store; nowhere else.
            match self.mount(self.data.is_dir()) {
                Ok((store, _)) => {
                    let port = daemon::last_https_port(&self.data);
                    let app = App::new(Db::new(store), provbox::lan::site(self.data.clone(), port, 8080))?;
                    break control::handle(&app, request, "cli");
                }
                Err(CliError::Open(backend::OpenError::Locked(_))) if waited < STARTING_SERVER_WAITS => {
                    waited += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(error) => return Err(error),
            }
        };
        match response {
            Response::Ok { result } => serde_json::from_value(result).map_err(CliError::Answer),
            Response::Error { message, problems } => {
                for problem in problems {
                    eprintln!("line {}: {}", problem.line, problem.reason);
                }
                Err(CliError::Refused { message })
            }
        }
    }
}

/// How many times (100 ms apart) a command waits for a starting server's control socket.
const STARTING_SERVER_WAITS: u32 = 50;

/// `path` made absolute against the current directory, for messages.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Creates `dir` readable by its owner only.
fn ensure_private_dir(dir: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(source) => Err(CliError::DataDir { path: dir.to_path_buf(), source }),
    }
}

/// Prints a view as indented JSON, the same shape the API answers with.
fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// An optional value as shown in a table: `-` when absent.
fn or_dash(value: Option<impl std::fmt::Display>) -> String {
    value.map_or_else(|| "-".to_string(), |value| value.to_string())
}
