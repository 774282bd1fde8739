//! The password policy's operations: which devices' SIP passwords fall short of the site's
//! level (`policy.sip_password`), and rotating them. The levels themselves are in
//! [`crate::policy`]; changing one is a setting change, audited like any other.

use super::views::{PolicyReport, RotatedLine, RotatedPasswords, ShortDevice, ShortLine};
use super::{App, AppError};
use crate::devices;
use crate::mac::Mac;
use crate::policy::{self, Level};
use crate::store::records::Line;

/// The setting that names the SIP password level.
pub(super) const SIP_POLICY: &str = "policy.sip_password";

/// The level devices are measured against: the site's, or `standard` under `pbx`, whose
/// shortfalls the page shows as a warning.
fn measured_against(level: Level) -> Level {
    level.max(Level::Standard)
}

impl App {
    /// The site's levels, and every device with a SIP password below the level it is
    /// measured against.
    pub fn password_policy(&self) -> Result<PolicyReport, AppError> {
        let (sip_level, admin_level, devices) = {
            let state = self.lock();
            let devices = state.db.devices().collect::<Result<Vec<_>, _>>()?;
            (state.password_level(SIP_POLICY)?, state.password_level("policy.admin_password")?, devices)
        };
        let measured = measured_against(sip_level);
        let short = devices
            .iter()
            .filter_map(|device| {
                let lines: Vec<ShortLine> = device
                    .lines
                    .iter()
                    .filter_map(|line| {
                        let reason =
                            policy::check_sip(measured, &line.sip_password, &line.extension, &device.mac).err()?;
                        Some(ShortLine { extension: line.extension.to_string(), reason: reason.into() })
                    })
                    .collect();
                (!lines.is_empty()).then(|| ShortDevice {
                    mac: device.mac,
                    vendor: device.vendor.to_string(),
                    model: device.model.to_string(),
                    name: device.lines.first().map(|line| line.display_name.to_string()).unwrap_or_default(),
                    lines,
                })
            })
            .collect::<Vec<_>>();
        let warning = (sip_level == Level::Pbx).then(|| {
            format!(
                "SIP passwords are not checked (policy.sip_password = pbx): provbox takes whatever the PBX issued. \
                 {} device(s) have a SIP password that would not pass the standard level.",
                short.len()
            )
        });
        Ok(PolicyReport { sip_level, admin_level, measured_against: measured, warning, devices: short })
    }

    /// Gives every line of `mac` whose SIP password falls short a new generated one, and
    /// answers with the new passwords: the only time they are shown, for the PBX.
    pub fn rotate_sip_passwords(&self, mac: &Mac, actor: &str) -> Result<RotatedPasswords, AppError> {
        let measured = measured_against(self.lock().password_level(SIP_POLICY)?);
        let falls_short = |line: &Line| policy::check_sip(measured, &line.sip_password, &line.extension, mac).is_err();
        let current = self.device(mac)?;
        let short: Vec<String> =
            current.lines.iter().filter(|line| falls_short(line)).map(|line| line.extension.to_string()).collect();
        if short.is_empty() {
            return Ok(RotatedPasswords { mac: *mac, lines: Vec::new() });
        }
        let mut rotated = Vec::new();
        let what = format!("rotated the SIP passwords of {mac} (extensions {})", short.join(", "));
        self.update_device(mac, actor, &what, |device| {
            // Decided again on the stored device, under the lock the change commits in.
            for line in device.lines.iter_mut().filter(|line| falls_short(line)) {
                rotated.push(renew_sip_password(line, mac)?);
            }
            Ok(())
        })?;
        Ok(RotatedPasswords { mac: *mac, lines: rotated })
    }
}

/// Gives `line` of phone `mac` a new generated SIP password; returns it, to show once.
pub(super) fn renew_sip_password(line: &mut Line, mac: &Mac) -> Result<RotatedLine, AppError> {
    let password = devices::generate_sip_password(&line.extension, mac);
    line.sip_password = crate::store::records::bounded("sip password", &password)?;
    Ok(RotatedLine { extension: line.extension.to_string(), sip_user: line.sip_user.to_string(), password })
}
