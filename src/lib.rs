//! hsmca: a hardened, HSM-backed identity signing appliance for service meshes.
//!
//! The mesh root and the appliance's online intermediate keys live in a PKCS#11 HSM and never
//! leave it. This crate is organised in layers with one direction of dependency:
//!
//! * [`hsm`]: PKCS#11 through `cryptoki`: module, token, login, session pool, keys, signing.
//! * [`ledger`]: what hsmca has done, durably: the hash-chained audit log.
//! * [`config`]: the appliance's TOML configuration file, made of the sections the layers own.
//!
//! Later layers (`pki`, `policy`, `ledger`, `api`, `ceremony`) build on [`hsm`] and never reach
//! into PKCS#11 themselves.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ceremony;
pub mod config;
pub mod hsm;
pub mod ledger;
pub mod pki;
