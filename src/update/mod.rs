//! Signed root-image updates and the A/B root slots of the provbox firmware image.
//!
//! A bundle is the magic `PBXUPD01`, a 2-byte little-endian header length, the header
//! (`key=value` lines: board, version, size, sha256 of the image), a 64-byte ed25519
//! signature over everything before it, then the root image: ext4, holding the root
//! filesystem and, in /boot, the slot's kernel, initramfs and kernel command line, so that
//! an update carries all of them. The signature over the header is checked before a byte
//! reaches the slot, and any earlier staging is undone; the image is then written to the
//! inactive slot, its SHA-256 checked and read back from the medium, and only then is the
//! slot staged for the next boot.
//!
//! The A/B state is a small file on the perm partition: `active=a`, plus `next=b` and an
//! `attempt` number new with each install once a slot is staged. U-Boot's boot script
//! (`image/boot/boot.cmd`) boots a staged slot once, recording the attempt first; while it
//! runs, the slot is on trial, and [`BootInfo::commit`] makes it `active=b` when provbox is
//! up and healthy. A staged slot still there when the script finds its attempt recorded has
//! failed, and the board goes back to the active slot; the initramfs then drops `next`.
//!
//! Only root writes slots and state, through the install [`service`]; the server, running
//! unprivileged, sends it bundles and commits.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub mod service;

use nix::fcntl::{Flock, FlockArg};
use ring::digest;
use ring::signature::{self, Ed25519KeyPair, KeyPair};

/// The first bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"PBXUPD01";
/// The exit status of `serve` asking init to reboot into a newly installed slot.
pub const REBOOT_EXIT_STATUS: u8 = 75;
/// Where the initramfs describes the running slots.
pub const DEFAULT_BOOT_INFO: &str = "/run/provbox/boot";
/// The public key the image carries.
pub const DEFAULT_KEY: &str = "/etc/provbox/update.pub";
/// The image's release description (`VERSION=...`).
const RELEASE_FILE: &str = "/etc/provbox-release";
const SIGNATURE_LEN: usize = 64;
const MAX_HEADER_LEN: usize = 1024;
/// Where an ext4 image has its magic (the superblock at 1024, `s_magic` at 0x38 in it).
const ROOT_MAGIC_AT: usize = 1024 + 0x38;
/// The ext4 magic 0xEF53, little-endian.
const ROOT_MAGIC: [u8; 2] = [0x53, 0xef];
/// Bytes before the image: magic, length, header, signature.
const fn head_len(header_len: usize) -> usize {
    MAGIC.len() + 2 + header_len + SIGNATURE_LEN
}

/// Why an update was refused. Nothing is staged after any of these: the slot being written
/// is unstaged before its first byte.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The upload does not start with the bundle magic.
    #[error("not a provbox update bundle")]
    NotABundle,
    /// The signed header is malformed.
    #[error("malformed bundle header: {0}")]
    Header(String),
    /// The signature does not verify.
    #[error("the signature does not verify with this appliance's update key: refused")]
    BadSignature,
    /// A slot's content does not match the signed header kept for it.
    #[error("{device} does not match its signed header ({reason}): not booted")]
    SlotMismatch {
        /// The slot's device.
        device: PathBuf,
        /// What differs.
        reason: String,
    },
    /// The bundle is older than the running image and not signed as a downgrade.
    #[error(
        "the bundle ({version}, release {bundle}) is older than the running image (release {running}): refused; \
         sign it with --allow-downgrade to go back on purpose"
    )]
    Downgrade {
        /// The bundle's version.
        version: String,
        /// The bundle's release sequence.
        bundle: u64,
        /// The running image's.
        running: u64,
    },
    /// The bundle was built for another board.
    #[error("the bundle is for board {bundle}, this is {running}: refused")]
    WrongBoard {
        /// The bundle's board.
        bundle: String,
        /// This board.
        running: String,
    },
    /// The image is larger than the slot.
    #[error("the {size}-byte image does not fit the {capacity}-byte root slot")]
    TooBig {
        /// Image size.
        size: u64,
        /// Slot size.
        capacity: u64,
    },
    /// The image is not an ext4 root.
    #[error("the image is not an ext4 root filesystem: refused, slot {0} not switched")]
    NotARoot(Slot),
    /// The upload ended early.
    #[error("the bundle ends after {got} of {expected} image bytes: refused, slot {slot} not switched")]
    Truncated {
        /// Image bytes received.
        got: u64,
        /// Image bytes the header promises.
        expected: u64,
        /// The slot that was being written.
        slot: Slot,
    },
    /// More bytes follow the image.
    #[error("the bundle has data after the image: refused")]
    TrailingData,
    /// The image is not the one that was signed.
    #[error("the image's SHA-256 does not match the signed header: refused, slot {0} not switched")]
    HashMismatch(Slot),
    /// What was written reads back differently.
    #[error("slot {0} reads back differently than written (failing storage?): not switched")]
    ReadBack(Slot),
    /// The running slot has not been committed yet.
    #[error("slot {0} is still on trial; it must come up healthy before another update")]
    OnTrial(Slot),
    /// The update key is unusable.
    #[error("update key {path}: {reason}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The boot information is missing or malformed: not running from the image.
    #[error("boot information {path}: {reason} (updates need the provbox firmware image)")]
    BootInfo {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The install service refused a request, or could not be asked.
    #[error("{0}")]
    Service(String),
    /// Reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> UpdateError {
    let what = what.into();
    move |source| UpdateError::Io { what, source }
}

/// A root slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Root A (partition 2).
    A,
    /// Root B (partition 3).
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn parse(text: &str) -> Option<Slot> {
        match text {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Slot::A => "a",
            Slot::B => "b",
        })
    }
}

/// What a bundle's signed header says about its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The release: what the image is, and whether it may replace a newer one.
    pub release: Release,
    /// Image size in bytes.
    pub size: u64,
    /// SHA-256 of the image.
    pub sha256: [u8; 32],
}

/// What a bundle's signer says of its image besides the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The board the image is for.
    pub board: String,
    /// The image's version, for people.
    pub version: String,
    /// The release sequence, which only grows from one release to the next (build-image uses
    /// the commit's time); 0 in bundles made before it existed.
    pub sequence: u64,
    /// Signed as a deliberate downgrade: may replace an image with a higher sequence.
    pub allow_downgrade: bool,
}

impl Manifest {
    fn encode(&self) -> String {
        let hash: String = self.sha256.iter().map(|b| format!("{b:02x}")).collect();
        let release = &self.release;
        let mut text = format!(
            "board={}\nversion={}\nsize={}\nsha256={hash}\nsequence={}\n",
            release.board, release.version, self.size, release.sequence
        );
        if release.allow_downgrade {
            text.push_str("downgrade=allowed\n");
        }
        text
    }

    fn parse(text: &str) -> Result<Manifest, UpdateError> {
        let bad = |what: &str| UpdateError::Header(what.to_string());
        let (mut board, mut version, mut size, mut sha256) = (None, None, None, None);
        let (mut sequence, mut allow_downgrade) = (0, false);
        for line in text.lines() {
            let (key, value) = line.split_once('=').ok_or_else(|| bad("a line without '='"))?;
            let valid = !value.is_empty() && value.len() <= 64 && value.bytes().all(|b| b.is_ascii_graphic());
            if !valid {
                return Err(bad(&format!("{key} is empty, too long or not printable")));
            }
            match key {
                "board" => board = Some(value.to_string()),
                "version" => version = Some(value.to_string()),
                "size" => size = Some(value.parse::<u64>().map_err(|_| bad("size is not a number"))?),
                "sha256" => sha256 = Some(parse_hex::<32>(value).ok_or_else(|| bad("sha256 is not 64 hex digits"))?),
                "sequence" => sequence = value.parse::<u64>().map_err(|_| bad("sequence is not a number"))?,
                "downgrade" => allow_downgrade = value == "allowed",
                _ => {} // later fields are ignored by older appliances
            }
        }
        Ok(Manifest {
            release: Release {
                board: board.ok_or_else(|| bad("no board"))?,
                version: version.ok_or_else(|| bad("no version"))?,
                sequence,
                allow_downgrade,
            },
            size: size.ok_or_else(|| bad("no size"))?,
            sha256: sha256.ok_or_else(|| bad("no sha256"))?,
        })
    }
}

fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// An ed25519 public key that bundles must be signed with.
#[derive(Debug, Clone)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Reads a key file: 64 hex digits.
    pub fn load(path: &Path) -> Result<PublicKey, UpdateError> {
        let fail = |reason: String| UpdateError::Key { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        parse_hex::<32>(text.trim()).map(PublicKey).ok_or_else(|| fail("not 64 hex digits".into()))
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), UpdateError> {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(message, signature)
            .map_err(|_| UpdateError::BadSignature)
    }
}

/// Makes a signing key: the PKCS#8 key at `path` (mode 0600) and its public key, as hex,
/// at `<path>.pub`.
pub fn generate_key(path: &Path) -> Result<PathBuf, UpdateError> {
    let fail = |reason: String| UpdateError::Key { path: path.to_path_buf(), reason };
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).map_err(|e| fail(e.to_string()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| fail(e.to_string()))?;
    let mut file =
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| fail(e.to_string()))?;
    file.write_all(pkcs8.as_ref()).and_then(|()| file.sync_all()).map_err(|e| fail(e.to_string()))?;
    let mut public_path = path.as_os_str().to_owned();
    public_path.push(".pub");
    let public_path = PathBuf::from(public_path);
    let hex: String = pair.public_key().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&public_path, format!("{hex}\n")).map_err(io(format!("write {}", public_path.display())))?;
    Ok(public_path)
}

/// Writes a bundle of the root image at `image` to `out`, described by `release` and signed
/// with the PKCS#8 key at `key`.
pub fn sign(key: &Path, release: &Release, image: &Path, out: &Path) -> Result<Manifest, UpdateError> {
    let fail = |reason: String| UpdateError::Key { path: key.to_path_buf(), reason };
    let pkcs8 = std::fs::read(key).map_err(|e| fail(e.to_string()))?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| fail("not an ed25519 PKCS#8 key".into()))?;
    let mut source = File::open(image).map_err(io(format!("open {}", image.display())))?;
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut size = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = source.read(&mut buffer).map_err(io(format!("read {}", image.display())))?;
        if n == 0 {
            break;
        }
        hash.update(&buffer[..n]);
        size += n as u64;
    }
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(hash.finish().as_ref());
    let manifest = Manifest { release: release.clone(), size, sha256 };
    let text = manifest.encode();
    Manifest::parse(&text)?; // what is signed must be what an appliance accepts
    let mut head = MAGIC.to_vec();
    let header_len = u16::try_from(text.len()).map_err(|_| UpdateError::Header("too long".into()))?;
    head.extend_from_slice(&header_len.to_le_bytes());
    head.extend_from_slice(text.as_bytes());
    let signature = pair.sign(&head);
    head.extend_from_slice(signature.as_ref());
    let mut write = || -> std::io::Result<()> {
        let mut output = File::create(out)?;
        output.write_all(&head)?;
        source.seek(SeekFrom::Start(0))?;
        std::io::copy(&mut source, &mut output)?;
        output.sync_all()
    };
    write().map_err(io(format!("write {}", out.display())))?;
    Ok(manifest)
}

/// The running system's slots, as the initramfs describes them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootInfo {
    /// The board name.
    pub board: String,
    /// The slot running now.
    pub slot: Slot,
    /// Whether this boot is a new slot's one try.
    pub trial: bool,
    /// A slot that was tried and failed at this boot.
    pub rolled_back: Option<Slot>,
    /// Root A's device.
    pub slot_a: PathBuf,
    /// Root B's device.
    pub slot_b: PathBuf,
    /// The A/B state file.
    pub state: PathBuf,
    /// The running image's release sequence (`SEQUENCE=` of its /etc/provbox-release, as
    /// the initramfs read it), below which bundles are refused; 0 if it has none.
    pub sequence: u64,
}

impl BootInfo {
    /// Reads the boot information file.
    pub fn load(path: &Path) -> Result<BootInfo, UpdateError> {
        let fail = |reason: &str| UpdateError::BootInfo { path: path.to_path_buf(), reason: reason.to_string() };
        let text = std::fs::read_to_string(path).map_err(|e| fail(&e.to_string()))?;
        let field = |name: &str| {
            text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix('=')).map(str::trim).unwrap_or("")
        };
        let path_field = |name: &str| match field(name) {
            "" => Err(fail(&format!("no {name}"))),
            value => Ok(PathBuf::from(value)),
        };
        let mut boot = BootInfo {
            board: match field("board") {
                "" => return Err(fail("no board")),
                board => board.to_string(),
            },
            slot: Slot::parse(field("slot")).ok_or_else(|| fail("slot is not a or b"))?,
            trial: field("trial") == "1",
            rolled_back: Slot::parse(field("rolled_back")),
            slot_a: path_field("slot_a")?,
            slot_b: path_field("slot_b")?,
            state: path_field("state")?,
            sequence: field("sequence").parse().unwrap_or(0),
        };
        // A provbox restarted after committing finds the trial already over.
        boot.trial &= boot.state_says_trial()?;
        Ok(boot)
    }

    /// Whether the state file still records this slot's trial.
    fn state_says_trial(&self) -> Result<bool, UpdateError> {
        let text = std::fs::read_to_string(&self.state).map_err(io(format!("read {}", self.state.display())))?;
        Ok(text.lines().any(|line| line == format!("next={}", self.slot)))
    }

    /// The device holding `slot`.
    pub fn device(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.slot_a,
            Slot::B => &self.slot_b,
        }
    }

    /// Makes the running slot permanent if it is on trial; true if it was.
    pub fn commit(&self) -> Result<bool, UpdateError> {
        if !self.trial {
            return Ok(false);
        }
        let _lock = self.lock()?;
        if !self.state_says_trial()? {
            return Ok(false); // committed already, and perhaps a newer install staged since
        }
        write_state(&self.state, &format!("active={}\n", self.slot))?;
        Ok(true)
    }

    /// Serializes installs, across processes too (`serve` and the CLI).
    fn lock(&self) -> Result<Flock<File>, UpdateError> {
        let path = self.state.with_extension("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(format!("open {}", path.display())))?;
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| UpdateError::Io {
            what: "another update is being installed".into(),
            source: std::io::Error::from(errno),
        })
    }
}

/// Where the signed header of `slot`'s image is kept: next to the A/B state.
pub fn head_path(state: &Path, slot: Slot) -> PathBuf {
    state.with_file_name(format!("slot-{slot}.head"))
}

/// The manifest of a bundle's complete head (magic, length, header, signature), once the
/// signature verifies with `key`.
fn verified_manifest(key: &PublicKey, head: &[u8]) -> Result<Manifest, UpdateError> {
    if !head.starts_with(MAGIC) {
        return Err(UpdateError::NotABundle);
    }
    let length = head.get(MAGIC.len()..MAGIC.len() + 2).map(|len| u16::from_le_bytes([len[0], len[1]]) as usize);
    match length {
        Some(length) if length <= MAX_HEADER_LEN && head.len() == head_len(length) => {}
        _ => return Err(UpdateError::Header("the head's length does not match its header".into())),
    }
    let signed = head.len() - SIGNATURE_LEN;
    key.verify(&head[..signed], &head[signed..])?;
    let text =
        std::str::from_utf8(&head[MAGIC.len() + 2..signed]).map_err(|_| UpdateError::Header("not UTF-8".into()))?;
    Manifest::parse(text)
}

/// Checks the root image on `device` against the signed `head` kept for it (what the
/// initramfs runs before booting a slot): the signature with `key`, the board, then the
/// image's SHA-256, read from the device.
pub fn verify_slot(head: &[u8], key: &PublicKey, board: &str, device: &Path) -> Result<Manifest, UpdateError> {
    let manifest = verified_manifest(key, head)?;
    if manifest.release.board != board {
        return Err(UpdateError::WrongBoard { bundle: manifest.release.board, running: board.to_string() });
    }
    let mismatch = |reason: String| UpdateError::SlotMismatch { device: device.to_path_buf(), reason };
    let mut file = File::open(device).map_err(io(format!("open {}", device.display())))?;
    let (sha256, _) = image_digest(&mut file, manifest.size)
        .map_err(|e| mismatch(format!("shorter than the {} signed bytes: {e}", manifest.size)))?;
    if sha256 != manifest.sha256 {
        return Err(mismatch("SHA-256 differs".into()));
    }
    Ok(manifest)
}

/// The SHA-256 of the first `size` bytes of `source`, and whether they carry the ext4 magic
/// where a root image has it; an error if `source` is shorter.
fn image_digest(source: &mut impl Read, size: u64) -> std::io::Result<([u8; 32], bool)> {
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut magic = [0u8; ROOT_MAGIC.len()];
    let mut buffer = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    while done < size {
        let n = buffer.len().min(usize::try_from(size - done).unwrap_or(usize::MAX));
        source.read_exact(&mut buffer[..n])?;
        if done == 0
            && let Some(found) = buffer[..n].get(ROOT_MAGIC_AT..ROOT_MAGIC_AT + ROOT_MAGIC.len())
        {
            magic.copy_from_slice(found);
        }
        hash.update(&buffer[..n]);
        done += n as u64;
    }
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(hash.finish().as_ref());
    Ok((sha256, magic == ROOT_MAGIC))
}

/// Replaces `path` with `bytes`, durably: a fresh file (a temp file or link left there, by
/// a power cut or planted, is removed first, never followed), synced, renamed over it, the
/// directory synced.
fn write_state_bytes(path: &Path, bytes: &[u8]) -> Result<(), UpdateError> {
    let fresh = path.with_extension("new");
    let what = || format!("write {}", path.display());
    let write = || -> std::io::Result<()> {
        match std::fs::remove_file(&fresh) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o644).open(&fresh)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&fresh, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|source| UpdateError::Io { what: what(), source })
}

/// A number for a new install's attempt, never 0 (what a blank boot record reads as): the
/// boot script tries a staged slot only while its record holds another number.
fn new_attempt() -> u32 {
    u32::from_le_bytes(crate::random::bytes()).max(1)
}

/// Replaces the state file with `text`, durably: a power cut leaves the old or the new one.
fn write_state(path: &Path, text: &str) -> Result<(), UpdateError> {
    write_state_bytes(path, text.as_bytes())
}

/// What an install did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[cfg_attr(test, derive(utoipa::ToSchema))]
pub struct Installed {
    /// The slot written and staged for the next boot.
    pub slot: Slot,
    /// The image's version.
    pub version: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A streaming install: bytes of a bundle go in with [`Installer::feed`] as they arrive,
/// and [`Installer::finish`] checks and stages the result.
pub struct Installer {
    key: PublicKey,
    boot: BootInfo,
    head: Vec<u8>,
    body: Option<Body>,
    _lock: Flock<File>,
}

struct Body {
    manifest: Manifest,
    slot: Slot,
    device: File,
    hash: digest::Context,
    /// Image bytes received.
    written: u64,
    /// Bytes waiting for a whole block: the slot is written in aligned blocks, as flash
    /// (and the page cache) want it, not in the sizes that bytes arrive in.
    block: Vec<u8>,
}

/// The size of the blocks written to a slot.
const WRITE_BLOCK: usize = 64 * 1024;

impl Body {
    /// Writes the pending bytes to the slot.
    fn write_block(&mut self) -> Result<(), UpdateError> {
        self.device.write_all(&self.block).map_err(io(format!("write slot {}", self.slot)))?;
        self.block.clear();
        Ok(())
    }
}

impl Installer {
    /// Starts an install into the inactive slot, holding the install lock.
    pub fn new(key: PublicKey, boot: BootInfo) -> Result<Installer, UpdateError> {
        if boot.trial {
            return Err(UpdateError::OnTrial(boot.slot));
        }
        let lock = boot.lock()?;
        Ok(Installer { key, boot, head: Vec::new(), body: None, _lock: lock })
    }

    /// Takes the next bytes of the bundle.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), UpdateError> {
        // The head comes first: the magic and length, then the header and signature.
        while self.body.is_none() {
            let wanted = match self.head.get(MAGIC.len()..MAGIC.len() + 2) {
                Some(len) => head_len(u16::from_le_bytes([len[0], len[1]]) as usize),
                None => MAGIC.len() + 2,
            };
            let take = bytes.len().min(wanted - self.head.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let prefix = self.head.len().min(MAGIC.len());
            if self.head[..prefix] != MAGIC[..prefix] {
                return Err(UpdateError::NotABundle);
            }
            if self.head.len() < wanted {
                return Ok(());
            }
            if wanted == MAGIC.len() + 2 {
                let len = u16::from_le_bytes([self.head[8], self.head[9]]) as usize;
                if len > MAX_HEADER_LEN {
                    return Err(UpdateError::Header(format!("{len} bytes long")));
                }
                continue;
            }
            self.body = Some(self.open_body()?);
        }
        let Some(body) = self.body.as_mut() else { return Ok(()) };
        let room = body.manifest.size - body.written;
        if bytes.len() as u64 > room {
            return Err(UpdateError::TrailingData);
        }
        body.hash.update(bytes);
        body.written += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = bytes.len().min(WRITE_BLOCK - body.block.len());
            body.block.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if body.block.len() == WRITE_BLOCK {
                body.write_block()?;
            }
        }
        Ok(())
    }

    /// Checks the complete head (signature first) and opens the inactive slot.
    fn open_body(&self) -> Result<Body, UpdateError> {
        let manifest = verified_manifest(&self.key, &self.head)?;
        let release = &manifest.release;
        if release.board != self.boot.board {
            return Err(UpdateError::WrongBoard { bundle: release.board.clone(), running: self.boot.board.clone() });
        }
        if release.sequence < self.boot.sequence && !release.allow_downgrade {
            return Err(UpdateError::Downgrade {
                version: release.version.clone(),
                bundle: release.sequence,
                running: self.boot.sequence,
            });
        }
        let slot = self.boot.slot.other();
        // The slot is about to hold unverified bytes: it must not stay staged from an
        // earlier install, or an upload cut short here would be booted; nor keep the signed
        // header of what it held.
        write_state(&self.boot.state, &format!("active={}\n", self.boot.slot))?;
        let head = head_path(&self.boot.state, slot);
        if let Err(error) = std::fs::remove_file(&head)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            return Err(UpdateError::Io { what: format!("remove {}", head.display()), source: error });
        }
        let path = self.boot.device(slot);
        let mut device = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(format!("open slot {slot} ({})", path.display())))?;
        let capacity = device.seek(SeekFrom::End(0)).map_err(io(format!("size of {}", path.display())))?;
        if manifest.size > capacity || manifest.size < (ROOT_MAGIC_AT + ROOT_MAGIC.len()) as u64 {
            return Err(UpdateError::TooBig { size: manifest.size, capacity });
        }
        device.seek(SeekFrom::Start(0)).map_err(io(format!("seek {}", path.display())))?;
        tracing::info!(version = manifest.release.version, %slot, size = manifest.size, "update signature verified; writing");
        Ok(Body {
            manifest,
            slot,
            device,
            hash: digest::Context::new(&digest::SHA256),
            written: 0,
            block: Vec::with_capacity(WRITE_BLOCK),
        })
    }

    /// Checks what was written (hash, read-back, ext4 magic) and stages the slot.
    pub fn finish(self) -> Result<Installed, UpdateError> {
        let Some(mut body) = self.body else {
            return Err(if self.head.len() < MAGIC.len() {
                UpdateError::NotABundle
            } else {
                UpdateError::Header("the bundle ends inside its header".into())
            });
        };
        let slot = body.slot;
        if body.written < body.manifest.size {
            return Err(UpdateError::Truncated { got: body.written, expected: body.manifest.size, slot });
        }
        body.write_block()?;
        if body.hash.finish().as_ref() != body.manifest.sha256 {
            return Err(UpdateError::HashMismatch(slot));
        }
        body.device.sync_all().map_err(io(format!("flush slot {slot}")))?;
        // Read back from the medium, not the page cache: storage that lost the writes must
        // not be booted.
        nix::fcntl::posix_fadvise(&body.device, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED).map_err(
            |errno| UpdateError::Io { what: format!("drop the cache of slot {slot}"), source: errno.into() },
        )?;
        body.device.seek(SeekFrom::Start(0)).map_err(io(format!("seek slot {slot}")))?;
        let (sha256, is_root) =
            image_digest(&mut body.device, body.manifest.size).map_err(io(format!("read back slot {slot}")))?;
        if !is_root {
            return Err(UpdateError::NotARoot(slot));
        }
        if sha256 != body.manifest.sha256 {
            return Err(UpdateError::ReadBack(slot));
        }
        // The signed header goes next to the state, for the initramfs to check the slot
        // against before it boots it.
        write_state_bytes(&head_path(&self.boot.state, slot), &self.head)?;
        let attempt = new_attempt();
        write_state(&self.boot.state, &format!("active={}\nnext={slot}\nattempt={attempt:08x}\n", self.boot.slot))?;
        tracing::info!(version = body.manifest.release.version, %slot, "update installed; it starts at the next boot");
        Ok(Installed { slot, version: body.manifest.release.version, size: body.manifest.size })
    }
}

/// The image's release (`VERSION=` of /etc/provbox-release), if running from the image.
pub fn release() -> Option<String> {
    let text = std::fs::read_to_string(RELEASE_FILE).ok()?;
    text.lines().find_map(|line| line.strip_prefix("VERSION=")).map(|v| v.trim_matches('"').to_string())
}

/// The version `provbox --version` prints: the binary's, and the image's release when running
/// from the firmware image (ending in `-devkey` when signed with the development key).
pub fn version_text() -> String {
    match release() {
        Some(image) => format!("{} (image {image})", env!("CARGO_PKG_VERSION")),
        None => env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Whether the image release names the development signing key (scripts/build-image).
pub fn is_devkey_release(release: &str) -> bool {
    release.ends_with("-devkey")
}

/// Updates as the running server offers them: the slots, the install service, and the
/// reboot request.
#[derive(Debug)]
pub struct Updates {
    /// The slots as this boot found them.
    boot: BootInfo,
    /// The install service's socket ([`service`]): the server itself writes no slot.
    pub installer: PathBuf,
    /// Notified when an installed update wants the reboot.
    pub reboot: tokio::sync::Notify,
    /// Set once a trial slot has been committed.
    committed: std::sync::atomic::AtomicBool,
    /// Set once an install succeeded: the reboot into it is under way.
    staged: std::sync::atomic::AtomicBool,
}

impl Updates {
    /// Updates for `boot`, installed through the service at `installer`.
    pub fn new(boot: BootInfo, installer: PathBuf) -> Updates {
        Updates {
            boot,
            installer,
            reboot: tokio::sync::Notify::new(),
            committed: Default::default(),
            staged: Default::default(),
        }
    }

    /// The slots now: a committed trial is no longer one.
    pub fn current(&self) -> BootInfo {
        let mut boot = self.boot.clone();
        boot.trial &= !self.committed.load(std::sync::atomic::Ordering::SeqCst);
        boot
    }

    /// Notes that an install succeeded and the reboot into it is under way.
    pub fn mark_staged(&self) {
        self.staged.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether an install succeeded and the reboot into it is under way.
    pub fn is_staged(&self) -> bool {
        self.staged.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Has the install service commit the running slot if it is on trial; true if it was.
    pub fn commit(&self) -> Result<bool, UpdateError> {
        if !self.current().trial {
            return Ok(false);
        }
        let committed = service::commit(&self.installer)?;
        if committed {
            self.committed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(committed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A board with file-backed slots, a signing key and a root image.
    struct Bench {
        dir: tempfile::TempDir,
        key: PathBuf,
        public: PublicKey,
        image: PathBuf,
    }

    impl Bench {
        fn new() -> Bench {
            let dir = tempfile::tempdir().unwrap();
            let key = dir.path().join("signing.key");
            let public = PublicKey::load(&generate_key(&key).unwrap()).unwrap();
            for slot in ["a", "b"] {
                std::fs::write(dir.path().join(slot), vec![0u8; 256 * 1024]).unwrap();
            }
            std::fs::write(dir.path().join("state"), "active=a\n").unwrap();
            let mut image: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
            image[ROOT_MAGIC_AT..ROOT_MAGIC_AT + 2].copy_from_slice(&ROOT_MAGIC);
            let image_path = dir.path().join("root.img");
            std::fs::write(&image_path, image).unwrap();
            std::fs::write(
                dir.path().join("boot"),
                format!(
                    "board=qemu-virt\nslot=a\ntrial=0\nrolled_back=\nslot_a={0}/a\nslot_b={0}/b\nstate={0}/state\nsequence=100\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            Bench { dir, key, public, image: image_path }
        }

        fn boot(&self) -> BootInfo {
            BootInfo::load(&self.dir.path().join("boot")).unwrap()
        }

        /// As the initramfs leaves it when the boot script tries staged slot b.
        fn boot_slot_b_on_trial(&self) {
            let boot_path = self.dir.path().join("boot");
            let text = std::fs::read_to_string(&boot_path).unwrap().replace("slot=a\ntrial=0", "slot=b\ntrial=1");
            std::fs::write(&boot_path, text).unwrap();
            std::fs::write(self.dir.path().join("state"), "active=a\nnext=b\nattempt=0000abcd\n").unwrap();
        }

        /// A bundle of the same release as the running image (sequence 100).
        fn bundle(&self, board: &str) -> Vec<u8> {
            self.release_bundle(board, 100, false)
        }

        fn release_bundle(&self, board: &str, sequence: u64, allow_downgrade: bool) -> Vec<u8> {
            let out = self.dir.path().join("bundle");
            let version = if sequence == 100 { "2.0".to_string() } else { format!("r{sequence}") };
            let release = Release { board: board.into(), version, sequence, allow_downgrade };
            sign(&self.key, &release, &self.image, &out).unwrap();
            std::fs::read(out).unwrap()
        }

        fn install(&self, bundle: &[u8], chunk: usize) -> Result<Installed, UpdateError> {
            let mut installer = Installer::new(self.public.clone(), self.boot())?;
            for piece in bundle.chunks(chunk.max(1)) {
                installer.feed(piece)?;
            }
            installer.finish()
        }

        fn state(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("state")).unwrap()
        }

        /// The state without its attempt number, and that number.
        fn staged(&self) -> (String, String) {
            let state = self.state();
            let (attempt, rest): (Vec<&str>, Vec<&str>) = state.lines().partition(|l| l.starts_with("attempt="));
            (rest.iter().map(|line| format!("{line}\n")).collect(), attempt.concat())
        }

        fn slot_b(&self) -> Vec<u8> {
            std::fs::read(self.dir.path().join("b")).unwrap()
        }
    }

    #[test]
    fn an_installed_slot_verifies_against_its_kept_header_until_a_byte_changes() {
        let bench = Bench::new();
        let installed = bench.install(&bench.bundle("qemu-virt"), 4096).unwrap();
        let head = std::fs::read(head_path(&bench.dir.path().join("state"), installed.slot)).unwrap();
        let slot_b = bench.dir.path().join("b");
        let manifest = verify_slot(&head, &bench.public, "qemu-virt", &slot_b).unwrap();
        assert_eq!(manifest.release.version, "2.0");

        // One changed byte in the image: refused.
        let mut bytes = std::fs::read(&slot_b).unwrap();
        bytes[50_000] ^= 1;
        std::fs::write(&slot_b, &bytes).unwrap();
        let error = verify_slot(&head, &bench.public, "qemu-virt", &slot_b).unwrap_err();
        assert!(matches!(error, UpdateError::SlotMismatch { .. }), "{error}");
        bytes[50_000] ^= 1;
        std::fs::write(&slot_b, &bytes).unwrap();
        verify_slot(&head, &bench.public, "qemu-virt", &slot_b).unwrap();

        // A header with a changed byte, another key's, another board, a device too short.
        let mut forged = head.clone();
        let at = forged.len() - SIGNATURE_LEN - 3;
        forged[at] ^= 1;
        assert!(verify_slot(&forged, &bench.public, "qemu-virt", &slot_b).is_err());
        let other = Bench::new();
        assert!(matches!(verify_slot(&head, &other.public, "qemu-virt", &slot_b), Err(UpdateError::BadSignature)));
        assert!(matches!(verify_slot(&head, &bench.public, "rpi4", &slot_b), Err(UpdateError::WrongBoard { .. })));
        std::fs::write(&slot_b, &bytes[..1000]).unwrap();
        assert!(matches!(
            verify_slot(&head, &bench.public, "qemu-virt", &slot_b),
            Err(UpdateError::SlotMismatch { .. })
        ));
        assert!(matches!(verify_slot(b"PBXUPD01", &bench.public, "qemu-virt", &slot_b), Err(UpdateError::Header(_))));
    }

    #[test]
    fn an_install_removes_the_header_of_what_the_slot_held() {
        let bench = Bench::new();
        let head = head_path(&bench.dir.path().join("state"), Slot::B);
        bench.install(&bench.bundle("qemu-virt"), 4096).unwrap();
        assert!(head.exists());
        std::fs::write(bench.dir.path().join("state"), "active=a\n").unwrap();
        // An install cut short after the signature: the old header is gone with the old image.
        let bundle = bench.bundle("qemu-virt");
        let mut installer = Installer::new(bench.public.clone(), bench.boot()).unwrap();
        installer.feed(&bundle[..bundle.len() / 2]).unwrap();
        drop(installer);
        assert!(!head.exists(), "the slot's old header outlived its image");
    }

    #[test]
    fn older_releases_are_refused_unless_signed_as_a_downgrade() {
        let bench = Bench::new();
        let untouched = bench.slot_b();
        let error = bench.install(&bench.release_bundle("qemu-virt", 99, false), 4096).unwrap_err();
        assert!(matches!(error, UpdateError::Downgrade { bundle: 99, running: 100, .. }), "{error}");
        assert!(error.to_string().contains("--allow-downgrade"), "{error}");
        assert_eq!(bench.state(), "active=a\n");
        assert_eq!(bench.slot_b(), untouched, "an older release wrote to the slot");

        let installed = bench.install(&bench.release_bundle("qemu-virt", 99, true), 4096).unwrap();
        assert_eq!((installed.slot, installed.version.as_str()), (Slot::B, "r99"));
        let installed = bench.install(&bench.release_bundle("qemu-virt", 101, false), 4096).unwrap();
        assert_eq!(installed.version, "r101");
    }

    #[test]
    fn the_release_survives_the_signed_header() {
        let release =
            Release { board: "rpi4".into(), version: "1.2-x".into(), sequence: 1_795_000_000, allow_downgrade: true };
        let manifest = Manifest { release: release.clone(), size: 42, sha256: [7; 32] };
        assert_eq!(Manifest::parse(&manifest.encode()).unwrap(), manifest);
        // A header from before sequences: release 0, no downgrade.
        let old = "board=rpi4\nversion=0.9\nsize=42\nsha256=0707070707070707070707070707070707070707070707070707070707070707\n";
        let parsed = Manifest::parse(old).unwrap().release;
        assert_eq!((parsed.sequence, parsed.allow_downgrade), (0, false));
    }

    #[test]
    fn a_signed_bundle_is_written_to_the_inactive_slot_and_staged() {
        let bench = Bench::new();
        let bundle = bench.bundle("qemu-virt");
        let mut attempts = std::collections::HashSet::new();
        for chunk in [1, 7, 4096, bundle.len()] {
            std::fs::write(bench.dir.path().join("state"), "active=a\n").unwrap();
            let installed = bench.install(&bundle, chunk).unwrap();
            assert_eq!((installed.slot, installed.version.as_str()), (Slot::B, "2.0"));
            let (state, attempt) = bench.staged();
            assert_eq!(state, "active=a\nnext=b\n");
            // Eight hex digits (the boot script reads them as one 32-bit word), new each time.
            let digits = attempt.strip_prefix("attempt=").unwrap();
            assert!(digits.len() == 8 && u32::from_str_radix(digits, 16).unwrap() != 0, "{attempt}");
            assert!(attempts.insert(attempt), "the attempt number repeated");
            let image = std::fs::read(&bench.image).unwrap();
            assert_eq!(&bench.slot_b()[..image.len()], &image[..]);
        }
        assert_eq!(std::fs::read(bench.dir.path().join("a")).unwrap(), vec![0u8; 256 * 1024], "slot a untouched");
    }

    #[test]
    fn bad_bundles_are_refused_and_nothing_is_switched() {
        let bench = Bench::new();
        let good = bench.bundle("qemu-virt");
        let head = good.len() - std::fs::metadata(&bench.image).unwrap().len() as usize;

        let mut forged_signature = good.clone();
        forged_signature[head - 1] ^= 1;
        let mut tampered_image = good.clone();
        tampered_image[head + 5000] ^= 0x40;
        let mut tampered_header = good.clone();
        tampered_header[12] ^= 1;
        let mut longer = good.clone();
        longer.push(0);
        let other_key = Bench::new();
        let foreign = other_key.bundle("qemu-virt");
        type Expected = fn(&UpdateError) -> bool;
        let cases: Vec<(&str, Vec<u8>, Expected)> = vec![
            ("forged signature", forged_signature, |e| matches!(e, UpdateError::BadSignature)),
            ("signed by another key", foreign, |e| matches!(e, UpdateError::BadSignature)),
            ("changed header", tampered_header, |e| matches!(e, UpdateError::BadSignature)),
            ("changed image", tampered_image, |e| matches!(e, UpdateError::HashMismatch(Slot::B))),
            ("another board", bench.bundle("rpi4"), |e| matches!(e, UpdateError::WrongBoard { .. })),
            ("truncated image", good[..good.len() - 10].to_vec(), |e| matches!(e, UpdateError::Truncated { .. })),
            ("cut in the header", good[..20].to_vec(), |e| matches!(e, UpdateError::Header(_))),
            ("trailing bytes", longer, |e| matches!(e, UpdateError::TrailingData)),
            ("not a bundle", b"hsqs is a squashfs, not a bundle".to_vec(), |e| matches!(e, UpdateError::NotABundle)),
            ("empty", Vec::new(), |e| matches!(e, UpdateError::NotABundle)),
        ];
        for (what, bundle, expected) in cases {
            let before = bench.slot_b();
            match bench.install(&bundle, 4096) {
                Err(error) => assert!(expected(&error), "{what}: {error}"),
                Ok(_) => panic!("{what}: accepted"),
            }
            assert_eq!(bench.state(), "active=a\n", "{what}: state changed");
            if !what.starts_with("changed image") && !what.starts_with("truncated") && what != "trailing bytes" {
                assert_eq!(bench.slot_b(), before, "{what}: slot written before the signature was checked");
            }
        }
    }

    #[test]
    fn an_install_cut_short_unstages_an_earlier_one() {
        let bench = Bench::new();
        let good = bench.bundle("qemu-virt");
        bench.install(&good, 4096).unwrap();
        assert_eq!(bench.staged().0, "active=a\nnext=b\n");
        // The same signed head, then other bytes, then the upload breaks off.
        let head = good.len() - std::fs::metadata(&bench.image).unwrap().len() as usize;
        let mut forged = good[..head].to_vec();
        forged.extend_from_slice(b"hsqsEVIL-UNSIGNED-ROOT");
        let error = bench.install(&forged, 4096).unwrap_err();
        assert!(matches!(error, UpdateError::Truncated { .. }), "{error}");
        assert_eq!(bench.state(), "active=a\n", "a half-written slot must not stay staged");
    }

    #[test]
    fn a_commit_happens_once_and_never_clobbers_a_later_staging() {
        let bench = Bench::new();
        bench.boot_slot_b_on_trial();
        let boot = bench.boot();
        assert!(boot.trial);
        assert!(boot.commit().unwrap());
        // A restarted provbox reads the same boot information but is no longer on trial.
        assert!(!bench.boot().trial);
        std::fs::write(bench.dir.path().join("state"), "active=b\nnext=a\n").unwrap();
        assert!(!boot.commit().unwrap(), "the stale trial view must not commit again");
        assert_eq!(bench.state(), "active=b\nnext=a\n");
    }

    #[test]
    fn a_signed_image_that_is_not_an_ext4_root_is_refused() {
        let bench = Bench::new();
        std::fs::write(&bench.image, [b"#!/bin/sh\necho not a root filesystem\n".as_slice(), &[0u8; 2048]].concat())
            .unwrap();
        let error = bench.install(&bench.bundle("qemu-virt"), 4096).unwrap_err();
        assert!(matches!(error, UpdateError::NotARoot(Slot::B)), "{error}");
        assert_eq!(bench.state(), "active=a\n");
    }

    #[test]
    fn trial_slots_commit_and_refuse_updates_until_then() {
        let bench = Bench::new();
        bench.boot_slot_b_on_trial();
        let error = bench.install(&bench.bundle("qemu-virt"), 4096).unwrap_err();
        assert!(matches!(error, UpdateError::OnTrial(Slot::B)), "{error}");
        assert!(bench.boot().commit().unwrap());
        assert_eq!(bench.state(), "active=b\n");
    }

    #[test]
    fn malformed_boot_information_and_keys_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot");
        for text in ["", "board=x\nslot=c\n", "board=x\nslot=a\nslot_a=/dev/vda2\n"] {
            std::fs::write(&path, text).unwrap();
            assert!(matches!(BootInfo::load(&path), Err(UpdateError::BootInfo { .. })), "{text:?}");
        }
        std::fs::write(&path, "zz".repeat(32)).unwrap();
        assert!(matches!(PublicKey::load(&path), Err(UpdateError::Key { .. })));
        let header = "board=x\nversion=1\nsize=12\nsha256=00\n";
        assert!(matches!(Manifest::parse(header), Err(UpdateError::Header(_))));
    }
}
