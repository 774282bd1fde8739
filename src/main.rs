//! The `provbox` command line: the appliance server and its maintenance commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use provbox::app::App;
use provbox::control::{self, Request, Response};
use provbox::daemon::{self, DaemonConfig};
use provbox::devices::{DeviceSpec, KeySpec, LineSpec};
use provbox::pki::KeyType;
use provbox::server::Limits;
use provbox::store::backend::{self, AnyFlash, DEFAULT_CAPACITY};
use provbox::store::check::{self, hex};
use provbox::store::records::{Db, Kind, decode_json};
use provbox::store::{Store, StoreError};
use provbox::update;

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
    Serve(ServeArgs),
    /// Manage phones.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Show and change site settings.
    #[command(subcommand)]
    Settings(SettingsCommand),
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
    Store(StoreCommand),
    /// Vendor redirect services: the queue, retries and lookups.
    #[command(subcommand)]
    Redirect(RedirectCommand),
    /// The page's administrator.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Signed root-image updates of the firmware image (A/B slots).
    #[command(subcommand)]
    Update(UpdateCommand),
}

#[derive(Subcommand)]
enum UpdateCommand {
    /// Show the running root slot, whether it is on trial, and the image version.
    Status {
        /// The initramfs's description of the slots.
        #[arg(long, default_value = update::DEFAULT_BOOT_INFO)]
        boot_info: PathBuf,
    },
    /// Check a signed bundle and write it to the inactive slot; it starts at the next boot.
    Install {
        /// The bundle (`provbox-<board>-<version>.update`).
        bundle: PathBuf,
        /// The initramfs's description of the slots.
        #[arg(long, default_value = update::DEFAULT_BOOT_INFO)]
        boot_info: PathBuf,
        /// The ed25519 public key bundles must be signed with (64 hex digits).
        #[arg(long, default_value = update::DEFAULT_KEY)]
        key: PathBuf,
    },
    /// Make a signing key: KEY (PKCS#8, mode 0600) and KEY.pub (for the image).
    Keygen {
        /// Where to write the private key.
        key: PathBuf,
    },
    /// Sign a root squashfs image into an update bundle.
    Sign {
        /// The private key (from `update keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The board the image is for.
        #[arg(long)]
        board: String,
        /// The image's version.
        #[arg(long)]
        version: String,
        /// The root squashfs image.
        image: PathBuf,
        /// The bundle to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Show the one-time setup code the page asks for on a new appliance.
    SetupCode,
    /// Set the admin password, read from stdin (first line).
    SetPassword,
    /// Bearer tokens of the JSON API and /metrics.
    #[command(subcommand)]
    ApiToken(ApiTokenCommand),
}

#[derive(Subcommand)]
enum ApiTokenCommand {
    /// Make a token; it is printed once.
    Create {
        /// What it is for, e.g. pbx.
        name: String,
    },
    /// List the tokens (never their secrets).
    List,
    /// Revoke tokens by name or id.
    Revoke {
        /// Name or id.
        which: String,
    },
}

#[derive(Subcommand)]
enum RedirectCommand {
    /// List the queue and each device's redirect state.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue what is missing (new credentials, fixed failures) and send everything now.
    Sync,
    /// Ask the service what it holds for a MAC.
    Check {
        /// The device's MAC.
        mac: String,
    },
    /// Register a MAC that the service says belongs to another account, taking it over.
    Override {
        /// The device's MAC.
        mac: String,
    },
    /// Register this device with its redirect service (the default).
    On {
        /// The device's MAC.
        mac: String,
    },
    /// Never register this device (and remove it from the service).
    Off {
        /// The device's MAC.
        mac: String,
    },
}

#[derive(clap::Parser)]
struct ServeArgs {
    /// HTTPS listen address.
    #[arg(long, default_value = "[::]:8443")]
    https: String,
    /// Plain HTTP listen address (CA download and secret-free files only).
    #[arg(long, default_value = "[::]:8080")]
    http: String,
    /// Key type of generated certificates.
    #[arg(long, value_enum, default_value_t = KeyType::Rsa2048)]
    key_type: KeyType,
    /// Seconds a client may take to send a request's headers.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Connections served at once per listener.
    #[arg(long, default_value_t = 512)]
    max_connections: usize,
    /// SIP plug-and-play responder (UDP; joins 224.0.1.75 on the LAN), or `off`.
    #[arg(long, default_value = "0.0.0.0:5060")]
    sip: String,
    /// mDNS responder for provbox-<mac>.local (UDP), or `off`.
    #[arg(long, default_value = "0.0.0.0:5353")]
    mdns: String,
    /// Run as this user once the listeners are bound (start as root to bind 443 and 80).
    #[arg(long)]
    user: Option<String>,
    /// The firmware image's description of its A/B root slots; enables updates.
    #[arg(long)]
    boot_info: Option<PathBuf>,
    /// The ed25519 public key update bundles must be signed with.
    #[arg(long, default_value = update::DEFAULT_KEY)]
    update_key: PathBuf,
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Add a phone with one line.
    Add {
        /// MAC address.
        #[arg(long)]
        mac: String,
        /// Vendor: yealink, snom, polycom, grandstream, fanvil, gigaset.
        #[arg(long)]
        vendor: String,
        /// Model, e.g. T54W.
        #[arg(long)]
        model: String,
        /// Extension number.
        #[arg(long)]
        ext: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// SIP auth user [default: the extension].
        #[arg(long)]
        sip_user: Option<String>,
        /// SIP password [default: a generated strong one].
        #[arg(long)]
        sip_password: Option<String>,
    },
    /// List phones.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one phone, with its enrollment and steady URLs.
    Show {
        /// MAC address.
        mac: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a phone.
    Remove {
        /// MAC address.
        mac: String,
    },
    /// Re-open enrollment with a fresh enrollment URL.
    Unlock {
        /// MAC address.
        mac: String,
    },
    /// Set programmable key N: `key MAC N blf 201 Bob`; `key MAC N --clear` removes it.
    Key {
        /// MAC address.
        mac: String,
        /// Key number, from 1.
        number: usize,
        /// line, blf or speed_dial.
        #[arg(required_unless_present = "clear")]
        kind: Option<String>,
        /// Line number, extension to watch, or number to dial.
        #[arg(required_unless_present = "clear")]
        value: Option<String>,
        /// Label on the phone.
        #[arg(default_value = "")]
        label: String,
        /// Remove the key.
        #[arg(long)]
        clear: bool,
    },
    /// Set a vendor config key for this phone only; without VALUE it is removed.
    Override {
        /// MAC address.
        mac: String,
        /// The vendor's key, e.g. features.dnd.enable.
        name: String,
        /// Its value.
        value: Option<String>,
    },
    /// Revoke both URLs (a stolen phone): new enrollment and steady tokens, enrollment open.
    Rekey {
        /// MAC address.
        mac: String,
    },
    /// Make the phone fetch its configuration now (SIP NOTIFY check-sync).
    Reprovision {
        /// MAC address.
        mac: String,
        /// Seconds to wait for the phone's answer.
        #[arg(long, default_value_t = 8)]
        wait: u64,
    },
    /// Let the tokenless LAN path (DHCP option 66, PnP) serve this phone's config for a while.
    LanWindow {
        /// MAC address.
        mac: String,
        /// Minutes.
        #[arg(long, default_value_t = 15)]
        minutes: u64,
    },
    /// Import phones from CSV (columns mac,vendor,model,extension,name[,sip_user,sip_password]).
    Import {
        /// The CSV file.
        file: PathBuf,
        /// Import the valid rows even if some are wrong (default: all or nothing).
        #[arg(long)]
        partial: bool,
    },
    /// Export phones as CSV.
    Export {
        /// Include SIP passwords.
        #[arg(long)]
        reveal: bool,
    },
    /// Unknown phones that asked for a config.
    Seen {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SettingsCommand {
    /// Show every setting, secrets masked.
    Show {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a setting.
    Set {
        /// Setting name, e.g. sip.server.
        name: String,
        /// New value.
        value: String,
    },
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
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{message}")]
    Refused { message: String },
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
        // A bare `provbox` serves with the flags' defaults.
        None => serve(&cli, &ServeArgs::parse_from(["provbox"])),
        Some(Command::Serve(args)) => serve(&cli, args),
        Some(Command::Store(command)) => store_command(&cli, command).map(done),
        Some(Command::Device(command)) => device_command(&cli, command).map(done),
        Some(Command::Settings(command)) => settings_command(&cli, command).map(done),
        Some(Command::Redirect(command)) => redirect_command(&cli, command).map(done),
        Some(Command::Admin(command)) => admin_command(&cli, command).map(done),
        Some(Command::Update(command)) => update_command(command).map(done),
        Some(Command::Render { mac, file, reveal }) => {
            let request = Request::Render { mac: mac.clone(), file: file.clone(), reveal: *reveal };
            control_request(&cli, &request).map(|result| print!("{}", result.as_str().unwrap_or_default())).map(done)
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

/// The exit status of a command that succeeded.
fn done((): ()) -> ExitCode {
    ExitCode::SUCCESS
}

fn update_command(command: &UpdateCommand) -> Result<(), CliError> {
    match command {
        UpdateCommand::Status { boot_info } => {
            let boot = update::BootInfo::load(boot_info)?;
            println!("board        {}", boot.board);
            println!("image        {}", update::release().unwrap_or_else(|| "unknown".into()));
            println!("root slot    {}{}", boot.slot, if boot.trial { " (on trial)" } else { "" });
            if let Some(failed) = boot.rolled_back {
                println!("last update  slot {failed} did not come up healthy; rolled back");
            }
        }
        UpdateCommand::Install { bundle, boot_info, key } => {
            let boot = update::BootInfo::load(boot_info)?;
            let installed = update::install_file(bundle, update::PublicKey::load(key)?, boot)?;
            println!(
                "installed {} into root slot {}: reboot to start it (it stays only if it comes up healthy)",
                installed.version, installed.slot
            );
        }
        UpdateCommand::Keygen { key } => {
            let public = update::generate_key(key)?;
            println!("private key {} (keep it secret), public key {}", key.display(), public.display());
        }
        UpdateCommand::Sign { key, board, version, image, out } => {
            let manifest = update::sign(key, board, version, image, out)?;
            println!("{}: {board} {version}, {} bytes of image", out.display(), manifest.size);
        }
    }
    Ok(())
}

/// Prints a status line; a closed stdout (a supervisor gone away) is not worth dying for.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// An address flag that may be `off`.
fn optional_address(text: &str) -> Result<Option<std::net::SocketAddr>, CliError> {
    if text == "off" { Ok(None) } else { text.parse().map(Some).map_err(|_| CliError::Address(text.into())) }
}

/// Runs the appliance until SIGTERM or Ctrl-C.
fn serve(cli: &Cli, args: &ServeArgs) -> Result<ExitCode, CliError> {
    let address = |text: &str| text.parse().map_err(|_| CliError::Address(text.into()));
    let mut config = DaemonConfig {
        data_dir: cli.data.clone(),
        https: address(&args.https)?,
        http: address(&args.http)?,
        key_type: args.key_type,
        limits: Limits {
            header_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
            max_connections: args.max_connections.max(1),
            ..Limits::default()
        },
        sip: optional_address(&args.sip)?,
        mdns: optional_address(&args.mdns)?,
        user: args.user.clone(),
        updates: None,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(if std::env::var_os("PROVBOX_DEBUG").is_some() {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        })
        .init();
    config.updates = updates_of(args);
    let (store, path) = cli.mount(true)?;
    // Blocking work (store access, rendering) is short; a few threads keep memory small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(8)
        .build()
        .map_err(CliError::Runtime)?;
    let stopped = runtime.block_on(daemon::run(Db::new(store), config, |ready| {
        say(format_args!(
            "provbox {}: store {} mounted, {} devices\n  phones: {}  (HTTPS on {})\n  CA certificate: {}  (HTTP on {})\n  manage: provbox --data {} device add|list|show, settings show|set",
            env!("CARGO_PKG_VERSION"),
            path.display(),
            ready.devices,
            ready.base_url,
            ready.https,
            ready.ca_url,
            ready.http,
            cli.data.display(),
        ));
        say(format_args!("  DHCP option 66 (and Yealink option 43): {}", ready.bootstrap_url));
        match &ready.setup_code {
            Some(code) => say(format_args!("  page: {}  first start: setup code {code}", ready.page_url)),
            None => say(format_args!("  page: {}  (log in with the admin password)", ready.page_url)),
        }
        if let Some(sip) = ready.sip {
            say(format_args!("  SIP PnP on udp {sip}"));
        }
        if let Some((name, address)) = &ready.mdns {
            say(format_args!("  mDNS: {name} (udp {address})"));
        }
    }))?;
    if stopped == daemon::Stopped::RebootRequested {
        say(format_args!("provbox: stopped; the new root slot starts at the reboot"));
        return Ok(ExitCode::from(update::REBOOT_EXIT_STATUS));
    }
    say(format_args!("provbox: stopped"));
    Ok(ExitCode::SUCCESS)
}

/// Updates, when `--boot-info` names the firmware image's slots. A missing or broken file
/// or key leaves updates off, loudly: serving phones matters more.
fn updates_of(args: &ServeArgs) -> Option<std::sync::Arc<update::Updates>> {
    let path = args.boot_info.as_ref()?;
    let loaded = update::BootInfo::load(path)
        .and_then(|boot| Ok(update::Updates::new(boot, update::PublicKey::load(&args.update_key)?)));
    match loaded {
        Ok(updates) => Some(std::sync::Arc::new(updates)),
        Err(error) => {
            tracing::error!("updates are off: {error}");
            None
        }
    }
}

/// Runs `request` on the running server, or on the store directly when none runs.
fn control_request(cli: &Cli, request: &Request) -> Result<serde_json::Value, CliError> {
    let response = match control::call(&cli.data, request)? {
        Some(response) => response,
        None => {
            let (store, _) = cli.mount(true)?;
            let port = daemon::last_https_port(&cli.data);
            let app = App::new(Db::new(store), daemon::site(cli.data.clone(), port, 8080))?;
            control::handle(&app, request, "cli")
        }
    };
    match response {
        Response::Ok { result } => Ok(result),
        Response::Error { message, problems } => {
            for problem in problems {
                eprintln!("line {}: {}", problem.line, problem.reason);
            }
            Err(CliError::Refused { message })
        }
    }
}

fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn device_command(cli: &Cli, command: &DeviceCommand) -> Result<(), CliError> {
    match command {
        DeviceCommand::Add { mac, vendor, model, ext, name, sip_user, sip_password } => {
            let spec = DeviceSpec {
                mac: mac.clone(),
                vendor: vendor.clone(),
                model: model.clone(),
                lines: vec![LineSpec {
                    extension: ext.clone(),
                    name: name.clone(),
                    sip_user: sip_user.clone(),
                    sip_password: sip_password.clone(),
                }],
            };
            let device = control_request(cli, &Request::DeviceAdd { spec })?;
            println!("added {}\n  enrollment URL: {}", text(&device["mac"]), text(&device["enrollment_url"]));
        }
        DeviceCommand::List { json } => {
            let devices = control_request(cli, &Request::DeviceList)?;
            if *json {
                print_json(&devices);
            } else {
                println!(
                    "{:12}  {:10} {:8} {:6} {:20} {:8} {:13} {:14} LAST CONTACT",
                    "MAC", "VENDOR", "MODEL", "EXT", "NAME", "ENROLL", "CONFIG", "REDIRECT"
                );
                for device in devices.as_array().into_iter().flatten() {
                    let line = &device["lines"][0];
                    println!(
                        "{:12}  {:10} {:8} {:6} {:20} {:8} {:13} {:14} {}",
                        text(&device["mac"]),
                        text(&device["vendor"]),
                        text(&device["model"]),
                        text(&line["extension"]),
                        text(&line["name"]),
                        text(&device["enrollment"]["state"]),
                        text(&device["config"]),
                        text(&device["redirect"]["state"]),
                        text(&device["last_contact"]["ip"]),
                    );
                }
            }
        }
        DeviceCommand::Show { mac, json } => {
            let device = control_request(cli, &Request::DeviceShow { mac: mac.clone() })?;
            if *json {
                print_json(&device);
            } else {
                println!("mac             {}", text(&device["mac"]));
                println!("vendor / model  {} {}", text(&device["vendor"]), text(&device["model"]));
                for line in device["lines"].as_array().into_iter().flatten() {
                    println!(
                        "line            {} {} (SIP user {})",
                        text(&line["extension"]),
                        text(&line["name"]),
                        text(&line["sip_user"])
                    );
                }
                println!("enrollment      {}", device["enrollment"]);
                println!("enrollment URL  {}", text(&device["enrollment_url"]));
                println!("steady URL      {}", text(&device["steady_url"]));
                println!("config          {}", text(&device["config"]));
                println!("last contact    {}", device["last_contact"]);
                println!("redirect        {}", redirect_line(&device["redirect"]));
                for file in device["files"].as_array().into_iter().flatten() {
                    println!(
                        "file            files/{}  {} bytes  sha256 {}",
                        text(&file["path"]),
                        file["size"],
                        text(&file["sha256"])
                    );
                }
            }
        }
        DeviceCommand::Remove { mac } => {
            control_request(cli, &Request::DeviceRemove { mac: mac.clone() })?;
            println!("removed {mac}");
        }
        DeviceCommand::Unlock { mac } => {
            let device = control_request(cli, &Request::DeviceUnlock { mac: mac.clone() })?;
            println!(
                "enrollment reopened for {}\n  new enrollment URL: {}",
                text(&device["mac"]),
                text(&device["enrollment_url"])
            );
        }
        DeviceCommand::Rekey { mac } => {
            let device = control_request(cli, &Request::DeviceRekey { mac: mac.clone() })?;
            println!(
                "both URLs of {} revoked\n  new enrollment URL: {}",
                text(&device["mac"]),
                text(&device["enrollment_url"])
            );
        }
        DeviceCommand::Key { mac, number, kind, value, label, clear } => {
            let key = match (kind, value, clear) {
                (Some(kind), Some(value), false) => {
                    Some(KeySpec { kind: kind.clone(), value: value.clone(), label: label.clone() })
                }
                _ => None,
            };
            control_request(cli, &Request::DeviceKey { mac: mac.clone(), number: *number, key })?;
            println!("key {number} of {mac} {}", if *clear { "cleared" } else { "set" });
        }
        DeviceCommand::Override { mac, name, value } => {
            control_request(
                cli,
                &Request::DeviceOverride { mac: mac.clone(), name: name.clone(), value: value.clone() },
            )?;
            println!("{name} {} for {mac}", if value.is_some() { "set" } else { "removed" });
        }
        DeviceCommand::Reprovision { mac, wait } => {
            let result = control_request(cli, &Request::DeviceReprovision { mac: mac.clone(), wait_seconds: *wait })?;
            let advice = text(&result["advice"]);
            let line = format!(
                "{mac} at {}, event {}: {}",
                text(&result["target"]),
                text(&result["event"]),
                text(&result["result"])
            );
            if !result["code"].as_u64().is_some_and(|code| (200..300).contains(&code)) {
                let message = if advice.is_empty() { line } else { format!("{line}\n  advice: {advice}") };
                return Err(CliError::Refused { message });
            }
            println!("{line}");
        }
        DeviceCommand::LanWindow { mac, minutes } => {
            let device = control_request(cli, &Request::DeviceLanWindow { mac: mac.clone(), minutes: *minutes })?;
            println!(
                "LAN enrollment window open for {} until {}",
                text(&device["mac"]),
                text(&device["lan_window_until"])
            );
        }
        DeviceCommand::Import { file, partial } => {
            let csv = std::fs::read_to_string(file).map_err(|source| CliError::Read { path: file.clone(), source })?;
            let report = control_request(cli, &Request::DeviceImport { csv, partial: *partial })?;
            for problem in report["problems"].as_array().into_iter().flatten() {
                eprintln!("line {}: {} (skipped)", problem["line"], text(&problem["reason"]));
            }
            println!("imported {} device(s)", report["imported"]);
        }
        DeviceCommand::Export { reveal } => {
            print!("{}", text(&control_request(cli, &Request::DeviceExport { reveal: *reveal })?));
        }
        DeviceCommand::Seen { json } => {
            let seen = control_request(cli, &Request::PhonesSeen)?;
            if *json {
                print_json(&seen);
            } else {
                for phone in seen.as_array().into_iter().flatten() {
                    println!(
                        "{}  {:15} {:10} {}",
                        text(&phone["mac"]),
                        text(&phone["ip"]),
                        text(&phone["model"]),
                        text(&phone["user_agent"])
                    );
                }
            }
        }
    }
    Ok(())
}

/// One line for a device's redirect state.
fn redirect_line(view: &serde_json::Value) -> String {
    let state = text(&view["state"]);
    match state.as_str() {
        "pending" => {
            let error = text(&view["last_error"]);
            let waiting = if error.is_empty() { String::new() } else { format!(", last error: {error}") };
            format!(
                "pending {} (attempts {}, next try {}{waiting})",
                text(&view["action"]),
                view["attempts"],
                view["next_try"]
            )
        }
        "registered" | "deregistered" => format!("{state} at {}", view["at"]),
        "failed" => format!("failed: {}", text(&view["message"])),
        "off" => format!("off: {}", text(&view["reason"])),
        _ => state.replace('_', " "),
    }
}

fn admin_command(cli: &Cli, command: &AdminCommand) -> Result<(), CliError> {
    match command {
        AdminCommand::SetupCode => {
            let response = control::call(&cli.data, &Request::AdminSetupCode)?.ok_or_else(|| CliError::Refused {
                message: "no server is running; `provbox serve` prints the setup code when it starts".into(),
            })?;
            match response {
                Response::Ok { result: serde_json::Value::String(code) } => println!("{code}"),
                Response::Ok { .. } => println!("an admin password is set; log in with it"),
                Response::Error { message, .. } => return Err(CliError::Refused { message }),
            }
        }
        AdminCommand::SetPassword => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .map_err(|source| CliError::Read { path: "stdin".into(), source })?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            control_request(cli, &Request::AdminSetPassword { password })?;
            println!("admin password set");
        }
        AdminCommand::ApiToken(ApiTokenCommand::Create { name }) => {
            let token = control_request(cli, &Request::ApiTokenCreate { name: name.clone() })?;
            println!("{}", text(&token));
        }
        AdminCommand::ApiToken(ApiTokenCommand::List) => {
            for token in control_request(cli, &Request::ApiTokenList)?.as_array().into_iter().flatten() {
                println!("{}  {:20} created {}", text(&token["id"]), text(&token["name"]), token["created"]);
            }
        }
        AdminCommand::ApiToken(ApiTokenCommand::Revoke { which }) => {
            let count = control_request(cli, &Request::ApiTokenRevoke { which: which.clone() })?;
            println!("revoked {count} token(s)");
        }
    }
    Ok(())
}

fn redirect_command(cli: &Cli, command: &RedirectCommand) -> Result<(), CliError> {
    match command {
        RedirectCommand::Status { json } => {
            let status = control_request(cli, &Request::RedirectStatus)?;
            if *json {
                print_json(&status);
                return Ok(());
            }
            println!("clock: {}", text(&status["clock"]));
            for service in status["services"].as_array().into_iter().flatten() {
                let state = if service["active"] == true { "active".into() } else { text(&service["reason"]) };
                println!("service {:8} api {:7} {state}", text(&service["service"]), text(&service["api"]));
            }
            println!("queue: {} item(s)", status["queue"].as_array().map_or(0, Vec::len));
            for item in status["queue"].as_array().into_iter().flatten() {
                println!(
                    "  #{:<5} {}  {:8} {:20} attempts {} next try {} {}",
                    item["position"],
                    text(&item["mac"]),
                    text(&item["service"]),
                    text(&item["action"]),
                    item["attempts"],
                    item["next_try"],
                    text(&item["last_error"])
                );
            }
            for device in status["devices"].as_array().into_iter().flatten() {
                println!("{}  {}", text(&device[0]), redirect_line(&device[1]));
            }
        }
        RedirectCommand::Sync => {
            let result = control_request(cli, &Request::RedirectSync)?;
            let delivery = &result["delivery"];
            if delivery["clock"].is_string() {
                return Err(CliError::Refused { message: text(&delivery["clock"]) });
            }
            println!(
                "queued {}; delivered {}, retrying {}, failed {}",
                result["queued"], delivery["delivered"], delivery["retrying"], delivery["failed"]
            );
        }
        RedirectCommand::Check { mac } => {
            print_json(&control_request(cli, &Request::RedirectCheck { mac: mac.clone() })?)
        }
        RedirectCommand::Override { mac } => {
            let view = control_request(cli, &Request::RedirectOverride { mac: mac.clone() })?;
            println!("{mac}: {}", redirect_line(&view));
        }
        RedirectCommand::On { mac } | RedirectCommand::Off { mac } => {
            let enabled = matches!(command, RedirectCommand::On { .. });
            let view = control_request(cli, &Request::RedirectEnable { mac: mac.clone(), enabled })?;
            println!("{mac}: {}", redirect_line(&view));
        }
    }
    Ok(())
}

fn settings_command(cli: &Cli, command: &SettingsCommand) -> Result<(), CliError> {
    match command {
        SettingsCommand::Show { json } => {
            let settings = control_request(cli, &Request::SettingsShow)?;
            if *json {
                print_json(&settings);
            } else {
                for setting in settings.as_array().into_iter().flatten() {
                    let default = if setting["default"] == true { " (default)" } else { "" };
                    println!(
                        "{:32} = {:24}{default}  # {}",
                        text(&setting["name"]),
                        text(&setting["value"]),
                        text(&setting["help"])
                    );
                }
            }
        }
        SettingsCommand::Set { name, value } => {
            control_request(cli, &Request::SettingsSet { name: name.clone(), value: value.clone() })?;
            println!("{name} set");
        }
    }
    Ok(())
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
    // Secret settings are masked by name: their record is just a value.
    let setting_name = std::str::from_utf8(&key[1..]).unwrap_or("");
    if kind == Some(Kind::Setting) && provbox::settings::is_secret(setting_name) {
        record = serde_json::json!({ "value": "***" });
    }
    serde_json::json!({
        "kind": kind.map_or("unknown", Kind::name),
        "key": hex(&key[1..]),
        "schema": value.first(),
        "record": record,
    })
    .to_string()
}
