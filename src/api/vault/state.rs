//! The Vault dialect's configuration, checked, and its live tokens.

use super::tokens::TokenStore;
use crate::config::VaultConfig;
use crate::ledger::Store;
use crate::pki::ProfileKind;

/// Paths under `/v1/` the native API and Vault's own top level use: not a mount.
const RESERVED_MOUNTS: [&str; 5] = ["sign", "bundle", "chain", "sys", "auth"];

/// The Vault dialect's state: its configuration and the live tokens.
pub struct VaultState {
    /// `[vault]`.
    pub(super) config: VaultConfig,
    /// The live tokens.
    pub(super) tokens: TokenStore,
}

impl VaultState {
    /// The Vault dialect for `config`, its logins' tokens kept in `ledger`: its mount and
    /// static tokens are checked here, its
    /// profiles and clients by [`VaultState::check`] with the rest of the settings.
    pub fn new(config: &VaultConfig, ledger: Store) -> Result<Self, String> {
        let mount = &config.mount;
        if mount.is_empty()
            || !mount
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            || RESERVED_MOUNTS.contains(&mount.as_str())
        {
            return Err(format!(
                "vault.mount {mount:?} must be lower-case letters, digits, '-' or '_', and not one of {}",
                RESERVED_MOUNTS.join(", ")
            ));
        }
        let statics: Vec<(String, String)> = config
            .static_tokens
            .iter()
            .map(|t| (t.sha256.clone(), t.identity.clone()))
            .collect();
        Ok(VaultState {
            config: config.clone(),
            tokens: TokenStore::new(config.token_ttl, config.token_max_ttl, &statics, ledger)?,
        })
    }

    /// Checks `[vault]` against the profiles and clients it names.
    pub fn check(
        config: &VaultConfig,
        profile_kind: impl Fn(&str) -> Option<ProfileKind>,
        has_client: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        match profile_kind(&config.sign_intermediate_profile) {
            Some(ProfileKind::IssuingCa) => {}
            Some(ProfileKind::Workload) => {
                return Err(format!(
                    "vault.sign_intermediate_profile {:?} is a workload profile; it must be an issuing-ca profile",
                    config.sign_intermediate_profile
                ));
            }
            None => {
                return Err(format!(
                    "vault.sign_intermediate_profile {:?} is not defined in [profiles]",
                    config.sign_intermediate_profile
                ));
            }
        }
        for (role, profile) in &config.roles {
            if profile_kind(profile).is_none() {
                return Err(format!(
                    "vault.roles.{role}: profile {profile:?} is not defined in [profiles]"
                ));
            }
        }
        for token in &config.static_tokens {
            if !has_client(&token.identity) {
                return Err(format!(
                    "vault.static_tokens: identity {:?} has no [[clients]] entry",
                    token.identity
                ));
            }
        }
        Ok(())
    }

    /// The Vault mount (`pki` by default).
    pub fn mount(&self) -> &str {
        &self.config.mount
    }
}
