//! The `[storage]` section: where the ledger and the audit log are kept.

use std::path::PathBuf;

use serde::Deserialize;

/// `[storage]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The SQLite ledger of issued certificates (created 0600 if absent).
    pub ledger: PathBuf,
    /// The hash-chained audit log (created 0600 if absent; may be the ceremonies' log).
    pub audit_log: PathBuf,
}
