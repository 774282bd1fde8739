//! `provbox settings ...`: the site's settings.

use clap::Subcommand;
use provbox::app::views::SettingView;
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
        SettingsCommand::Set { name, value } => {
            cli.call::<()>(&Request::SettingsSet { name: name.clone(), value: value.clone() })?;
            println!("{name} set");
        }
    }
    Ok(())
}
