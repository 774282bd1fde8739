//! Backups: what the appliance's identity and state are ([`App::backup_snapshot`]), and
//! putting them back on this or another appliance ([`App::restore`]). The file format is
//! [`crate::backup`]'s.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::views::RestoreSummary;
use super::{App, AppError};
use crate::admin::AdminError;
use crate::backup::{self, BackupError, BackupKey, DataFile, Manifest, Snapshot, StoreRecord};
use crate::clock::now;
use crate::pki;
use crate::store::records::{
    Device, Kind, MAX_DEVICES, Record, RecordError, Setting, Txn, current_schema, decode_json,
};

/// The files of `<data>/tls` a backup carries, in pairs that come together: the CA and the
/// operator's certificates. The server certificates are the board's own: reissued from the
/// restored CA for the new board's addresses.
const TLS_PAIRS: [(&str, &str); 3] = [("ca.crt", "ca.key"), pki::OPERATOR_PAIRS[0], pki::OPERATOR_PAIRS[1]];
/// The generated server certificates' files, removed on restore so that they are reissued.
const SERVER_FILES: [&str; 5] = [
    pki::SERVER_PAIRS[0].0,
    pki::SERVER_PAIRS[0].1,
    pki::SERVER_PAIRS[1].0,
    pki::SERVER_PAIRS[1].1,
    pki::SERVER_COVERAGE,
];
/// Deepest path a backup may hold under a folder (the data directory is handed over to the
/// unprivileged user by a bounded walk).
const MAX_PATH_DEPTH: usize = 8;

impl App {
    /// Everything a backup holds: every store record but the board's own (clock, copy
    /// schedule), the TLS files, the template overrides, and the static files when
    /// `include_files`.
    pub fn backup_snapshot(&self, include_files: bool) -> Result<Snapshot, AppError> {
        let (records, devices) = {
            let state = self.lock();
            let store = state.db.store();
            let records: Vec<StoreRecord> = store
                .iter_prefix(&[])
                .filter(|(key, _)| !Kind::from_byte(key[0]).is_some_and(Kind::is_board_own))
                .map(|(key, value)| StoreRecord { key: key.to_vec(), value: value.to_vec() })
                .collect();
            (records, state.db.device_count())
        };
        let mut files = Vec::new();
        for name in TLS_PAIRS.iter().flat_map(|(cert, key)| [*cert, *key]) {
            match std::fs::read(self.data_dir.join("tls").join(name)) {
                Ok(content) => files.push(DataFile { path: format!("tls/{name}"), content }),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(unreadable(&self.data_dir.join("tls").join(name), error)),
            }
        }
        collect_tree(&self.data_dir, "templates", &mut files)?;
        if include_files {
            collect_tree(&self.data_dir, "files", &mut files)?;
        }
        let size: usize = records.iter().map(|r| r.key.len() + r.value.len() + 6).sum::<usize>()
            + files.iter().map(|f| f.content.len() + 512).sum::<usize>();
        if size > backup::MAX_BACKUP_BYTES {
            return Err(AppError::Refused(format!(
                "the backup would be {size} bytes, more than the {} a restore takes; leave out the static files",
                backup::MAX_BACKUP_BYTES
            )));
        }
        let schemas = Kind::ALL.iter().map(|kind| (kind.name().to_string(), current_schema(*kind))).collect();
        let manifest = Manifest {
            product: backup::PRODUCT.into(),
            format: backup::FORMAT,
            version: crate::update::version_text(),
            created_at: now(),
            schemas,
            devices,
            includes_files: include_files,
        };
        Ok(Snapshot { manifest, records, files })
    }

    /// Makes a backup file: the snapshot encrypted with `passphrase`, and an audit entry.
    pub fn create_backup(&self, passphrase: &str, include_files: bool, actor: &str) -> Result<Vec<u8>, AppError> {
        check_passphrase(passphrase)?;
        let snapshot = self.backup_snapshot(include_files)?;
        let file = backup::seal(&snapshot, passphrase);
        let mut txn = Txn::new();
        let files = if include_files { ", with static files" } else { "" };
        txn.audit(now(), actor, &format!("made a backup ({} devices{files})", snapshot.manifest.devices))?;
        self.lock().db.commit(&txn)?;
        tracing::info!(actor, devices = snapshot.manifest.devices, bytes = file.len(), "backup made");
        Ok(file)
    }

    /// Puts `snapshot` back: the store's records, the CA and certificates, the template
    /// overrides and static files. Everything is checked before anything is written, so a
    /// refused backup changes nothing. An appliance already in use (an admin password or
    /// devices) is only replaced when `replace` says so. A restore that fails while writing
    /// leaves the appliance unclaimed (no admin password), to be restored again.
    pub fn restore(&self, snapshot: Snapshot, replace: bool, actor: &str) -> Result<RestoreSummary, AppError> {
        check_records(&snapshot)?;
        check_files(&snapshot.files)?;
        let records: Vec<(Vec<u8>, Vec<u8>)> =
            snapshot.records.iter().map(|r| (r.key.clone(), r.value.clone())).collect();
        {
            let state = self.lock();
            let in_use = state.db.admin()?.is_some() || state.db.device_count() > 0;
            if in_use && !replace {
                return Err(AppError::Refused(
                    "this appliance is already in use (it has an admin password or devices); restoring replaces all of it: confirm with --replace (CLI) or restore from the first-start page of a new appliance".into(),
                ));
            }
        }
        // Unclaimed first: from here until the restored admin lands, a restore cut short
        // (power, a full disk) leaves an appliance whose first-start page offers it again.
        self.lock().db.commit(Txn::new().remove_admin())?;
        self.write_data_files(&snapshot)?;
        {
            let mut state = self.lock();
            state.db.replace_all(&records)?;
            state.pending_contacts.clear();
            state.rebuild_tokens()?;
            let mut txn = Txn::new();
            // Sessions on this appliance started before the restore end: the restored
            // password counts as changed now.
            if let Some(mut admin) = state.db.admin()? {
                admin.changed_at = now();
                txn.set_admin(&admin);
            }
            let made = &snapshot.manifest;
            txn.audit(
                now(),
                actor,
                &format!(
                    "restored a backup made {} by provbox {}",
                    crate::clock::date_time(made.created_at),
                    made.version
                ),
            )?;
            state.db.commit(&txn)?;
        }
        self.forget_rendered();
        if let Some(tls) = self.tls.get() {
            tls.adopt_restored().map_err(|e| AppError::Internal(format!("the restored certificates: {e}")))?;
        }
        let summary = RestoreSummary {
            version: snapshot.manifest.version.clone(),
            created_at: snapshot.manifest.created_at,
            devices: records.iter().filter(|(key, _)| key[0] == Kind::Device as u8).count(),
            files: snapshot.files.len(),
            admin_restored: self.admin_configured()?,
        };
        tracing::info!(actor, devices = summary.devices, files = summary.files, "backup restored");
        if summary.admin_restored {
            self.setup_code.clear();
            super::admin::claimed();
        }
        Ok(summary)
    }

    /// The first-start page's restore: needs the setup code (checked before the file is
    /// decrypted), and only while no admin password is set; replaces whatever the new
    /// appliance holds.
    pub fn restore_on_first_start(
        &self,
        file: &[u8],
        key: &BackupKey,
        setup_code: &str,
        actor: &str,
    ) -> Result<RestoreSummary, AppError> {
        if self.admin_configured()? || !self.setup_code.matches(setup_code) {
            return Err(AdminError::SetupCode.into());
        }
        self.restore(backup::open(file, key)?, true, actor)
    }

    /// Writes the snapshot's files: each folder it carries is built beside the live one and
    /// swapped in whole, so a folder is never half old, half new. `tls` is merged file by
    /// file (atomic renames), since the running server reads it.
    fn write_data_files(&self, snapshot: &Snapshot) -> Result<(), AppError> {
        let mut by_folder: BTreeMap<&str, Vec<&DataFile>> = BTreeMap::new();
        for file in &snapshot.files {
            // check_files accepted only paths under one of the backed-up folders.
            let folder = file.path.split('/').next().unwrap_or_default();
            by_folder.entry(folder).or_default().push(file);
        }
        // The server certificate goes first, so that whatever happens next it is reissued
        // from the CA in place at the next start; then the pairs, key before certificate.
        let tls = by_folder.remove("tls").unwrap_or_default();
        if !tls.is_empty() {
            for name in SERVER_FILES {
                remove_file(&self.data_dir.join("tls").join(name))?;
            }
        }
        for (cert, key) in TLS_PAIRS {
            let find = |name: &str| tls.iter().find(|file| file.path == format!("tls/{name}"));
            match (find(cert), find(key)) {
                (Some(cert_file), Some(key_file)) => {
                    write_atomically(&self.data_dir.join(&key_file.path), &key_file.content, 0o600)?;
                    write_atomically(&self.data_dir.join(&cert_file.path), &cert_file.content, 0o644)?;
                }
                // With the CA, a pair the backup does not carry is not this site's: an operator
                // certificate of this board goes.
                _ if !tls.is_empty() => {
                    remove_file(&self.data_dir.join("tls").join(cert))?;
                    remove_file(&self.data_dir.join("tls").join(key))?;
                }
                _ => {}
            }
        }
        let mut folders = vec!["templates"];
        if snapshot.manifest.includes_files {
            folders.push("files");
        }
        for folder in folders {
            let staged = self.data_dir.join(format!(".{folder}.restoring"));
            let live = self.data_dir.join(folder);
            remove_tree(&staged)?;
            for file in by_folder.get(folder).into_iter().flatten() {
                let relative = Path::new(&file.path).strip_prefix(folder).unwrap_or(Path::new(&file.path));
                write_atomically(&staged.join(relative), &file.content, 0o644)?;
            }
            let old = self.data_dir.join(format!(".{folder}.old"));
            remove_tree(&old)?;
            if live.exists() {
                std::fs::rename(&live, &old).map_err(|e| unwritable(&live, e))?;
            }
            if staged.exists() {
                std::fs::rename(&staged, &live).map_err(|e| unwritable(&live, e))?;
            }
            remove_tree(&old)?;
        }
        Ok(())
    }
}

/// A passphrase long enough that scrypt makes guessing it slow but not hopeless to say:
/// backups leave the appliance.
fn check_passphrase(passphrase: &str) -> Result<(), AppError> {
    const MIN_CHARS: usize = 12;
    if passphrase.chars().count() < MIN_CHARS {
        return Err(AppError::Invalid(format!(
            "the backup passphrase must have at least {MIN_CHARS} characters: the file leaves the appliance"
        )));
    }
    Ok(())
}

/// Checks that this version reads every one of the snapshot's records (older schemas
/// upgrade; newer ones and unknown kinds are refused), and that they fit an appliance.
fn check_records(snapshot: &Snapshot) -> Result<(), AppError> {
    let malformed = |reason: String| AppError::from(BackupError::Malformed(reason));
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut devices = 0;
    for record in &snapshot.records {
        let Some(kind) = record.key.first().and_then(|byte| Kind::from_byte(*byte)) else {
            return Err(BackupError::NewerFormat(snapshot.manifest.format, snapshot.manifest.version.clone()).into());
        };
        let unreadable = |e: RecordError| malformed(format!("a {} record: {e}", kind.name()));
        if !seen.insert(&record.key) {
            return Err(malformed(format!("a {} record appears twice", kind.name())));
        }
        match kind {
            Kind::Device => {
                devices += 1;
                if Device::decode(&record.value).map_err(unreadable)?.mac.0[..] != record.key[1..] {
                    return Err(malformed("a device record is filed under another MAC".into()));
                }
            }
            // A setting this version knows must pass its rule, as if it were set now.
            Kind::Setting => {
                let value = Setting::decode(&record.value).map_err(unreadable)?.value;
                let name = std::str::from_utf8(&record.key[1..]).unwrap_or_default();
                let table = super::config::settings_table();
                if table.spec_of(name).is_ok() {
                    table.validate(name, &value).map_err(|e| malformed(format!("setting {e}")))?;
                }
            }
            _ => {
                decode_json(kind, &record.value).map_err(unreadable)?;
            }
        }
    }
    if devices > MAX_DEVICES {
        return Err(malformed(format!("{devices} devices, more than the {MAX_DEVICES} an appliance manages")));
    }
    Ok(())
}

/// Checks the snapshot's files before anything is written: paths inside the backed-up
/// folders and not too deep, no path both a file and a folder, only the known TLS pairs, each
/// whole and each key matching its certificate. (A backup of an appliance that never served
/// has no CA; this board's stays.)
fn check_files(files: &[DataFile]) -> Result<(), AppError> {
    let malformed = |reason: String| AppError::from(BackupError::Malformed(reason));
    let paths: std::collections::BTreeSet<&str> = files.iter().map(|file| file.path.as_str()).collect();
    for file in files {
        backup::check_data_path(&file.path).map_err(BackupError::Malformed)?;
        if file.path.split('/').count() > MAX_PATH_DEPTH + 1 {
            return Err(malformed(format!("{:?} is nested too deeply", file.path)));
        }
        if paths
            .range(format!("{}/", file.path).as_str()..)
            .next()
            .is_some_and(|next| next.starts_with(&format!("{}/", file.path)))
        {
            return Err(malformed(format!("{:?} is both a file and a folder", file.path)));
        }
        if let Some(name) = file.path.strip_prefix("tls/")
            && !TLS_PAIRS.iter().any(|(cert, key)| name == *cert || name == *key)
        {
            return Err(malformed(format!("unexpected TLS file {name:?}")));
        }
    }
    let content =
        |name: &str| files.iter().find(|file| file.path == format!("tls/{name}")).map(|file| &file.content[..]);
    for (cert, key) in TLS_PAIRS {
        match (content(cert), content(key)) {
            (Some(cert_pem), Some(key_pem)) => pki::check_pair(cert_pem, key_pem)
                .map_err(|reason| malformed(format!("tls/{cert} and tls/{key}: {reason}")))?,
            (None, None) => {}
            _ => return Err(malformed(format!("tls/{cert} and tls/{key} must come together"))),
        }
    }
    Ok(())
}

/// Adds every regular file under `<data>/<folder>` to `files`; symbolic links are not
/// followed (the data directory may be written by others' hands).
fn collect_tree(data_dir: &Path, folder: &str, files: &mut Vec<DataFile>) -> Result<(), AppError> {
    let root = data_dir.join(folder);
    let mut pending = vec![root.clone()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(unreadable(&dir, error)),
        };
        let mut entries: Vec<_> = entries.collect::<Result<_, _>>().map_err(|e| unreadable(&dir, e))?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| unreadable(&path, e))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let relative = path.strip_prefix(data_dir).unwrap_or(&path);
                let Some(relative) = relative.to_str() else { continue };
                let content = std::fs::read(&path).map_err(|e| unreadable(&path, e))?;
                files.push(DataFile { path: relative.to_string(), content });
            }
        }
    }
    Ok(())
}

/// Writes `content` to `path` through a temporary file and a rename, with `mode`.
fn write_atomically(path: &Path, content: &[u8], mode: u32) -> Result<(), AppError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| unwritable(parent, e))?;
    }
    let mut temporary_name = path.file_name().unwrap_or_default().to_os_string();
    temporary_name.push(".restoring");
    let temporary: PathBuf = path.with_file_name(temporary_name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(|e| unwritable(&temporary, e))?;
    file.write_all(content).and_then(|()| file.sync_all()).map_err(|e| unwritable(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| unwritable(path, e))
}

fn remove_file(path: &Path) -> Result<(), AppError> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(unwritable(path, error)),
        _ => Ok(()),
    }
}

fn remove_tree(path: &Path) -> Result<(), AppError> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(unwritable(path, error)),
        _ => Ok(()),
    }
}

fn unreadable(path: &Path, error: std::io::Error) -> AppError {
    AppError::Internal(format!("cannot read {}: {error}", path.display()))
}

fn unwritable(path: &Path, error: std::io::Error) -> AppError {
    AppError::Internal(format!("cannot write {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8]) -> DataFile {
        DataFile { path: path.into(), content: content.to_vec() }
    }

    /// A self-signed certificate and its key, PEM, and another key.
    fn pair() -> (String, String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["provbox".into()]).unwrap().self_signed(&key).unwrap();
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        (cert.pem(), key.serialize_pem(), other.serialize_pem())
    }

    #[test]
    fn files_that_could_not_all_be_written_or_served_are_refused_before_anything_is_written() {
        let (cert, key, other) = pair();
        let ca = [file("tls/ca.crt", cert.as_bytes()), file("tls/ca.key", key.as_bytes())];
        assert!(check_files(&ca).is_ok());
        let refused = |extra: Vec<DataFile>| {
            let mut files = ca.to_vec();
            files.extend(extra);
            check_files(&files).unwrap_err().to_string()
        };
        assert!(
            refused(vec![file("templates/a", b"x"), file("templates/a/b", b"y")]).contains("both a file and a folder")
        );
        let deep = format!("templates/{}f", "d/".repeat(MAX_PATH_DEPTH));
        assert!(refused(vec![file(&deep, b"x")]).contains("nested too deeply"));
        assert!(refused(vec![file("tls/operator.crt", cert.as_bytes())]).contains("must come together"));
        let mismatched = vec![file("tls/operator.crt", cert.as_bytes()), file("tls/operator.key", other.as_bytes())];
        assert!(refused(mismatched).contains("does not match"));
        assert!(refused(vec![file("tls/server.key", key.as_bytes())]).contains("unexpected TLS file"));
        let lone_ca = check_files(&[file("tls/ca.key", key.as_bytes())]).unwrap_err().to_string();
        assert!(lone_ca.contains("tls/ca.crt and tls/ca.key must come together"), "{lone_ca}");
    }
}
