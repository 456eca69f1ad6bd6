//! `hsmca ledger migrate`: an SQLite ledger and its audit log copied into an empty PostgreSQL
//! database, in one transaction, the chain verified on the way, so the appliance goes on
//! there with the same certificates, CRL numbers, bundle sequence, tokens and chain.

use std::path::{Path, PathBuf};

use super::audit::AuditError;
use super::certificates::{Ledger, LedgerError};
use super::chain::verify_records;
use super::postgres::PostgresLedger;
use super::sqlite_journal::committed_beyond;

/// What a migration copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migrated {
    /// Certificates.
    pub certificates: usize,
    /// Revocations.
    pub revocations: usize,
    /// CRLs.
    pub crls: usize,
    /// Audit records.
    pub audit_records: u64,
    /// The chain's head hash, the same before and after.
    pub head: String,
}

/// Why a migration did not happen. Nothing was written to the target in any case.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The source ledger could not be read.
    #[error("the SQLite ledger: {0}")]
    Source(LedgerError),
    /// The audit log could not be read.
    #[error("the audit log {path}: {source}")]
    AuditLog {
        /// The log.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The audit log's chain is broken: it is not copied.
    #[error(transparent)]
    Chain(#[from] AuditError),
    /// The target holds data already.
    #[error(
        "the PostgreSQL database is not empty ({0}): hsmca ledger migrate copies into a new, empty database only"
    )]
    TargetNotEmpty(String),
    /// The target could not be written; its transaction was rolled back.
    #[error("the PostgreSQL database: {0}")]
    Target(LedgerError),
}

/// Copies the SQLite ledger at `ledger` and the audit log at `audit_log` into `target`,
/// which must be empty. The log is verified first and every record again as it is copied.
pub fn migrate(
    ledger: &Path,
    audit_log: &Path,
    target: &PostgresLedger,
) -> Result<Migrated, MigrateError> {
    if let Some(what) = target.first_content().map_err(MigrateError::Target)? {
        return Err(MigrateError::TargetNotEmpty(what));
    }
    let snapshot = Ledger::open(ledger)
        .and_then(|ledger| ledger.snapshot())
        .map_err(MigrateError::Source)?;
    let text = std::fs::read_to_string(audit_log).map_err(|source| MigrateError::AuditLog {
        path: audit_log.to_owned(),
        source,
    })?;
    let lines: Vec<&str> = text.lines().collect();
    let (records, head) =
        verify_records(lines.iter().copied()).map_err(|(line, reason)| AuditError::Tampered {
            path: audit_log.to_owned(),
            line,
            reason,
        })?;
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(AuditError::Tampered {
            path: audit_log.to_owned(),
            line: records,
            reason: "the last record is incomplete (no line end): start and stop hsmca serve once to cut it off, then migrate".into(),
        }
        .into());
    }
    let unwritten = committed_beyond(ledger, records).map_err(MigrateError::Source)?;
    if unwritten > 0 {
        return Err(AuditError::Tampered {
            path: audit_log.to_owned(),
            line: records,
            reason: format!("the ledger committed {unwritten} records the file does not hold yet (hsmca serve did not stop cleanly): start and stop hsmca serve once to write them, then migrate"),
        }
        .into());
    }
    target
        .import(&snapshot, &lines, &head)
        .map_err(MigrateError::Target)?;
    Ok(Migrated {
        certificates: snapshot.certificates.len(),
        revocations: snapshot.revocations.len(),
        crls: snapshot.crls.len(),
        audit_records: records,
        head,
    })
}
