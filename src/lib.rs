//! hsmca: a hardened, HSM-backed identity signing appliance for service meshes.
//!
//! The mesh root and the appliance's online intermediate keys live in a PKCS#11 HSM and never
//! leave it. This crate is organised in layers with one direction of dependency:
//!
//! * [`ceremony`]: officer ceremonies from strict configs, with transcripts and audit records.
//! * [`pki`]: CA certificates, CRLs and CSRs, checked before and after signing, for any signer.
//! * [`ledger`]: what hsmca has done, durably: the hash-chained audit log and the ledger of
//!   issued certificates.
//! * [`hsm`]: PKCS#11 through `cryptoki`: module, token, login, session pool, keys, signing.
//! * [`config`]: the appliance's TOML configuration file, made of the sections the layers own.
//! * [`digest`]: the SHA-256 fingerprint format every layer records.
//!
//! Layers still to come (`policy`, `api`) build on these and, like `pki` and `ceremony`, never
//! reach into PKCS#11 themselves.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ceremony;
pub mod config;
pub mod digest;
pub mod hsm;
pub mod ledger;
pub mod pki;
