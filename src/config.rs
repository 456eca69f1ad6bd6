//! The appliance's configuration file.
//!
//! One TOML file, one section per layer. Unknown keys are rejected everywhere so that a typo
//! in a security setting is an error, not a silently ignored line.
//!
//! Each lower layer owns its section (`[hsm]` in [`crate::hsm`], `[storage]` in
//! [`crate::ledger`], profiles in [`crate::pki`], clients and officers in [`crate::policy`]);
//! the sections only the signing service reads are defined here. `config` imports no layer
//! above those, so [`crate::api`] can read the whole file.

mod serve;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use self::serve::{
    AuditConfig, CrlConfig, IdentitySource, IssuerConfig, JwtConfig, JwtKeyConfig, PublicConfig,
    ServerConfig, StaticToken, TrustConfig, VaultConfig,
};
use crate::hsm::HsmConfig;
use crate::ledger::StorageConfig;
use crate::pki::Profile;
use crate::policy::{ClientPolicy, Officer};

/// The whole configuration file. `hsmca hsm …` needs only `[hsm]`; `hsmca serve` needs every
/// section. Relative paths are taken from the directory of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The `[hsm]` section: which PKCS#11 module and token, and how to log in.
    pub hsm: HsmConfig,
    /// `[server]`: listener, TLS, client identities, limits and timeouts.
    pub server: Option<ServerConfig>,
    /// `[storage]`: the certificate ledger and the audit log.
    pub storage: Option<StorageConfig>,
    /// `[trust]`: the roots published in the bundles.
    pub trust: Option<TrustConfig>,
    /// `[issuers.<name>]`: online intermediates, each a certificate and an HSM key.
    #[serde(default)]
    pub issuers: BTreeMap<String, IssuerConfig>,
    /// `[profiles.<name>]`: certificate profiles.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// `[[clients]]`: who may ask for what; a client not listed gets nothing.
    #[serde(default)]
    pub clients: Vec<ClientPolicy>,
    /// `[[officers]]`: who may revoke.
    #[serde(default)]
    pub officers: Vec<Officer>,
    /// `[crl]`: CRL lifetimes (defaults when absent).
    #[serde(default)]
    pub crl: CrlConfig,
    /// `[vault]`: the Vault PKI-compatible endpoints; none when absent.
    pub vault: Option<VaultConfig>,
    /// `[audit]`: signed checkpoints of the audit chain and their witnesses.
    #[serde(default)]
    pub audit: AuditConfig,
    /// `[jwt]`: JWT-SVIDs signed in the HSM; none when absent.
    pub jwt: Option<JwtConfig>,
    /// `[public]`: the read-only listener for relying parties; none when absent.
    pub public: Option<PublicConfig>,
    /// The directory relative paths are resolved against (the file's own).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}; check the path given with --config")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation, with line and column.
        message: String,
    },
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.base_dir = path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        Ok(config)
    }

    /// `path` as written in this file, resolved against its directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        resolve(&self.base_dir, path)
    }

    /// Parses configuration text; the error is one line: where, then what.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| describe_toml_error(text, &e))
    }
}

/// Resolves `path` against `config_dir`, the directory of the file that names it.
pub(crate) fn resolve(config_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        config_dir.join(path)
    }
}

/// `toml`'s own rendering spans several lines with a source excerpt; operators and log
/// collectors want one line naming the position.
pub(crate) fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::parse(
            r#"
            [hsm]
            module = "/usr/lib/softhsm/libsofthsm2.so"
            token_label = "t"
            pin_env = "PIN"
            pin = "1234"
            "#,
        )
        .unwrap_err();
        assert!(
            err.starts_with("line 6, column 13: unknown field `pin`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_sections_are_rejected() {
        let err = Config::parse(
            r#"
            [hsm]
            module = "/m.so"
            token_label = "t"
            pin_env = "PIN"
            [hsn]
            "#,
        )
        .unwrap_err();
        assert!(err.contains("unknown field `hsn`"), "{err}");
    }
}
