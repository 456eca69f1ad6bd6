//! hsmca: a hardened, HSM-backed identity signing appliance for service meshes.
//!
//! The mesh root and the appliance's online intermediate keys live in a PKCS#11 HSM and never
//! leave it. This crate is organised in layers with one direction of dependency, each layer
//! using only those listed after it:
//!
//! * [`api`]: the signing service: axum over rustls mTLS, the native `/v1` API, the
//!   Vault-compatible subset, CRL publishing, reload, health and metrics, and the client side
//!   of `hsmca request`.
//! * [`ceremony`]: officer ceremonies from strict configs, with transcripts and audit records.
//! * [`config`]: the appliance's TOML configuration file: the sections the layers below own,
//!   and those only the service reads.
//! * [`policy`]: which client may ask for which profile, names, lifetimes and rate.
//! * [`ledger`]: what hsmca has done, durably: the hash-chained audit log and the ledger of
//!   issued certificates, behind a backend-neutral seam (`[storage]`).
//! * [`pki`]: CA certificates, CRLs and CSRs, checked before and after signing, for any signer.
//! * [`hsm`]: PKCS#11 through `cryptoki`: module, token, login, session pool, keys, signing.
//! * [`digest`]: the SHA-256 fingerprint format every layer records.
//! * [`duration`]: `1h30m`-style durations for the configuration and the API.
//! * [`files`]: output files created exclusively, with the mode they need from the start.
//! * [`queue`]: the job queue of the worker threads (HSM sessions, verifications).
//! * [`secret`]: PINs and passwords from a private file or the environment, never echoed.
//!
//! Only `hsm` speaks PKCS#11; `api` and `ceremony` reach the HSM through it. No file of the
//! crate imports another that imports it back, directly or not: `.ci/import-cycles.py`
//! checks this in CI.
// `unsafe` only at the PKCS#11 boundary: hsm/token_info.rs, which allows it for itself.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod ceremony;
pub mod config;
pub mod digest;
pub mod duration;
pub mod files;
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod hsm;
pub mod ledger;
pub mod pki;
pub mod policy;
pub mod queue;
pub mod secret;
