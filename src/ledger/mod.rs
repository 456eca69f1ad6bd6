//! What hsmca has done, durably: the hash-chained audit log and the ledger of issued
//! certificates.

pub mod audit;
pub mod certificates;
pub mod postgres;
pub mod recorder;
