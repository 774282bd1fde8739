//! `provbox store ...`: check, dump, compact and format the on-flash store directly (with
//! no server running: the store is locked while one is).

use clap::Subcommand;
use provbox::store::Store;
use provbox::store::check;
use provbox::store::records::{Kind, decode_json};

use super::{Cli, CliError};

#[derive(Subcommand)]
pub(super) enum StoreCommand {
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

pub(super) fn run(cli: &Cli, command: &StoreCommand) -> Result<(), CliError> {
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
                    println!("{kind:8} {} ({} bytes)", provbox::hex::encode(&key[1..]), value.len());
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

/// String fields that hold secrets. URL tokens need no entry: a
/// [`Token`](provbox::token::Token) masks itself in JSON wherever it sits (devices, the
/// outbox).
const SECRET_FIELDS: [&str; 2] = ["sip_password", "password_hash"];

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
        None => serde_json::json!({ "bytes": provbox::hex::encode(value) }),
    };
    mask(&mut record);
    // Secret settings are masked by name: their record is just a value.
    let setting_name = std::str::from_utf8(&key[1..]).unwrap_or("");
    if kind == Some(Kind::Setting) && provbox::app::config::settings_table().is_secret(setting_name) {
        record = serde_json::json!({ "value": "***" });
    }
    serde_json::json!({
        "kind": kind.map_or("unknown", Kind::name),
        "key": provbox::hex::encode(&key[1..]),
        "schema": value.first(),
        "record": record,
    })
    .to_string()
}
