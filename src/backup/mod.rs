//! Encrypted backups of the appliance's identity and state.
//!
//! A backup is an [age](age) file, encrypted with a passphrase, holding a tar archive:
//!
//! | path in the tar | what |
//! |---|---|
//! | `provbox-backup/manifest.json` | product, format, provbox version, store schemas, counts |
//! | `provbox-backup/store.records` | every store record, as `u16` key length, key, `u32` value length, value (big-endian) |
//! | `provbox-backup/data/tls/…` | the local CA and its key, the server and operator certificates |
//! | `provbox-backup/data/templates/…` | template overrides |
//! | `provbox-backup/data/files/…` | static files (firmware), when asked for |
//!
//! So `age -d backup.age | tar t` lists it with standard tools. This module only seals and
//! opens that form ([`seal`], [`open`]); what goes in and how it is put back is
//! `app::backup`'s.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

pub mod age;

/// What a backup file says it is.
pub const PRODUCT: &str = "provbox";
/// The layout of the archive inside; bumped when it changes incompatibly.
pub const FORMAT: u32 = 1;
/// The largest backup file taken: it is opened in memory, on boards with 1 GiB.
pub const MAX_BACKUP_BYTES: usize = 64 * 1024 * 1024;
/// The directory every entry of the archive sits in.
const ROOT: &str = "provbox-backup";
/// The data-directory folders a backup carries.
pub const DATA_FOLDERS: [&str; 3] = ["tls", "templates", "files"];

/// The backup's description of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`PRODUCT`].
    pub product: String,
    /// The archive layout, [`FORMAT`].
    pub format: u32,
    /// The provbox version that made it.
    pub version: String,
    /// When it was made, Unix seconds.
    pub created_at: u64,
    /// The schema version of each record kind, by kind name, as the maker wrote them.
    pub schemas: BTreeMap<String, u8>,
    /// Devices in it.
    pub devices: usize,
    /// Whether `<data>/files` is in it.
    pub includes_files: bool,
}

/// One store record, key and value as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRecord {
    /// Kind byte and identity.
    pub key: Vec<u8>,
    /// Schema byte and body.
    pub value: Vec<u8>,
}

/// One file of the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// Relative to the data directory, e.g. `tls/ca.key`; `/`-separated.
    pub path: String,
    /// Its content.
    pub content: Vec<u8>,
}

/// Everything a backup holds, in the clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// What it is.
    pub manifest: Manifest,
    /// The store's records.
    pub records: Vec<StoreRecord>,
    /// Data-directory files.
    pub files: Vec<DataFile>,
}

/// Why a backup cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Decryption refused it.
    #[error("{0}")]
    Age(#[from] age::AgeError),
    /// The identity file given does not read.
    #[error("the identity file: {0}")]
    Identity(String),
    /// Too large to take.
    #[error("the backup is {0} bytes; at most {MAX_BACKUP_BYTES} are taken (make it without --files)")]
    TooLarge(usize),
    /// Decrypted, but not a provbox backup.
    #[error("this is not a provbox backup: {0}")]
    NotProvbox(String),
    /// A provbox backup in a layout this version does not know.
    #[error("this backup has format {0}, made by a newer provbox ({1}); update this appliance first")]
    NewerFormat(u32, String),
    /// Inside, something does not follow the layout.
    #[error("the backup's content is malformed: {0}")]
    Malformed(String),
}

/// Checks that `path` is a plain relative path under one of [`DATA_FOLDERS`]: no `..`, no
/// absolute path, nothing else of the data directory.
pub fn check_data_path(path: &str) -> Result<(), String> {
    let components: Vec<Component<'_>> = Path::new(path).components().collect();
    let plain = components.iter().all(|c| matches!(c, Component::Normal(_)));
    let folder = components.first().and_then(|c| c.as_os_str().to_str());
    if !plain || components.len() < 2 || !folder.is_some_and(|f| DATA_FOLDERS.contains(&f)) {
        return Err(format!("{path:?} is not a file under {}", DATA_FOLDERS.join(", ")));
    }
    Ok(())
}

/// Encrypts `snapshot` with `passphrase` into a backup file.
pub fn seal(snapshot: &Snapshot, passphrase: &str) -> Vec<u8> {
    age::encrypt(&archive(snapshot), passphrase)
}

/// Encrypts `snapshot` to an age public key: what scheduled copies are.
pub fn seal_to(snapshot: &Snapshot, recipient: &age::Recipient) -> Vec<u8> {
    age::encrypt_to(&archive(snapshot), recipient)
}

/// What opens a backup, as it travels from a person to the appliance: its passphrase, or
/// the text of the age identity file its copy was encrypted to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupKey {
    /// The passphrase it was made with.
    Passphrase(String),
    /// An identity file (`AGE-SECRET-KEY-1...`), for scheduled copies.
    Identity(String),
}

/// Decrypts and reads a backup file. Checks its layout, not its records (see `app::backup`).
pub fn open(file: &[u8], key: &BackupKey) -> Result<Snapshot, BackupError> {
    if file.len() > MAX_BACKUP_BYTES {
        return Err(BackupError::TooLarge(file.len()));
    }
    let plaintext = match key {
        BackupKey::Passphrase(passphrase) => age::decrypt(file, age::Key::Passphrase(passphrase))?,
        BackupKey::Identity(text) => {
            let identity = age::Identity::from_file_text(text).map_err(BackupError::Identity)?;
            age::decrypt(file, age::Key::Identity(&identity))?
        }
    };
    unarchive(&plaintext)
}

/// The tar archive of `snapshot`.
fn archive(snapshot: &Snapshot) -> Vec<u8> {
    let mut records = Vec::new();
    for record in &snapshot.records {
        // Store keys are at most a few dozen bytes and values at most one sector.
        records.extend_from_slice(&(record.key.len() as u16).to_be_bytes());
        records.extend_from_slice(&record.key);
        records.extend_from_slice(&(record.value.len() as u32).to_be_bytes());
        records.extend_from_slice(&record.value);
    }
    // A Manifest has only strings, numbers and a map with string keys: it always serialises.
    let manifest = serde_json::to_vec_pretty(&snapshot.manifest).expect("the manifest serialises");
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, content: &[u8], mode: u32| {
        let mut header = tar::Header::new_ustar();
        header.set_size(content.len() as u64);
        header.set_mode(mode);
        header.set_mtime(snapshot.manifest.created_at);
        header.set_entry_type(tar::EntryType::Regular);
        // Writing into a Vec cannot fail; a path too long for ustar gets a GNU long name.
        builder.append_data(&mut header, format!("{ROOT}/{path}"), content).expect("a tar entry in memory");
    };
    add("manifest.json", &manifest, 0o600);
    add("store.records", &records, 0o600);
    for file in &snapshot.files {
        add(&format!("data/{}", file.path), &file.content, 0o600);
    }
    builder.into_inner().expect("a tar archive in memory")
}

/// Reads what [`archive`] wrote.
fn unarchive(tar_bytes: &[u8]) -> Result<Snapshot, BackupError> {
    let malformed = |reason: String| BackupError::Malformed(reason);
    let mut manifest = None;
    let mut records = None;
    let mut files = Vec::new();
    let mut archive = tar::Archive::new(tar_bytes);
    let entries = archive.entries().map_err(|e| BackupError::NotProvbox(format!("not a tar archive ({e})")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| BackupError::NotProvbox(format!("not a tar archive ({e})")))?;
        let path = entry.path().map_err(|e| malformed(e.to_string()))?.to_string_lossy().into_owned();
        if entry.header().entry_type().is_dir() {
            continue;
        }
        if !entry.header().entry_type().is_file() {
            return Err(malformed(format!("{path:?} is not a regular file")));
        }
        let Some(inner) = path.strip_prefix(&format!("{ROOT}/")) else {
            return Err(BackupError::NotProvbox(format!("it holds {path:?}, outside {ROOT}/")));
        };
        let mut content = Vec::new();
        entry.read_to_end(&mut content).map_err(|e| malformed(format!("{path:?}: {e}")))?;
        match inner {
            "manifest.json" => manifest = Some(content),
            "store.records" => records = Some(parse_records(&content).map_err(malformed)?),
            other => {
                let Some(data_path) = other.strip_prefix("data/") else {
                    return Err(malformed(format!("unexpected entry {path:?}")));
                };
                check_data_path(data_path).map_err(malformed)?;
                files.push(DataFile { path: data_path.to_string(), content });
            }
        }
    }
    let manifest = manifest.ok_or_else(|| BackupError::NotProvbox("it has no manifest.json".into()))?;
    let manifest: Manifest = serde_json::from_slice(&manifest)
        .map_err(|e| BackupError::NotProvbox(format!("its manifest does not read ({e})")))?;
    if manifest.product != PRODUCT {
        return Err(BackupError::NotProvbox(format!("it was made by {:?}", manifest.product)));
    }
    if manifest.format > FORMAT {
        return Err(BackupError::NewerFormat(manifest.format, manifest.version));
    }
    let records = records.ok_or_else(|| malformed("it has no store.records".into()))?;
    Ok(Snapshot { manifest, records, files })
}

/// Reads the length-prefixed records of `store.records`.
fn parse_records(mut bytes: &[u8]) -> Result<Vec<StoreRecord>, String> {
    fn take<'a>(bytes: &mut &'a [u8], len: usize) -> Result<&'a [u8], String> {
        if bytes.len() < len {
            return Err("store.records ends inside a record".into());
        }
        let (head, tail) = bytes.split_at(len);
        *bytes = tail;
        Ok(head)
    }
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let key_len = u16::from_be_bytes([take(&mut bytes, 1)?[0], take(&mut bytes, 1)?[0]]) as usize;
        let key = take(&mut bytes, key_len)?.to_vec();
        let value_len = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().map_err(|_| "short length")?) as usize;
        let value = take(&mut bytes, value_len)?.to_vec();
        if key.is_empty() {
            return Err("store.records has a record with an empty key".into());
        }
        records.push(StoreRecord { key, value });
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            manifest: Manifest {
                product: PRODUCT.into(),
                format: FORMAT,
                version: "0.1.0".into(),
                created_at: 1_790_000_000,
                schemas: BTreeMap::from([("device".into(), 1)]),
                devices: 1,
                includes_files: false,
            },
            records: vec![StoreRecord { key: vec![1, 0x80, 0x5e], value: vec![1, 2, 3] }],
            files: vec![DataFile { path: "tls/ca.key".into(), content: b"-----BEGIN PRIVATE KEY-----".to_vec() }],
        }
    }

    #[test]
    fn a_sealed_snapshot_opens_the_same() {
        let file = seal(&snapshot(), "a long passphrase");
        assert_eq!(open(&file, &BackupKey::Passphrase("a long passphrase".into())).unwrap(), snapshot());
        let wrong = open(&file, &BackupKey::Passphrase("another".into()));
        assert!(matches!(wrong, Err(BackupError::Age(age::AgeError::WrongPassphrase))));
    }

    #[test]
    fn archives_from_elsewhere_are_refused_by_what_they_are() {
        let mut other = snapshot();
        other.manifest.product = "tancredi".into();
        let refused = open(&seal(&other, "p"), &BackupKey::Passphrase("p".into())).unwrap_err().to_string();
        assert!(refused.contains("not a provbox backup") && refused.contains("tancredi"), "{refused}");
        let mut newer = snapshot();
        newer.manifest.format = FORMAT + 1;
        assert!(matches!(
            open(&seal(&newer, "p"), &BackupKey::Passphrase("p".into())),
            Err(BackupError::NewerFormat(..))
        ));
        let plain = age::encrypt(b"just some text", "p");
        assert!(matches!(open(&plain, &BackupKey::Passphrase("p".into())), Err(BackupError::NotProvbox(_))));
    }

    #[test]
    fn data_paths_stay_inside_the_backed_up_folders() {
        for good in ["tls/ca.key", "templates/yealink/y000000000000.cfg", "files/fw/T46U.rom"] {
            assert!(check_data_path(good).is_ok(), "{good}");
        }
        for bad in ["../etc/passwd", "/etc/passwd", "tls/../../x", "store.bin", "tls", "update/key"] {
            assert!(check_data_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn truncated_record_lists_are_malformed() {
        let mut bytes = vec![0, 3, 1, 2, 3, 0, 0, 0, 2, 9, 9];
        assert_eq!(parse_records(&bytes).unwrap().len(), 1);
        bytes.pop();
        assert!(parse_records(&bytes).is_err());
    }
}
