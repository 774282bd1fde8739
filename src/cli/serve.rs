//! `provbox serve`: the appliance itself, until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use provbox::daemon::{self, DaemonConfig};
use provbox::pki::KeyType;
use provbox::server::Limits;
use provbox::store::records::Db;
use provbox::update;

use super::{Cli, CliError};

#[derive(clap::Parser)]
pub(super) struct ServeArgs {
    /// HTTPS listen address.
    #[arg(long, default_value = "[::]:8443")]
    https: String,
    /// Plain HTTP listen address (CA download and secret-free files only).
    #[arg(long, default_value = "[::]:8080")]
    http: String,
    /// Key type of generated certificates.
    #[arg(long, value_enum, default_value_t = KeyType::Dual)]
    key_type: KeyType,
    /// Seconds a client may take to send a request's headers.
    #[arg(long, default_value_t = 10)]
    header_timeout: u64,
    /// Seconds a client may take to send a request's body (uploads have their own limits).
    #[arg(long, default_value_t = 30)]
    body_timeout: u64,
    /// New connections a second from addresses that have not proved themselves (a phone's
    /// first boot, strangers), all together; phones that fetched before are not counted.
    #[arg(long, default_value_t = 100)]
    strangers_per_second: u32,
    /// Connections served at once per listener. One address may hold a sixteenth of them
    /// (at least 1, at most 32), and the last eighth are kept for addresses that proved
    /// themselves (phones that fetched through their URL, the page, API clients).
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
    /// Use the setup code in this file (12 hex digits) while no admin password is set; the
    /// firmware image writes it to the boot partition too.
    #[arg(long, value_name = "FILE")]
    setup_code_file: Option<PathBuf>,
    /// The privileged install service (`provbox update installer`) that writes the slots.
    #[arg(long, default_value = update::service::DEFAULT_SOCKET)]
    installer: PathBuf,
    /// The least severe log lines written: error, warn, info (a summary of phone fetches a
    /// minute) or debug (a line per fetch, and more).
    #[arg(long, env = "PROVBOX_LOG_LEVEL", default_value = "info")]
    log_level: tracing::Level,
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
pub(super) fn run(cli: &Cli, args: &ServeArgs) -> Result<ExitCode, CliError> {
    let address = |text: &str| text.parse().map_err(|_| CliError::Address(text.into()));
    let mut config = DaemonConfig {
        data_dir: cli.data.clone(),
        https: address(&args.https)?,
        http: address(&args.http)?,
        key_type: args.key_type,
        limits: Limits {
            header_timeout: std::time::Duration::from_secs(args.header_timeout.max(1)),
            body_timeout: std::time::Duration::from_secs(args.body_timeout.max(1)),
            max_connections: args.max_connections.max(1),
            max_per_address: (args.max_connections / 16).clamp(1, 32),
            reserve: args.max_connections / 8,
            strangers_per_second: args.strangers_per_second.max(1),
            ..Limits::default()
        },
        sip: optional_address(&args.sip)?,
        mdns: optional_address(&args.mdns)?,
        user: args.user.clone(),
        updates: None,
        setup_code_file: args.setup_code_file.clone(),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(args.log_level)
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
            super::absolute(&path).display(),
            ready.devices,
            ready.base_url,
            ready.https,
            ready.ca_url,
            ready.http,
            super::absolute(&cli.data).display(),
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
/// leaves updates off, loudly: serving phones matters more.
fn updates_of(args: &ServeArgs) -> Option<std::sync::Arc<update::Updates>> {
    let path = args.boot_info.as_ref()?;
    let loaded = update::BootInfo::load(path).map(|boot| update::Updates::new(boot, args.installer.clone()));
    match loaded {
        Ok(updates) => Some(std::sync::Arc::new(updates)),
        Err(error) => {
            tracing::error!("updates are off: {error}");
            None
        }
    }
}
