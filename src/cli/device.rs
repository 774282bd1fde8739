//! `provbox device ...` and `provbox render`: phones, their URLs, keys and enrollment.

use std::path::PathBuf;

use clap::Subcommand;
use provbox::app::views::{DeviceView, ImportReport, Rekeyed, RotatedPasswords};
use provbox::clock;
use provbox::control::Request;
use provbox::devices::{DeviceSpec, KeySpec, LineSpec};
use provbox::sip::checksync::CheckSync;
use provbox::store::records::PhoneSeen;

use super::{Cli, CliError, or_dash, print_json};

#[derive(Subcommand)]
pub(super) enum DeviceCommand {
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
    /// Revoke both URLs (a lost or stolen phone): new enrollment and steady tokens, enrollment
    /// locked until `device unlock`, nothing registered with the redirect service
    Rekey {
        /// MAC address.
        mac: String,
        /// Also give every line a new SIP password, printed this once for the PBX (the old
        /// ones may have left with the phone).
        #[arg(long)]
        new_sip_passwords: bool,
    },
    /// Give each line whose SIP password falls short of policy.sip_password a new generated
    /// one, and print them (this once: set them on the PBX).
    RotatePasswords {
        /// MAC address.
        mac: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the phone fetch its configuration now (SIP NOTIFY check-sync); succeeds only when
    /// the phone then fetches through its URL.
    Reprovision {
        /// MAC address.
        mac: String,
        /// Seconds to wait for the phone's answer, and as many for its fetch.
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
    /// Allow (on) or forbid (off) serving this phone's config, SIP password included, over
    /// plain HTTP: only for phones that cannot use HTTPS (Gigaset N510/N720 bases).
    PlainHttp {
        /// MAC address.
        mac: String,
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
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

pub(super) fn run(cli: &Cli, command: &DeviceCommand) -> Result<(), CliError> {
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
            let device: DeviceView = cli.call(&Request::DeviceAdd { spec })?;
            println!("added {}\n  enrollment URL: {}", device.mac, device.enrollment_url);
        }
        DeviceCommand::List { json } => {
            let devices: Vec<DeviceView> = cli.call(&Request::DeviceList)?;
            if *json {
                print_json(&devices);
            } else {
                print_table(&devices);
            }
        }
        DeviceCommand::Show { mac, json } => {
            let device: DeviceView = cli.call(&Request::DeviceShow { mac: mac.clone() })?;
            if *json {
                print_json(&device);
            } else {
                print_device(&device);
            }
        }
        DeviceCommand::Remove { mac } => {
            cli.call::<()>(&Request::DeviceRemove { mac: mac.clone() })?;
            println!("removed {mac}");
        }
        DeviceCommand::Unlock { mac } => {
            let device: DeviceView = cli.call(&Request::DeviceUnlock { mac: mac.clone() })?;
            println!("enrollment reopened for {}\n  new enrollment URL: {}", device.mac, device.enrollment_url);
        }
        DeviceCommand::Rekey { mac, new_sip_passwords } => {
            let request = Request::DeviceRekey { mac: mac.clone(), new_sip_passwords: *new_sip_passwords };
            let Rekeyed { device, passwords } = cli.call(&request)?;
            println!(
                "both URLs of {} revoked; enrollment locked: `provbox device unlock {}` when the phone in hand \
                 should enroll",
                device.mac, device.mac
            );
            if passwords.is_empty() {
                println!("  the SIP passwords are unchanged (--new-sip-passwords gives new ones)");
            } else {
                println!("  new SIP passwords (shown this once; set them on the PBX):");
                for line in &passwords {
                    println!("  extension {:8} user {:16} password {}", line.extension, line.sip_user, line.password);
                }
            }
        }
        DeviceCommand::RotatePasswords { mac, json } => {
            let rotated: RotatedPasswords = cli.call(&Request::DeviceRotatePasswords { mac: mac.clone() })?;
            if *json {
                print_json(&rotated);
            } else if rotated.lines.is_empty() {
                println!("every SIP password of {} meets the policy; nothing rotated", rotated.mac);
            } else {
                println!("new SIP passwords of {} (shown this once; set them on the PBX):", rotated.mac);
                for line in &rotated.lines {
                    println!("  extension {:8} user {:16} password {}", line.extension, line.sip_user, line.password);
                }
            }
        }
        DeviceCommand::Key { mac, number, kind, value, label, clear } => {
            let key = match (kind, value, clear) {
                (Some(kind), Some(value), false) => {
                    Some(KeySpec { kind: kind.clone(), value: value.clone(), label: label.clone() })
                }
                _ => None,
            };
            cli.call::<DeviceView>(&Request::DeviceKey { mac: mac.clone(), number: *number, key })?;
            println!("key {number} of {mac} {}", if *clear { "cleared" } else { "set" });
        }
        DeviceCommand::Override { mac, name, value } => {
            let request = Request::DeviceOverride { mac: mac.clone(), name: name.clone(), value: value.clone() };
            cli.call::<DeviceView>(&request)?;
            println!("{name} {} for {mac}", if value.is_some() { "set" } else { "removed" });
        }
        DeviceCommand::Reprovision { mac, wait } => {
            let sent: CheckSync = cli.call(&Request::DeviceReprovision { mac: mac.clone(), wait_seconds: *wait })?;
            let line = format!("{mac} at {}, event {}: {}", sent.target, sent.event, sent.result);
            if !sent.fetched {
                let message = if sent.advice.is_empty() { line } else { format!("{line}\n  advice: {}", sent.advice) };
                return Err(CliError::Refused { message });
            }
            println!("{line}");
        }
        DeviceCommand::LanWindow { mac, minutes } => {
            let device: DeviceView = cli.call(&Request::DeviceLanWindow { mac: mac.clone(), minutes: *minutes })?;
            let until = or_dash(device.lan_window_until.map(clock::date_time));
            println!("LAN enrollment window open for {} until {until}", device.mac);
        }
        DeviceCommand::PlainHttp { mac, state } => {
            let request = Request::DevicePlainHttp { mac: mac.clone(), allow: state == "on" };
            let device: DeviceView = cli.call(&request)?;
            match &device.plain_http {
                Some(urls) => println!(
                    "{}: its configuration may now travel over plain HTTP, SIP password included.\n\
                     enrollment URL: {}\nsteady URL:     {}",
                    device.mac, urls.enrollment_url, urls.steady_url
                ),
                None => println!("{}: plain HTTP refused again", device.mac),
            }
        }
        DeviceCommand::Import { file, partial } => {
            let csv = std::fs::read_to_string(file).map_err(|source| CliError::Read { path: file.clone(), source })?;
            let report: ImportReport = cli.call(&Request::DeviceImport { csv, partial: *partial })?;
            for problem in &report.problems {
                eprintln!("line {}: {} (skipped)", problem.line, problem.reason);
            }
            println!("imported {} device(s)", report.imported);
        }
        DeviceCommand::Export { reveal } => {
            print!("{}", cli.call::<String>(&Request::DeviceExport { reveal: *reveal })?);
        }
        DeviceCommand::Seen { json } => {
            let seen: Vec<PhoneSeen> = cli.call(&Request::PhonesSeen)?;
            if *json {
                print_json(&seen);
            } else {
                for phone in &seen {
                    println!("{}  {:15} {:10} {}", phone.mac, phone.ip.to_string(), phone.model, phone.user_agent);
                }
            }
        }
    }
    Ok(())
}

/// One line per device.
fn print_table(devices: &[DeviceView]) {
    println!(
        "{:12}  {:10} {:8} {:6} {:20} {:8} {:13} {:14} LAST CONTACT",
        "MAC", "VENDOR", "MODEL", "EXT", "NAME", "ENROLL", "CONFIG", "REDIRECT"
    );
    for device in devices {
        let line = device.lines.first();
        println!(
            "{:12}  {:10} {:8} {:6} {:20} {:8} {:13} {:14} {}",
            device.mac,
            device.vendor,
            device.model,
            or_dash(line.map(|line| &line.extension)),
            or_dash(line.map(|line| &line.name)),
            device.enrollment.name(),
            device.config.name(),
            device.redirect.name(),
            or_dash(device.last_contact.as_ref().map(|contact| contact.ip)),
        );
    }
}

/// Everything about one device, its URLs included.
fn print_device(device: &DeviceView) {
    println!("mac             {}", device.mac);
    println!("vendor / model  {} {}", device.vendor, device.model);
    for line in &device.lines {
        println!("line            {} {} (SIP user {})", line.extension, line.name, line.sip_user);
    }
    println!("enrollment      {}", device.enrollment);
    println!("enrollment URL  {}", device.enrollment_url);
    println!("steady URL      {}", device.steady_url);
    if let Some(plain) = &device.plain_http {
        println!(
            "plain HTTP      allowed since {}: the SIP password crosses the LAN unencrypted",
            clock::date_time(plain.since)
        );
        println!("  enrollment    {}", plain.enrollment_url);
        println!("  steady        {}", plain.steady_url);
    }
    println!("config          {}", device.config.name());
    let contact = device
        .last_contact
        .as_ref()
        .map(|contact| format!("{} from {} ({})", clock::date_time(contact.at), contact.ip, contact.user_agent));
    println!("last contact    {}", or_dash(contact));
    println!("redirect        {}", device.redirect);
    for file in &device.files {
        println!("file            files/{}  {} bytes  sha256 {}", file.path, file.size, file.sha256);
    }
}
