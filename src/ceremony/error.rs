//! Why a ceremony stopped.

use std::path::PathBuf;

use crate::hsm::HsmError;
use crate::ledger::audit::AuditError;
use crate::pki::PkiError;

/// Why a ceremony stopped.
#[derive(Debug, thiserror::Error)]
pub enum CeremonyError {
    /// The config file could not be read.
    #[error("cannot read ceremony config {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("ceremony config {path} is invalid: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Where and what.
        message: String,
    },
    /// The config is well-formed but asks for something that cannot be done.
    #[error("{0}")]
    Invalid(String),
    /// An output exists already.
    #[error(
        "output {path} already exists; ceremonies never overwrite: move it away or name a new output"
    )]
    OutputExists {
        /// The file.
        path: PathBuf,
    },
    /// An output could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The HSM refused or failed.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// Building, checking or signing failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The audit log could not be used.
    #[error(transparent)]
    Audit(#[from] AuditError),
}
