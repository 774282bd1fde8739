//! `provbox ntp SERVER...`: keeps the clock set from NTP servers (the firmware image runs it
//! as root from its DHCP event script, with the lease's servers).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use provbox::ntp;

use super::CliError;

/// The `ntp` command's arguments.
#[derive(Args)]
pub(super) struct NtpArgs {
    /// NTP servers: host, host:port, IPv4 or [IPv6]:port.
    #[arg(required = true)]
    servers: Vec<String>,
    /// Where to note each round's result for `provbox serve` to show.
    #[arg(long, default_value = ntp::STATUS_FILE)]
    status: PathBuf,
    /// One round, then exit: 0 if a server answered and the clock is set.
    #[arg(long)]
    once: bool,
}

/// Runs the client: needs root (`CAP_SYS_TIME`) to set the clock.
pub(super) fn run(args: &NtpArgs) -> Result<ExitCode, CliError> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).init();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(CliError::Runtime)?;
    let worked = runtime.block_on(ntp::run(&args.servers, Some(&args.status), args.once));
    Ok(if worked { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
