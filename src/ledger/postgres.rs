//! PostgreSQL, the store several replicas share: its `[storage]` settings, the connection
//! pool (TLS verify-full through rustls, the password from a private file or the
//! environment), the versioned schema, and [`PostgresLedger`], the certificate store.
//!
//! Migrations run in one transaction under an advisory lock, so replicas starting together
//! apply each exactly once, and a half-applied schema never exists; a binary refuses a
//! database whose schema is newer than the newest it knows.
//!
//! What must hold across replicas is enforced by the database, not by a process: serials by
//! the primary key, one revocation per serial likewise, CRL numbers by a per-issuer
//! transaction lock and a check against the stored maximum, the bundle sequence by a lock on
//! its table. The audit chain is one for the whole cluster: a group's certificates and its
//! records commit in one transaction that holds the chain's head row locked, so records of
//! all replicas link in one order, and a certificate is never stored without its record.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::certificates::{
    CertificateFilter, CertificateStore, IssuedCertificate, LISTED_COLUMNS, LedgerError,
    LedgerSnapshot, ListedCertificate, NewRevocation, Revocation, StoredCrl, StoredToken,
    parse_sans,
};
use super::chain::{AuditChain, record_time, verify_records};
use super::journal::{Change, EntryResults, Journal, JournalEntry, JournalError, audited_events};
use super::reconcile::{RECENT_RECORDS, Reconciliation, reconcile, reconcile_recent, window_start};
use crate::pki::RevocationReason;
use crate::secret::{SecretError, SecretSource};

/// The `postgres` settings of `[storage]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgresql://USER@HOST:PORT/DATABASE`; a password in it is refused (it would end up
    /// in logs and process listings): use `password_file` or `password_env`.
    pub postgres: String,
    /// A file holding the password, mode 0600 (refused otherwise).
    pub password_file: Option<PathBuf>,
    /// Or an environment variable holding it.
    pub password_env: Option<String>,
    /// `verify-full` (default: TLS, the server's certificate checked against `ca_file` and
    /// its name against the URL's host) or `disable` (a unix socket or loopback only).
    #[serde(default)]
    pub sslmode: PostgresTls,
    /// The CA that issued the server's certificate (PEM), for `verify-full`.
    pub ca_file: Option<PathBuf>,
    /// Connections per replica (default 8).
    #[serde(default = "PostgresConfig::default_pool_size")]
    pub pool_size: usize,
}

/// How hsmca talks to the server.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresTls {
    /// TLS, the certificate verified against `ca_file` and the host name.
    #[default]
    VerifyFull,
    /// No TLS: only for a unix socket or a loopback address.
    Disable,
}

/// Why the PostgreSQL store cannot be used. Never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// The settings are wrong; says which and why.
    #[error("[storage] postgres: {0}")]
    Config(String),
    /// The password could not be read.
    #[error("[storage] postgres password: {0}")]
    Password(#[from] SecretError),
    /// The CA file could not be read or holds no certificate.
    #[error("[storage] postgres ca_file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not be reached or refused us.
    #[error("PostgreSQL at {target}: {source}")]
    Unavailable {
        /// `host:port/database`, without credentials.
        target: String,
        /// What the driver or the pool said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A statement failed.
    #[error("PostgreSQL at {target}: {source}")]
    Query {
        /// `host:port/database`, without credentials.
        target: String,
        /// What the server said.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database was migrated by a newer hsmca.
    #[error(
        "PostgreSQL at {target}: the schema is at version {found}, newer than this hsmca knows ({known}); run the hsmca release that migrated it, or a newer one"
    )]
    SchemaTooNew {
        /// `host:port/database`.
        target: String,
        /// The database's version.
        found: i32,
        /// The newest this binary knows.
        known: i32,
    },
}

impl PostgresConfig {
    /// Connections per replica when `pool_size` is not set.
    pub const DEFAULT_POOL_SIZE: usize = 8;

    fn default_pool_size() -> usize {
        Self::DEFAULT_POOL_SIZE
    }

    /// Checks what can be checked without the server: the URL, one password source, TLS
    /// settings, the pool size.
    pub fn validate(&self) -> Result<(), PostgresError> {
        self.driver_config().map(|_| ())
    }

    fn password_source(&self) -> Result<SecretSource, PostgresError> {
        match (&self.password_file, &self.password_env) {
            (Some(path), None) => Ok(SecretSource::File(path.clone())),
            (None, Some(var)) => Ok(SecretSource::Env(var.clone())),
            (None, None) => Err(PostgresError::Config(
                "set password_file (mode 0600) or password_env".into(),
            )),
            (Some(_), Some(_)) => Err(PostgresError::Config(
                "set one of password_file and password_env, not both".into(),
            )),
        }
    }

    /// The driver's settings from the URL, without the password; checks them.
    fn driver_config(&self) -> Result<tokio_postgres::Config, PostgresError> {
        if !(self.postgres.starts_with("postgresql://") || self.postgres.starts_with("postgres://"))
        {
            return Err(PostgresError::Config(
                "postgres must be a URL: postgresql://USER@HOST:PORT/DATABASE".into(),
            ));
        }
        // Parsed without echoing the text: it might hold a password after all.
        let config = tokio_postgres::Config::from_str(&self.postgres).map_err(|_| {
            PostgresError::Config(
                "postgres is not a valid URL: postgresql://USER@HOST:PORT/DATABASE".into(),
            )
        })?;
        if config.get_password().is_some() {
            return Err(PostgresError::Config(
                "the URL holds a password: remove it and use password_file or password_env".into(),
            ));
        }
        if config.get_user().is_none() || config.get_dbname().is_none() {
            return Err(PostgresError::Config(
                "the URL must name the user and the database: postgresql://USER@HOST:PORT/DATABASE"
                    .into(),
            ));
        }
        if self.pool_size == 0 {
            return Err(PostgresError::Config("pool_size must be at least 1".into()));
        }
        match (self.sslmode, &self.ca_file) {
            (PostgresTls::VerifyFull, None) => {
                return Err(PostgresError::Config(
                    "sslmode verify-full (the default) needs ca_file, the CA of the server's certificate; or sslmode = \"disable\" for a unix socket or loopback server"
                        .into(),
                ));
            }
            (PostgresTls::Disable, _) if !config.get_hosts().iter().all(is_local) => {
                return Err(PostgresError::Config(
                    "sslmode disable is for a unix socket or a loopback address only; use verify-full with ca_file for a server on the network"
                        .into(),
                ));
            }
            _ => {}
        }
        self.password_source()?;
        Ok(config)
    }

    /// `host:port/database` for messages: never the user's password, which is not in it.
    pub fn target(&self) -> String {
        match tokio_postgres::Config::from_str(&self.postgres) {
            Ok(config) => {
                let host = match config.get_hosts().first() {
                    Some(Host::Tcp(host)) => host.clone(),
                    Some(Host::Unix(path)) => path.display().to_string(),
                    None => "localhost".into(),
                };
                let port = config.get_ports().first().copied().unwrap_or(5432);
                format!("{host}:{port}/{}", config.get_dbname().unwrap_or_default())
            }
            Err(_) => "(invalid URL)".into(),
        }
    }

    /// Reads the password, builds the pool and checks that the server answers, with the
    /// schema migrated to this binary's version. Connections are made as needed, up to
    /// `pool_size`; one that breaks is replaced on the next use.
    pub async fn connect(&self) -> Result<Pool, PostgresError> {
        let mut config = self.driver_config()?;
        let password: SecretString = crate::secret::load(&self.password_source()?)?;
        config.password(password.expose_secret().as_bytes());
        config.connect_timeout(std::time::Duration::from_secs(5));
        config.ssl_mode(match self.sslmode {
            PostgresTls::VerifyFull => SslMode::Require,
            PostgresTls::Disable => SslMode::Disable,
        });
        let tls = MakeRustlsConnect::new(self.tls_config()?);
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .wait_timeout(Some(std::time::Duration::from_secs(5)))
            .build()
            .map_err(|e| PostgresError::Config(e.to_string()))?;
        migrate(&pool, &self.target()).await?;
        Ok(pool)
    }

    /// The rustls client settings: the CA file's certificates as the only roots (with
    /// `verify-full`); the host name is checked by rustls against the URL's host.
    fn tls_config(&self) -> Result<rustls::ClientConfig, PostgresError> {
        let mut roots = rustls::RootCertStore::empty();
        if let (PostgresTls::VerifyFull, Some(path)) = (self.sslmode, &self.ca_file) {
            for certificate in read_ca_file(path)? {
                roots.add(certificate).map_err(|e| PostgresError::CaFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PostgresError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

fn is_local(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

fn read_ca_file(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PostgresError> {
    use rustls::pki_types::pem::PemObject;
    let error = |reason: String| PostgresError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let certificates = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(error("no PEM certificate in it".into()));
    }
    Ok(certificates)
}

/// The certificate store on PostgreSQL. Its [`CertificateStore`] methods block the calling
/// thread until the server answers: call them where blocking is allowed (the
/// [`super::Store`]'s blocking threads, the recorder's writer thread), never on an async
/// worker.
#[derive(Clone)]
pub struct PostgresLedger {
    pool: Pool,
    runtime: tokio::runtime::Handle,
    target: String,
}

impl PostgresLedger {
    /// Connects (see [`PostgresConfig::connect`]); the store runs its queries on `runtime`.
    pub async fn connect(
        config: &PostgresConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, PostgresError> {
        Ok(PostgresLedger {
            pool: config.connect().await?,
            runtime,
            target: config.target(),
        })
    }

    fn backend(&self) -> impl Fn(tokio_postgres::Error) -> LedgerError + '_ {
        |source| LedgerError::Backend {
            location: self.target.clone(),
            source: Box::new(source),
        }
    }

    /// Runs `operation` with a pooled connection, blocking this thread until it is done.
    fn with_client<T>(
        &self,
        operation: impl AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        self.runtime.block_on(async {
            let mut client = self.pool.get().await.map_err(|e| LedgerError::Backend {
                location: self.target.clone(),
                source: Box::new(e),
            })?;
            operation(&mut client).await
        })
    }
}

impl PostgresLedger {
    /// The first kind of content the database holds (`certificates`, `audit records`, ...),
    /// or `None` when it is as a fresh migration left it.
    pub fn first_content(&self) -> Result<Option<String>, LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            for table in [
                "certificates",
                "revocations",
                "crls",
                "bundles",
                "vault_tokens",
                "audit_records",
            ] {
                let row = client
                    .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
                    .await
                    .map_err(&backend)?;
                if row.get::<_, bool>(0) {
                    return Ok(Some(table.replace('_', " ")));
                }
            }
            Ok(None)
        })
    }

    /// Writes `snapshot` and the audit records `lines` (verified, ending in `head`) into
    /// this empty database, in one transaction.
    pub fn import(
        &self,
        snapshot: &LedgerSnapshot,
        lines: &[&str],
        head: &str,
    ) -> Result<(), LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            let transaction = client.transaction().await.map_err(&backend)?;
            // Nobody else may write while the ledger arrives.
            transaction
                .batch_execute(
                    "LOCK TABLE certificates, revocations, crls, bundles, vault_tokens, audit_records, audit_head IN EXCLUSIVE MODE",
                )
                .await
                .map_err(&backend)?;
            let certificates: Vec<&IssuedCertificate> =
                snapshot.certificates.iter().map(|(c, _)| c).collect();
            for chunk in certificates.chunks(1000) {
                insert_rows(&transaction, chunk).await.map_err(&backend)?;
            }
            for (certificate, issued_at) in &snapshot.certificates {
                transaction
                    .execute(
                        "UPDATE certificates SET issued_at = $2 WHERE serial = $1",
                        &[&certificate.serial, issued_at],
                    )
                    .await
                    .map_err(&backend)?;
            }
            for (serial, reason, revoked_at, officer) in &snapshot.revocations {
                transaction
                    .execute(
                        "INSERT INTO revocations (serial, reason, revoked_at, officer) VALUES ($1, $2, $3, $4)",
                        &[serial, reason, revoked_at, officer],
                    )
                    .await
                    .map_err(&backend)?;
            }
            for (issuer_key_id, crl) in &snapshot.crls {
                transaction
                    .execute(
                        "INSERT INTO crls (issuer_key_id, number, this_update, next_update, der) VALUES ($1, $2, $3, $4, $5)",
                        &[issuer_key_id, &(crl.number as i64), &crl.this_update, &crl.next_update, &crl.der],
                    )
                    .await
                    .map_err(&backend)?;
            }
            for (sequence, sha256, published_at) in &snapshot.bundles {
                transaction
                    .execute(
                        "INSERT INTO bundles (sequence, sha256, published_at) VALUES ($1, $2, $3)",
                        &[sequence, sha256, published_at],
                    )
                    .await
                    .map_err(&backend)?;
            }
            for token in &snapshot.tokens {
                transaction
                    .execute(
                        "INSERT INTO vault_tokens (token_sha256, identity, accessor, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                        &[&token.sha256, &token.identity, &token.accessor, &token.issued_at, &token.expires_at],
                    )
                    .await
                    .map_err(&backend)?;
            }
            for (chunk_start, chunk) in lines.chunks(1000).enumerate() {
                let first = (chunk_start * 1000) as i64 + 1;
                let seqs: Vec<i64> = (first..first + chunk.len() as i64).collect();
                transaction
                    .execute(
                        "INSERT INTO audit_records (seq, line) SELECT * FROM unnest($1::bigint[], $2::text[])",
                        &[&seqs, &chunk],
                    )
                    .await
                    .map_err(&backend)?;
            }
            transaction
                .execute(
                    "UPDATE audit_head SET seq = $1, hash = $2",
                    &[&(lines.len() as i64), &head],
                )
                .await
                .map_err(&backend)?;
            transaction.commit().await.map_err(&backend)
        })
    }

    /// Checks the cluster's audit chain, every record in order, and that it ends where the
    /// head row says; returns the number of records and the head hash.
    pub fn verify_audit(&self) -> Result<(u64, String), LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            let transaction = snapshot(client, &backend).await?;
            let rows = transaction
                .query("SELECT line FROM audit_records ORDER BY seq", &[])
                .await
                .map_err(&backend)?;
            let head = transaction
                .query_one("SELECT seq, hash FROM audit_head", &[])
                .await
                .map_err(&backend)?;
            let broken = |seq, reason| LedgerError::ChainBroken {
                location: self.target.clone(),
                seq,
                reason,
            };
            let (records, hash) = verify_records(rows.iter().map(|row| row.get::<_, &str>(0)))
                .map_err(|(seq, reason)| broken(seq, reason))?;
            let (head_seq, head_hash): (i64, String) = (head.get(0), head.get(1));
            if (head_seq.unsigned_abs(), head_hash.as_str()) != (records, hash.as_str()) {
                return Err(broken(
                    records,
                    format!(
                        "the chain ends at record {records} ({hash}) but its head row says record {head_seq} ({head_hash}): records were removed"
                    ),
                ));
            }
            Ok((records, hash))
        })
    }

    /// The check at start: the certificates issued since the oldest of the chain's newest
    /// [`RECENT_RECORDS`] records, matched with the `sign.issued` records among them, read in
    /// one snapshot.
    pub fn reconcile_recent(&self) -> Result<Reconciliation, LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            let transaction = snapshot(client, &backend).await?;
            let newest = transaction
                .query(
                    "SELECT seq, line FROM
                         (SELECT seq, line FROM audit_records ORDER BY seq DESC LIMIT $1) newest
                     ORDER BY seq",
                    &[&(RECENT_RECORDS as i64)],
                )
                .await
                .map_err(&backend)?;
            let first_seq = newest
                .first()
                .map_or(1, |row| row.get::<_, i64>(0).unsigned_abs());
            let records: Vec<String> = newest.iter().map(|row| row.get(1)).collect();
            let rows = transaction
                .query(
                    "SELECT serial, issued_at FROM certificates WHERE issued_at >= $1",
                    &[&window_start(&records).saturating_sub(1)],
                )
                .await
                .map_err(&backend)?;
            Ok(reconcile_recent(
                rows.iter().map(|row| (row.get(0), row.get(1))),
                &records,
                first_seq,
            ))
        })
    }

    /// Matches the cluster's certificates with the chain's `sign.issued` records, both read
    /// in one snapshot: exact even while replicas write.
    pub fn reconcile_audit(&self) -> Result<Reconciliation, LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            let transaction = snapshot(client, &backend).await?;
            let serials = transaction
                .query("SELECT serial FROM certificates", &[])
                .await
                .map_err(&backend)?;
            let records = transaction
                .query("SELECT line FROM audit_records ORDER BY seq", &[])
                .await
                .map_err(&backend)?;
            Ok(reconcile(
                serials.iter().map(|row| row.get::<_, String>(0)),
                records.iter().map(|row| row.get::<_, &str>(0)),
            ))
        })
    }

    /// Writes the whole audit chain, oldest first, as the JSON lines of an audit log file
    /// (which `hsmca audit verify FILE` checks); returns how many records it wrote.
    pub fn export_audit(&self, out: &mut dyn std::io::Write) -> Result<u64, LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            let rows = client
                .query("SELECT line FROM audit_records ORDER BY seq", &[])
                .await
                .map_err(&backend)?;
            for row in &rows {
                writeln!(out, "{}", row.get::<_, &str>(0)).map_err(|e| LedgerError::Backend {
                    location: "the export".into(),
                    source: Box::new(e),
                })?;
            }
            Ok(rows.len() as u64)
        })
    }
}

impl Journal for PostgresLedger {
    fn commit(&mut self, group: &[JournalEntry]) -> Result<EntryResults, JournalError> {
        let backend = self.backend();
        self.with_client(async |client| {
            let mut transaction = client.transaction().await.map_err(&backend)?;
            let stored = make_changes(&mut transaction, group, &backend).await?;
            let events = audited_events(group, &stored);
            // The head row stays locked until commit: another replica's group waits here,
            // then links to this one's last record.
            let head = transaction
                .query_one("SELECT seq, hash FROM audit_head FOR UPDATE", &[])
                .await
                .map_err(&backend)?;
            let chain = AuditChain::after(head.get::<_, i64>(0).unsigned_abs(), head.get(1));
            let linked = chain.link(&record_time(), &events);
            let seqs: Vec<i64> = linked.receipts.iter().map(|r| r.seq as i64).collect();
            let lines: Vec<&str> = linked.lines.lines().collect();
            transaction
                .execute(
                    "INSERT INTO audit_records (seq, line) SELECT * FROM unnest($1::bigint[], $2::text[])",
                    &[&seqs, &lines],
                )
                .await
                .map_err(&backend)?;
            if let Some(last) = linked.receipts.last() {
                transaction
                    .execute(
                        "UPDATE audit_head SET seq = $1, hash = $2",
                        &[&(last.seq as i64), &last.hash],
                    )
                    .await
                    .map_err(&backend)?;
            }
            transaction.commit().await.map_err(&backend)?;
            Ok(stored
                .into_iter()
                .zip(linked.receipts)
                .map(|(result, receipt)| result.map(|()| receipt))
                .collect())
        })
        .map_err(JournalError::Unavailable)
    }
}

/// Makes the group's changes in `transaction`: its certificates in one statement, or, when
/// a serial is taken, one by one under savepoints, so the duplicate fails alone; each
/// revocation under a savepoint of its own, so a second revocation fails alone.
async fn make_changes(
    transaction: &mut deadpool_postgres::Transaction<'_>,
    group: &[JournalEntry],
    backend: &impl Fn(tokio_postgres::Error) -> LedgerError,
) -> Result<Vec<Result<(), LedgerError>>, LedgerError> {
    let certificates: Vec<&IssuedCertificate> = group
        .iter()
        .filter_map(|entry| match &entry.change {
            Some(Change::Issued(certificate)) => Some(certificate),
            _ => None,
        })
        .collect();
    let mut certificates_stored = certificates.is_empty();
    if !certificates_stored {
        let batch = transaction.savepoint("batch").await.map_err(backend)?;
        match insert_rows(&batch, &certificates).await {
            Ok(()) => {
                batch.commit().await.map_err(backend)?;
                certificates_stored = true;
            }
            Err(error) if is_unique_violation(&error) => batch.rollback().await.map_err(backend)?,
            Err(error) => return Err(backend(error)),
        }
    }
    let mut results = Vec::with_capacity(group.len());
    for entry in group {
        let made = match &entry.change {
            None => Ok(()),
            Some(Change::Issued(_)) if certificates_stored => Ok(()),
            Some(Change::Issued(certificate)) => {
                let one = transaction.savepoint("one").await.map_err(backend)?;
                match insert_rows(&one, &[certificate]).await {
                    Ok(()) => {
                        one.commit().await.map_err(backend)?;
                        Ok(())
                    }
                    Err(error) if is_unique_violation(&error) => {
                        one.rollback().await.map_err(backend)?;
                        Err(LedgerError::DuplicateSerial {
                            serial: certificate.serial.clone(),
                        })
                    }
                    Err(error) => return Err(backend(error)),
                }
            }
            Some(Change::Revoked(revocation)) => {
                insert_revocation(transaction, revocation, backend).await?
            }
        };
        results.push(made);
    }
    Ok(results)
}

/// Inserts `revocation` under a savepoint: the primary key makes a second revocation fail,
/// from any replica, and the foreign key one of an unknown serial; either fails alone.
async fn insert_revocation(
    transaction: &mut deadpool_postgres::Transaction<'_>,
    revocation: &NewRevocation,
    backend: &impl Fn(tokio_postgres::Error) -> LedgerError,
) -> Result<Result<(), LedgerError>, LedgerError> {
    let serial = &revocation.revocation.serial;
    let one = transaction.savepoint("one").await.map_err(backend)?;
    let inserted = one
        .execute(
            "INSERT INTO revocations (serial, reason, revoked_at, officer) VALUES ($1, $2, $3, $4)",
            &[
                serial,
                &revocation.revocation.reason.name(),
                &revocation.revocation.revoked_at,
                &revocation.officer,
            ],
        )
        .await;
    let refused = match inserted {
        Ok(_) => {
            one.commit().await.map_err(backend)?;
            return Ok(Ok(()));
        }
        Err(error) if is_unique_violation(&error) => {
            one.rollback().await.map_err(backend)?;
            let row = transaction
                .query_one(
                    "SELECT revoked_at FROM revocations WHERE serial = $1",
                    &[serial],
                )
                .await
                .map_err(backend)?;
            LedgerError::AlreadyRevoked {
                serial: serial.clone(),
                revoked_at: row.get(0),
            }
        }
        Err(error)
            if error.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) =>
        {
            one.rollback().await.map_err(backend)?;
            LedgerError::UnknownSerial {
                serial: serial.clone(),
            }
        }
        Err(error) => return Err(backend(error)),
    };
    Ok(Err(refused))
}

/// A read-only transaction on `client` that sees one snapshot of the database throughout:
/// records and rows appended meanwhile by the replicas are not half seen.
async fn snapshot<'c>(
    client: &'c mut deadpool_postgres::Client,
    backend: &impl Fn(tokio_postgres::Error) -> LedgerError,
) -> Result<deadpool_postgres::Transaction<'c>, LedgerError> {
    let transaction = client.transaction().await.map_err(backend)?;
    transaction
        .batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(backend)?;
    Ok(transaction)
}

/// One INSERT of many rows, the columns as arrays.
async fn insert_rows(
    client: &impl deadpool_postgres::GenericClient,
    certificates: &[&IssuedCertificate],
) -> Result<(), tokio_postgres::Error> {
    let column = |f: fn(&IssuedCertificate) -> String| -> Vec<String> {
        certificates.iter().map(|c| f(c)).collect()
    };
    let serials = column(|c| c.serial.clone());
    let issuers = column(|c| c.issuer_key_id.clone());
    let subjects = column(|c| c.subject.clone());
    let sans = column(|c| serde_json::to_string(&c.sans).expect("strings serialise"));
    let profiles = column(|c| c.profile.clone());
    let clients = column(|c| c.client.clone());
    let not_before: Vec<i64> = certificates.iter().map(|c| c.not_before).collect();
    let not_after: Vec<i64> = certificates.iter().map(|c| c.not_after).collect();
    let ders: Vec<&[u8]> = certificates.iter().map(|c| c.der.as_slice()).collect();
    let statement = client
        .prepare_cached(&format!(
            "INSERT INTO certificates ({CERTIFICATE_COLUMNS}) SELECT * FROM unnest(
                 $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                 $7::bigint[], $8::bigint[], $9::bytea[])"
        ))
        .await?;
    client
        .execute(
            &statement,
            &[
                &serials,
                &issuers,
                &subjects,
                &sans,
                &profiles,
                &clients,
                &not_before,
                &not_after,
                &ders,
            ],
        )
        .await
        .map(|_| ())
}

/// The certificate columns, in [`certificate_from_row`]'s order.
const CERTIFICATE_COLUMNS: &str =
    "serial, issuer_key_id, subject, sans, profile, client, not_before, not_after, der";

fn certificate_from_row(
    row: &tokio_postgres::Row,
    location: &str,
) -> Result<IssuedCertificate, LedgerError> {
    Ok(IssuedCertificate {
        serial: row.get(0),
        issuer_key_id: row.get(1),
        subject: row.get(2),
        sans: parse_sans(row.get(3), location)?,
        profile: row.get(4),
        client: row.get(5),
        not_before: row.get(6),
        not_after: row.get(7),
        der: row.get(8),
    })
}

fn is_unique_violation(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

impl CertificateStore for PostgresLedger {
    fn list(
        &self,
        filter: &CertificateFilter,
        now: i64,
    ) -> Result<Vec<ListedCertificate>, LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            let rows = client
                .query(
                    &format!(
                        "SELECT {LISTED_COLUMNS} FROM certificates c LEFT JOIN revocations r ON r.serial = c.serial
                         WHERE ($1::text IS NULL OR c.client = $1) AND ($2::text IS NULL OR c.profile = $2)
                           AND ($3::text IS NULL OR c.issuer_key_id = $3)
                           AND ($4::bigint IS NULL OR (c.not_after <= $4 AND c.not_after > $5))
                           AND (NOT $6 OR r.serial IS NOT NULL)
                         ORDER BY c.issued_at, c.serial"
                    ),
                    &[
                        &filter.client,
                        &filter.profile,
                        &filter.issuer_key_id,
                        &filter.expiring_before,
                        &now,
                        &filter.revoked_only,
                    ],
                )
                .await
                .map_err(&backend)?;
            rows.iter()
                .map(|row| {
                    Ok(ListedCertificate {
                        serial: row.get(0),
                        issuer_key_id: row.get(1),
                        subject: row.get(2),
                        sans: parse_sans(row.get(3), &self.target)?,
                        profile: row.get(4),
                        client: row.get(5),
                        not_before: row.get(6),
                        not_after: row.get(7),
                        issued_at: row.get(8),
                        revoked: match (row.get(9), row.get(10)) {
                            (Some(reason), Some(at)) => Some((reason, at)),
                            _ => None,
                        },
                    })
                })
                .collect()
        })
    }

    /// A clone: every operation takes a connection of the pool for itself, so the lookups,
    /// CRLs and Vault tokens of a replica's requests do not wait for each other.
    fn handle(&self) -> Option<Box<dyn CertificateStore>> {
        Some(Box::new(self.clone()))
    }

    fn find(&self, serial: &str) -> Result<Option<IssuedCertificate>, LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            client
                .query_opt(
                    &format!("SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE serial = $1"),
                    &[&serial],
                )
                .await
                .map_err(&backend)?
                .map(|row| certificate_from_row(&row, &self.target))
                .transpose()
        })
    }

    fn ping(&self) -> Result<(), LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            client.simple_query("SELECT 1").await.map_err(&backend)?;
            Ok(())
        })
    }

    fn count(&self) -> Result<u64, LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            let row = client
                .query_one("SELECT count(*) FROM certificates", &[])
                .await
                .map_err(&backend)?;
            Ok(row.get::<_, i64>(0).unsigned_abs())
        })
    }

    fn revoked_at(&self, serial: &str) -> Result<Option<i64>, LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            Ok(client
                .query_opt(
                    "SELECT revoked_at FROM revocations WHERE serial = $1",
                    &[&serial],
                )
                .await
                .map_err(&backend)?
                .map(|row| row.get(0)))
        })
    }

    fn revoked(&self, issuer_key_id: &str) -> Result<Vec<Revocation>, LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            let rows = client
                .query(
                    "SELECT r.serial, r.reason, r.revoked_at FROM revocations r
                     JOIN certificates c ON c.serial = r.serial
                     WHERE c.issuer_key_id = $1 ORDER BY r.revoked_at, r.serial",
                    &[&issuer_key_id],
                )
                .await
                .map_err(&backend)?;
            rows.iter()
                .map(|row| {
                    let serial: String = row.get(0);
                    let reason: String = row.get(1);
                    match RevocationReason::from_name(&reason) {
                        Some(reason) => Ok(Revocation {
                            serial,
                            reason,
                            revoked_at: row.get(2),
                        }),
                        None => Err(LedgerError::UnknownReason {
                            location: self.target.clone(),
                            serial,
                            reason,
                        }),
                    }
                })
                .collect()
        })
    }

    fn latest_crl(&self, issuer_key_id: &str) -> Result<Option<StoredCrl>, LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            Ok(client
                .query_opt(
                    "SELECT number, this_update, next_update, der FROM crls
                     WHERE issuer_key_id = $1 ORDER BY number DESC LIMIT 1",
                    &[&issuer_key_id],
                )
                .await
                .map_err(&backend)?
                .map(|row| StoredCrl {
                    number: row.get::<_, i64>(0).unsigned_abs(),
                    this_update: row.get(1),
                    next_update: row.get(2),
                    der: row.get(3),
                }))
        })
    }

    fn store_crl(&mut self, issuer_key_id: &str, crl: &StoredCrl) -> Result<(), LedgerError> {
        let backend = self.backend();
        let number = i64::try_from(crl.number).unwrap_or(i64::MAX);
        self.with_client(async |client| {
            let transaction = client.transaction().await.map_err(&backend)?;
            // Replicas storing CRLs of one issuer take turns; the number is then checked
            // against the stored maximum, so it strictly grows across the cluster.
            transaction
                .execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended('crl:' || $1, 0))",
                    &[&issuer_key_id],
                )
                .await
                .map_err(&backend)?;
            let last: i64 = transaction
                .query_one(
                    "SELECT coalesce(max(number), 0) FROM crls WHERE issuer_key_id = $1",
                    &[&issuer_key_id],
                )
                .await
                .map_err(&backend)?
                .get(0);
            if number <= last {
                return Err(LedgerError::CrlNumber {
                    issuer_key_id: issuer_key_id.to_owned(),
                    number: crl.number,
                    last: last.unsigned_abs(),
                });
            }
            transaction
                .execute(
                    "INSERT INTO crls (issuer_key_id, number, this_update, next_update, der)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &issuer_key_id,
                        &number,
                        &crl.this_update,
                        &crl.next_update,
                        &crl.der,
                    ],
                )
                .await
                .map_err(&backend)?;
            transaction.commit().await.map_err(&backend)
        })
    }

    fn bundle_sequence(&mut self, bundle_sha256: &str) -> Result<u64, LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            let transaction = client.transaction().await.map_err(&backend)?;
            // One replica at a time reads and extends the sequence.
            transaction
                .batch_execute("LOCK TABLE bundles IN SHARE ROW EXCLUSIVE MODE")
                .await
                .map_err(&backend)?;
            let last = transaction
                .query_opt(
                    "SELECT sequence, sha256 FROM bundles ORDER BY sequence DESC LIMIT 1",
                    &[],
                )
                .await
                .map_err(&backend)?
                .map(|row| (row.get::<_, i64>(0), row.get::<_, String>(1)));
            let sequence = match last {
                Some((sequence, sha256)) if sha256 == bundle_sha256 => sequence,
                Some((sequence, _)) => sequence + 1,
                None => 1,
            };
            transaction
                .execute(
                    "INSERT INTO bundles (sequence, sha256) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&sequence, &bundle_sha256],
                )
                .await
                .map_err(&backend)?;
            transaction.commit().await.map_err(&backend)?;
            Ok(sequence.unsigned_abs())
        })
    }

    fn lease_crl(
        &mut self,
        issuer_key_id: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            // One statement: the row lock it takes decides between replicas asking at once.
            Ok(client
                .query_opt(
                    "INSERT INTO crl_leases (issuer_key_id, holder, until) VALUES ($1, $2, $4)
                     ON CONFLICT (issuer_key_id) DO UPDATE SET holder = excluded.holder, until = excluded.until
                     WHERE crl_leases.until <= $3 OR crl_leases.holder = excluded.holder
                     RETURNING holder",
                    &[&issuer_key_id, &holder, &now, &until],
                )
                .await
                .map_err(&backend)?
                .is_some())
        })
    }

    fn release_crl(&mut self, issuer_key_id: &str, holder: &str) -> Result<(), LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            client
                .execute(
                    "DELETE FROM crl_leases WHERE issuer_key_id = $1 AND holder = $2",
                    &[&issuer_key_id, &holder],
                )
                .await
                .map(|_| ())
                .map_err(&backend)
        })
    }

    fn save_token(&mut self, token: &StoredToken, now: i64) -> Result<(), LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            let transaction = client.transaction().await.map_err(&backend)?;
            transaction
                .execute("DELETE FROM vault_tokens WHERE expires_at <= $1", &[&now])
                .await
                .map_err(&backend)?;
            transaction
                .execute(
                    "INSERT INTO vault_tokens (token_sha256, identity, accessor, issued_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[
                        &token.sha256,
                        &token.identity,
                        &token.accessor,
                        &token.issued_at,
                        &token.expires_at,
                    ],
                )
                .await
                .map_err(&backend)?;
            transaction.commit().await.map_err(&backend)
        })
    }

    fn find_token(&self, sha256: &str) -> Result<Option<StoredToken>, LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            Ok(client
                .query_opt(
                    "SELECT token_sha256, identity, accessor, issued_at, expires_at
                     FROM vault_tokens WHERE token_sha256 = $1",
                    &[&sha256],
                )
                .await
                .map_err(&backend)?
                .map(|row| StoredToken {
                    sha256: row.get(0),
                    identity: row.get(1),
                    accessor: row.get(2),
                    issued_at: row.get(3),
                    expires_at: row.get(4),
                }))
        })
    }

    fn renew_token(&mut self, sha256: &str, expires_at: i64) -> Result<(), LedgerError> {
        let backend = self.backend();
        self.with_client(async |client| {
            client
                .execute(
                    "UPDATE vault_tokens SET expires_at = $2 WHERE token_sha256 = $1",
                    &[&sha256, &expires_at],
                )
                .await
                .map(|_| ())
                .map_err(&backend)
        })
    }
}

/// One step of the schema; applied in order, each exactly once.
struct Migration {
    version: i32,
    what: &'static str,
    sql: &'static str,
}

/// The schema, version by version. Never edit a released step: add one.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        what: "certificates, revocations, CRLs and their leases, bundle sequence, the audit chain, Vault tokens",
        sql: "
CREATE TABLE certificates (
    serial        text PRIMARY KEY,
    issuer_key_id text NOT NULL,
    subject       text NOT NULL,
    sans          text NOT NULL,
    profile       text NOT NULL,
    client        text NOT NULL,
    not_before    bigint NOT NULL,
    not_after     bigint NOT NULL,
    der           bytea NOT NULL,
    issued_at     bigint NOT NULL DEFAULT extract(epoch FROM now())::bigint
);
CREATE INDEX certificates_by_issuer ON certificates (issuer_key_id);
CREATE TABLE revocations (
    serial        text PRIMARY KEY REFERENCES certificates (serial),
    reason        text NOT NULL,
    revoked_at    bigint NOT NULL,
    officer       text NOT NULL
);
CREATE TABLE crls (
    issuer_key_id text NOT NULL,
    number        bigint NOT NULL,
    this_update   bigint NOT NULL,
    next_update   bigint NOT NULL,
    der           bytea NOT NULL,
    PRIMARY KEY (issuer_key_id, number)
);
CREATE TABLE bundles (
    sequence      bigint PRIMARY KEY,
    sha256        text NOT NULL,
    published_at  bigint NOT NULL DEFAULT extract(epoch FROM now())::bigint
);
-- The cluster's one audit chain: each record as the JSON line the file log would hold,
-- and the head, one row, locked by every append so that records from all replicas chain.
CREATE TABLE audit_records (
    seq           bigint PRIMARY KEY,
    line          text NOT NULL
);
CREATE TABLE audit_head (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq           bigint NOT NULL,
    hash          text NOT NULL
);
INSERT INTO audit_head (seq, hash)
    VALUES (0, '0000000000000000000000000000000000000000000000000000000000000000');
-- Who signs each issuer's next CRL, and until when: one replica at a time.
CREATE TABLE crl_leases (
    issuer_key_id text PRIMARY KEY,
    holder        text NOT NULL,
    until         bigint NOT NULL
);
-- Vault tokens by the SHA-256 of the token, never the token itself.
CREATE TABLE vault_tokens (
    token_sha256  text PRIMARY KEY,
    identity      text NOT NULL,
    accessor      text NOT NULL UNIQUE,
    issued_at     bigint NOT NULL,
    expires_at    bigint NOT NULL
);
",
    },
    Migration {
        version: 2,
        what: "certificates by issue time (the check at start) and by profile and expiry (the expiring CA gauge)",
        sql: "
CREATE INDEX certificates_by_issued_at ON certificates (issued_at);
CREATE INDEX certificates_by_profile_expiry ON certificates (profile, not_after);
",
    },
];

/// The newest schema version this binary knows.
pub fn schema_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Any number, the same in every hsmca: the advisory lock replicas take to migrate one at a
/// time (ASCII "hsmca" in hex).
const MIGRATION_LOCK: i64 = 0x68_73_6d_63_61;

/// Brings the schema to [`schema_version`] in one transaction, or refuses a newer one.
async fn migrate(pool: &Pool, target: &str) -> Result<(), PostgresError> {
    let unavailable =
        |source: Box<dyn std::error::Error + Send + Sync>| PostgresError::Unavailable {
            target: target.to_owned(),
            source,
        };
    let query = |source| PostgresError::Query {
        target: target.to_owned(),
        source,
    };
    let mut client = pool.get().await.map_err(|e| unavailable(Box::new(e)))?;
    let transaction = client.transaction().await.map_err(query)?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(query)?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS hsmca_schema (
                 version    integer PRIMARY KEY,
                 what       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(query)?;
    let found: i32 = transaction
        .query_one("SELECT coalesce(max(version), 0) FROM hsmca_schema", &[])
        .await
        .map_err(query)?
        .get(0);
    if found > schema_version() {
        return Err(PostgresError::SchemaTooNew {
            target: target.to_owned(),
            found,
            known: schema_version(),
        });
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > found) {
        transaction
            .batch_execute(migration.sql)
            .await
            .map_err(query)?;
        transaction
            .execute(
                "INSERT INTO hsmca_schema (version, what) VALUES ($1, $2)",
                &[&migration.version, &migration.what],
            )
            .await
            .map_err(query)?;
        tracing::info!(
            version = migration.version,
            what = migration.what,
            "PostgreSQL schema migrated"
        );
    }
    transaction.commit().await.map_err(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> PostgresConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn settings_are_checked_before_any_connection() {
        let good = config(
            "postgres = \"postgresql://hsmca@db.example:5432/hsmca\"\npassword_file = \"/etc/hsmca/pg\"\nca_file = \"/etc/hsmca/pg-ca.pem\"\n",
        );
        good.validate().unwrap();
        assert_eq!(good.target(), "db.example:5432/hsmca");
        assert_eq!(good.pool_size, 8);
        assert_eq!(good.sslmode, PostgresTls::VerifyFull);
        for (edit, why) in [
            (
                (
                    "postgres",
                    "\"postgresql://hsmca:hunter2@db.example/hsmca\"",
                ),
                "holds a password",
            ),
            (("postgres", "\"db.example\""), "must be a URL"),
            (
                ("postgres", "\"postgresql://db.example/hsmca\""),
                "name the user",
            ),
            (("ca_file", "\"\"\nsslmode = \"disable\""), "loopback"),
            (("pool_size", "0"), "at least 1"),
            (
                ("password_file", "\"/p\"\npassword_env = \"PG\""),
                "not both",
            ),
        ] {
            let mut table: toml::Table = toml::from_str(
                "postgres = \"postgresql://hsmca@db.example:5432/hsmca\"\npassword_file = \"/etc/hsmca/pg\"\nca_file = \"/etc/hsmca/pg-ca.pem\"\n",
            )
            .unwrap();
            let value: toml::Table = toml::from_str(&format!("{} = {}", edit.0, edit.1)).unwrap();
            table.extend(value);
            let bad: PostgresConfig = table.try_into().unwrap();
            let error = bad.validate().unwrap_err().to_string();
            assert!(error.contains(why), "{edit:?}: {error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
        let no_tls = config(
            "postgres = \"postgresql://hsmca@127.0.0.1:5432/hsmca\"\npassword_env = \"PG\"\nsslmode = \"disable\"\n",
        );
        no_tls.validate().unwrap();
        let no_ca = config(
            "postgres = \"postgresql://hsmca@db.example:5432/hsmca\"\npassword_env = \"PG\"\n",
        );
        assert!(
            no_ca
                .validate()
                .unwrap_err()
                .to_string()
                .contains("needs ca_file")
        );
    }
}
