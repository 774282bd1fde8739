//! `provbox settings ...`: the site's settings.

use clap::Subcommand;
use provbox::app::views::{PolicyReport, SettingView};
use provbox::control::Request;

use super::{Cli, CliError, print_json};

#[derive(Subcommand)]
pub(super) enum SettingsCommand {
    /// Show every setting, secrets masked.
    Show {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// The password levels (policy.sip_password, policy.admin_password) and the devices
    /// whose SIP passwords fall short.
    Policy {
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

pub(super) fn run(cli: &Cli, command: &SettingsCommand) -> Result<(), CliError> {
    match command {
        SettingsCommand::Show { json } => {
            let settings: Vec<SettingView> = cli.call(&Request::SettingsShow)?;
            if *json {
                print_json(&settings);
            } else {
                for setting in &settings {
                    let default = if setting.default { " (default)" } else { "" };
                    println!("{:32} = {:24}{default}  # {}", setting.name, setting.value, setting.help);
                }
            }
        }
        SettingsCommand::Policy { json } => {
            let report: PolicyReport = cli.call(&Request::PasswordPolicy)?;
            if *json {
                print_json(&report);
                return Ok(());
            }
            println!("SIP passwords: {}; admin password: {}", report.sip_level.name(), report.admin_level.name());
            if let Some(warning) = &report.warning {
                println!("warning: {warning}");
            }
            if report.devices.is_empty() {
                println!("every device's SIP passwords meet the {} level", report.measured_against.name());
            } else {
                println!(
                    "below the {} level (`provbox device rotate-passwords MAC` replaces them):",
                    report.measured_against.name()
                );
                for device in &report.devices {
                    for line in &device.lines {
                        println!(
                            "  {} {:10} extension {:8} {}",
                            device.mac, device.vendor, line.extension, line.reason
                        );
                    }
                }
            }
        }
        SettingsCommand::Set { name, value } => {
            cli.call::<()>(&Request::SettingsSet { name: name.clone(), value: value.clone() })?;
            println!("{name} set");
        }
    }
    Ok(())
}
