//! The administrator's credentials as mechanisms: argon2id password hashes, the one-time
//! setup code that guards first start (so that someone else on the LAN cannot claim a new
//! appliance before the installer does), and API bearer tokens. The operations that store
//! them are in `crate::app::admin`.

use std::sync::Mutex;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use subtle::ConstantTimeEq;

/// The first-start code, until an admin password exists.
#[derive(Default)]
pub struct SetupCode(Mutex<Option<String>>);

impl SetupCode {
    /// The code, made on first use: 12 hex digits.
    pub fn get(&self) -> String {
        let mut code = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        code.get_or_insert_with(|| crate::hex::encode(&crate::random::bytes::<6>())).clone()
    }

    /// Whether `given` is the code, compared in constant time.
    pub fn matches(&self, given: &str) -> bool {
        let expected = self.get();
        given.trim().as_bytes().ct_eq(expected.as_bytes()).into()
    }

    /// Uses `code` (12 hex digits, made by the image's start script, which also writes it to
    /// the boot partition) instead of making one.
    pub fn preset(&self, code: &str) -> Result<(), AdminError> {
        let code = code.trim();
        if code.len() != 12 || !code.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AdminError::SetupCodeFormat);
        }
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(code.to_ascii_lowercase());
        Ok(())
    }

    /// Forgets the code once a password is set.
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
}

/// Why an admin password or API token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The setup code is missing or wrong.
    #[error("wrong setup code; `provbox admin setup-code` on the appliance shows it")]
    SetupCode,
    /// A preset setup code that is not 12 hex digits.
    #[error("a setup code is 12 hex digits")]
    SetupCodeFormat,
    /// The password breaks the policy.
    #[error("weak password: {0}")]
    Weak(&'static str),
    /// An API token needs a printable name.
    #[error("an API token needs a name")]
    TokenName,
    /// Hashing failed (the system's random source).
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// The argon2id hash of `password` in PHC string form, after checking it against `level`.
pub fn hash_password(password: &str, level: crate::policy::Level) -> Result<String, AdminError> {
    crate::policy::check(level, password).map_err(AdminError::Weak)?;
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AdminError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC-form `hash` (argon2id verification).
pub fn verify_password(hash: &str, password: &str) -> bool {
    let Ok(hash) = PasswordHash::new(hash) else { return false };
    Argon2::default().verify_password(password.as_bytes(), &hash).is_ok()
}

/// A new API token: its public id, its secret, and the text given to its user once,
/// `pbx_<16 hex id>_<32 hex secret>`.
pub fn new_api_token() -> ([u8; 8], [u8; 16], String) {
    let (id, secret) = (crate::random::bytes::<8>(), crate::random::bytes::<16>());
    let text = format!("pbx_{}_{}", crate::hex::encode(&id), crate::hex::encode(&secret));
    (id, secret, text)
}

/// SHA-256 of an API token's secret: all the store keeps of it.
pub fn secret_hash(secret: &[u8; 16]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Splits `pbx_<16 hex id>_<32 hex secret>`.
pub fn parse_api_token(token: &str) -> Option<([u8; 8], [u8; 16])> {
    let (id, secret) = token.strip_prefix("pbx_")?.split_once('_')?;
    Some((crate::hex::decode(id)?, crate::hex::decode(secret)?))
}

/// Whether `secret` hashes to `stored`, compared in constant time.
pub fn secret_matches(stored: &[u8; 32], secret: &[u8; 16]) -> bool {
    stored.ct_eq(&secret_hash(secret)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_strictly() {
        let good = format!("pbx_{}_{}", "0a".repeat(8), "1b".repeat(16));
        assert_eq!(parse_api_token(&good), Some(([0x0a; 8], [0x1b; 16])));
        assert_eq!(parse_api_token(&good.replace("pbx_", "pbz_")), None);
        assert_eq!(parse_api_token(&good[..good.len() - 1]), None);
        assert_eq!(parse_api_token("pbx_zz_zz"), None);
        assert_eq!(parse_api_token("pbx_é_é"), None);
        let (id, secret, text) = new_api_token();
        assert_eq!(parse_api_token(&text), Some((id, secret)));
    }
}
