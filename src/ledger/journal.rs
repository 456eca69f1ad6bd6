//! The recorder's one write: a group of entries, each an audit event with what it changed in
//! the store (a certificate issued, a certificate revoked), made durable together in one
//! transaction. Where they go is the backend's: SQLite with the audit file written after
//! ([`super::sqlite_journal::SqliteJournal`], the embedded default), or PostgreSQL
//! ([`super::postgres::PostgresLedger`]).

use serde_json::json;

use super::audit::AuditError;
use super::certificates::{IssuedCertificate, LedgerError, NewRevocation};
use super::chain::{AuditEvent, AuditReceipt};

/// What an entry changes in the store, beside its audit record.
#[derive(Clone, Debug)]
pub enum Change {
    /// A certificate was issued: its row.
    Issued(IssuedCertificate),
    /// A certificate was revoked.
    Revoked(NewRevocation),
}

/// One thing to record: what happened, and the certificate that was issued by it.
#[derive(Clone, Debug)]
pub struct JournalEntry {
    /// The change it records, if any (a refusal changes nothing).
    pub change: Option<Change>,
    /// The audit event.
    pub event: AuditEvent,
}

/// Why a group was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Nothing of the group is durable (the database could not be reached, or its
    /// transaction rolled back), and the audit chain is as it was: a later group may succeed.
    #[error("{0}")]
    Unavailable(LedgerError),
    /// The group is durable in the store, but the audit file could not be written and may
    /// end in a partial record: nothing more may be recorded until hsmca is restarted, which
    /// completes the file from the store (`hsmca audit verify` checks it).
    #[error("{0}")]
    Audit(AuditError),
}

/// Per entry of a group: its audit record's receipt, or why its change was not made (its
/// entry was then audited as [`unrecorded`]).
pub type EntryResults = Vec<Result<AuditReceipt, LedgerError>>;

/// Where the recorder makes groups durable.
pub trait Journal: Send {
    /// Records `group` in order, in one transaction: every change with its entry's audit
    /// record. A change that cannot be made (a serial taken, a certificate revoked already)
    /// fails alone, and its entry is audited as [`unrecorded`] instead; the rest of the
    /// group is recorded.
    fn commit(&mut self, group: &[JournalEntry]) -> Result<EntryResults, JournalError>;
}

/// The audit event that replaces an entry whose change could not be made: a certificate is
/// never handed out, a revocation is refused, and the record says why.
pub fn unrecorded(event: &AuditEvent, error: &LedgerError) -> AuditEvent {
    AuditEvent {
        event: format!("{}.unrecorded", event.event),
        actor: event.actor.clone(),
        details: json!({ "error": error.to_string(), "request": event.details }),
    }
}

/// The audit events of `group` once its changes were made as `stored` says: an entry whose
/// change failed is audited as [`unrecorded`].
pub fn audited_events(
    group: &[JournalEntry],
    stored: &[Result<(), LedgerError>],
) -> Vec<AuditEvent> {
    group
        .iter()
        .zip(stored)
        .map(|(entry, result)| match result {
            Ok(()) => entry.event.clone(),
            Err(error) => unrecorded(&entry.event, error),
        })
        .collect()
}
