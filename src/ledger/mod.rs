//! What hsmca has done, durably: the hash-chained audit log (and, with the signing service,
//! the ledger of issued certificates).

pub mod audit;
