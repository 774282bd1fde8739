//! The page's administrator: the password (argon2id), the first-start setup code, and the
//! API's bearer tokens. The hashing and token formats are in [`crate::admin`].

use super::views::ApiTokenView;
use super::{App, AppError};
use crate::admin::{self, AdminError};
use crate::clock::now;
use crate::store::records::{AdminCredentials, ApiToken, Txn, bounded};

/// Says that the first-start setup code is spent. The image's run script watches for this
/// line to remove the code from the boot partition (image/rootfs/usr/libexec/provbox/run).
pub(super) fn claimed() {
    tracing::info!("appliance claimed: the setup code is spent");
}

impl App {
    /// Whether an admin password is set.
    pub fn admin_configured(&self) -> Result<bool, AppError> {
        Ok(self.lock().db.admin()?.is_some())
    }

    /// The setup code while no admin password is set (made on first use), else None.
    pub fn setup_code(&self) -> Result<Option<String>, AppError> {
        Ok((!self.admin_configured()?).then(|| self.setup_code.get()))
    }

    /// Sets the admin password. The first one from the page needs the setup code
    /// (`setup_code`); the CLI (root on the appliance) passes None. Returns the new
    /// password's [`CredentialTag`], for the session that set it.
    pub fn set_admin_password(
        &self,
        password: &str,
        setup_code: Option<&str>,
        actor: &str,
    ) -> Result<CredentialTag, AppError> {
        if let Some(given) = setup_code
            && (self.admin_configured()? || !self.setup_code.matches(given))
        {
            return Err(AdminError::SetupCode.into());
        }
        let level = self.lock().password_level("policy.admin_password")?;
        let hash = admin::hash_password(password, level)?;
        let credentials = AdminCredentials { password_hash: bounded("password hash", &hash)?, changed_at: now() };
        let mut txn = Txn::new();
        txn.set_admin(&credentials).audit(now(), actor, "set the admin password")?;
        self.lock().db.commit(&txn)?;
        let first = setup_code.is_some();
        self.setup_code.clear();
        tracing::info!(actor, "admin password set");
        if first {
            claimed();
        }
        Ok(CredentialTag::of(&credentials))
    }

    /// Clears the admin password (the image's `provbox-reset` trigger file, with no server
    /// running): the next start asks for a new setup code. Devices and settings stay.
    pub fn clear_admin(&self, actor: &str) -> Result<(), AppError> {
        let mut txn = Txn::new();
        txn.remove_admin().audit(now(), actor, "cleared the admin password")?;
        self.lock().db.commit(&txn)?;
        self.setup_code.clear();
        tracing::info!(actor, "admin password cleared");
        Ok(())
    }

    /// Uses `code` as the setup code while no admin password is set.
    pub fn preset_setup_code(&self, code: &str) -> Result<(), AppError> {
        Ok(self.setup_code.preset(code)?)
    }

    /// The admin password now in force, as a [`CredentialTag`], once one is set.
    pub fn admin_credential(&self) -> Result<Option<CredentialTag>, AppError> {
        Ok(self.lock().db.admin()?.map(|credentials| CredentialTag::of(&credentials)))
    }

    /// Whether `password` is the admin password: the tag of the password it matched.
    pub fn verify_admin(&self, password: &str) -> Result<Option<CredentialTag>, AppError> {
        let Some(credentials) = self.lock().db.admin()? else { return Ok(None) };
        Ok(admin::verify_password(&credentials.password_hash, password).then(|| CredentialTag::of(&credentials)))
    }

    /// Makes an API token named `name`; returns it. It is shown this once: only a hash of
    /// its secret is stored.
    pub fn create_api_token(&self, name: &str, actor: &str) -> Result<String, AppError> {
        let name = name.trim();
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(AdminError::TokenName.into());
        }
        let (id, secret, text) = admin::new_api_token();
        let token =
            ApiToken { name: bounded("token name", name)?, secret_hash: admin::secret_hash(&secret), created: now() };
        let mut txn = Txn::new();
        txn.put_api_token(&id, &token).audit(now(), actor, &format!("created API token {name}"))?;
        self.lock().db.commit(&txn)?;
        Ok(text)
    }

    /// Every API token.
    pub fn api_tokens(&self) -> Result<Vec<ApiTokenView>, AppError> {
        Ok(self
            .lock()
            .db
            .api_tokens()?
            .into_iter()
            .map(|(id, token)| ApiTokenView {
                id: crate::hex::encode(&id),
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
            if token.name.as_str() == which || crate::hex::encode(&id) == which {
                txn.remove_api_token(&id).audit(now(), actor, &format!("revoked API token {}", token.name))?;
                revoked += 1;
            }
        }
        state.db.commit(&txn)?;
        Ok(revoked)
    }

    /// The name of the API token `bearer`, if it is a valid one (constant-time check).
    pub fn api_token_name(&self, bearer: &str) -> Result<Option<String>, AppError> {
        let Some((id, secret)) = admin::parse_api_token(bearer.trim()) else { return Ok(None) };
        let tokens = self.lock().db.api_tokens()?;
        let Some((_, token)) = tokens.into_iter().find(|(stored, _)| *stored == id) else { return Ok(None) };
        Ok(admin::secret_matches(&token.secret_hash, &secret).then(|| token.name.to_string()))
    }
}

/// Which admin password a session was opened with: a digest of its stored hash, whose salt
/// is new at every change, so that any change (in the same second, from the CLI, by a
/// restore) ends the sessions opened before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialTag([u8; 16]);

impl CredentialTag {
    fn of(credentials: &AdminCredentials) -> CredentialTag {
        let digest = ring::digest::digest(&ring::digest::SHA256, credentials.password_hash.as_bytes());
        let mut tag = [0; 16];
        tag.copy_from_slice(&digest.as_ref()[..16]);
        CredentialTag(tag)
    }

    /// A tag that stands for password number `n`.
    #[cfg(test)]
    pub fn for_tests(n: u8) -> CredentialTag {
        CredentialTag([n; 16])
    }
}
