//! The signing service: axum over rustls mTLS. Intermediate CAs submit CSRs to `/v1/sign`
//! and get certificates signed in the HSM under their policy; everyone reads the bundles.
//! Health (`/healthz`, `/readyz`) and Prometheus `/metrics` sit on the same listener.
//!
//! This layer never speaks PKCS#11: it signs through [`crate::hsm::SignerPool`], builds and
//! checks certificates with [`crate::pki`], asks [`crate::policy`] who may do what, and
//! records through [`crate::ledger`].

mod body;
mod bundle;
mod checkpoints;
pub mod client;
mod cpu;
mod crl;
pub mod dev_tls;
mod error;
mod identity;
mod jwt;
mod jwt_keys;
mod metrics;
mod public;
mod reload;
mod revoke;
mod routes;
mod serials;
mod server;
mod service;
mod settings;
mod signing;
mod tls;
mod vault;

pub use error::{ApiError, ReloadError, StartError};
pub use server::serve;
pub use service::Service;
pub use tls::{read_certificates, read_private_key, server_config};
#[cfg(fuzzing)]
pub use vault::decode_sign_body as fuzz_vault_sign_body;
