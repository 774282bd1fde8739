//! The administrator's login: an argon2id password hash in the store, and the one-time setup
//! code that guards first start, so that someone else on the LAN cannot claim a new
//! appliance before the installer does.

use std::sync::Mutex;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use subtle::ConstantTimeEq;

use crate::app::{App, AppError, now};
use crate::devices;
use crate::store::records::{AdminCredentials, Txn, bounded};

/// The first-start code, until an admin password exists.
#[derive(Default)]
pub struct SetupCode(Mutex<Option<String>>);

/// Why an admin password was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The setup code is missing or wrong.
    #[error("wrong setup code; `provbox admin setup-code` on the appliance shows it")]
    SetupCode,
    /// The password breaks the policy.
    #[error("weak password: {0}")]
    Weak(&'static str),
    /// Hashing failed (the system's random source).
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

impl App {
    /// Whether an admin password is set.
    pub fn admin_configured(&self) -> Result<bool, AppError> {
        Ok(self.lock().db.admin()?.is_some())
    }

    /// The setup code while no admin password is set (made on first use), else None.
    pub fn setup_code(&self) -> Result<Option<String>, AppError> {
        if self.admin_configured()? {
            return Ok(None);
        }
        let mut code = self.admin.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(Some(code.get_or_insert_with(|| crate::store::check::hex(&devices::new_token()[..6])).clone()))
    }

    /// Sets the admin password. The first one from the page needs the setup code
    /// (`setup_code`); the CLI (root on the appliance) passes None.
    pub fn set_admin_password(&self, password: &str, setup_code: Option<&str>, actor: &str) -> Result<(), AppError> {
        if let Some(given) = setup_code {
            let expected = self.setup_code()?.unwrap_or_default();
            let matches: bool = given.trim().as_bytes().ct_eq(expected.as_bytes()).into();
            if expected.is_empty() || !matches {
                return Err(AdminError::SetupCode.into());
            }
        }
        devices::check_strength(password).map_err(AdminError::Weak)?;
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| AdminError::Hash(e.to_string()))?
            .to_string();
        let credentials = AdminCredentials { password_hash: bounded("password hash", &hash)?, changed_at: now() };
        let mut txn = Txn::new();
        txn.set_admin(&credentials).audit(now(), actor, "set the admin password")?;
        self.lock().db.commit(&txn)?;
        *self.admin.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        tracing::info!(actor, "admin password set");
        Ok(())
    }

    /// When the admin password last changed (Unix time), once set.
    pub fn admin_changed_at(&self) -> Result<Option<u64>, AppError> {
        Ok(self.lock().db.admin()?.map(|credentials| credentials.changed_at))
    }

    /// Whether `password` is the admin password (argon2id verification).
    pub fn verify_admin(&self, password: &str) -> Result<bool, AppError> {
        let Some(credentials) = self.lock().db.admin()? else { return Ok(false) };
        let Ok(hash) = PasswordHash::new(&credentials.password_hash) else { return Ok(false) };
        Ok(Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
    }
}

/// An API token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiTokenView {
    /// Its public id (hex).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Unix time it was made.
    pub created: u64,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Splits `pbx_<16 hex id>_<32 hex secret>`.
fn parse_token(token: &str) -> Option<([u8; 8], [u8; 16])> {
    let rest = token.strip_prefix("pbx_")?;
    let (id, secret) = rest.split_once('_')?;
    let decode = |text: &str, out: &mut [u8]| -> Option<()> {
        if text.len() != out.len() * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
        }
        Some(())
    };
    let (mut id_bytes, mut secret_bytes) = ([0u8; 8], [0u8; 16]);
    decode(id, &mut id_bytes)?;
    decode(secret, &mut secret_bytes)?;
    Some((id_bytes, secret_bytes))
}

impl App {
    /// Makes an API token named `name`; returns it. It is shown this once: only a hash of
    /// its secret is stored.
    pub fn create_api_token(&self, name: &str, actor: &str) -> Result<String, AppError> {
        let name = name.trim();
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(AdminError::Weak("an API token needs a name").into());
        }
        let id: [u8; 8] = devices::new_token()[..8].try_into().unwrap_or([0; 8]);
        let secret = devices::new_token();
        let token = crate::store::records::ApiToken {
            name: bounded("token name", name)?,
            secret_hash: sha256(&secret),
            created: now(),
        };
        let mut txn = Txn::new();
        txn.put_api_token(&id, &token).audit(now(), actor, &format!("created API token {name}"))?;
        self.lock().db.commit(&txn)?;
        let hex = crate::store::check::hex;
        Ok(format!("pbx_{}_{}", hex(&id), hex(&secret)))
    }

    /// Every API token.
    pub fn api_tokens(&self) -> Result<Vec<ApiTokenView>, AppError> {
        Ok(self
            .lock()
            .db
            .api_tokens()?
            .into_iter()
            .map(|(id, token)| ApiTokenView {
                id: crate::store::check::hex(&id),
                name: token.name.to_string(),
                created: token.created,
            })
            .collect())
    }

    /// Revokes the tokens whose name or id is `which`; returns how many.
    pub fn revoke_api_token(&self, which: &str, actor: &str) -> Result<usize, AppError> {
        let mut state = self.lock();
        let mut txn = Txn::new();
        let mut revoked = 0;
        for (id, token) in state.db.api_tokens()? {
            if token.name.as_str() == which || crate::store::check::hex(&id) == which {
                txn.remove_api_token(&id).audit(now(), actor, &format!("revoked API token {}", token.name))?;
                revoked += 1;
            }
        }
        state.db.commit(&txn)?;
        Ok(revoked)
    }

    /// The name of the API token `bearer`, if it is a valid one (constant-time check).
    pub fn api_token_name(&self, bearer: &str) -> Result<Option<String>, AppError> {
        let Some((id, secret)) = parse_token(bearer.trim()) else { return Ok(None) };
        let tokens = self.lock().db.api_tokens()?;
        let Some((_, token)) = tokens.into_iter().find(|(stored, _)| *stored == id) else { return Ok(None) };
        let matches: bool = token.secret_hash.ct_eq(&sha256(&secret)).into();
        Ok(matches.then(|| token.name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_token;

    #[test]
    fn tokens_parse_strictly() {
        let good = format!("pbx_{}_{}", "0a".repeat(8), "1b".repeat(16));
        assert_eq!(parse_token(&good), Some(([0x0a; 8], [0x1b; 16])));
        assert_eq!(parse_token(&good.replace("pbx_", "pbz_")), None);
        assert_eq!(parse_token(&good[..good.len() - 1]), None);
        assert_eq!(parse_token("pbx_zz_zz"), None);
        assert_eq!(parse_token("pbx_é_é"), None);
    }
}
