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

    /// Whether `password` is the admin password (argon2id verification).
    pub fn verify_admin(&self, password: &str) -> Result<bool, AppError> {
        let Some(credentials) = self.lock().db.admin()? else { return Ok(false) };
        let Ok(hash) = PasswordHash::new(&credentials.password_hash) else { return Ok(false) };
        Ok(Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
    }
}
