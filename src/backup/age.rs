//! The age file format, version 1 (<https://github.com/C2SP/C2SP/blob/main/age.md>), with
//! its two native recipient types: a passphrase (`scrypt`, for backups a person makes) and an
//! X25519 public key (`age1...`, for the scheduled copies the appliance makes unattended,
//! which then needs no secret of its own). A backup opens with the standard `age -d`, and a
//! file made by `age -p` or `age -r` restores.
//!
//! The format is small enough to write here on ring's ChaCha20-Poly1305, HKDF and HMAC, the
//! `scrypt` crate and `x25519-dalek`; the `age` crate would bring its localisation framework
//! into a binary with a size budget. `tests/backup.rs` checks every direction against
//! Debian's `age` and `age-keygen`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ring::aead::{CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::{hkdf, hmac};

use crate::random;

/// The first line of every age file.
const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
/// The label mixed into the scrypt salt.
const SCRYPT_LABEL: &[u8] = b"age-encryption.org/v1/scrypt";
/// The HKDF label of X25519 recipients.
const X25519_LABEL: &[u8] = b"age-encryption.org/v1/X25519";
/// Plaintext bytes per payload chunk.
const CHUNK: usize = 64 * 1024;
/// ChaCha20-Poly1305's tag length.
const TAG: usize = 16;
/// The work factor provbox encrypts with: scrypt N = 2^16 (64 MiB, well under a second on a
/// Raspberry Pi 3).
pub const WORK_FACTOR: u8 = 16;
/// The highest work factor accepted when decrypting: `age -p`'s 18, which takes 256 MiB;
/// 19 would take 512 MiB, half of a Pi 3.
const MAX_WORK_FACTOR: u8 = 18;

/// Why a file does not decrypt.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AgeError {
    /// Not the age format at all.
    #[error("not an age-encrypted file (a provbox backup starts with \"age-encryption.org/v1\")")]
    NotAge,
    /// The ASCII-armoured variant.
    #[error(
        "this age file is ASCII-armoured: turn it back into a binary file with `age -d` and `age -p`, or use the file provbox made"
    )]
    Armored,
    /// Encrypted to a key, not a passphrase.
    #[error("this age file is encrypted to a key ({0}), not with a passphrase")]
    NotPassphrase(String),
    /// A work factor that would take too much memory here.
    #[error("the file's scrypt work factor {0} needs more memory than this appliance has (at most {MAX_WORK_FACTOR})")]
    WorkFactor(u8),
    /// The passphrase does not open it.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// Encrypted with a passphrase, but an identity was given.
    #[error("this age file is encrypted with a passphrase, not to a key: give its passphrase")]
    NotIdentity,
    /// None of the file's X25519 stanzas is for this identity.
    #[error("this age file is not encrypted to the identity given (whose public key is {0})")]
    WrongIdentity(String),
    /// The header does not follow the format.
    #[error("the age header is malformed: {0}")]
    Header(&'static str),
    /// The header's MAC does not match: it was changed.
    #[error("the age header was changed after encryption (its MAC does not match)")]
    HeaderMac,
    /// The payload ends early.
    #[error("the file is truncated: its last part is missing")]
    Truncated,
    /// A payload chunk does not authenticate.
    #[error("the file is damaged, truncated or was changed (in its content from byte {0} on)")]
    Damaged(usize),
}

/// A public key that files are encrypted to: `age1...`, as `age-keygen` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipient([u8; 32]);

/// The private key that opens files encrypted to its [`Recipient`]:
/// `AGE-SECRET-KEY-1...`, as `age-keygen` writes it.
pub struct Identity(x25519_dalek::StaticSecret);

/// What opens a file: its passphrase, or the identity it was encrypted to.
#[derive(Clone, Copy)]
pub enum Key<'a> {
    /// The passphrase (an `scrypt` stanza).
    Passphrase(&'a str),
    /// An X25519 identity (an `X25519` stanza).
    Identity(&'a Identity),
}

impl std::str::FromStr for Recipient {
    type Err = String;

    fn from_str(text: &str) -> Result<Recipient, String> {
        match bech32::decode(text.trim()) {
            Some((hrp, data)) if hrp == "age" => data.try_into().map(Recipient).map_err(|_| "not 32 bytes".into()),
            _ => Err("not an age public key (age1..., as age-keygen prints it)".into()),
        }
    }
}

impl std::fmt::Display for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&bech32::encode("age", &self.0))
    }
}

impl Identity {
    /// Reads an identity file: the first `AGE-SECRET-KEY-1...` line; `#` comments allowed.
    pub fn from_file_text(text: &str) -> Result<Identity, String> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with("AGE-SECRET-KEY-1"))
            .ok_or("no AGE-SECRET-KEY-1... line (an age identity, as age-keygen writes it)")?;
        match bech32::decode(line) {
            Some((hrp, data)) if hrp == "age-secret-key-" => {
                let secret: [u8; 32] = data.try_into().map_err(|_| "the identity is not 32 bytes")?;
                Ok(Identity(x25519_dalek::StaticSecret::from(secret)))
            }
            _ => Err("the AGE-SECRET-KEY-1... line does not decode (a typo, or cut short?)".into()),
        }
    }

    /// The public key that files are encrypted to for this identity.
    pub fn recipient(&self) -> Recipient {
        Recipient(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }
}

/// Encrypts `plaintext` with `passphrase` as an age file.
pub fn encrypt(plaintext: &[u8], passphrase: &str) -> Vec<u8> {
    let file_key: [u8; 16] = random::bytes();
    let salt: [u8; 16] = random::bytes();
    let stanza = Stanza {
        arguments: vec!["scrypt".into(), STANDARD_NO_PAD.encode(salt), WORK_FACTOR.to_string()],
        body: seal_whole(&scrypt_key(passphrase, &salt, WORK_FACTOR), &file_key),
    };
    seal_file(plaintext, &file_key, &stanza)
}

/// Encrypts `plaintext` to `recipient` as an age file: no secret is needed to make it, and
/// only the recipient's identity opens it.
pub fn encrypt_to(plaintext: &[u8], recipient: &Recipient) -> Vec<u8> {
    let file_key: [u8; 16] = random::bytes();
    let ephemeral = x25519_dalek::StaticSecret::from(random::bytes::<32>());
    let share = x25519_dalek::PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&x25519_dalek::PublicKey::from(recipient.0));
    let stanza = Stanza {
        arguments: vec!["X25519".into(), STANDARD_NO_PAD.encode(share)],
        body: seal_whole(&x25519_wrap_key(shared.as_bytes(), &share, &recipient.0), &file_key),
    };
    seal_file(plaintext, &file_key, &stanza)
}

/// One recipient stanza of the header.
struct Stanza {
    /// The type and its arguments.
    arguments: Vec<String>,
    /// The body, decoded.
    body: Vec<u8>,
}

/// The header with `stanza`, its MAC, and the payload.
fn seal_file(plaintext: &[u8], file_key: &[u8; 16], stanza: &Stanza) -> Vec<u8> {
    let mut out = Vec::with_capacity(plaintext.len() + plaintext.len() / CHUNK * TAG + 256);
    out.extend_from_slice(VERSION_LINE);
    out.extend_from_slice(format!("-> {}\n", stanza.arguments.join(" ")).as_bytes());
    // 32 bytes are 43 base64 characters: one body line, shorter than the 64-column wrap.
    out.extend_from_slice(STANDARD_NO_PAD.encode(&stanza.body).as_bytes());
    out.extend_from_slice(b"\n---");
    let mac = hmac::sign(&header_mac_key(file_key), &out);
    out.extend_from_slice(format!(" {}\n", STANDARD_NO_PAD.encode(mac.as_ref())).as_bytes());

    let nonce: [u8; 16] = random::bytes();
    out.extend_from_slice(&nonce);
    let key = payload_key(file_key, &nonce);
    let chunks = plaintext.len().div_ceil(CHUNK).max(1);
    for (index, chunk) in plaintext.chunks(CHUNK).chain(plaintext.is_empty().then_some(&[][..])).enumerate() {
        let mut sealed = chunk.to_vec();
        let tag = key
            .seal_in_place_separate_tag(
                chunk_nonce(index as u64, index + 1 == chunks),
                ring::aead::Aad::empty(),
                &mut sealed,
            )
            // A 32-byte key and a chunk far below ChaCha20's 256 GiB limit: sealing cannot fail.
            .expect("sealing a payload chunk");
        out.extend_from_slice(&sealed);
        out.extend_from_slice(tag.as_ref());
    }
    out
}

/// A parsed header: its stanzas, its MAC, how many bytes it covers, and what follows.
struct Header<'a> {
    stanzas: Vec<Stanza>,
    mac: [u8; 32],
    /// Bytes from the start through the footer's `---`: what the MAC covers.
    covered: usize,
    payload: &'a [u8],
}

/// Reads the header of an age file (binary, not armoured).
fn parse_header(file: &[u8]) -> Result<Header<'_>, AgeError> {
    if file.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----") {
        return Err(AgeError::Armored);
    }
    let Some(mut rest) = file.strip_prefix(VERSION_LINE) else { return Err(AgeError::NotAge) };
    let mut line = || -> Result<&[u8], AgeError> {
        let end = rest.iter().position(|&b| b == b'\n').ok_or(AgeError::Header("a line has no end"))?;
        let (text, tail) = rest.split_at(end);
        rest = &tail[1..];
        Ok(text)
    };
    let mut stanzas = Vec::new();
    let mut current = line()?;
    loop {
        if let Some(mac) = current.strip_prefix(b"--- ") {
            let mac = decode_exact_bytes(mac).ok_or(AgeError::Header("the header MAC is not 32 bytes of base64"))?;
            if stanzas.is_empty() {
                return Err(AgeError::Header("no recipient stanza"));
            }
            let covered = file.len() - rest.len() - current.len() - 1 + 3;
            return Ok(Header { stanzas, mac, covered, payload: rest });
        }
        let arguments =
            current.strip_prefix(b"-> ").ok_or(AgeError::Header("a line is neither a stanza nor the end"))?;
        let arguments = std::str::from_utf8(arguments).map_err(|_| AgeError::Header("a stanza is not text"))?;
        let arguments: Vec<String> = arguments.split(' ').map(str::to_string).collect();
        if arguments.iter().any(String::is_empty) || stanzas.len() == MAX_STANZAS {
            return Err(AgeError::Header("a stanza is malformed, or there are too many"));
        }
        // The body: full 64-column lines, ended by a shorter one (possibly empty).
        let mut body = Vec::new();
        loop {
            let text = line()?;
            if text.len() > 64 || body.len() > MAX_STANZA_BODY {
                return Err(AgeError::Header("a stanza body line is too long"));
            }
            body.extend_from_slice(text);
            if text.len() < 64 {
                break;
            }
        }
        let body = STANDARD_NO_PAD.decode(&body).map_err(|_| AgeError::Header("a stanza body is not base64"))?;
        stanzas.push(Stanza { arguments, body });
        current = line()?;
    }
}

/// Stanzas read at most: a file for many recipients has one each.
const MAX_STANZAS: usize = 64;
/// Longest stanza body read (base64 characters).
const MAX_STANZA_BODY: usize = 4096;

/// Decrypts an age file with `key`.
pub fn decrypt(file: &[u8], key: Key<'_>) -> Result<Vec<u8>, AgeError> {
    let header = parse_header(file)?;
    let file_key = unwrap_file_key(&header.stanzas, key)?;
    hmac::verify(&header_mac_key(&file_key), &file[..header.covered], &header.mac).map_err(|_| AgeError::HeaderMac)?;
    open_payload(header.payload, &file_key)
}

/// The file key, from the stanza `key` opens.
fn unwrap_file_key(stanzas: &[Stanza], key: Key<'_>) -> Result<[u8; 16], AgeError> {
    let scrypt = stanzas.iter().find(|stanza| stanza.arguments[0] == "scrypt");
    match (key, scrypt) {
        (Key::Passphrase(passphrase), Some(stanza)) => {
            if stanzas.len() > 1 {
                return Err(AgeError::Header("a passphrase file has exactly one recipient stanza"));
            }
            let [_, salt, work_factor] = &stanza.arguments[..] else {
                return Err(AgeError::Header("the scrypt stanza needs a salt and a work factor"));
            };
            let salt: [u8; 16] =
                decode_exact(salt).ok_or(AgeError::Header("the scrypt salt is not 16 bytes of base64"))?;
            if work_factor.starts_with('0') || !work_factor.bytes().all(|b| b.is_ascii_digit()) {
                return Err(AgeError::Header("the scrypt work factor is not a decimal number"));
            }
            let work_factor: u8 =
                work_factor.parse().map_err(|_| AgeError::Header("the scrypt work factor is out of range"))?;
            if work_factor == 0 || work_factor > MAX_WORK_FACTOR {
                return Err(AgeError::WorkFactor(work_factor));
            }
            open_whole(&scrypt_key(passphrase, &salt, work_factor), &stanza.body)
                .and_then(|key| key.try_into().ok())
                .ok_or(AgeError::WrongPassphrase)
        }
        (Key::Passphrase(_), None) => Err(AgeError::NotPassphrase(stanzas[0].arguments[0].chars().take(32).collect())),
        (Key::Identity(_), Some(_)) => Err(AgeError::NotIdentity),
        (Key::Identity(identity), None) => {
            let recipient = identity.recipient();
            for stanza in stanzas.iter().filter(|stanza| stanza.arguments[0] == "X25519") {
                let share: [u8; 32] = match &stanza.arguments[..] {
                    [_, share] => decode_exact(share).ok_or(AgeError::Header("an X25519 share is not 32 bytes"))?,
                    _ => return Err(AgeError::Header("an X25519 stanza has one argument")),
                };
                let shared = identity.0.diffie_hellman(&x25519_dalek::PublicKey::from(share));
                if shared.as_bytes() == &[0; 32] {
                    return Err(AgeError::Header("an X25519 share is a low-order point"));
                }
                let wrap_key = x25519_wrap_key(shared.as_bytes(), &share, &recipient.0);
                if let Some(file_key) = open_whole(&wrap_key, &stanza.body).and_then(|key| key.try_into().ok()) {
                    return Ok(file_key);
                }
            }
            Err(AgeError::WrongIdentity(recipient.to_string()))
        }
    }
}

/// The payload: STREAM chunks of ChaCha20-Poly1305 under the payload key.
fn open_payload(payload: &[u8], file_key: &[u8; 16]) -> Result<Vec<u8>, AgeError> {
    if payload.len() < 16 {
        return Err(AgeError::Truncated);
    }
    let (nonce, mut payload) = payload.split_at(16);
    let key = payload_key(file_key, nonce);
    let mut plaintext = Vec::with_capacity(payload.len());
    let mut index = 0u64;
    loop {
        let take = payload.len().min(CHUNK + TAG);
        let (sealed, tail) = payload.split_at(take);
        if sealed.len() < TAG {
            return Err(AgeError::Truncated);
        }
        let mut buffer = sealed.to_vec();
        let last = tail.is_empty();
        let opened = match key.open_in_place(chunk_nonce(index, last), ring::aead::Aad::empty(), &mut buffer) {
            Ok(opened) => opened,
            // A full chunk that would have been the last but is not marked so: the rest is gone.
            Err(_) if last && key_opens_as_middle(&key, index, sealed) => return Err(AgeError::Truncated),
            Err(_) => return Err(AgeError::Damaged(plaintext.len())),
        };
        if opened.is_empty() && (index > 0 || !last) {
            return Err(AgeError::Damaged(plaintext.len()));
        }
        plaintext.extend_from_slice(opened);
        payload = tail;
        index += 1;
        if last {
            return Ok(plaintext);
        }
    }
}

/// The key that wraps the file key for an X25519 recipient.
fn x25519_wrap_key(shared: &[u8; 32], share: &[u8; 32], recipient: &[u8; 32]) -> [u8; 32] {
    let mut salt = share.to_vec();
    salt.extend_from_slice(recipient);
    hkdf_sha256(shared, &salt, X25519_LABEL)
}

/// Whether `sealed` authenticates as a non-final chunk: a file cut at a chunk boundary.
fn key_opens_as_middle(key: &LessSafeKey, index: u64, sealed: &[u8]) -> bool {
    let mut buffer = sealed.to_vec();
    key.open_in_place(chunk_nonce(index, false), ring::aead::Aad::empty(), &mut buffer).is_ok()
}

/// The scrypt-derived wrapping key for `passphrase`.
fn scrypt_key(passphrase: &str, salt: &[u8; 16], work_factor: u8) -> [u8; 32] {
    let mut labelled = SCRYPT_LABEL.to_vec();
    labelled.extend_from_slice(salt);
    // r = 8 and p = 1 are the format's; a work factor in 1..=19 is a valid log2(N).
    let params = scrypt::Params::new(work_factor, 8, 1, 32).expect("scrypt parameters within range");
    let mut key = [0u8; 32];
    scrypt::scrypt(passphrase.as_bytes(), &labelled, &params, &mut key).expect("a 32-byte scrypt output");
    key
}

/// ChaCha20-Poly1305 with a zero nonce, as age wraps file keys.
fn seal_whole(key: &[u8; 32], plaintext: &[u8]) -> Vec<u8> {
    let key = aead_key(key);
    let mut sealed = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key([0; 12]), ring::aead::Aad::empty(), &mut sealed)
        // A 32-byte key and a 16-byte plaintext: sealing cannot fail.
        .expect("wrapping the file key");
    sealed
}

/// Opens what [`seal_whole`] sealed.
fn open_whole(key: &[u8; 32], sealed: &[u8]) -> Option<Vec<u8>> {
    let key = aead_key(key);
    let mut buffer = sealed.to_vec();
    let opened =
        key.open_in_place(Nonce::assume_unique_for_key([0; 12]), ring::aead::Aad::empty(), &mut buffer).ok()?;
    Some(opened.to_vec())
}

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    // ChaCha20-Poly1305 takes any 32-byte key.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte ChaCha20-Poly1305 key"))
}

/// The payload key: HKDF-SHA-256 of the file key, salted with the payload nonce.
fn payload_key(file_key: &[u8; 16], nonce: &[u8]) -> LessSafeKey {
    aead_key(&hkdf_sha256(file_key, nonce, b"payload"))
}

/// The header's HMAC key: HKDF-SHA-256 of the file key with an empty salt.
fn header_mac_key(file_key: &[u8; 16]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, &hkdf_sha256(file_key, &[], b"header"))
}

fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let mut out = [0u8; 32];
    let info = [info];
    // 32 bytes is far below HKDF-SHA-256's 8,160-byte limit: expand and fill cannot fail.
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&info, Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes of HKDF-SHA-256");
    out
}

/// The 12-byte nonce of payload chunk `index`: an 11-byte big-endian counter and a flag
/// byte that marks the last chunk.
fn chunk_nonce(index: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    Nonce::assume_unique_for_key(nonce)
}

/// Canonical unpadded base64 of exactly `N` bytes.
fn decode_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    decode_exact_bytes(text.as_bytes())
}

fn decode_exact_bytes<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    STANDARD_NO_PAD.decode(text).ok()?.try_into().ok()
}

/// Bech32 (BIP 173), the encoding of age's keys, without BIP 173's 90-character limit (as
/// age does).
mod bech32 {
    const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    const GENERATOR: [u32; 5] = [0x3b6a_57b2, 0x2650_8e6d, 0x1ea1_19fa, 0x3d42_33dd, 0x2a14_62b3];

    fn polymod(values: impl Iterator<Item = u8>) -> u32 {
        values.fold(1u32, |check, value| {
            let top = check >> 25;
            let check = ((check & 0x01ff_ffff) << 5) ^ u32::from(value);
            (0..5).filter(|i| (top >> i) & 1 == 1).fold(check, |check, i| check ^ GENERATOR[i])
        })
    }

    fn expanded(hrp: &str) -> impl Iterator<Item = u8> + '_ {
        hrp.bytes().map(|b| b >> 5).chain([0]).chain(hrp.bytes().map(|b| b & 31))
    }

    /// Regroups bits: `from`-bit groups into `to`-bit groups, padding the last with zeros
    /// when `pad`; None when unpadded leftovers are not zero bits.
    fn regroup(data: &[u8], from: u32, to: u32, pad: bool) -> Option<Vec<u8>> {
        let (mut accumulator, mut bits, mut out) = (0u32, 0u32, Vec::new());
        for &value in data {
            accumulator = (accumulator << from) | u32::from(value);
            bits += from;
            while bits >= to {
                bits -= to;
                out.push(((accumulator >> bits) & ((1 << to) - 1)) as u8);
            }
        }
        if pad && bits > 0 {
            out.push(((accumulator << (to - bits)) & ((1 << to) - 1)) as u8);
        } else if !pad && (bits >= from || (accumulator << (to - bits)) & ((1 << to) - 1) != 0) {
            return None;
        }
        Some(out)
    }

    /// `data` under `hrp`, lowercase; age writes identities in uppercase.
    pub fn encode(hrp: &str, data: &[u8]) -> String {
        // Regrouping with padding always succeeds.
        let values = regroup(data, 8, 5, true).unwrap_or_default();
        let check = polymod(expanded(hrp).chain(values.iter().copied()).chain([0; 6])) ^ 1;
        let checksum = (0..6).map(|i| ((check >> (5 * (5 - i))) & 31) as u8);
        let mut text = format!("{hrp}1");
        text.extend(values.iter().copied().chain(checksum).map(|v| CHARSET[usize::from(v)] as char));
        text
    }

    /// The lowercase human-readable part and the data of a valid string.
    pub fn decode(text: &str) -> Option<(String, Vec<u8>)> {
        if text.chars().any(char::is_lowercase) && text.chars().any(char::is_uppercase) {
            return None;
        }
        let text = text.to_ascii_lowercase();
        let (hrp, data) = text.rsplit_once('1')?;
        if hrp.is_empty() || data.len() < 6 || !hrp.bytes().all(|b| (33..=126).contains(&b)) {
            return None;
        }
        let values: Vec<u8> =
            data.bytes().map(|b| CHARSET.iter().position(|&c| c == b).map(|p| p as u8)).collect::<Option<_>>()?;
        if polymod(expanded(hrp).chain(values.iter().copied())) != 1 {
            return None;
        }
        Some((hrp.to_string(), regroup(&values[..values.len() - 6], 5, 8, false)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_empty_short_and_chunk_boundary_payloads() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let file = encrypt(&plaintext, "correct horse");
            assert_eq!(decrypt(&file, Key::Passphrase("correct horse")).unwrap(), plaintext, "length {len}");
        }
    }

    #[test]
    fn refusals_name_their_cause() {
        let plaintext = vec![7u8; CHUNK + 100];
        let file = encrypt(&plaintext, "pass");
        assert_eq!(decrypt(&file, Key::Passphrase("wrong")), Err(AgeError::WrongPassphrase));
        assert_eq!(decrypt(b"PK\x03\x04", Key::Passphrase("pass")), Err(AgeError::NotAge));
        // Cut inside the last chunk, and exactly at the chunk boundary.
        assert_eq!(decrypt(&file[..file.len() - 50], Key::Passphrase("pass")), Err(AgeError::Damaged(CHUNK)));
        assert_eq!(decrypt(&file[..file.len() - 116], Key::Passphrase("pass")), Err(AgeError::Truncated));
        let mut changed = file.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert_eq!(decrypt(&changed, Key::Passphrase("pass")), Err(AgeError::Damaged(CHUNK)));
        let mut extra = file.clone();
        extra.push(0);
        assert!(decrypt(&extra, Key::Passphrase("pass")).is_err());
        // The work factor is inside the MAC'd header: raising it to 17 is caught.
        let text = String::from_utf8_lossy(&file[..80]).replace(" 16\n", " 17\n");
        let mut raised = text.into_bytes();
        raised.extend_from_slice(&file[80..]);
        assert!(matches!(
            decrypt(&raised, Key::Passphrase("pass")),
            Err(AgeError::WrongPassphrase | AgeError::HeaderMac)
        ));
        let identity = Identity(x25519_dalek::StaticSecret::from([9; 32]));
        let to_key = encrypt_to(b"x", &identity.recipient());
        assert_eq!(decrypt(&to_key, Key::Passphrase("pass")), Err(AgeError::NotPassphrase("X25519".into())));
        assert_eq!(decrypt(&file, Key::Identity(&identity)), Err(AgeError::NotIdentity));
    }

    #[test]
    fn files_encrypted_to_a_recipient_open_with_its_identity_only() {
        let identity = Identity(x25519_dalek::StaticSecret::from(random::bytes::<32>()));
        let other = Identity(x25519_dalek::StaticSecret::from(random::bytes::<32>()));
        let plaintext = vec![3u8; CHUNK * 2 + 5];
        let file = encrypt_to(&plaintext, &identity.recipient());
        assert_eq!(decrypt(&file, Key::Identity(&identity)).unwrap(), plaintext);
        let refused = decrypt(&file, Key::Identity(&other)).unwrap_err();
        assert_eq!(refused, AgeError::WrongIdentity(other.recipient().to_string()));
    }

    #[test]
    fn keys_read_and_write_as_age_keygen_spells_them() {
        // The example recipient of age's README (FiloSottile/age).
        let example = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        let recipient: Recipient = example.parse().unwrap();
        assert_eq!(recipient.to_string(), example);
        // One changed character breaks the checksum; a Bitcoin address has the wrong prefix.
        assert!("age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8q".parse::<Recipient>().is_err());
        assert!("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4".parse::<Recipient>().is_err());
        // BIP 173's valid test vectors decode; mixed case does not.
        assert!(bech32::decode("A12UEL5L").is_some());
        assert!(bech32::decode("abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw").is_some());
        assert!(bech32::decode("A12uEL5L").is_none());
        let identity = Identity(x25519_dalek::StaticSecret::from([1; 32]));
        let text = format!("# created: now\n{}\n", bech32::encode("age-secret-key-", &[1; 32]).to_uppercase());
        assert_eq!(Identity::from_file_text(&text).unwrap().recipient(), identity.recipient());
        assert!(Identity::from_file_text("# nothing here\n").is_err());
    }

    #[test]
    fn an_identity_made_by_age_keygen_gives_the_public_key_it_printed() {
        // `age-keygen -o key.txt` (Debian's age 1.1.1), a throwaway key made for this test.
        let file = "# created: 2026-11-30T10:03:21Z\n\
                    # public key: age1dq9vht529aqt7zrteuqlfrsajqwgqav63l303s2lu4z7ssvgqyvqszr762\n\
                    AGE-SECRET-KEY-152XKYSM2XNACFZZKCT9CKGDEW806Z36APGPK6EZYQSJKRCY40TNSU8UJUX\n";
        let identity = Identity::from_file_text(file).unwrap();
        assert_eq!(identity.recipient().to_string(), "age1dq9vht529aqt7zrteuqlfrsajqwgqav63l303s2lu4z7ssvgqyvqszr762");
    }
}
