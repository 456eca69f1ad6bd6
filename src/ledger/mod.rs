//! What hsmca has done, durably: the hash-chained audit log and the ledger of issued
//! certificates.

pub mod audit;
pub mod certificates;
pub mod chain;
mod config;
pub mod recorder;
mod store;

pub use config::StorageConfig;
pub use store::{CrlContents, Store};
