//! Template sources and rendering. Stock templates are compiled into the binary; a file of
//! the same name under `<data>/templates/` overrides one, and a vendor directory there adds
//! a vendor. Overrides are read on every request, so an edit takes effect at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use super::vendor::{ProfileError, Vendor, VendorFile};

include!(concat!(env!("OUT_DIR"), "/stock_templates.rs"));

/// Why a file could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The template is missing, does not parse, or failed while rendering.
    #[error("template {name}: {detail}")]
    Template {
        /// `vendor/file`.
        name: String,
        /// minijinja's account, with line numbers.
        detail: String,
    },
    /// The vendor is unknown.
    #[error("unknown vendor {0:?}; known vendors are the directories under templates/")]
    UnknownVendor(String),
}

/// Stock templates plus the operator's overrides.
pub struct Templates {
    override_dir: PathBuf,
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    /// Snapshots made so far: a new one means templates or profiles may render differently.
    generations: std::sync::atomic::AtomicU64,
}

/// The loaded vendor profiles.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Profiles by vendor id.
    pub vendors: BTreeMap<String, Vendor>,
    /// Profiles that failed to load, with the reason; their phones get nothing.
    pub broken: Vec<ProfileError>,
    /// The generation of the templates these profiles belong to: a new one whenever an
    /// override changed, so that what was rendered under another may now render differently.
    pub generation: u64,
}

impl Catalog {
    /// The profile of vendor `id`.
    pub fn vendor(&self, id: &str) -> Result<&Vendor, RenderError> {
        self.vendors.get(id).ok_or_else(|| RenderError::UnknownVendor(id.into()))
    }
}

/// Every override file with its modification time and size; any change starts a new
/// [`Snapshot`], so an edited template applies to the very next request.
type Stamp = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// Profiles and parsed templates for one state of the override directory. Templates are
/// parsed once per snapshot, on first use.
struct Snapshot {
    stamp: Stamp,
    catalog: Arc<Catalog>,
    environment: Environment<'static>,
}

impl Templates {
    /// Templates overridden from `override_dir` (`<data>/templates`).
    pub fn new(override_dir: PathBuf) -> Templates {
        Templates { override_dir, snapshot: Mutex::new(None), generations: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Template `name` (`vendor/file`): the override if present, else the stock one.
    pub fn source(&self, name: &str) -> Option<String> {
        read_source(&self.override_dir, name)
    }

    /// The vendor profiles, reloaded when an override changed.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.snapshot().catalog.clone()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        let stamp = self.stamp();
        // A poisoned lock only means another request panicked mid-reload; the snapshot is
        // rebuilt below either way.
        let mut cached = self.snapshot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(snapshot) = cached.as_ref()
            && snapshot.stamp == stamp
        {
            return snapshot.clone();
        }
        let generation = self.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let catalog = Arc::new(Catalog { generation, ..self.load_catalog() });
        for broken in &catalog.broken {
            tracing::error!("{broken}");
        }
        let snapshot = Arc::new(Snapshot { stamp, catalog, environment: self.environment() });
        *cached = Some(snapshot.clone());
        snapshot
    }

    fn vendor_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> =
            STOCK.iter().filter_map(|(name, _)| name.strip_suffix("/vendor.toml")).map(String::from).collect();
        if let Ok(entries) = std::fs::read_dir(&self.override_dir) {
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                if entry.path().join("vendor.toml").is_file() && !ids.contains(&id) && !id.starts_with('.') {
                    ids.push(id);
                }
            }
        }
        ids
    }

    /// Stats every file under the override directory (two levels: vendor/file), bounded.
    fn stamp(&self) -> Stamp {
        let stat = |path: PathBuf| {
            let meta = std::fs::metadata(&path).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            (path, modified, meta.map_or(0, |m| m.len()))
        };
        let mut stamp = vec![stat(self.override_dir.clone())];
        let Ok(vendors) = std::fs::read_dir(&self.override_dir) else { return stamp };
        for vendor in vendors.flatten().take(256) {
            stamp.push(stat(vendor.path()));
            let Ok(files) = std::fs::read_dir(vendor.path()) else { continue };
            stamp.extend(files.flatten().take(1024).map(|file| stat(file.path())));
        }
        stamp.sort();
        stamp
    }

    fn load_catalog(&self) -> Catalog {
        let mut catalog = Catalog::default();
        for id in self.vendor_ids() {
            let Some(text) = self.source(&format!("{id}/vendor.toml")) else { continue };
            let read = |file: &str| self.source(&format!("{id}/{file}"));
            match Vendor::parse(&id, &text, &read) {
                Ok(vendor) => {
                    catalog.vendors.insert(id, vendor);
                }
                Err(error) => catalog.broken.push(error),
            }
        }
        catalog
    }

    fn environment(&self) -> Environment<'static> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_auto_escape_callback(auto_escape_for);
        env.set_formatter(|out, state, value| {
            if state.auto_escape() == XML_ESCAPE && !value.is_safe() {
                let text = value.to_string();
                out.write_str(&xml_escape(&text)).map_err(minijinja::Error::from)
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        let override_dir = self.override_dir.clone();
        env.set_loader(move |name| Ok(read_source(&override_dir, name)));
        env
    }

    /// The stock text of template `name` (`vendor/file`), if provbox ships one.
    pub fn stock(name: &str) -> Option<&'static str> {
        STOCK.iter().find(|(stock, _)| *stock == name).map(|(_, text)| *text)
    }

    /// The names (`file`) of `vendor`'s stock files.
    pub fn stock_files(vendor: &str) -> impl Iterator<Item = &'static str> {
        STOCK.iter().filter_map(move |(name, _)| name.strip_prefix(vendor)?.strip_prefix('/'))
    }

    /// The override of template `name` (`vendor/file`), if one exists.
    pub fn override_text(&self, name: &str) -> Option<String> {
        checked_name(name).and_then(|_| std::fs::read_to_string(self.override_dir.join(name)).ok())
    }

    /// The files overriding `vendor`'s, by name, sorted.
    pub fn override_files(&self, vendor: &str) -> Vec<String> {
        if checked_name(vendor).is_none() {
            return Vec::new();
        }
        let Ok(entries) = std::fs::read_dir(self.override_dir.join(vendor)) else { return Vec::new() };
        let mut names: Vec<String> = entries
            .flatten()
            .take(1024)
            .filter(|entry| entry.path().is_file())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    /// Writes `text` as the override of template `name` (`vendor/file`): to a temporary
    /// file first, then renamed over, so a request never reads half of it.
    pub fn write_override(&self, name: &str, text: &str) -> std::io::Result<()> {
        let relative = checked_name(name).ok_or_else(|| std::io::Error::other("not a vendor/file name"))?;
        let path = self.override_dir.join(relative);
        let folder = path.parent().ok_or_else(|| std::io::Error::other("not a vendor/file name"))?;
        std::fs::create_dir_all(folder)?;
        // A name of its own per write: two writers never share a half-written file.
        let temporary = folder.join(format!(".{}.new", crate::hex::encode(&crate::random::bytes::<8>())));
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, &path)?;
        self.forget_snapshot();
        Ok(())
    }

    /// Removes the override of template `name`; false if there was none.
    pub fn remove_override(&self, name: &str) -> std::io::Result<bool> {
        let relative = checked_name(name).ok_or_else(|| std::io::Error::other("not a vendor/file name"))?;
        match std::fs::remove_file(self.override_dir.join(relative)) {
            Ok(()) => {
                self.forget_snapshot();
                Ok(true)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Drops the cached snapshot, so the next request parses templates afresh even when an
    /// edit kept a file's size and modification time.
    fn forget_snapshot(&self) {
        *self.snapshot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }

    /// These templates with `source` in place of template `vendor/file`: an edit, checked
    /// for its syntax (the error names the line), to render before it is saved.
    pub fn with_edit(&self, vendor: &str, file: &str, source: &str) -> Result<EditedTemplates, RenderError> {
        let name = format!("{vendor}/{file}");
        let mut environment = self.snapshot().environment.clone();
        environment
            .add_template_owned(name.clone(), source.to_string())
            .map_err(|error| RenderError::Template { name, detail: describe(&error) })?;
        Ok(EditedTemplates { environment })
    }

    /// The text of `file` of `vendor` as it is, for a file the profile marks `raw` (a binary
    /// redirect file), not rendered.
    pub fn raw(&self, vendor: &str, file: &VendorFile) -> Result<String, RenderError> {
        let name = format!("{vendor}/{}", file.template);
        self.source(&name).ok_or_else(|| RenderError::Template { name, detail: "file not found".into() })
    }

    /// Renders template `vendor/file` with `context`. The whole file is rendered before
    /// anything is returned, so a failure never yields a partial file.
    pub fn render(&self, vendor: &str, file: &str, context: &minijinja::Value) -> Result<String, RenderError> {
        let name = format!("{vendor}/{file}");
        let snapshot = self.snapshot();
        let result = snapshot.environment.get_template(&name).and_then(|template| template.render(context));
        result.map_err(|error| RenderError::Template { name, detail: describe(&error) })
    }
}

/// The templates with one unsaved edit in place ([`Templates::with_edit`]), parsed once for
/// all the files and devices it is rendered for.
pub struct EditedTemplates {
    environment: Environment<'static>,
}

impl EditedTemplates {
    /// Renders template `vendor/file` with `context`, as [`Templates::render`] does.
    pub fn render(&self, vendor: &str, file: &str, context: &minijinja::Value) -> Result<String, RenderError> {
        let name = format!("{vendor}/{file}");
        let result = self.environment.get_template(&name).and_then(|template| template.render(context));
        result.map_err(|error| RenderError::Template { name, detail: describe(&error) })
    }
}

/// Escaping for templates named `.xml`, `.htm` or `.html` (whatever the served file is
/// called): only the five XML specials, so URLs stay readable to phones' simple parsers.
const XML_ESCAPE: AutoEscape = AutoEscape::Custom("xml");

fn auto_escape_for(name: &str) -> AutoEscape {
    if [".xml", ".htm", ".html"].iter().any(|suffix| name.ends_with(suffix)) { XML_ESCAPE } else { AutoEscape::None }
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `name` if none of its `/`-separated parts is empty, hidden or `..`.
fn checked_name(name: &str) -> Option<&str> {
    let bad = |part: &str| part.is_empty() || part == ".." || part.starts_with('.') || part.contains('\\');
    (!name.split('/').any(bad)).then_some(name)
}

/// Reads template `name` from the override directory, else from the stock set. Names with
/// empty, hidden or `..` parts are refused.
fn read_source(override_dir: &Path, name: &str) -> Option<String> {
    let name = checked_name(name)?;
    match std::fs::read_to_string(override_dir.join(name)) {
        Ok(text) => Some(text),
        Err(_) => Templates::stock(name).map(str::to_string),
    }
}

/// minijinja's error with its chain of causes and the template line.
fn describe(error: &minijinja::Error) -> String {
    let mut text = error.to_string();
    if let (Some(name), Some(line)) = (error.name(), error.line()) {
        text = format!("{text} ({name} line {line})");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// A vendor id in the API's document: the stock profiles (the appliance serves the list of
/// its site's own).
#[cfg(test)]
pub struct VendorId;

#[cfg(test)]
impl utoipa::PartialSchema for VendorId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let vendors: std::collections::BTreeSet<&str> =
            STOCK.iter().filter_map(|(name, _)| name.strip_suffix("/vendor.toml")).collect();
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(vendors))
            .description(Some("A vendor id: a profile under templates/"))
            .into()
    }
}

#[cfg(test)]
impl utoipa::ToSchema for VendorId {}
