//! The CRL each issuer serves now, kept in memory beside the ledger's copy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::CrlConfig;

/// A signed CRL, ready to serve.
#[derive(Clone, Debug)]
pub struct CurrentCrl {
    /// DER.
    pub der: Vec<u8>,
    /// Its number.
    pub number: u64,
}

/// The current CRL of each issuer, and how CRLs are made.
pub struct Crls {
    /// How long CRLs live and when they are re-signed.
    pub(super) config: CrlConfig,
    current: Mutex<HashMap<String, Arc<CurrentCrl>>>,
    /// One CRL is signed at a time, so numbers are taken and stored in order.
    pub(super) signing: tokio::sync::Mutex<()>,
}

impl Crls {
    /// No CRLs yet; `config` says how long they live.
    pub fn new(config: CrlConfig) -> Self {
        Crls {
            config,
            current: Mutex::new(HashMap::new()),
            signing: tokio::sync::Mutex::new(()),
        }
    }

    /// The CRL being served for `issuer`, if one is signed.
    pub(super) fn get(&self, issuer: &str) -> Option<Arc<CurrentCrl>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(issuer)
            .cloned()
    }

    /// Serves `crl` for `issuer` from now on.
    pub(super) fn set(&self, issuer: &str, crl: CurrentCrl) {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(issuer.to_owned(), Arc::new(crl));
    }
}
