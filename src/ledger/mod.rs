//! What hsmca has done, durably: the hash-chained audit log and the ledger of issued
//! certificates, and the `[storage]` section that says where they are.
//!
//! Where state is kept is this layer's alone, so that another backend (PostgreSQL, for
//! several replicas) can be added here without touching the service:
//!
//! * [`certificates`]: the records and [`certificates::LedgerError`], the backend contract
//!   [`certificates::CertificateStore`] and its SQLite implementation.
//! * [`Store`]: the ledger as the service reaches it, each operation on a blocking thread.
//! * [`recorder`]: group commit of issued certificates and revocations together with their
//!   audit records, written through a [`journal::Journal`] in one transaction: SQLite with
//!   the audit file written after ([`sqlite_journal::SqliteJournal`]), or PostgreSQL.
//! * [`reconcile`]: the store's certificates matched with their `sign.issued` records.
//! * [`report`]: what an auditor asks of a period, counted from the audit chain.
//! * [`migrate`]: an SQLite ledger and its audit log copied into PostgreSQL.
//! * [`postgres`]: the PostgreSQL backend for several replicas: settings, pool, schema,
//!   [`postgres::PostgresLedger`].
//! * [`chain`]: how audit records are hashed, linked and checked; [`audit`]: the file that
//!   holds them.

pub mod audit;
pub mod certificates;
pub mod chain;
pub mod checkpoint;
mod config;
pub mod journal;
pub mod migrate;
pub mod postgres;
pub mod reconcile;
pub mod recorder;
pub mod report;
pub mod sqlite_journal;
mod store;
pub mod witness;

pub use config::{StorageBackend, StorageConfig};
pub use store::{CrlContents, Store};
