//! The CRL each issuer serves now, kept in memory beside the ledger's copy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::CrlConfig;

/// A signed CRL, ready to serve.
#[derive(Clone, Debug)]
pub struct CurrentCrl {
    /// DER.
    pub der: Vec<u8>,
    /// Its number.
    pub number: u64,
}

/// How long a replica serves its CRL before it looks in the ledger for a newer one that
/// another replica signed (after a revocation there): the bound on how late a revocation
/// shows in every replica's CRL.
pub const CRL_RECHECK: Duration = Duration::from_secs(5);

/// The current CRL of each issuer, and how CRLs are made.
pub struct Crls {
    /// How long CRLs live and when they are re-signed.
    pub(super) config: CrlConfig,
    current: Mutex<HashMap<String, (Instant, Arc<CurrentCrl>)>>,
    /// One CRL is signed at a time in this replica, so numbers are taken and stored in
    /// order; the ledger's lease does the same between replicas.
    pub(super) signing: tokio::sync::Mutex<()>,
    /// This replica's name for the CRL lease: random, new at every start.
    pub(super) holder: String,
}

impl Crls {
    /// No CRLs yet; `config` says how long they live.
    pub fn new(config: CrlConfig) -> Self {
        let mut random = [0u8; 8];
        aws_lc_rs::rand::SecureRandom::fill(&aws_lc_rs::rand::SystemRandom::new(), &mut random)
            .expect("the system RNG works");
        Crls {
            config,
            current: Mutex::new(HashMap::new()),
            signing: tokio::sync::Mutex::new(()),
            holder: hex::encode(random),
        }
    }

    /// The CRL being served for `issuer`, if one is signed.
    pub(super) fn get(&self, issuer: &str) -> Option<Arc<CurrentCrl>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(issuer)
            .map(|(_, crl)| crl.clone())
    }

    /// Whether `issuer`'s CRL was last compared with the ledger more than [`CRL_RECHECK`]
    /// ago (or never).
    pub(super) fn stale(&self, issuer: &str) -> bool {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(issuer)
            .is_none_or(|(checked, _)| checked.elapsed() >= CRL_RECHECK)
    }

    /// Serves `crl` for `issuer` from now on, unless a CRL with a higher number is served
    /// already; either way the ledger was just consulted.
    pub(super) fn set(&self, issuer: &str, crl: CurrentCrl) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let keep = current
            .get(issuer)
            .filter(|(_, served)| served.number > crl.number)
            .map(|(_, served)| served.clone());
        current.insert(
            issuer.to_owned(),
            (Instant::now(), keep.unwrap_or_else(|| Arc::new(crl))),
        );
    }
}
