//! The `[hsm]` configuration section, shared by `hsmca hsm`, ceremonies and the service.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::HsmError;
use super::selector::TokenSelector;

/// Which PKCS#11 module and token to use, how to log in, and how to size the session pool.
///
/// ```toml
/// [hsm]
/// module = "/usr/lib/softhsm/libsofthsm2.so"
/// token_label = "hsmca"          # or token_serial = "6ec5cb25b3c2436b"
/// pin_file = "/etc/hsmca/pin"    # or pin_env = "HSMCA_PIN"
///
/// [hsm.pool]
/// sessions = 4                   # default: the number of cores, within the token's limit
/// queue_depth = 1024
/// op_timeout_ms = 2000
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// Path of the vendor's PKCS#11 shared library.
    pub module: PathBuf,
    /// The token's label (`CKA_LABEL` of the token, as `pkcs11-tool -L` shows it).
    pub token_label: Option<String>,
    /// The token's serial number, for modules where labels are not unique.
    pub token_serial: Option<String>,
    /// A file holding the user PIN; it must not be readable by group or others.
    pub pin_file: Option<PathBuf>,
    /// The name of an environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// Session pool settings for the signing service.
    #[serde(default)]
    pub pool: PoolConfig,
}

/// Where the user PIN comes from. The PIN itself is never part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// A file readable only by its owner.
    File(PathBuf),
    /// An environment variable, by name.
    Env(String),
}

impl HsmConfig {
    /// The token selector; exactly one of `token_label` and `token_serial` must be set.
    pub fn token(&self) -> Result<TokenSelector, HsmError> {
        match (&self.token_label, &self.token_serial) {
            (Some(label), None) => Ok(TokenSelector::Label(label.clone())),
            (None, Some(serial)) => Ok(TokenSelector::Serial(serial.clone())),
            _ => Err(HsmError::Config(
                "set exactly one of `hsm.token_label` and `hsm.token_serial`".into(),
            )),
        }
    }

    /// The PIN source; exactly one of `pin_file` and `pin_env` must be set.
    pub fn pin_source(&self) -> Result<PinSource, HsmError> {
        match (&self.pin_file, &self.pin_env) {
            (Some(path), None) => Ok(PinSource::File(path.clone())),
            (None, Some(var)) => Ok(PinSource::Env(var.clone())),
            _ => Err(HsmError::Config(
                "set exactly one of `hsm.pin_file` and `hsm.pin_env`".into(),
            )),
        }
    }
}

/// Session pool sizing and back-pressure.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Number of HSM sessions, each served by its own blocking worker thread. Default: the
    /// number of cores, capped by the token's session limit.
    pub sessions: Option<usize>,
    /// Operations that may wait for a session before callers get a "busy" error. Default 1024.
    pub queue_depth: Option<usize>,
    /// How long one operation may take, queueing included, before it fails. Default 2000 ms.
    pub op_timeout_ms: Option<u64>,
}

impl PoolConfig {
    /// Queue depth used when none is configured.
    pub const DEFAULT_QUEUE_DEPTH: usize = 1024;
    /// Operation timeout used when none is configured.
    pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(2000);

    /// The configured queue depth, or the default.
    pub fn queue_depth(&self) -> usize {
        self.queue_depth.unwrap_or(Self::DEFAULT_QUEUE_DEPTH)
    }

    /// The configured operation timeout, or the default.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(Self::DEFAULT_OP_TIMEOUT)
    }
}
