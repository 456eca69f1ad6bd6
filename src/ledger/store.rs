//! The ledger as the signing service uses it: the operations it needs beside issuance and
//! revocation (look up by serial, the inputs and storage of a CRL, the trust bundle's
//! sequence, Vault tokens), run on tokio's blocking threads so that no async worker waits on
//! the database; on a backend that takes operations at once (PostgreSQL's pool) they run
//! side by side, on SQLite's one connection they take turns.
//!
//! Whatever [`CertificateStore`] backend is behind it, nothing above this layer names it.
//! Issuance and revocation go through the [`super::recorder::Recorder`], which writes them
//! with their audit records.

use std::sync::{Arc, Mutex};

use super::certificates::{
    CertificateFilter, CertificateStore, IssuedCertificate, LedgerError, ListedCertificate,
    Revocation, StoredCrl, StoredToken,
};

/// A handle on the ledger, shared by the request handlers; cloning it shares the backend.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Mutex<Box<dyn CertificateStore>>>,
}

/// What a new CRL of an issuer is made of: its number and the issuer's revocations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlContents {
    /// The number the new CRL takes: one above the issuer's last.
    pub number: u64,
    /// The issuer's revoked certificates, oldest first.
    pub revoked: Vec<Revocation>,
}

impl Store {
    /// A handle on `backend`.
    pub fn new(backend: Box<dyn CertificateStore>) -> Self {
        Store {
            backend: Arc::new(Mutex::new(backend)),
        }
    }

    /// Runs `operation` on the backend here, on the calling thread: for threads that may
    /// block (start-up, a reload's loading task), never for an async worker.
    pub fn blocking<T>(
        &self,
        operation: impl FnOnce(&mut dyn CertificateStore) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        let mut backend = self.backend.lock().unwrap_or_else(|e| e.into_inner());
        match backend.handle() {
            Some(mut handle) => {
                drop(backend);
                operation(handle.as_mut())
            }
            None => operation(backend.as_mut()),
        }
    }

    /// Runs `operation` on the backend on a blocking thread.
    async fn run<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&mut dyn CertificateStore) -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.blocking(operation))
            .await
            .map_err(|e| LedgerError::Interrupted(e.to_string()))?
    }

    /// Whether the backend answers (a shared database may be down while this replica runs).
    pub async fn ping(&self) -> Result<(), LedgerError> {
        self.run(|store| store.ping()).await
    }

    /// The certificates `filter` selects, oldest first (see [`CertificateStore::list`]).
    pub async fn list(
        &self,
        filter: CertificateFilter,
        now: i64,
    ) -> Result<Vec<ListedCertificate>, LedgerError> {
        self.run(move |store| store.list(&filter, now)).await
    }

    /// The certificate with `serial` (lower-case hex), if issued.
    pub async fn find(&self, serial: String) -> Result<Option<IssuedCertificate>, LedgerError> {
        self.run(move |store| store.find(&serial)).await
    }

    /// When the certificate with `serial` was revoked (Unix seconds), if it was.
    pub async fn revoked_at(&self, serial: String) -> Result<Option<i64>, LedgerError> {
        self.run(move |store| store.revoked_at(&serial)).await
    }

    /// The last CRL stored for the issuer with `issuer_key_id`, if any.
    pub async fn latest_crl(
        &self,
        issuer_key_id: String,
    ) -> Result<Option<StoredCrl>, LedgerError> {
        self.run(move |store| store.latest_crl(&issuer_key_id))
            .await
    }

    /// The number and the revocations of the issuer's next CRL, read together.
    pub async fn next_crl(&self, issuer_key_id: String) -> Result<CrlContents, LedgerError> {
        self.run(move |store| {
            Ok(CrlContents {
                number: store.next_crl_number(&issuer_key_id)?,
                revoked: store.revoked(&issuer_key_id)?,
            })
        })
        .await
    }

    /// Stores a signed CRL; its number must be above the issuer's last one.
    pub async fn store_crl(
        &self,
        issuer_key_id: String,
        crl: StoredCrl,
    ) -> Result<(), LedgerError> {
        self.run(move |store| store.store_crl(&issuer_key_id, &crl))
            .await
    }

    /// Keeps a new Vault token; forgets those expired before `now` (Unix seconds).
    pub async fn save_token(&self, token: StoredToken, now: i64) -> Result<(), LedgerError> {
        self.run(move |store| store.save_token(&token, now)).await
    }

    /// The token whose SHA-256 is `sha256` (hex), if kept.
    pub async fn find_token(&self, sha256: String) -> Result<Option<StoredToken>, LedgerError> {
        self.run(move |store| store.find_token(&sha256)).await
    }

    /// Sets a token's expiry.
    pub async fn renew_token(&self, sha256: String, expires_at: i64) -> Result<(), LedgerError> {
        self.run(move |store| store.renew_token(&sha256, expires_at))
            .await
    }

    /// Takes the right to sign the issuer's next CRL for `holder` until `until`, unless
    /// another replica holds it past `now`; whether `holder` has it.
    pub async fn lease_crl(
        &self,
        issuer_key_id: String,
        holder: String,
        now: i64,
        until: i64,
    ) -> Result<bool, LedgerError> {
        self.run(move |store| store.lease_crl(&issuer_key_id, &holder, now, until))
            .await
    }

    /// Gives the CRL lease up.
    pub async fn release_crl(
        &self,
        issuer_key_id: String,
        holder: String,
    ) -> Result<(), LedgerError> {
        self.run(move |store| store.release_crl(&issuer_key_id, &holder))
            .await
    }
}
