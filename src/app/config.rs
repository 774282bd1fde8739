//! Site-wide operations: settings, rendering a device's files, the phonebook directory, the
//! static files, the store's usage, the audit log and the clock note.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::LazyLock;
use std::sync::atomic::Ordering;

use super::views::{Rendered, SettingView, StaticFile};
use super::{App, AppError, State};
use crate::clock::now;
use crate::mac::Mac;
use crate::metrics::{self, Gauges};
use crate::provision::cache::{CachedFile, FileIdentity};
use crate::provision::context::{self, Secrets, SiteFacts};
use crate::provision::templates::{Catalog, EditedTemplates};
use crate::provision::vendor::{FileMatch, Vendor};
use crate::redirect::outbox::Plan;
use crate::settings::{self, Rule, Settings, Table};
use crate::store::records::{Device, Enrollment, Txn};
use crate::token::MASK;

/// Every setting provbox knows: the site's and each redirect service's.
pub fn settings_table() -> &'static Table {
    static TABLE: LazyLock<Table> = LazyLock::new(|| {
        let mut groups = vec![settings::SITE];
        groups.extend(crate::redirect::SERVICES.iter().map(|service| service.settings));
        Table::new(&groups)
    });
    &TABLE
}

/// A device file's hash, and the fingerprint of what it was rendered from.
pub(super) struct CurrentHash {
    inputs: u64,
    hash: [u8; 8],
}

impl App {
    /// The effective base URL phones use.
    pub fn base_url(&self) -> Result<String, AppError> {
        self.lock().base_url(&self.default_base_url())
    }

    /// Every setting's effective value (secrets included: for rendering only).
    pub fn effective_settings(&self) -> Result<Settings, AppError> {
        self.lock().settings()
    }

    /// The grace period after the first enrollment fetch, in seconds.
    pub fn grace_seconds(&self) -> Result<u64, AppError> {
        self.lock().grace_seconds()
    }

    /// Hash of the device file as it would be served now, rendered only when the device,
    /// the settings or the templates changed since it was last worked out (by this call or
    /// by a fetch of the file).
    pub fn current_config_hash(&self, device: &Device) -> Result<[u8; 8], AppError> {
        let catalog = self.templates.catalog();
        let inputs = self.render_inputs(catalog.generation, Some(device));
        let cached = |hashes: &HashMap<Mac, CurrentHash>| {
            hashes.get(&device.mac).filter(|known| known.inputs == inputs).map(|known| known.hash)
        };
        if let Some(hash) = cached(&self.config_hashes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())) {
            return Ok(hash);
        }
        let vendor = catalog.vendor(&device.vendor)?;
        let no_file = |file: &str| AppError::NoSuchFile { vendor: device.vendor.to_string(), file: file.into() };
        let file = vendor.device_file_name(&device.mac, &device.model).ok_or_else(|| no_file("(device file)"))?;
        let matched = vendor.match_file(&file, Some(&device.model)).ok_or_else(|| no_file(&file))?;
        let rendered = self.render_matched(vendor, matched.file.secrets.then_some(device), &matched, Secrets::Real)?;
        let hash = context::config_hash(&rendered.body);
        self.note_current_hash(device.mac, inputs, hash);
        Ok(hash)
    }

    fn note_current_hash(&self, mac: Mac, inputs: u64, hash: [u8; 8]) {
        let mut hashes = self.config_hashes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        hashes.insert(mac, CurrentHash { inputs, hash });
    }

    /// `matched` of `vendor` (from `catalog`) as a phone is served it, showing `device` only
    /// if given (device files): from the cache while nothing it is rendered from changed,
    /// else rendered and kept. When it is `device`'s own device file
    /// ([`Vendor::is_device_file`]), its hash becomes the current one, so that the device
    /// list says "current" or "pending" without rendering it again. A phonebook (rendered
    /// from every device) is rendered each time.
    pub fn served_file(
        &self,
        catalog: &Catalog,
        vendor: &Vendor,
        device: Option<&Device>,
        matched: &FileMatch<'_>,
        is_device_file: bool,
    ) -> Result<CachedFile, AppError> {
        if matched.file.directory {
            metrics::SERVED_FROM.inc("rendered");
            return Ok(CachedFile::new(self.render_matched(vendor, device, matched, Secrets::Real)?.body));
        }
        let inputs = self.render_inputs(catalog.generation, device);
        let identity = FileIdentity {
            vendor: &vendor.id,
            template: &matched.file.template,
            requested: &matched.requested,
            mac: device.map(|device| device.mac),
        };
        if let Some(file) = self.rendered.get(&identity, inputs) {
            metrics::SERVED_FROM.inc("cache");
            return Ok(file);
        }
        metrics::SERVED_FROM.inc("rendered");
        let file = CachedFile::new(self.render_matched(vendor, device, matched, Secrets::Real)?.body);
        if let Some(device) = device
            && is_device_file
        {
            self.note_current_hash(device.mac, inputs, file.hash);
        }
        self.rendered.insert(&identity, inputs, file.clone());
        Ok(file)
    }

    /// Drops `mac`'s cached files at once (removed or rekeyed: the secrets they hold are
    /// no longer anybody's), rather than when they age out.
    pub(super) fn forget_files_of(&self, mac: &Mac) {
        self.rendered.forget_device(mac);
    }

    /// Notes a change that may alter any device's files (settings, the directory).
    pub(super) fn site_changed(&self) {
        self.site_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// A fingerprint of everything a file is rendered from: the site's change count, the
    /// templates' `generation`, and for a device file the device itself but for what only
    /// its fetches change (enrollment, last contact, LAN window).
    fn render_inputs(&self, generation: u64, device: Option<&Device>) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.site_changes.load(Ordering::Relaxed).hash(&mut hasher);
        generation.hash(&mut hasher);
        if let Some(device) = device {
            let mut rendered = device.clone();
            rendered.enrollment = Enrollment::Open { first_fetch: None };
            rendered.last_contact = None;
            rendered.lan_window_until = None;
            // Encoding a device into a Vec cannot fail: its types are plain data of bounded
            // size (a failure would give every revision one fingerprint: stale files).
            postcard::to_allocvec(&rendered).expect("a device encodes into a Vec").hash(&mut hasher);
        }
        hasher.finish()
    }

    /// Generated secrets the store has lost (a damaged store): `serve` refuses to start
    /// without them rather than hand the phones a new or an empty one.
    pub fn lost_secrets(&self) -> Result<Vec<&'static str>, AppError> {
        let state = self.lock();
        let missing = state.db.setting("phone.admin_password")?.is_none();
        Ok(if missing { vec!["phone.admin_password"] } else { Vec::new() })
    }

    /// Every known setting, secrets masked.
    pub fn settings_view(&self) -> Result<Vec<SettingView>, AppError> {
        let stored = self.lock().db.settings()?;
        Ok(settings_table()
            .specs()
            .map(|spec| {
                let value = stored.iter().find(|(name, _)| name == spec.name).map(|(_, value)| value.clone());
                let shown = match (&value, spec.secret) {
                    (Some(v), true) if !v.is_empty() => MASK.to_string(),
                    (Some(v), _) => v.clone(),
                    (None, _) => spec.default.to_string(),
                };
                SettingView {
                    name: spec.name.into(),
                    value: shown,
                    default: value.is_none(),
                    secret: spec.secret,
                    help: spec.help.into(),
                    choices: match spec.rule {
                        Rule::OneOf(words) => words.iter().map(|word| word.to_string()).collect(),
                        Rule::Switch => vec!["on".into(), "off".into()],
                        _ => Vec::new(),
                    },
                }
            })
            .collect())
    }

    /// Sets one setting after validating it.
    pub fn set_setting(&self, name: &str, value: &str, actor: &str) -> Result<(), AppError> {
        let value = settings_table().validate(name, value)?;
        let shown = if settings_table().is_secret(name) { MASK } else { value.as_str() };
        let mut txn = Txn::new();
        txn.set_setting(name, &value)?.audit(now(), actor, &format!("set {name} = {shown}"))?;
        self.lock().db.commit(&txn)?;
        self.site_changed();
        tracing::info!(setting = name, value = shown, actor, "setting changed");
        if name.starts_with("redirect.") {
            // New credentials or a service switched on: register what should be.
            self.reconcile_redirects(Plan::Reconcile)?;
        } else if name == "provision.base_url" {
            // The registered enrollment URLs point at the old address.
            self.reconcile_redirects(Plan::Reregister)?;
        } else if name.starts_with("backup.") {
            // A new target or key: the copy worker looks again.
            self.backup_copy_wake.notify_one();
        }
        Ok(())
    }

    /// Renders `file` exactly as the device would be served it now, with what the vendor
    /// cannot express of the site's settings.
    pub fn render(&self, mac: &Mac, file: &str, reveal: bool) -> Result<Rendered, AppError> {
        let device = self.device(mac)?;
        let secrets = if reveal { context::Secrets::Real } else { context::Secrets::Masked };
        self.render_for(&device, file, secrets)
    }

    /// Renders `file` for `device` through its vendor's profile.
    pub fn render_for(&self, device: &Device, file: &str, secrets: context::Secrets) -> Result<Rendered, AppError> {
        let catalog = self.templates.catalog();
        let vendor = catalog.vendor(&device.vendor)?;
        let matched = vendor
            .match_file(file, Some(&device.model))
            .ok_or_else(|| AppError::NoSuchFile { vendor: device.vendor.to_string(), file: file.to_string() })?;
        self.render_matched(vendor, matched.file.secrets.then_some(device), &matched, secrets)
    }

    /// Renders `matched` of `vendor`, showing `device` only if given (device files), with a
    /// warning for each site setting the vendor cannot express exactly. A `raw` file is
    /// served as it is, without a context.
    pub fn render_matched(
        &self,
        vendor: &Vendor,
        device: Option<&Device>,
        matched: &FileMatch<'_>,
        secrets: Secrets,
    ) -> Result<Rendered, AppError> {
        self.render_matched_edit(vendor, device, matched, secrets, None)
    }

    /// [`App::render_matched`], through `edit` (templates with an unsaved edit in place)
    /// when given: to preview or check the edit.
    pub(super) fn render_matched_edit(
        &self,
        vendor: &Vendor,
        device: Option<&Device>,
        matched: &FileMatch<'_>,
        secrets: Secrets,
        edit: Option<&EditedTemplates>,
    ) -> Result<Rendered, AppError> {
        if matched.file.raw {
            return Ok(Rendered { body: self.templates.raw(&vendor.id, matched.file)?, warnings: Vec::new() });
        }
        let (context, warnings) = self.template_context(vendor, device, matched, secrets)?;
        let template = &matched.file.template;
        let body = match edit {
            None => self.templates.render(&vendor.id, template, &context)?,
            Some(edited) => edited.render(&vendor.id, template, &context)?,
        };
        Ok(Rendered { body, warnings })
    }

    /// The template context for `matched`, showing `device` only if given (device files),
    /// and a warning for each site setting that `vendor` cannot express exactly.
    fn template_context(
        &self,
        vendor: &Vendor,
        device: Option<&Device>,
        matched: &FileMatch<'_>,
        secrets: Secrets,
    ) -> Result<(minijinja::Value, Vec<String>), AppError> {
        let (base_url, settings, directory) = {
            let state = self.lock();
            let directory = if matched.file.directory { state.directory()? } else { Vec::new() };
            (state.base_url(&self.default_base_url())?, state.settings()?, directory)
        };
        let resolved = vendor.locale.resolve(&vendor.name, settings.get("time.zone"), settings.get("time.language"));
        let ca_pem = self.ca_pem();
        let facts = SiteFacts {
            base_url,
            bootstrap_url: self.bootstrap_url(),
            settings,
            directory,
            time: resolved.time,
            ca_pem,
        };
        Ok((context::build(facts, device, matched, secrets), resolved.warnings))
    }

    /// The CA certificate (PEM), read from `<data>/tls/ca.crt` once it exists; empty before
    /// (it is created at the first start, after the store is mounted). The CA is public.
    fn ca_pem(&self) -> String {
        let mut cached = self.ca_pem.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pem) = cached.as_ref() {
            return pem.clone();
        }
        match std::fs::read_to_string(self.data_dir.join("tls/ca.crt")) {
            Ok(pem) => cached.insert(pem).clone(),
            Err(_) => String::new(),
        }
    }

    /// Forgets what was rendered from the old state (a restore replaced it): the CA read
    /// for templates, the cached files, and every file's "current" hash.
    pub(super) fn forget_rendered(&self) {
        *self.ca_pem.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        self.config_hashes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
        self.rendered.clear();
        self.site_changed();
    }

    /// The Prometheus text of `/metrics`: the process counters and the appliance's gauges,
    /// read without rendering anything.
    pub fn metrics_text(&self) -> Result<String, AppError> {
        let (live, capacity, _, high) = self.store_usage();
        let gauges = {
            let state = self.lock();
            Gauges {
                sip: self.sip.stats(),
                outbox_depth: state.db.outbox()?.len(),
                devices: state.db.device_count(),
                store_live_bytes: live,
                store_capacity_bytes: capacity,
                store_erase_count_max: high,
                store_commits: state.db.commits(),
            }
        };
        Ok(metrics::render(&gauges))
    }

    /// The audit log, newest first.
    pub fn audit_log(&self) -> Result<Vec<crate::store::records::AuditEntry>, AppError> {
        let mut log = self.lock().db.audit_log()?;
        log.reverse();
        Ok(log)
    }

    /// Store usage: (live bytes, capacity in bytes, lowest and highest sector erase count).
    pub fn store_usage(&self) -> (usize, usize, u32, u32) {
        let state = self.lock();
        let store = state.db.store();
        let live: usize = store.records_by_prefix().values().map(|(_, bytes)| bytes).sum();
        let sectors = store.sectors();
        let erases: Vec<u32> = sectors.iter().filter_map(|s| s.state.erase_count()).collect();
        let capacity = sectors.len() * crate::store::backend::SECTOR_SIZE;
        (live, capacity, erases.iter().copied().min().unwrap_or(0), erases.iter().copied().max().unwrap_or(0))
    }

    /// Files under `<data>/files/`, with SHA-256 sums.
    pub fn static_files(&self) -> Vec<StaticFile> {
        let root = self.data_dir.join("files");
        let mut files = Vec::new();
        let mut pending = vec![root.clone()];
        // Bounded walk: the files area is small by design.
        while let Some(dir) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten().take(10_000) {
                let path = entry.path();
                let Ok(kind) = entry.file_type() else { continue };
                if kind.is_dir() && files.len() < 10_000 {
                    pending.push(path);
                } else if kind.is_file()
                    && let Ok(sum) = sha256_file(&path)
                {
                    let relative = path.strip_prefix(&root).unwrap_or(&path).to_string_lossy().into_owned();
                    files.push(StaticFile { path: relative, size: sum.1, sha256: sum.0 });
                }
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files
    }

    /// Appends `action` by `actor` to the audit log.
    pub fn record_audit(&self, actor: &str, action: &str) -> Result<(), AppError> {
        let mut txn = Txn::new();
        txn.audit(now(), actor, action)?;
        Ok(self.lock().db.commit(&txn)?)
    }

    /// Notes the current time in the store for the next boot (at most every half hour).
    pub fn note_time(&self) -> Result<(), AppError> {
        Ok(crate::clock::note(&mut self.lock().db, now())?)
    }
}

impl State {
    /// Every extension on the appliance, sorted: (name, extension).
    fn directory(&self) -> Result<Vec<(String, String)>, AppError> {
        let mut entries = Vec::new();
        for device in self.db.devices() {
            for line in device?.lines {
                entries.push((line.display_name.to_string(), line.extension.to_string()));
            }
        }
        entries.sort();
        Ok(entries)
    }
}

/// SHA-256 (hex) and size of a file, streamed.
fn sha256_file(path: &std::path::Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0; 64 * 1024];
    let mut size = 0;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        context.update(&buffer[..n]);
    }
    Ok((crate::hex::encode(context.finish().as_ref()), size))
}
