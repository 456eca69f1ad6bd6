//! The signing service: axum over rustls mTLS. Intermediate CAs submit CSRs to `/v1/sign`
//! and get certificates signed in the HSM under their policy; everyone reads the bundles.
//! Health (`/healthz`, `/readyz`) and Prometheus `/metrics` sit on the same listener.
//!
//! This layer never speaks PKCS#11: it signs through [`crate::hsm::SignerPool`], builds and
//! checks certificates with [`crate::pki`], asks [`crate::policy`] who may do what, and
//! records through [`crate::ledger`].

mod bundle;
pub mod client;
mod config;
mod cpu;
mod crl;
pub mod dev_tls;
mod error;
mod metrics;
mod routes;
mod serials;
mod server;
mod service;
mod signing;
mod tls;
mod vault;

pub use config::{
    CrlConfig, IdentitySource, IssuerConfig, ServerConfig, StaticToken, StorageConfig, TrustConfig,
    VaultConfig,
};
pub use error::ApiError;
pub use server::serve;
pub use service::{Service, StartError};
pub use tls::{read_certificates, read_private_key, server_config};
#[cfg(fuzzing)]
pub use vault::decode_sign_body as fuzz_vault_sign_body;
