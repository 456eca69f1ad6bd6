//! The recorder's one write: a group of entries, each an audit event with the certificate it
//! issued (if any), made durable together. Where they go is the backend's: SQLite and the
//! audit file ([`SplitJournal`], the embedded default), or one PostgreSQL transaction
//! ([`super::postgres::PostgresJournal`]).

use serde_json::json;

use super::audit::{AuditError, AuditStore};
use super::certificates::{CertificateStore, IssuedCertificate, LedgerError};
use super::chain::{AuditEvent, AuditReceipt};

/// One thing to record: what happened, and the certificate that was issued by it.
#[derive(Clone, Debug)]
pub struct JournalEntry {
    /// The certificate, for an issuance.
    pub certificate: Option<IssuedCertificate>,
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
    /// The audit chain could not be extended and may now end in a partial record: nothing
    /// more may be recorded until an operator has looked (`hsmca audit verify`).
    #[error("{0}")]
    Audit(AuditError),
}

/// Per entry of a group: its audit record's receipt, or why its certificate was not stored
/// (its entry was then audited as [`unrecorded`]).
pub type EntryResults = Vec<Result<AuditReceipt, LedgerError>>;

/// Where the recorder makes groups durable.
pub trait Journal: Send {
    /// Records `group` in order: every certificate with its entry's audit record. A
    /// certificate that cannot be stored (its serial is taken) fails alone, and its entry
    /// is audited as [`unrecorded`] instead; the rest of the group is recorded.
    fn commit(&mut self, group: &[JournalEntry]) -> Result<EntryResults, JournalError>;
}

/// The audit event that replaces an entry whose certificate could not be stored: the
/// certificate is never handed out, and the record says why.
pub fn unrecorded(event: &AuditEvent, error: &LedgerError) -> AuditEvent {
    AuditEvent {
        event: format!("{}.unrecorded", event.event),
        actor: event.actor.clone(),
        details: json!({ "error": error.to_string(), "request": event.details }),
    }
}

/// The audit events of `group` once its certificates were stored as `stored` says: an entry
/// whose certificate failed is audited as [`unrecorded`].
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

/// Certificates in a [`CertificateStore`] (one transaction per group, committed first), then
/// the audit records in an [`AuditStore`] (one sync per group).
pub struct SplitJournal {
    store: Box<dyn CertificateStore>,
    audit: Box<dyn AuditStore>,
}

impl SplitJournal {
    /// A journal over `store` and `audit`.
    pub fn new(store: Box<dyn CertificateStore>, audit: Box<dyn AuditStore>) -> Self {
        SplitJournal { store, audit }
    }

    /// Stores the group's certificates in one transaction; if that fails, one by one, so a
    /// single bad row does not fail its neighbours.
    fn store_certificates(&mut self, group: &[JournalEntry]) -> Vec<Result<(), LedgerError>> {
        let certificates: Vec<IssuedCertificate> = group
            .iter()
            .filter_map(|entry| entry.certificate.clone())
            .collect();
        if certificates.is_empty() || self.store.record(&certificates).is_ok() {
            return group.iter().map(|_| Ok(())).collect();
        }
        group
            .iter()
            .map(|entry| match &entry.certificate {
                None => Ok(()),
                Some(certificate) => self.store.record(std::slice::from_ref(certificate)),
            })
            .collect()
    }
}

impl Journal for SplitJournal {
    fn commit(&mut self, group: &[JournalEntry]) -> Result<EntryResults, JournalError> {
        let stored = self.store_certificates(group);
        let events = audited_events(group, &stored);
        let receipts = self
            .audit
            .append_all(&events)
            .map_err(JournalError::Audit)?;
        Ok(stored
            .into_iter()
            .zip(receipts)
            .map(|(result, receipt)| result.map(|()| receipt))
            .collect())
    }
}
