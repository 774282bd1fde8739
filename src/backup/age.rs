//! The passphrase ("scrypt recipient") subset of the age file format, version 1
//! (<https://github.com/C2SP/C2SP/blob/main/age.md>), so that a backup opens with the
//! standard `age -d` and a file made by `age -p` restores.
//!
//! The subset is small enough to write here on ring's ChaCha20-Poly1305, HKDF and HMAC plus
//! the `scrypt` crate; the `age` crate would bring its localisation framework into a binary
//! with a size budget. `tests/backup_age.rs` checks both directions against Debian's `age`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ring::aead::{CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::{hkdf, hmac};

use crate::random;

/// The first line of every age file.
const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
/// The label mixed into the scrypt salt.
const SCRYPT_LABEL: &[u8] = b"age-encryption.org/v1/scrypt";
/// Plaintext bytes per payload chunk.
const CHUNK: usize = 64 * 1024;
/// ChaCha20-Poly1305's tag length.
const TAG: usize = 16;
/// The work factor provbox encrypts with: scrypt N = 2^16 (64 MiB, well under a second on a
/// Raspberry Pi 3).
pub const WORK_FACTOR: u8 = 16;
/// The highest work factor accepted when decrypting: `age -p` uses 18 (256 MiB); 20 needs
/// 1 GiB, as much as a Pi 3 has.
const MAX_WORK_FACTOR: u8 = 19;

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

/// Encrypts `plaintext` with `passphrase` as an age file.
pub fn encrypt(plaintext: &[u8], passphrase: &str) -> Vec<u8> {
    let file_key: [u8; 16] = random::bytes();
    let salt: [u8; 16] = random::bytes();
    let wrapped = seal_whole(&scrypt_key(passphrase, &salt, WORK_FACTOR), &file_key);

    let mut out = Vec::with_capacity(plaintext.len() + plaintext.len() / CHUNK * TAG + 256);
    out.extend_from_slice(VERSION_LINE);
    out.extend_from_slice(format!("-> scrypt {} {WORK_FACTOR}\n", STANDARD_NO_PAD.encode(salt)).as_bytes());
    // 32 bytes are 43 base64 characters: one body line, shorter than the 64-column wrap.
    out.extend_from_slice(STANDARD_NO_PAD.encode(wrapped).as_bytes());
    out.extend_from_slice(b"\n---");
    let mac = hmac::sign(&header_mac_key(&file_key), &out);
    out.extend_from_slice(format!(" {}\n", STANDARD_NO_PAD.encode(mac.as_ref())).as_bytes());

    let nonce: [u8; 16] = random::bytes();
    out.extend_from_slice(&nonce);
    let key = payload_key(&file_key, &nonce);
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

/// Decrypts an age file made with a passphrase.
pub fn decrypt(file: &[u8], passphrase: &str) -> Result<Vec<u8>, AgeError> {
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
    let stanza = line()?;
    let Some(arguments) = stanza.strip_prefix(b"-> ") else { return Err(AgeError::Header("no recipient stanza")) };
    let arguments = std::str::from_utf8(arguments).map_err(|_| AgeError::Header("a stanza is not text"))?;
    let arguments: Vec<&str> = arguments.split(' ').collect();
    if arguments[0] != "scrypt" {
        return Err(AgeError::NotPassphrase(arguments[0].chars().take(32).collect()));
    }
    let [_, salt, work_factor] = arguments[..] else {
        return Err(AgeError::Header("the scrypt stanza needs a salt and a work factor"));
    };
    let salt: [u8; 16] = decode_exact(salt).ok_or(AgeError::Header("the scrypt salt is not 16 bytes of base64"))?;
    if work_factor.starts_with('0') || !work_factor.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AgeError::Header("the scrypt work factor is not a decimal number"));
    }
    let work_factor: u8 =
        work_factor.parse().map_err(|_| AgeError::Header("the scrypt work factor is out of range"))?;
    if work_factor == 0 || work_factor > MAX_WORK_FACTOR {
        return Err(AgeError::WorkFactor(work_factor));
    }
    let body = line()?;
    let wrapped: [u8; 32] =
        decode_exact_bytes(body).ok_or(AgeError::Header("the scrypt body is not 32 bytes of base64"))?;
    let footer = line()?;
    if footer.starts_with(b"-> ") {
        // The format allows only one stanza beside scrypt: none.
        return Err(AgeError::Header("a passphrase file has exactly one recipient stanza"));
    }
    let Some(mac) = footer.strip_prefix(b"--- ") else {
        return Err(AgeError::Header("no \"---\" line after the stanza"));
    };
    let mac: [u8; 32] = decode_exact_bytes(mac).ok_or(AgeError::Header("the header MAC is not 32 bytes of base64"))?;
    let header_len = file.len() - rest.len() - footer.len() - 1 + 3;

    let file_key: [u8; 16] = open_whole(&scrypt_key(passphrase, &salt, work_factor), &wrapped)
        .and_then(|key| key.try_into().ok())
        .ok_or(AgeError::WrongPassphrase)?;
    hmac::verify(&header_mac_key(&file_key), &file[..header_len], &mac).map_err(|_| AgeError::HeaderMac)?;

    if rest.len() < 16 {
        return Err(AgeError::Truncated);
    }
    let (nonce, mut payload) = rest.split_at(16);
    let key = payload_key(&file_key, nonce);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_empty_short_and_chunk_boundary_payloads() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let file = encrypt(&plaintext, "correct horse");
            assert_eq!(decrypt(&file, "correct horse").unwrap(), plaintext, "length {len}");
        }
    }

    #[test]
    fn refusals_name_their_cause() {
        let plaintext = vec![7u8; CHUNK + 100];
        let file = encrypt(&plaintext, "pass");
        assert_eq!(decrypt(&file, "wrong"), Err(AgeError::WrongPassphrase));
        assert_eq!(decrypt(b"PK\x03\x04", "pass"), Err(AgeError::NotAge));
        // Cut inside the last chunk, and exactly at the chunk boundary.
        assert_eq!(decrypt(&file[..file.len() - 50], "pass"), Err(AgeError::Damaged(CHUNK)));
        assert_eq!(decrypt(&file[..file.len() - 116], "pass"), Err(AgeError::Truncated));
        let mut changed = file.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        assert_eq!(decrypt(&changed, "pass"), Err(AgeError::Damaged(CHUNK)));
        let mut extra = file.clone();
        extra.push(0);
        assert!(decrypt(&extra, "pass").is_err());
        // The work factor is inside the MAC'd header: raising it to 17 is caught.
        let text = String::from_utf8_lossy(&file[..80]).replace(" 16\n", " 17\n");
        let mut raised = text.into_bytes();
        raised.extend_from_slice(&file[80..]);
        assert!(matches!(decrypt(&raised, "pass"), Err(AgeError::WrongPassphrase | AgeError::HeaderMac)));
        let x25519 = b"age-encryption.org/v1\n-> X25519 abc\nxyz\n--- abc\n";
        assert_eq!(decrypt(x25519, "pass"), Err(AgeError::NotPassphrase("X25519".into())));
    }
}
