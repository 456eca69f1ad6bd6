//! What hsmca has done, durably: the hash-chained audit log and the ledger of issued
//! certificates.

pub mod audit;
pub mod certificates;
mod config;
pub mod postgres;
pub mod recorder;
mod store;

pub use config::StorageConfig;
pub use store::{CrlContents, Store};
