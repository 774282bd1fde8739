//! Template overrides as operations: list each vendor's templates, show one against stock,
//! preview an edit for a device, save it (checked first, audited, phones' configs pending)
//! and revert to stock. The files live under `<data>/templates/<vendor>/`, where
//! [`crate::provision::templates`] reads them on the next request; backups carry them.
//!
//! Editable are a vendor's templates: not its profile (`vendor.toml`), its tables (`*.tsv`)
//! or raw files, whose mistakes would take the whole vendor off the air.

use std::collections::BTreeSet;

use super::views::{
    ConfigState, PreviewFile, Rendered, ServedAs, TemplatePreview, TemplateSaved, TemplateSummary, TemplateView,
    VendorTemplates,
};
use super::{App, AppError};
use crate::clock::now;
use crate::devices::{DeviceSpec, LineSpec};
use crate::mac::Mac;
use crate::provision::context::Secrets;
use crate::provision::format::Format;
use crate::provision::templates::{EditedTemplates, Templates};
use crate::provision::vendor::{FileMatch, Vendor, VendorFile};
use crate::store::records::{Device, Txn};

/// Largest template accepted.
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;

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
        let stock_text = stock.as_deref().unwrap_or("");
        let diff = match &overridden {
            Some(text) => match crate::provision::diff::unified(stock_text, text, "stock", "override") {
                // Lines compare without their ends: say so rather than show nothing.
                diff if diff.is_empty() && text != stock_text => {
                    "(the override differs from stock only in line endings or the final newline)\n".into()
                }
                diff => diff,
            },
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
        let edited = self.edited(vendor_id, file, &normalised(source))?;
        let device = self.device(mac)?;
        if *device.vendor != *vendor_id {
            return Err(AppError::Refused(format!("{mac} is a {} phone, not a {vendor_id} one", device.vendor)));
        }
        let entries = self.entries_fed(vendor, file);
        let mut files = Vec::new();
        for matched in entries.iter().filter_map(|entry| gets(vendor, entry, &device)) {
            let rendered = self.render_checked(vendor, &device, &matched, &edited)?;
            files.push(PreviewFile {
                requested: matched.requested.clone(),
                body: rendered.body,
                warnings: rendered.warnings,
            });
        }
        if files.is_empty() {
            let models: Vec<&str> = entries.iter().filter_map(|entry| entry.models()).collect();
            let limited =
                if models.is_empty() { String::new() } else { format!("; it is for models {}", models.join(" or ")) };
            return Err(AppError::Refused(format!(
                "{mac} ({}) gets no file from {vendor_id}/{file}{limited}",
                device.model
            )));
        }
        Ok(TemplatePreview { vendor: vendor_id.to_string(), file: file.to_string(), mac: *mac, files })
    }

    /// Saves `source` as the override of `vendor/file`, after rendering every file it feeds
    /// for every device of the vendor that gets it and for a sample phone, and checking each
    /// in its format (secrets masked, so a refusal quoting a line shows none). Audited with
    /// the fingerprints before and after; devices whose own file changed show as pending
    /// once they had fetched it.
    pub fn template_save(
        &self,
        vendor_id: &str,
        file: &str,
        source: &str,
        actor: &str,
    ) -> Result<TemplateSaved, AppError> {
        let _one_edit = self.template_edits.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let catalog = self.templates.catalog();
        let vendor = self.editable_template(&catalog.vendors, vendor_id, file)?;
        let source = normalised(source);
        let edited = self.edited(vendor_id, file, &source)?;
        let devices = self.vendor_devices(vendor_id)?;
        let entries = self.entries_fed(vendor, file);
        for device in &devices {
            for matched in entries.iter().filter_map(|entry| gets(vendor, entry, device)) {
                self.render_checked(vendor, device, &matched, &edited)
                    .map_err(naming(&format!("{} ({})", device.mac, device.model)))?;
            }
        }
        // Then a sample phone, which gets every entry whatever its models: a model family's
        // template is checked even when no phone of that family is here yet.
        let sample = sample_device(vendor_id)?;
        for entry in &entries {
            let Some(matched) = entry.example(&sample.mac, &sample.model) else { continue };
            self.render_checked(vendor, &sample, &matched, &edited)
                .map_err(naming(&format!("a sample {vendor_id} phone")))?;
        }
        self.replace_template(vendor, file, Some(&source), &devices, actor)
    }

    /// Removes the override of `vendor/file`: phones get the stock template again.
    pub fn template_revert(&self, vendor_id: &str, file: &str, actor: &str) -> Result<TemplateSaved, AppError> {
        let _one_edit = self.template_edits.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let catalog = self.templates.catalog();
        let vendor = self.editable_template(&catalog.vendors, vendor_id, file)?;
        let name = format!("{vendor_id}/{file}");
        if self.templates.override_text(&name).is_none() {
            return Err(AppError::Refused(format!("{name} is not overridden")));
        }
        if Templates::stock(&name).is_none() {
            return Err(AppError::Refused(format!("{name} has no stock version to go back to")));
        }
        let devices = self.vendor_devices(vendor_id)?;
        self.replace_template(vendor, file, None, &devices, actor)
    }

    /// The phones to reprovision after a change of `vendor/file`: where it feeds a phone's
    /// own file, those whose config is pending; where it feeds only shared files (a common
    /// file, a phonebook), every phone that gets one of them.
    pub fn template_affected(&self, vendor_id: &str, file: &str) -> Result<Vec<Mac>, AppError> {
        let catalog = self.templates.catalog();
        let vendor = self.editable_template(&catalog.vendors, vendor_id, file)?;
        let entries = self.entries_fed(vendor, file);
        let mut affected = Vec::new();
        for device in self.vendor_devices(vendor_id)? {
            if !entries.iter().any(|entry| gets(vendor, entry, &device).is_some()) {
                continue;
            }
            let own_file = vendor
                .device_file_name(&device.mac, &device.model)
                .and_then(|name| vendor.match_file(&name, Some(&device.model)))
                .is_some_and(|own| entries.iter().any(|entry| std::ptr::eq(*entry, own.file)));
            if !own_file || self.config_state(&device) == ConfigState::Pending {
                affected.push(device.mac);
            }
        }
        Ok(affected)
    }

    /// Writes (`Some`) or removes (`None`) the override, audits it, and reports which of
    /// `devices` now render a different device file. If the audit cannot be written, the
    /// previous text is put back and nothing has changed.
    fn replace_template(
        &self,
        vendor: &Vendor,
        file: &str,
        source: Option<&str>,
        devices: &[Device],
        actor: &str,
    ) -> Result<TemplateSaved, AppError> {
        let name = format!("{}/{file}", vendor.id);
        let previous = self.templates.override_text(&name);
        let stock = Templates::stock(&name).unwrap_or("");
        let before = fingerprint(previous.as_deref().unwrap_or(stock));
        let after = fingerprint(source.unwrap_or(stock));
        let hashes_before: Vec<Option<[u8; 8]>> =
            devices.iter().map(|device| self.current_config_hash(device).ok()).collect();
        let write = |text: Option<&str>| match text {
            Some(text) => self.templates.write_override(&name, text),
            None => self.templates.remove_override(&name).map(|_| ()),
        };
        write(source).map_err(|error| AppError::Internal(format!("cannot write the override of {name}: {error}")))?;
        let what = match source {
            Some(_) => format!("changed template {name} (sha256 {before} -> {after})"),
            None => format!("reverted template {name} to stock (sha256 {before} -> {after})"),
        };
        let mut txn = Txn::new();
        txn.audit(now(), actor, &what)?;
        if let Err(error) = self.lock().db.commit(&txn) {
            if let Err(undo) = write(previous.as_deref()) {
                tracing::error!(template = %name, "cannot put the previous override back: {undo}");
            }
            return Err(error.into());
        }
        tracing::info!(template = %name, actor, "{what}");
        let changed = devices
            .iter()
            .zip(hashes_before)
            .filter(|(device, before)| self.current_config_hash(device).ok() != *before)
            .map(|(device, _)| device.mac)
            .collect();
        Ok(TemplateSaved {
            vendor: vendor.id.clone(),
            file: file.to_string(),
            before,
            after,
            changed_devices: changed,
            affected: self.template_affected(&vendor.id, file)?,
            vendor_devices: devices.len(),
        })
    }

    /// The templates with `source` in place of `vendor/file`, after checking its size and
    /// syntax, whether or not any file renders it.
    fn edited(&self, vendor_id: &str, file: &str, source: &str) -> Result<EditedTemplates, AppError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(AppError::Template(format!("a template may hold at most {} KiB", MAX_TEMPLATE_BYTES / 1024)));
        }
        self.templates.with_edit(vendor_id, file, source).map_err(|error| AppError::Template(error.to_string()))
    }

    /// Renders `matched` for `device` through `edited`, secrets masked, and checks the file's
    /// format.
    fn render_checked(
        &self,
        vendor: &Vendor,
        device: &Device,
        matched: &FileMatch<'_>,
        edited: &EditedTemplates,
    ) -> Result<Rendered, AppError> {
        let shown = matched.file.secrets.then_some(device);
        let rendered = self
            .render_matched_edit(vendor, shown, matched, Secrets::Masked, Some(edited))
            .map_err(|error| AppError::Template(error.to_string()))?;
        Format::of_template(&matched.file.template)
            .check(&rendered.body)
            .map_err(|error| AppError::Template(format!("{} as rendered, {error}", matched.requested)))?;
        Ok(rendered)
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
    /// (an include names `vendor/file` in either quotes; followed through any depth).
    fn entries_fed<'v>(&self, vendor: &'v Vendor, file: &str) -> Vec<&'v VendorFile> {
        let mut feeding = BTreeSet::from([file.to_string()]);
        let templates = self.editable(vendor);
        let sources: Vec<(String, String)> = templates
            .iter()
            .map(|name| (name.clone(), self.templates.source(&format!("{}/{name}", vendor.id)).unwrap_or_default()))
            .collect();
        // Each round adds at least one template or stops: at most one round per template.
        for _ in 0..=sources.len() {
            let before = feeding.len();
            for (name, source) in &sources {
                let includes = |fed: &String| {
                    ['"', '\''].iter().any(|quote| source.contains(&format!("{quote}{}/{fed}{quote}", vendor.id)))
                };
                if feeding.iter().any(includes) {
                    feeding.insert(name.clone());
                }
            }
            if feeding.len() == before {
                break;
            }
        }
        vendor.files.iter().filter(|entry| !entry.raw && feeding.contains(&entry.template)).collect()
    }

    /// The vendor's devices, each with its newest contact (as [`App::devices`] shows them).
    fn vendor_devices(&self, vendor_id: &str) -> Result<Vec<Device>, AppError> {
        let state = self.lock();
        let mut devices = Vec::new();
        for device in state.db.devices() {
            let device = device?;
            if *device.vendor == *vendor_id {
                devices.push(state.with_pending_contact(device));
            }
        }
        Ok(devices)
    }
}

/// The request `device` makes for `entry`, if that entry is what it gets: the first entry
/// matching both the file name and the phone's model wins, so a catch-all entry after a
/// model family's own is not the family's.
fn gets<'v>(vendor: &'v Vendor, entry: &'v VendorFile, device: &Device) -> Option<FileMatch<'v>> {
    let matched = entry.example(&device.mac, &device.model)?;
    let served = vendor.match_file(&matched.requested, Some(&device.model))?;
    std::ptr::eq(served.file, entry).then_some(matched)
}

/// Line ends as phones' files have them: a browser's or an editor's CRLF made LF.
fn normalised(source: &str) -> String {
    source.replace("\r\n", "\n")
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
