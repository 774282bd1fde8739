//! The `provbox` command line: the appliance server and its maintenance commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use provbox::store::backend::{self, AnyFlash, DEFAULT_CAPACITY};
use provbox::store::check::{self, hex};
use provbox::store::records::{Kind, decode_json};
use provbox::store::{Store, StoreError};

/// Provisioning appliance for SIP desk phones.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Data directory: the store, certificates and template overrides live here.
    #[arg(long, global = true, default_value = "./provbox-data")]
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
    Serve,
    /// Inspect and maintain the on-flash store.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Verify every sector and record; exits non-zero on corruption.
    Check,
    /// Print every live record.
    Dump {
        /// One JSON object per line, secrets masked.
        #[arg(long)]
        json: bool,
    },
    /// Reclaim all dead space now.
    Compact,
    /// Erase the device and start an empty store. Destroys everything on it.
    Format,
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
    #[error("store check found corruption in {0}")]
    Corrupt(PathBuf),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

impl CliError {
    /// Wraps a store error with the device it concerns.
    fn store(path: &Path) -> impl FnOnce(StoreError) -> CliError + '_ {
        move |source| CliError::Store { path: path.to_path_buf(), source }
    }
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
        }
        let flash = backend::open(&path, create.then_some(DEFAULT_CAPACITY))?;
        Ok((flash, path))
    }

    fn mount(&self, allow_create: bool) -> Result<(Store<AnyFlash>, PathBuf), CliError> {
        let (flash, path) = self.open_flash(allow_create)?;
        let store = Store::mount(flash).map_err(CliError::store(&path))?;
        Ok((store, path))
    }
}

/// Creates `dir` readable by its owner only.
fn ensure_private_dir(dir: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(source) => Err(CliError::DataDir { path: dir.to_path_buf(), source }),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        None | Some(Command::Serve) => serve(&cli),
        Some(Command::Store(command)) => store_command(&cli, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("provbox: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a status line; a closed stdout (a supervisor gone away) is not worth dying for.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Mounts the store and holds it until SIGTERM or Ctrl-C.
fn serve(cli: &Cli) -> Result<(), CliError> {
    let (store, path) = cli.mount(true)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(CliError::Runtime)?;
    runtime.block_on(async {
        // Handlers first, so that a SIGTERM right after the ready line is never lost.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(CliError::Runtime)?;
        say(format_args!(
            "provbox {}: store {} mounted, {} records",
            env!("CARGO_PKG_VERSION"),
            path.display(),
            store.len()
        ));
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        say(format_args!("provbox: shutting down"));
        Ok(())
    })
}

fn store_command(cli: &Cli, command: &StoreCommand) -> Result<(), CliError> {
    match command {
        StoreCommand::Check => {
            let (flash, path) = cli.open_flash(false)?;
            let report = check::check(flash).map_err(CliError::store(&path))?;
            print!("{report}");
            if report.is_clean() { Ok(()) } else { Err(CliError::Corrupt(path)) }
        }
        StoreCommand::Dump { json } => {
            let (store, _) = cli.mount(false)?;
            for (key, value) in store.iter_prefix(&[]) {
                if *json {
                    println!("{}", dump_json(key, value));
                } else {
                    let kind = Kind::from_byte(key[0]).map_or("unknown", Kind::name);
                    println!("{kind:8} {} ({} bytes)", hex(&key[1..]), value.len());
                }
            }
            Ok(())
        }
        StoreCommand::Compact => {
            let (mut store, path) = cli.mount(false)?;
            let before = store.counters().erases;
            store.compact().map_err(CliError::store(&path))?;
            println!("compacted {}: {} sectors erased", path.display(), store.counters().erases - before);
            Ok(())
        }
        StoreCommand::Format => {
            let (flash, path) = cli.open_flash(true)?;
            Store::format(flash).map_err(CliError::store(&path))?;
            println!("formatted {}: empty store", path.display());
            Ok(())
        }
    }
}

/// Fields never printed in full.
const SECRET_FIELDS: [&str; 4] = ["sip_password", "password_hash", "enrollment_token", "steady_token"];

/// One record as a JSON line, with secrets masked.
fn dump_json(key: &[u8], value: &[u8]) -> String {
    fn mask(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (name, field) in map.iter_mut() {
                    if SECRET_FIELDS.contains(&name.as_str()) {
                        *field = serde_json::Value::String("***".into());
                    } else {
                        mask(field);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(mask),
            _ => {}
        }
    }
    let kind = Kind::from_byte(key[0]);
    let mut record = match kind.map(|kind| decode_json(kind, value)) {
        Some(Ok(record)) => record,
        Some(Err(error)) => serde_json::json!({ "error": error.to_string() }),
        None => serde_json::json!({ "bytes": hex(value) }),
    };
    mask(&mut record);
    serde_json::json!({
        "kind": kind.map_or("unknown", Kind::name),
        "key": hex(&key[1..]),
        "schema": value.first(),
        "record": record,
    })
    .to_string()
}
