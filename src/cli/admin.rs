//! `provbox admin ...`: the page's administrator and the API's tokens.

use clap::Subcommand;
use provbox::app::views::ApiTokenView;
use provbox::clock;
use provbox::control::{self, Request, Response};

use super::{Cli, CliError};

#[derive(Subcommand)]
pub(super) enum AdminCommand {
    /// Show the one-time setup code the page asks for on a new appliance.
    SetupCode,
    /// Set the admin password, read from stdin (first line).
    SetPassword,
    /// Exit 0 if an admin password is set (the appliance is claimed), 1 if not.
    Claimed,
    /// Clear the admin password, with no server running: its next start asks for a new
    /// setup code. Devices and settings stay.
    Reset,
    /// Bearer tokens of the JSON API and /metrics.
    #[command(subcommand)]
    ApiToken(ApiTokenCommand),
}

#[derive(Subcommand)]
pub(super) enum ApiTokenCommand {
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

pub(super) fn run(cli: &Cli, command: &AdminCommand) -> Result<(), CliError> {
    match command {
        AdminCommand::SetupCode => {
            // Only a running server has a setup code: it is made in its memory.
            let response = control::call(&cli.data, &Request::AdminSetupCode)?.ok_or_else(|| CliError::Refused {
                message: "no server is running; `provbox serve` prints the setup code when it starts".into(),
            })?;
            match response {
                Response::Ok { result } => match serde_json::from_value::<Option<String>>(result) {
                    Ok(Some(code)) => println!("{code}"),
                    Ok(None) => println!("an admin password is set; log in with it"),
                    Err(error) => return Err(CliError::Answer(error)),
                },
                Response::Error { message, .. } => return Err(CliError::Refused { message }),
            }
        }
        AdminCommand::SetPassword => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .map_err(|source| CliError::Read { path: "stdin".into(), source })?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            cli.call::<()>(&Request::AdminSetPassword { password })?;
            println!("admin password set");
        }
        AdminCommand::Claimed => {
            if !cli.call::<bool>(&Request::AdminClaimed)? {
                return Err(CliError::Refused { message: "not claimed: no admin password is set".into() });
            }
            println!("claimed: an admin password is set");
        }
        AdminCommand::Reset => {
            // Offline only: a running server's sessions live in its memory.
            let (store, _) = cli.mount(false)?;
            let port = provbox::daemon::last_https_port(&cli.data);
            let app = provbox::app::App::new(
                provbox::store::records::Db::new(store),
                provbox::lan::site(cli.data.clone(), port, 8080),
            )?;
            app.clear_admin("reset")?;
            println!("admin password cleared: the next start shows a new setup code");
        }
        AdminCommand::ApiToken(ApiTokenCommand::Create { name }) => {
            println!("{}", cli.call::<String>(&Request::ApiTokenCreate { name: name.clone() })?);
        }
        AdminCommand::ApiToken(ApiTokenCommand::List) => {
            for token in cli.call::<Vec<ApiTokenView>>(&Request::ApiTokenList)? {
                println!("{}  {:20} created {}", token.id, token.name, clock::date_time(token.created));
            }
        }
        AdminCommand::ApiToken(ApiTokenCommand::Revoke { which }) => {
            let count: usize = cli.call(&Request::ApiTokenRevoke { which: which.clone() })?;
            println!("revoked {count} token(s)");
        }
    }
    Ok(())
}
