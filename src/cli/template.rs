//! `provbox template ...`: the vendors' templates and the site's overrides of them.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use provbox::app::views::{TemplatePreview, TemplateSaved, TemplateView, VendorTemplates};
use provbox::control::Request;

use super::{Cli, CliError, print_json};

#[derive(Subcommand)]
pub(super) enum TemplateCommand {
    /// Every vendor's templates, and which are overridden.
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a template as phones get it now.
    Show {
        /// Vendor id, e.g. yealink.
        vendor: String,
        /// Template file, e.g. device.cfg.
        file: String,
        /// Print the stock text instead.
        #[arg(long, conflicts_with = "diff")]
        stock: bool,
        /// Print the override against stock as a unified diff.
        #[arg(long)]
        diff: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Render an edit for a device without saving it (secrets masked).
    Preview {
        /// Vendor id.
        vendor: String,
        /// Template file.
        file: String,
        /// The device to render for.
        #[arg(long)]
        mac: String,
        /// The edited text [default: the template as it is now].
        #[arg(long)]
        from: Option<PathBuf>,
    },
    /// Check and save an override: from a file, or in $EDITOR.
    Edit {
        /// Vendor id.
        vendor: String,
        /// Template file.
        file: String,
        /// The new text [default: edit the current text in $EDITOR].
        #[arg(long)]
        from: Option<PathBuf>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an override: phones get the stock template again.
    Revert {
        /// Vendor id.
        vendor: String,
        /// Template file.
        file: String,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(cli: &Cli, command: &TemplateCommand) -> Result<(), CliError> {
    match command {
        TemplateCommand::List { json } => {
            let vendors: Vec<VendorTemplates> = cli.call(&Request::TemplateList)?;
            if *json {
                print_json(&vendors);
                return Ok(());
            }
            for vendor in &vendors {
                println!("{} ({})", vendor.vendor, vendor.name);
                for template in &vendor.templates {
                    let state = match (template.overridden, template.stock) {
                        (true, true) => "overridden",
                        (true, false) => "override only",
                        _ => "stock",
                    };
                    let served: Vec<String> = template
                        .served_as
                        .iter()
                        .map(|s| s.models.as_ref().map_or(s.name.clone(), |m| format!("{} for {m}", s.name)))
                        .collect();
                    let served = if served.is_empty() { "included by others".to_string() } else { served.join(", ") };
                    println!("  {:20} {:14} {served}", template.file, state);
                }
            }
        }
        TemplateCommand::Show { vendor, file, stock, diff, json } => {
            let view = show(cli, vendor, file)?;
            if *json {
                print_json(&view);
            } else if *stock {
                print!("{}", view.stock.unwrap_or_default());
            } else if *diff {
                print!("{}", view.diff);
            } else {
                print!("{}", view.current);
            }
        }
        TemplateCommand::Preview { vendor, file, mac, from } => {
            let source = match from {
                Some(path) => read(path)?,
                None => show(cli, vendor, file)?.current,
            };
            let request =
                Request::TemplatePreview { vendor: vendor.clone(), file: file.clone(), source, mac: mac.clone() };
            let preview: TemplatePreview = cli.call(&request)?;
            for shown in &preview.files {
                for warning in &shown.warnings {
                    eprintln!("provbox: warning: {warning}");
                }
                if preview.files.len() > 1 {
                    println!("==> {} <==", shown.requested);
                }
                print!("{}", shown.body);
            }
        }
        TemplateCommand::Edit { vendor, file, from, json } => {
            let (source, scratch) = match from {
                Some(path) => (read(path)?, None),
                None => edit_in_editor(cli, vendor, file).map(|(text, path)| (text, Some(path)))?,
            };
            let request = Request::TemplateSave { vendor: vendor.clone(), file: file.clone(), source };
            match (cli.call::<TemplateSaved>(&request), scratch) {
                (Ok(saved), scratch) => {
                    if let Some(path) = scratch {
                        let _ = std::fs::remove_file(path);
                    }
                    report(&saved, "saved", *json);
                }
                (Err(error), Some(path)) => {
                    eprintln!("provbox: your text stays in {}; fix it and run with --from", path.display());
                    return Err(error);
                }
                (Err(error), None) => return Err(error),
            }
        }
        TemplateCommand::Revert { vendor, file, json } => {
            let saved: TemplateSaved =
                cli.call(&Request::TemplateRevert { vendor: vendor.clone(), file: file.clone() })?;
            report(&saved, "reverted to stock", *json);
        }
    }
    Ok(())
}

fn show(cli: &Cli, vendor: &str, file: &str) -> Result<TemplateView, CliError> {
    cli.call(&Request::TemplateShow { vendor: vendor.to_string(), file: file.to_string() })
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read { path: path.to_path_buf(), source })
}

/// The current text edited in `$EDITOR` (else `vi`) in a private temporary file, and that
/// file, which stays if the save is refused so that nothing typed is lost.
fn edit_in_editor(cli: &Cli, vendor: &str, file: &str) -> Result<(String, PathBuf), CliError> {
    let current = show(cli, vendor, file)?.current;
    let path = std::env::temp_dir().join(format!("provbox-{vendor}-{}-{file}", std::process::id()));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let write_error = |source| CliError::Write { path: path.clone(), source };
        let mut out =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(write_error)?;
        out.write_all(current.as_bytes()).map_err(write_error)?;
    }
    let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(&path)
        .status()
        .map_err(|source| CliError::Read { path: PathBuf::from(&editor), source })?;
    if !status.success() {
        return Err(CliError::Refused { message: format!("{editor} failed; your text is in {}", path.display()) });
    }
    let edited = read(&path)?;
    if edited == current {
        let _ = std::fs::remove_file(&path);
        return Err(CliError::Refused { message: "no change; nothing saved".into() });
    }
    Ok((edited, path))
}

fn report(saved: &TemplateSaved, what: &str, json: bool) {
    if json {
        print_json(saved);
        return;
    }
    println!("{}/{} {what} (sha256 {} -> {})", saved.vendor, saved.file, saved.before, saved.after);
    if saved.changed_devices.is_empty() {
        println!("no device's own file changed ({} {} device(s))", saved.vendor_devices, saved.vendor);
    } else {
        println!(
            "{} of {} {} device(s) get a changed file of their own at their next fetch:",
            saved.changed_devices.len(),
            saved.vendor_devices,
            saved.vendor
        );
        for mac in &saved.changed_devices {
            println!("  {mac}");
        }
    }
    if !saved.affected.is_empty() {
        println!(
            "{} phone(s) to reprovision; `provbox device reprovision MAC` makes one fetch now",
            saved.affected.len()
        );
    }
}
