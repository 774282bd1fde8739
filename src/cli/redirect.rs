//! `provbox redirect ...`: the vendor redirect services, their queue and lookups.

use clap::Subcommand;
use provbox::app::views::{RedirectStatus, RedirectView, ServiceHolding, SyncReport};
use provbox::clock;
use provbox::control::Request;

use super::{Cli, CliError, print_json};

#[derive(Subcommand)]
pub(super) enum RedirectCommand {
    /// List the queue and each device's redirect state.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue what is missing (new credentials, fixed failures) and send everything now.
    Sync,
    /// Ask the service what it holds for a MAC, next to what provbox expects.
    Check {
        /// The device's MAC.
        mac: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
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

pub(super) fn run(cli: &Cli, command: &RedirectCommand) -> Result<(), CliError> {
    match command {
        RedirectCommand::Status { json } => {
            let status: RedirectStatus = cli.call(&Request::RedirectStatus)?;
            if *json {
                print_json(&status);
                return Ok(());
            }
            println!("clock: {}", status.clock);
            for service in &status.services {
                let state = if service.active { "active" } else { service.reason.as_str() };
                println!("service {:8} api {:7} {state}", service.service, service.api);
            }
            println!("queue: {} item(s)", status.queue.len());
            for item in &status.queue {
                println!(
                    "  #{:<5} {}  {:8} {:20} attempts {} next try {} {}",
                    item.position,
                    item.mac,
                    item.service,
                    item.action,
                    item.attempts,
                    clock::date_time(item.next_try),
                    item.last_error
                );
            }
            for (mac, view) in &status.devices {
                println!("{mac}  {view}");
            }
        }
        RedirectCommand::Sync => {
            let report: SyncReport = cli.call(&Request::RedirectSync)?;
            let delivery = report.delivery;
            if let Some(clock) = delivery.clock {
                return Err(CliError::Refused { message: clock });
            }
            println!(
                "queued {}; delivered {}, retrying {}, failed {}",
                report.queued, delivery.delivered, delivery.retrying, delivery.failed
            );
        }
        RedirectCommand::Check { mac, json } => {
            let held: ServiceHolding = cli.call(&Request::RedirectCheck { mac: mac.clone() })?;
            if *json {
                print_json(&held);
                return Ok(());
            }
            println!("{} for {}", held.service, held.mac);
            println!("  expected  {}", held.expected);
            println!("  holds     {}", held.holds);
            println!("  {}", if held.matches { "as expected" } else { "NOT as expected" });
            println!("  reply     {}", held.reply);
        }
        RedirectCommand::Override { mac } => {
            let view: RedirectView = cli.call(&Request::RedirectOverride { mac: mac.clone() })?;
            println!("{mac}: {view}");
        }
        RedirectCommand::On { mac } | RedirectCommand::Off { mac } => {
            let enabled = matches!(command, RedirectCommand::On { .. });
            let view: RedirectView = cli.call(&Request::RedirectEnable { mac: mac.clone(), enabled })?;
            println!("{mac}: {view}");
        }
    }
    Ok(())
}
