//! Template overrides as operations: list each vendor's templates, show one against stock,
//! preview an edit for a device, save it (checked first, audited, phones' configs pending)
//! and revert to stock. The files live under `<data>/templates/<vendor>/`, where
//! [`crate::provision::templates`] reads them on the next request; backups carry them.
//!
//! Editable are a vendor's templates: not its profile (`vendor.toml`), its tables (`*.tsv`)
//! or raw files, whose mistakes would take the whole vendor off the air.

use std::collections::BTreeSet;

use super::views::{ServedAs, TemplatePreview, TemplateSaved, TemplateSummary, TemplateView, VendorTemplates};
use super::{App, AppError};
use crate::clock::now;
use crate::devices::{DeviceSpec, LineSpec};
use crate::mac::Mac;
use crate::provision::context::Secrets;
use crate::provision::format::Format;
use crate::provision::templates::Templates;
use crate::provision::vendor::{Vendor, VendorFile};
use crate::store::records::{Device, Txn};

/// Largest template accepted.
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;

/// An edit to check: the template's name in its vendor folder and its new text.
struct Edit<'a> {
    file: &'a str,
    source: &'a str,
}

impl App {
    /// Every vendor's editable templates, with whether each is overridden.
    pub fn template_list(&self) -> Result<Vec<VendorTemplates>, AppError> {
        let catalog = self.templates.catalog();
        Ok(catalog
            .vendors
            .values()
            .map(|vendor| VendorTemplates {
                vendor: vendor.id.clone(),
                name: vendor.name.clone(),
                templates: self
                    .editable(vendor)
                    .into_iter()
                    .map(|file| TemplateSummary {
                        overridden: self.templates.override_text(&format!("{}/{file}", vendor.id)).is_some(),
                        stock: Templates::stock(&format!("{}/{file}", vendor.id)).is_some(),
                        served_as: served_as(vendor, &file),
                        file,
                    })
                    .collect(),
            })
            .collect())
    }

    /// The templates overridden on this appliance, as `vendor/file`.
    pub fn template_overrides(&self) -> Result<Vec<String>, AppError> {
        Ok(self
            .template_list()?
            .into_iter()
            .flat_map(|vendor| {
                let id = vendor.vendor;
                vendor.templates.into_iter().filter(|t| t.overridden).map(move |t| format!("{id}/{}", t.file))
            })
            .collect())
    }

    /// One template: what phones get now, the stock text, and the override as a diff.
    pub fn template_show(&self, vendor_id: &str, file: &str) -> Result<TemplateView, AppError> {
        let catalog = self.templates.catalog();
        let vendor = self.editable_template(&catalog.vendors, vendor_id, file)?;
        let name = format!("{vendor_id}/{file}");
        let stock = Templates::stock(&name).map(str::to_string);
        let overridden = self.templates.override_text(&name);
        let current = overridden.clone().or_else(|| stock.clone()).unwrap_or_default();
        let diff = match &overridden {
            Some(text) => crate::provision::diff::unified(stock.as_deref().unwrap_or(""), text, "stock", "override"),
            None => String::new(),
        };
        Ok(TemplateView {
            vendor: vendor_id.to_string(),
            file: file.to_string(),
            served_as: served_as(vendor, file),
            overridden: overridden.is_some(),
            sha256: fingerprint(&current),
            stock,
            current,
            diff,
        })
    }

    /// Renders the files an edit of `vendor/file` feeds for device `mac`, secrets masked,
    /// without saving it. Refused, with the line and the cause, when it does not render or a
    /// file does not parse in its format.
    pub fn template_preview(
        &self,
        vendor_id: &str,
        file: &str,
        source: &str,
        mac: &Mac,
    ) -> Result<TemplatePreview, AppError> {
        let catalog = self.templates.catalog();
        let vendor = self.editable_template(&catalog.vendors, vendor_id, file)?;
        self.check_source(vendor_id, file, source)?;
        let device = self.device(mac)?;
        if *device.vendor != *vendor_id {
            return Err(AppError::Refused(format!("{mac} is a {} phone, not a {vendor_id} one", device.vendor)));
        }
        let edit = Edit { file, source };
        let entries = self.entries_fed(vendor, file);
        let mut files = Vec::new();
        for entry in entries.iter().filter(|entry| entry.is_for(&device.model)) {
            let Some(matched) = entry.example(&device.mac, &device.model) else { continue };
            let rendered = self.render_checked(vendor, &device, &matched, Secrets::Masked, &edit)?;
            files.push(super::views::PreviewFile {
                requested: matched.requested.clone(),
                body: rendered.body,
                warnings: rendered.warnings,
            });
        }
        if files.is_empty() {
            let models: Vec<&str> = entries.iter().filter_map(|entry| entry.models()).collect();
            return Err(AppError::Refused(format!(
                "{mac} ({}) gets no file from {vendor_id}/{file}; it is for models {}",
                device.model,
                models.join(" or ")
            )));
        }
        Ok(TemplatePreview { vendor: vendor_id.to_string(), file: file.to_string(), mac: *mac, files })
    }

    /// Saves `source` as the override of `vendor/file`, after rendering every file it feeds
    /// for a sample device and for every device of the vendor, and checking each in its
    /// format. Audited with the fingerprints before and after; devices whose
    /// file changed show as pending until they fetch it.
    pub fn template_save(
        &self,
        vendor_id: &str,
        file: &str,
        source: &str,
        actor: &str,
    ) -> Result<TemplateSaved, AppError> {
        let catalog = self.templates.catalog();
        let vendor = self.editable_template(&catalog.vendors, vendor_id, file)?;
        self.check_source(vendor_id, file, source)?;
        let devices = self.vendor_devices(vendor_id)?;
        let edit = Edit { file, source };
        let entries = self.entries_fed(vendor, file);
        for device in &devices {
            for entry in entries.iter().filter(|entry| entry.is_for(&device.model)) {
                let Some(matched) = entry.example(&device.mac, &device.model) else { continue };
                self.render_checked(vendor, device, &matched, Secrets::Real, &edit)
                    .map_err(naming(&format!("{} ({})", device.mac, device.model)))?;
            }
        }
        // Then a sample device, which gets every entry whatever its models: a model family's
        // template is checked even when no phone of that family is there yet.
        let sample = sample_device(vendor_id)?;
        for entry in &entries {
            let Some(matched) = entry.example(&sample.mac, &sample.model) else { continue };
            self.render_checked(vendor, &sample, &matched, Secrets::Masked, &edit)
                .map_err(naming(&format!("a sample {vendor_id} phone")))?;
        }
        self.replace_template(vendor_id, file, Some(source), &devices, actor)
    }

    /// Removes the override of `vendor/file`: phones get the stock template again.
    pub fn template_revert(&self, vendor_id: &str, file: &str, actor: &str) -> Result<TemplateSaved, AppError> {
        let catalog = self.templates.catalog();
        self.editable_template(&catalog.vendors, vendor_id, file)?;
        let name = format!("{vendor_id}/{file}");
        if self.templates.override_text(&name).is_none() {
            return Err(AppError::Refused(format!("{name} is not overridden")));
        }
        if Templates::stock(&name).is_none() {
            return Err(AppError::Refused(format!("{name} has no stock version to go back to")));
        }
        let devices = self.vendor_devices(vendor_id)?;
        self.replace_template(vendor_id, file, None, &devices, actor)
    }

    /// The devices of `vendor_id` that get a file `vendor/file` feeds and whose config is
    /// pending: those to reprovision after a change.
    pub fn template_affected(&self, vendor_id: &str, file: &str) -> Result<Vec<Mac>, AppError> {
        let catalog = self.templates.catalog();
        let vendor = self.editable_template(&catalog.vendors, vendor_id, file)?;
        let entries = self.entries_fed(vendor, file);
        let mut affected = Vec::new();
        for device in self.vendor_devices(vendor_id)? {
            if entries.iter().any(|entry| entry.is_for(&device.model))
                && self.device_view(&device.mac, false)?.config == super::views::ConfigState::Pending
            {
                affected.push(device.mac);
            }
        }
        Ok(affected)
    }

    /// Writes (`Some`) or removes (`None`) the override, audits it, and reports which of
    /// `devices` now render a different device file.
    fn replace_template(
        &self,
        vendor_id: &str,
        file: &str,
        source: Option<&str>,
        devices: &[Device],
        actor: &str,
    ) -> Result<TemplateSaved, AppError> {
        let name = format!("{vendor_id}/{file}");
        let before_text = self.templates.override_text(&name).or_else(|| Templates::stock(&name).map(str::to_string));
        let before = fingerprint(before_text.as_deref().unwrap_or(""));
        let hashes_before: Vec<Option<[u8; 8]>> =
            devices.iter().map(|device| self.current_config_hash(device).ok()).collect();
        let written = match source {
            Some(text) => self.templates.write_override(&name, text),
            None => self.templates.remove_override(&name).map(|_| ()),
        };
        written.map_err(|error| AppError::Internal(format!("cannot write the override of {name}: {error}")))?;
        let after_text = source.map(str::to_string).or_else(|| Templates::stock(&name).map(str::to_string));
        let after = fingerprint(after_text.as_deref().unwrap_or(""));
        let what = match source {
            Some(_) => format!("changed template {name} (sha256 {before} -> {after})"),
            None => format!("reverted template {name} to stock (sha256 {before} -> {after})"),
        };
        let mut txn = Txn::new();
        txn.audit(now(), actor, &what)?;
        self.lock().db.commit(&txn)?;
        tracing::info!(template = %name, actor, "{what}");
        let changed = devices
            .iter()
            .zip(hashes_before)
            .filter(|(device, before)| self.current_config_hash(device).ok() != *before)
            .map(|(device, _)| device.mac)
            .collect();
        Ok(TemplateSaved {
            vendor: vendor_id.to_string(),
            file: file.to_string(),
            before,
            after,
            changed_devices: changed,
            vendor_devices: devices.len(),
        })
    }

    /// Renders `matched` for `device` with `edit` in place, and checks the file's format.
    fn render_checked(
        &self,
        vendor: &Vendor,
        device: &Device,
        matched: &crate::provision::vendor::FileMatch<'_>,
        secrets: Secrets,
        edit: &Edit<'_>,
    ) -> Result<super::views::Rendered, AppError> {
        let shown = matched.file.secrets.then_some(device);
        let rendered = self
            .render_matched_edit(vendor, shown, matched, secrets, Some((edit.file, edit.source)))
            .map_err(|error| AppError::Template(error.to_string()))?;
        Format::of_template(&matched.file.template)
            .check(&rendered.body)
            .map_err(|error| AppError::Template(format!("{} as rendered, {error}", matched.requested)))?;
        Ok(rendered)
    }

    /// Checks an edit's size and template syntax, whether or not any file renders it.
    fn check_source(&self, vendor_id: &str, file: &str, source: &str) -> Result<(), AppError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(AppError::Template(format!("a template may hold at most {} KiB", MAX_TEMPLATE_BYTES / 1024)));
        }
        self.templates.check_syntax(vendor_id, file, source).map_err(|error| AppError::Template(error.to_string()))
    }

    /// The vendor's profile if `file` is one of its editable templates.
    fn editable_template<'c>(
        &self,
        vendors: &'c std::collections::BTreeMap<String, Vendor>,
        vendor_id: &str,
        file: &str,
    ) -> Result<&'c Vendor, AppError> {
        let missing = || AppError::NoTemplate { vendor: vendor_id.to_string(), file: file.to_string() };
        let vendor = vendors.get(vendor_id).ok_or_else(missing)?;
        if self.editable(vendor).iter().any(|name| name == file) { Ok(vendor) } else { Err(missing()) }
    }

    /// A vendor's editable templates: its stock and overriding files, but not the profile,
    /// its tables or raw files.
    fn editable(&self, vendor: &Vendor) -> Vec<String> {
        let raw: BTreeSet<&str> =
            vendor.files.iter().filter(|entry| entry.raw).map(|entry| entry.template.as_str()).collect();
        let names: BTreeSet<String> = Templates::stock_files(&vendor.id)
            .map(str::to_string)
            .chain(self.templates.override_files(&vendor.id))
            .collect();
        names
            .into_iter()
            .filter(|name| name != "vendor.toml" && !name.ends_with(".tsv") && !raw.contains(name.as_str()))
            .collect()
    }

    /// The vendor's file entries rendered from `file` or from a template that includes it
    /// (an include names `vendor/file`; followed through any depth).
    fn entries_fed<'v>(&self, vendor: &'v Vendor, file: &str) -> Vec<&'v VendorFile> {
        let mut feeding = BTreeSet::from([file.to_string()]);
        let templates = self.editable(vendor);
        loop {
            let before = feeding.len();
            for name in &templates {
                let source = self.templates.source(&format!("{}/{name}", vendor.id)).unwrap_or_default();
                if feeding.iter().any(|fed| source.contains(&format!("\"{}/{fed}\"", vendor.id))) {
                    feeding.insert(name.clone());
                }
            }
            if feeding.len() == before {
                break;
            }
        }
        vendor.files.iter().filter(|entry| !entry.raw && feeding.contains(&entry.template)).collect()
    }

    fn vendor_devices(&self, vendor_id: &str) -> Result<Vec<Device>, AppError> {
        let state = self.lock();
        let mut devices = Vec::new();
        for device in state.db.devices() {
            let device = device?;
            if *device.vendor == *vendor_id {
                devices.push(device);
            }
        }
        Ok(devices)
    }
}

/// The entries `file` feeds, as the phones ask for them.
fn served_as(vendor: &Vendor, file: &str) -> Vec<ServedAs> {
    vendor
        .files
        .iter()
        .filter(|entry| entry.template == file)
        .map(|entry| ServedAs {
            name: entry.name.clone(),
            models: entry.models().map(str::to_string),
            secrets: entry.secrets,
        })
        .collect()
}

/// Adds the phone a refusal was rendered for to its message.
fn naming(phone: &str) -> impl FnOnce(AppError) -> AppError + '_ {
    move |error| match error {
        AppError::Template(reason) => AppError::Template(format!("for {phone}: {reason}")),
        other => other,
    }
}

/// A device to check an edit with whatever the vendor's phones here.
fn sample_device(vendor_id: &str) -> Result<Device, AppError> {
    let spec = DeviceSpec {
        mac: "001122334455".into(),
        vendor: vendor_id.into(),
        model: "sample".into(),
        lines: vec![LineSpec { extension: "100".into(), name: "Sample".into(), sip_user: None, sip_password: None }],
    };
    Ok(spec.build(|_| true, crate::policy::Level::Strong)?)
}

/// The first 16 hex digits of the SHA-256 of `text`: names a version in the audit log.
fn fingerprint(text: &str) -> String {
    crate::hex::encode(&ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_differ_with_the_text() {
        assert_eq!(fingerprint("a").len(), 16);
        assert_ne!(fingerprint("a"), fingerprint("b"));
    }
}
