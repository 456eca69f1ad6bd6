//! The ledger of issued certificates: one SQLite row per certificate, keyed by serial.
//!
//! A row is written only for a certificate that was signed, and the signing service answers
//! only after its row is durable (`synchronous=FULL`), so nothing issued is unrecorded and
//! nothing recorded was not issued. Serials are unique across the whole ledger.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::pki::RevocationReason;

/// One issued certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// Serial number, lower-case hex of the DER integer's content octets.
    pub serial: String,
    /// The issuer's subject key identifier, hex.
    pub issuer_key_id: String,
    /// The subject (RFC 4514).
    pub subject: String,
    /// The subjectAltNames, URIs then DNS names.
    pub sans: Vec<String>,
    /// The profile it was issued under.
    pub profile: String,
    /// The client identity that asked for it.
    pub client: String,
    /// `notBefore`, seconds since the Unix epoch.
    pub not_before: i64,
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
    /// The DER certificate.
    pub der: Vec<u8>,
}

/// A serial as the ledger keys it (lower-case hex) from the forms people and Vault write:
/// upper or lower case, with or without `:` or `-` separators.
pub fn normalize_serial(text: &str) -> String {
    text.chars()
        .filter(|c| *c != ':' && *c != '-')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// A revocation as the ledger keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// Serial, lower-case hex.
    pub serial: String,
    /// Why; stored by its name (`key-compromise`, ...).
    pub reason: RevocationReason,
    /// When, Unix seconds.
    pub revoked_at: i64,
}

/// A revocation to record: what CRLs will list, and the officer who decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRevocation {
    /// The serial, reason and time.
    pub revocation: Revocation,
    /// The officer's identity.
    pub officer: String,
}

/// Which certificates [`CertificateStore::list`] returns: each field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateFilter {
    /// The client identity that asked for it.
    pub client: Option<String>,
    /// The profile it was issued under.
    pub profile: Option<String>,
    /// The key identifier (hex) of the issuer that signed it.
    pub issuer_key_id: Option<String>,
    /// Only certificates still valid whose notAfter is at or before this (Unix seconds).
    pub expiring_before: Option<i64>,
    /// Only revoked certificates.
    pub revoked_only: bool,
}

/// A certificate as [`CertificateStore::list`] returns it: its ledger fields (not the DER),
/// when it was recorded, and its revocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedCertificate {
    /// Serial, lower-case hex.
    pub serial: String,
    /// The issuer's key identifier, hex.
    pub issuer_key_id: String,
    /// The subject, as text.
    pub subject: String,
    /// The subject alternative names.
    pub sans: Vec<String>,
    /// The profile.
    pub profile: String,
    /// The client identity that asked for it.
    pub client: String,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// When its row was committed, Unix seconds.
    pub issued_at: i64,
    /// Its revocation's reason name and time (Unix seconds), if revoked.
    pub revoked: Option<(String, i64)>,
}

/// A signed CRL as the ledger keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCrl {
    /// Its CRL number.
    pub number: u64,
    /// `thisUpdate`, Unix seconds.
    pub this_update: i64,
    /// `nextUpdate`, Unix seconds.
    pub next_update: i64,
    /// DER.
    pub der: Vec<u8>,
}

/// A Vault token as the ledger keeps it: by the SHA-256 of the token, never the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredToken {
    /// Hex SHA-256 of the token.
    pub sha256: String,
    /// The client identity it is bound to.
    pub identity: String,
    /// Its non-secret handle.
    pub accessor: String,
    /// When it was issued, Unix seconds.
    pub issued_at: i64,
    /// When it expires, Unix seconds.
    pub expires_at: i64,
}

/// Everything a ledger holds, as `hsmca ledger migrate` reads and writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LedgerSnapshot {
    /// Issued certificates, each with when it was recorded (Unix seconds).
    pub certificates: Vec<(IssuedCertificate, i64)>,
    /// Revocations as stored: serial, reason name, time, officer.
    pub revocations: Vec<(String, String, i64, String)>,
    /// Every CRL, by issuer key identifier.
    pub crls: Vec<(String, StoredCrl)>,
    /// The bundle sequence: sequence, SHA-256 of the bundle, when published.
    pub bundles: Vec<(i64, String, i64)>,
    /// Vault tokens, by hash.
    pub tokens: Vec<StoredToken>,
}

/// Why the ledger could not be used. The variants name what went wrong, not which database
/// it went wrong in: a backend's own errors are the boxed source of [`LedgerError::Backend`].
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database failed.
    #[error("ledger {location}: {source}")]
    Backend {
        /// Where the ledger is (its file, for SQLite).
        location: String,
        /// What the database said.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A stored revocation has a reason this version does not know.
    #[error(
        "ledger {location}: certificate {serial} is stored revoked for {reason:?}, which is no revocation reason hsmca knows"
    )]
    UnknownReason {
        /// Where the ledger is.
        location: String,
        /// The revoked serial.
        serial: String,
        /// The stored reason.
        reason: String,
    },
    /// The audit chain the database holds is broken at record `seq`.
    #[error("the audit chain in {location} is broken at record {seq}: {reason}")]
    ChainBroken {
        /// Where the ledger is.
        location: String,
        /// The first bad record, counting from 1.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A ledger operation's thread ended before the operation did (it panicked).
    #[error("the ledger operation did not complete: {0}")]
    Interrupted(String),
    /// No certificate with this serial was issued.
    #[error("no certificate with serial {serial} is in the ledger")]
    UnknownSerial {
        /// The serial.
        serial: String,
    },
    /// The certificate is revoked already.
    #[error("certificate {serial} was already revoked at {revoked_at} (Unix time)")]
    AlreadyRevoked {
        /// The serial.
        serial: String,
        /// When it was revoked.
        revoked_at: i64,
    },
    /// A CRL number that does not grow.
    #[error("CRL number {number} of issuer {issuer_key_id} is not above the last one, {last}")]
    CrlNumber {
        /// The issuer's key identifier.
        issuer_key_id: String,
        /// The refused number.
        number: u64,
        /// The last stored.
        last: u64,
    },
    /// The serial is in the ledger already; a serial is never issued twice.
    #[error("serial {serial} is already in the ledger; serials are never reused")]
    DuplicateSerial {
        /// The serial.
        serial: String,
    },
    /// The database was migrated by a newer hsmca.
    #[error(
        "ledger {location}: the schema is at version {found}, newer than this hsmca knows ({known}); run the hsmca release that migrated it, or a newer one"
    )]
    SchemaTooNew {
        /// Where the ledger is.
        location: String,
        /// The database's version.
        found: i64,
        /// The newest this binary knows.
        known: i64,
    },
    /// The database file's permissions could not be restricted.
    #[error("cannot restrict the permissions of ledger {path}: {source}")]
    Permissions {
        /// The database file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
}

/// Maps a SQLite error to [`LedgerError::Backend`] naming the ledger at `path`.
pub(super) fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> LedgerError + Copy + '_ {
    move |source| LedgerError::Backend {
        location: path.display().to_string(),
        source: Box::new(source),
    }
}

/// Where issued certificates are kept. SQLite ([`Ledger`]) is the embedded default; a
/// backend shared by several replicas (PostgreSQL) implements the same contract.
/// Certificates and revocations are written with their audit records, by the backend's
/// [`super::journal::Journal`], never through this.
pub trait CertificateStore: Send {
    /// Another handle on the same store, for an operation to run beside those of this one,
    /// if the backend takes operations at once (a pool of connections); `None`, the
    /// default, makes operations take turns on this handle.
    fn handle(&self) -> Option<Box<dyn CertificateStore>> {
        None
    }

    /// The certificate with `serial` (lower-case hex), if issued.
    fn find(&self, serial: &str) -> Result<Option<IssuedCertificate>, LedgerError>;

    /// How many certificates the store holds.
    fn count(&self) -> Result<u64, LedgerError>;

    /// Checks that the database answers, cheaply: the readiness probe calls it every second.
    fn ping(&self) -> Result<(), LedgerError>;

    /// When the certificate with `serial` was revoked (Unix seconds), if it was.
    fn revoked_at(&self, serial: &str) -> Result<Option<i64>, LedgerError>;

    /// The certificates `filter` selects, oldest first; `now` (Unix seconds) is when
    /// "still valid" is judged for [`CertificateFilter::expiring_before`].
    fn list(
        &self,
        filter: &CertificateFilter,
        now: i64,
    ) -> Result<Vec<ListedCertificate>, LedgerError>;

    /// The revoked certificates of the issuer with `issuer_key_id`, oldest first.
    fn revoked(&self, issuer_key_id: &str) -> Result<Vec<Revocation>, LedgerError>;

    /// The last CRL stored for the issuer, if any.
    fn latest_crl(&self, issuer_key_id: &str) -> Result<Option<StoredCrl>, LedgerError>;

    /// The number the issuer's next CRL takes: one above its last, 1 for its first.
    fn next_crl_number(&self, issuer_key_id: &str) -> Result<u64, LedgerError> {
        Ok(self
            .latest_crl(issuer_key_id)?
            .map_or(1, |crl| crl.number + 1))
    }

    /// Stores a CRL; its number must be above the issuer's last one.
    fn store_crl(&mut self, issuer_key_id: &str, crl: &StoredCrl) -> Result<(), LedgerError>;

    /// The `spiffe_sequence` of the trust bundle whose contents hash to `bundle_sha256`: the
    /// last one if the bundle is unchanged, else one more than the last (starting at 1), so
    /// the sequence grows with every change of the bundle, across restarts.
    fn bundle_sequence(&mut self, bundle_sha256: &str) -> Result<u64, LedgerError>;

    /// Takes the right to sign the next CRL of the issuer for `holder` (a replica) until
    /// `until` (Unix seconds), unless another holder has it past `now`: whoever holds it is the
    /// only replica signing that issuer's CRLs. Returns whether `holder` has it.
    fn lease_crl(
        &mut self,
        issuer_key_id: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, LedgerError>;

    /// Gives the lease up, if `holder` has it.
    fn release_crl(&mut self, issuer_key_id: &str, holder: &str) -> Result<(), LedgerError>;

    /// Keeps a new Vault token, and forgets the tokens expired before `now` (Unix seconds).
    fn save_token(&mut self, token: &StoredToken, now: i64) -> Result<(), LedgerError>;

    /// The token whose SHA-256 is `sha256` (hex), if kept.
    fn find_token(&self, sha256: &str) -> Result<Option<StoredToken>, LedgerError>;

    /// Sets the expiry of the token whose SHA-256 is `sha256`.
    fn renew_token(&mut self, sha256: &str, expires_at: i64) -> Result<(), LedgerError>;
}

/// A certificate from the first nine columns of `row`, in the order of `certificates`.
fn certificate_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<IssuedCertificate> {
    let sans: String = row.get(3)?;
    Ok(IssuedCertificate {
        serial: row.get(0)?,
        issuer_key_id: row.get(1)?,
        subject: row.get(2)?,
        sans: serde_json::from_str(&sans).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
        })?,
        profile: row.get(4)?,
        client: row.get(5)?,
        not_before: row.get(6)?,
        not_after: row.get(7)?,
        der: row.get(8)?,
    })
}

/// A CRL from the columns number, this_update, next_update, der, starting at `first`.
fn crl_from_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<StoredCrl> {
    Ok(StoredCrl {
        number: row.get::<_, i64>(first)?.unsigned_abs(),
        this_update: row.get(first + 1)?,
        next_update: row.get(first + 2)?,
        der: row.get(first + 3)?,
    })
}

/// A Vault token from the columns token_sha256, identity, accessor, issued_at, expires_at.
fn token_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredToken> {
    Ok(StoredToken {
        sha256: row.get(0)?,
        identity: row.get(1)?,
        accessor: row.get(2)?,
        issued_at: row.get(3)?,
        expires_at: row.get(4)?,
    })
}

/// The SQLite ledger database.
pub struct Ledger {
    connection: Connection,
    path: PathBuf,
}

/// The SQLite schema, version by version: step N brings a ledger at `PRAGMA user_version`
/// N-1 to N. Never edit a released step: add one.
const MIGRATIONS: &[&str] = &[
    // 1: what ledgers made before the schema had versions hold already (they are at 0), so
    // every table is created only if absent.
    "
CREATE TABLE IF NOT EXISTS certificates (
    serial        TEXT PRIMARY KEY NOT NULL,
    issuer_key_id TEXT NOT NULL,
    subject       TEXT NOT NULL,
    sans          TEXT NOT NULL,
    profile       TEXT NOT NULL,
    client        TEXT NOT NULL,
    not_before    INTEGER NOT NULL,
    not_after     INTEGER NOT NULL,
    der           BLOB NOT NULL,
    issued_at     INTEGER NOT NULL DEFAULT (unixepoch())
) STRICT;
CREATE INDEX IF NOT EXISTS certificates_by_issuer ON certificates (issuer_key_id);
CREATE TABLE IF NOT EXISTS revocations (
    serial        TEXT PRIMARY KEY NOT NULL REFERENCES certificates (serial),
    reason        TEXT NOT NULL,
    revoked_at    INTEGER NOT NULL,
    officer       TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS crls (
    issuer_key_id TEXT NOT NULL,
    number        INTEGER NOT NULL,
    this_update   INTEGER NOT NULL,
    next_update   INTEGER NOT NULL,
    der           BLOB NOT NULL,
    PRIMARY KEY (issuer_key_id, number)
) STRICT;
CREATE TABLE IF NOT EXISTS crl_leases (
    issuer_key_id TEXT PRIMARY KEY NOT NULL,
    holder        TEXT NOT NULL,
    until         INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS vault_tokens (
    token_sha256  TEXT PRIMARY KEY NOT NULL,
    identity      TEXT NOT NULL,
    accessor      TEXT NOT NULL UNIQUE,
    issued_at     INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS bundles (
    sequence      INTEGER PRIMARY KEY NOT NULL,
    sha256        TEXT NOT NULL,
    published_at  INTEGER NOT NULL DEFAULT (unixepoch())
) STRICT;
",
    // 2: audit records committed with the changes they record, kept until the audit file
    // holds them durably (super::sqlite_journal).
    "
CREATE TABLE audit_pending (
    seq           INTEGER PRIMARY KEY NOT NULL,
    line          TEXT NOT NULL
) STRICT;
",
    // 3: the certificates issued since a time, for the check at start (super::reconcile),
    // and a profile's certificates by expiry, for the expiring CA gauge.
    "
CREATE INDEX certificates_by_issued_at ON certificates (issued_at);
CREATE INDEX certificates_by_profile_expiry ON certificates (profile, not_after);
",
];

/// The newest SQLite schema version this binary knows.
fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

impl Ledger {
    /// Opens (creating if needed, mode 0600) the ledger at `path`, in WAL mode with every
    /// commit synced to disk.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let sqlite = sqlite(path);
        // Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
        // database file's mode, so the journal is never readable by others either.
        let restrict = |source| LedgerError::Permissions {
            path: path.to_owned(),
            source,
        };
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(restrict)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(restrict)?;
        }
        let connection = Connection::open(path).map_err(sqlite)?;
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(sqlite)?;
        // The service opens two connections (the recorder's and the admin one); a writer
        // waits for the other rather than failing.
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sqlite)?;
        // A revocation must name a certificate of this ledger.
        connection
            .execute_batch("PRAGMA foreign_keys = ON;")
            .map_err(sqlite)?;
        let mut ledger = Ledger {
            connection,
            path: path.to_owned(),
        };
        ledger.migrate()?;
        Ok(ledger)
    }

    /// Brings the schema to [`schema_version`] in one transaction, or refuses a newer one.
    fn migrate(&mut self) -> Result<(), LedgerError> {
        let sqlite = sqlite(&self.path);
        // IMMEDIATE: the service's two connections open at once, and one migrates.
        let transaction = self
            .connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite)?;
        let found: i64 = transaction
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(sqlite)?;
        if found > schema_version() {
            return Err(LedgerError::SchemaTooNew {
                location: self.path.display().to_string(),
                found,
                known: schema_version(),
            });
        }
        for (version, step) in (1..).zip(MIGRATIONS).skip(found.unsigned_abs() as usize) {
            transaction.execute_batch(step).map_err(sqlite)?;
            transaction
                .pragma_update(None, "user_version", version)
                .map_err(sqlite)?;
            tracing::info!(ledger = %self.path.display(), version, "SQLite schema migrated");
        }
        transaction.commit().map_err(sqlite)
    }

    /// The connection the journal writes through, and the ledger's path for its errors.
    pub(super) fn writer(&mut self) -> (&mut Connection, &Path) {
        (&mut self.connection, &self.path)
    }

    /// Everything the ledger holds, for `hsmca ledger migrate`.
    pub fn snapshot(&self) -> Result<LedgerSnapshot, LedgerError> {
        Ok(LedgerSnapshot {
            certificates: self.all(
                "SELECT serial, issuer_key_id, subject, sans, profile, client, not_before, not_after, der, issued_at
                 FROM certificates ORDER BY issued_at, serial",
                |row| Ok((certificate_from_row(row)?, row.get(9)?)),
            )?,
            revocations: self.all(
                "SELECT serial, reason, revoked_at, officer FROM revocations ORDER BY revoked_at, serial",
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )?,
            crls: self.all(
                "SELECT issuer_key_id, number, this_update, next_update, der FROM crls
                 ORDER BY issuer_key_id, number",
                |row| Ok((row.get(0)?, crl_from_row(row, 1)?)),
            )?,
            bundles: self.all(
                "SELECT sequence, sha256, published_at FROM bundles ORDER BY sequence",
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?,
            tokens: self.all(
                "SELECT token_sha256, identity, accessor, issued_at, expires_at FROM vault_tokens",
                token_from_row,
            )?,
        })
    }

    /// Every row `sql` selects, each made by `map`.
    fn all<T>(
        &self,
        sql: &str,
        map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, LedgerError> {
        let sqlite = sqlite(&self.path);
        let mut statement = self.connection.prepare(sql).map_err(sqlite)?;
        let rows = statement.query_map([], map).map_err(sqlite)?;
        rows.collect::<Result<_, _>>().map_err(sqlite)
    }
}

/// A certificate row for tests: `serial`, and the same contents for every serial.
#[cfg(test)]
pub(super) fn sample_certificate(serial: &str) -> IssuedCertificate {
    IssuedCertificate {
        serial: serial.into(),
        issuer_key_id: "6c51eb35".into(),
        subject: "O=SPIFFE,C=US".into(),
        sans: vec!["spiffe://example.org".into()],
        profile: "issuing-ca".into(),
        client: "spiffe://example.org/spire-server".into(),
        not_before: 1_795_000_000,
        not_after: 1_795_086_400,
        der: vec![0x30, 0x03, 0x02, 0x01, 0x01],
    }
}

/// The columns [`CertificateStore::list`] reads, in [`ListedCertificate`]'s order, of
/// `certificates c LEFT JOIN revocations r`; the same on every backend.
pub(super) const LISTED_COLUMNS: &str = "c.serial, c.issuer_key_id, c.subject, c.sans, c.profile, c.client, c.not_before, c.not_after, c.issued_at, r.reason, r.revoked_at";

/// The SANs column (a JSON array) of the ledger at `location`.
pub(super) fn parse_sans(sans: &str, location: &str) -> Result<Vec<String>, LedgerError> {
    serde_json::from_str(sans).map_err(|e| LedgerError::Backend {
        location: location.to_owned(),
        source: Box::new(e),
    })
}

/// Inserts `certificate` in `transaction`; a serial already present fails alone (SQLite
/// undoes the statement, not the transaction).
pub(super) fn insert_certificate(
    transaction: &rusqlite::Transaction<'_>,
    path: &Path,
    certificate: &IssuedCertificate,
) -> Result<(), LedgerError> {
    // Prepared once per connection, not once per row: parsing the statement cost more than
    // executing it.
    let mut insert = transaction
        .prepare_cached(
            "INSERT INTO certificates
                 (serial, issuer_key_id, subject, sans, profile, client, not_before, not_after, der)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .map_err(sqlite(path))?;
    let inserted = insert.execute(params![
        certificate.serial,
        certificate.issuer_key_id,
        certificate.subject,
        serde_json::to_string(&certificate.sans).expect("strings serialise"),
        certificate.profile,
        certificate.client,
        certificate.not_before,
        certificate.not_after,
        certificate.der,
    ]);
    match inserted {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(error, _))
            if error.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(LedgerError::DuplicateSerial {
                serial: certificate.serial.clone(),
            })
        }
        Err(source) => Err(sqlite(path)(source)),
    }
}

/// Inserts `revocation` in `transaction`; a serial revoked already, or unknown, fails alone.
pub(super) fn insert_revocation(
    transaction: &rusqlite::Transaction<'_>,
    path: &Path,
    revocation: &NewRevocation,
) -> Result<(), LedgerError> {
    let serial = &revocation.revocation.serial;
    let inserted = transaction
        .prepare_cached(
            "INSERT INTO revocations (serial, reason, revoked_at, officer) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut insert| {
            insert.execute(params![
                serial,
                revocation.revocation.reason.name(),
                revocation.revocation.revoked_at,
                revocation.officer
            ])
        });
    match inserted {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(error, _))
            if error.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
        {
            Err(LedgerError::UnknownSerial {
                serial: serial.clone(),
            })
        }
        Err(rusqlite::Error::SqliteFailure(error, _))
            if error.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            let revoked_at = transaction
                .query_row(
                    "SELECT revoked_at FROM revocations WHERE serial = ?1",
                    params![serial],
                    |row| row.get(0),
                )
                .map_err(sqlite(path))?;
            Err(LedgerError::AlreadyRevoked {
                serial: serial.clone(),
                revoked_at,
            })
        }
        Err(source) => Err(sqlite(path)(source)),
    }
}

impl CertificateStore for Ledger {
    fn list(
        &self,
        filter: &CertificateFilter,
        now: i64,
    ) -> Result<Vec<ListedCertificate>, LedgerError> {
        let sqlite = sqlite(&self.path);
        let mut select = self
            .connection
            .prepare(&format!(
                "SELECT {LISTED_COLUMNS} FROM certificates c LEFT JOIN revocations r ON r.serial = c.serial
                 WHERE (?1 IS NULL OR c.client = ?1) AND (?2 IS NULL OR c.profile = ?2)
                   AND (?3 IS NULL OR c.issuer_key_id = ?3)
                   AND (?4 IS NULL OR (c.not_after <= ?4 AND c.not_after > ?5))
                   AND (NOT ?6 OR r.serial IS NOT NULL)
                 ORDER BY c.issued_at, c.serial"
            ))
            .map_err(sqlite)?;
        let rows = select
            .query_map(
                params![
                    filter.client,
                    filter.profile,
                    filter.issuer_key_id,
                    filter.expiring_before,
                    now,
                    filter.revoked_only
                ],
                |row| {
                    let sans: String = row.get(3)?;
                    Ok((
                        ListedCertificate {
                            serial: row.get(0)?,
                            issuer_key_id: row.get(1)?,
                            subject: row.get(2)?,
                            sans: Vec::new(),
                            profile: row.get(4)?,
                            client: row.get(5)?,
                            not_before: row.get(6)?,
                            not_after: row.get(7)?,
                            issued_at: row.get(8)?,
                            revoked: match (row.get(9)?, row.get(10)?) {
                                (Some(reason), Some(at)) => Some((reason, at)),
                                _ => None,
                            },
                        },
                        sans,
                    ))
                },
            )
            .map_err(sqlite)?;
        rows.map(|row| {
            let (mut listed, sans) = row.map_err(sqlite)?;
            listed.sans = parse_sans(&sans, &self.path.display().to_string())?;
            Ok(listed)
        })
        .collect()
    }

    fn revoked_at(&self, serial: &str) -> Result<Option<i64>, LedgerError> {
        self.connection
            .query_row(
                "SELECT revoked_at FROM revocations WHERE serial = ?1",
                params![serial],
                |row| row.get(0),
            )
            .optional()
            .map_err(sqlite(&self.path))
    }

    fn find(&self, serial: &str) -> Result<Option<IssuedCertificate>, LedgerError> {
        self.connection
            .query_row(
                "SELECT serial, issuer_key_id, subject, sans, profile, client, not_before, not_after, der
                 FROM certificates WHERE serial = ?1",
                params![serial],
                certificate_from_row,
            )
            .optional()
            .map_err(sqlite(&self.path))
    }

    fn ping(&self) -> Result<(), LedgerError> {
        // The file is open and SQLite has no server to lose.
        Ok(())
    }

    fn count(&self) -> Result<u64, LedgerError> {
        self.connection
            .query_row("SELECT count(*) FROM certificates", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|count| count.unsigned_abs())
            .map_err(sqlite(&self.path))
    }

    fn revoked(&self, issuer_key_id: &str) -> Result<Vec<Revocation>, LedgerError> {
        let sqlite = sqlite(&self.path);
        let mut statement = self
            .connection
            .prepare(
                "SELECT r.serial, r.reason, r.revoked_at FROM revocations r
                 JOIN certificates c ON c.serial = r.serial
                 WHERE c.issuer_key_id = ?1 ORDER BY r.revoked_at, r.serial",
            )
            .map_err(sqlite)?;
        let rows = statement
            .query_map(params![issuer_key_id], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
            .map_err(sqlite)?;
        rows.map(|row| {
            let (serial, reason, revoked_at) = row.map_err(sqlite)?;
            match RevocationReason::from_name(&reason) {
                Some(reason) => Ok(Revocation {
                    serial,
                    reason,
                    revoked_at,
                }),
                None => Err(LedgerError::UnknownReason {
                    location: self.path.display().to_string(),
                    serial,
                    reason,
                }),
            }
        })
        .collect()
    }

    fn latest_crl(&self, issuer_key_id: &str) -> Result<Option<StoredCrl>, LedgerError> {
        self.connection
            .query_row(
                "SELECT number, this_update, next_update, der FROM crls
                 WHERE issuer_key_id = ?1 ORDER BY number DESC LIMIT 1",
                params![issuer_key_id],
                |row| crl_from_row(row, 0),
            )
            .optional()
            .map_err(sqlite(&self.path))
    }

    fn store_crl(&mut self, issuer_key_id: &str, crl: &StoredCrl) -> Result<(), LedgerError> {
        let last = self.latest_crl(issuer_key_id)?.map_or(0, |c| c.number);
        if crl.number <= last {
            return Err(LedgerError::CrlNumber {
                issuer_key_id: issuer_key_id.to_owned(),
                number: crl.number,
                last,
            });
        }
        self.connection
            .execute(
                "INSERT INTO crls (issuer_key_id, number, this_update, next_update, der)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    issuer_key_id,
                    i64::try_from(crl.number).unwrap_or(i64::MAX),
                    crl.this_update,
                    crl.next_update,
                    crl.der
                ],
            )
            .map_err(sqlite(&self.path))?;
        Ok(())
    }

    fn bundle_sequence(&mut self, bundle_sha256: &str) -> Result<u64, LedgerError> {
        let sqlite = sqlite(&self.path);
        // IMMEDIATE: this transaction reads then writes, and a deferred one could not take
        // the write lock after another connection (the recorder) committed in between.
        let transaction = self
            .connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite)?;
        let last: Option<(i64, String)> = transaction
            .query_row(
                "SELECT sequence, sha256 FROM bundles ORDER BY sequence DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(sqlite)?;
        let sequence = match last {
            Some((sequence, sha256)) if sha256 == bundle_sha256 => sequence,
            Some((sequence, _)) => sequence + 1,
            None => 1,
        };
        transaction
            .execute(
                "INSERT OR IGNORE INTO bundles (sequence, sha256) VALUES (?1, ?2)",
                params![sequence, bundle_sha256],
            )
            .map_err(sqlite)?;
        transaction.commit().map_err(sqlite)?;
        Ok(sequence.unsigned_abs())
    }

    fn lease_crl(
        &mut self,
        issuer_key_id: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, LedgerError> {
        self.connection
            .query_row(
                "INSERT INTO crl_leases (issuer_key_id, holder, until) VALUES (?1, ?2, ?4)
                 ON CONFLICT (issuer_key_id) DO UPDATE SET holder = excluded.holder, until = excluded.until
                 WHERE crl_leases.until <= ?3 OR crl_leases.holder = excluded.holder
                 RETURNING holder",
                params![issuer_key_id, holder, now, until],
                |_| Ok(()),
            )
            .optional()
            .map(|taken| taken.is_some())
            .map_err(sqlite(&self.path))
    }

    fn release_crl(&mut self, issuer_key_id: &str, holder: &str) -> Result<(), LedgerError> {
        self.connection
            .execute(
                "DELETE FROM crl_leases WHERE issuer_key_id = ?1 AND holder = ?2",
                params![issuer_key_id, holder],
            )
            .map(|_| ())
            .map_err(sqlite(&self.path))
    }

    fn save_token(&mut self, token: &StoredToken, now: i64) -> Result<(), LedgerError> {
        let sqlite = sqlite(&self.path);
        let transaction = self.connection.transaction().map_err(sqlite)?;
        transaction
            .execute(
                "DELETE FROM vault_tokens WHERE expires_at <= ?1",
                params![now],
            )
            .map_err(sqlite)?;
        transaction
            .execute(
                "INSERT INTO vault_tokens (token_sha256, identity, accessor, issued_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    token.sha256,
                    token.identity,
                    token.accessor,
                    token.issued_at,
                    token.expires_at
                ],
            )
            .map_err(sqlite)?;
        transaction.commit().map_err(sqlite)
    }

    fn find_token(&self, sha256: &str) -> Result<Option<StoredToken>, LedgerError> {
        self.connection
            .query_row(
                "SELECT token_sha256, identity, accessor, issued_at, expires_at
                 FROM vault_tokens WHERE token_sha256 = ?1",
                params![sha256],
                token_from_row,
            )
            .optional()
            .map_err(sqlite(&self.path))
    }

    fn renew_token(&mut self, sha256: &str, expires_at: i64) -> Result<(), LedgerError> {
        self.connection
            .execute(
                "UPDATE vault_tokens SET expires_at = ?2 WHERE token_sha256 = ?1",
                params![sha256, expires_at],
            )
            .map(|_| ())
            .map_err(sqlite(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(serial: &str) -> IssuedCertificate {
        sample_certificate(serial)
    }

    /// Stores `certificates` in one transaction, as the journal does.
    fn issue(ledger: &mut Ledger, certificates: &[IssuedCertificate]) {
        let (connection, path) = ledger.writer();
        let transaction = connection.transaction().unwrap();
        for certificate in certificates {
            insert_certificate(&transaction, path, certificate).unwrap();
        }
        transaction.commit().unwrap();
    }

    /// Revokes `serial` in a transaction of its own, as the journal does.
    fn revoke(
        ledger: &mut Ledger,
        serial: &str,
        reason: RevocationReason,
        revoked_at: i64,
    ) -> Result<(), LedgerError> {
        let (connection, path) = ledger.writer();
        let transaction = connection.transaction().unwrap();
        let revocation = NewRevocation {
            revocation: Revocation {
                serial: serial.into(),
                reason,
                revoked_at,
            },
            officer: "officer".into(),
        };
        insert_revocation(&transaction, path, &revocation)?;
        transaction.commit().unwrap();
        Ok(())
    }

    #[test]
    fn rows_survive_reopening_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let mut ledger = Ledger::open(&path).unwrap();
        issue(&mut ledger, &[certificate("01"), certificate("02")]);
        drop(ledger);
        let ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.count().unwrap(), 2);
        assert_eq!(ledger.find("02").unwrap(), Some(certificate("02")));
        assert_eq!(ledger.find("03").unwrap(), None);
        for file in ["ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }

    #[test]
    fn revocations_are_once_per_serial_and_crl_numbers_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(&dir.path().join("ledger.sqlite")).unwrap();
        issue(&mut ledger, &[certificate("01"), certificate("02")]);
        revoke(&mut ledger, "02", RevocationReason::KeyCompromise, 100).unwrap();
        assert!(matches!(
            revoke(&mut ledger, "02", RevocationReason::Superseded, 200),
            Err(LedgerError::AlreadyRevoked {
                revoked_at: 100,
                ..
            })
        ));
        assert!(matches!(
            revoke(&mut ledger, "03", RevocationReason::Superseded, 200),
            Err(LedgerError::UnknownSerial { .. })
        ));
        assert_eq!(
            ledger.revoked("6c51eb35").unwrap(),
            vec![Revocation {
                serial: "02".into(),
                reason: RevocationReason::KeyCompromise,
                revoked_at: 100
            }]
        );
        assert!(ledger.revoked("other").unwrap().is_empty());
        // A reason this version does not know is an error, never read as another one.
        ledger
            .connection
            .execute(
                "INSERT INTO revocations (serial, reason, revoked_at, officer) VALUES ('01', 'bogus', 300, 'officer')",
                [],
            )
            .unwrap();
        assert!(matches!(
            ledger.revoked("6c51eb35"),
            Err(LedgerError::UnknownReason { reason, .. }) if reason == "bogus"
        ));
        let crl = |number| StoredCrl {
            number,
            this_update: 1,
            next_update: 2,
            der: vec![number as u8],
        };
        assert_eq!(ledger.latest_crl("6c51eb35").unwrap(), None);
        ledger.store_crl("6c51eb35", &crl(1)).unwrap();
        ledger.store_crl("6c51eb35", &crl(2)).unwrap();
        assert!(matches!(
            ledger.store_crl("6c51eb35", &crl(2)),
            Err(LedgerError::CrlNumber { last: 2, .. })
        ));
        assert_eq!(ledger.latest_crl("6c51eb35").unwrap(), Some(crl(2)));
    }

    #[test]
    fn the_bundle_sequence_grows_with_each_change_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let mut ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.bundle_sequence("a").unwrap(), 1);
        assert_eq!(ledger.bundle_sequence("a").unwrap(), 1);
        assert_eq!(ledger.bundle_sequence("b").unwrap(), 2);
        drop(ledger);
        let mut ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.bundle_sequence("b").unwrap(), 2);
        assert_eq!(ledger.bundle_sequence("a").unwrap(), 3);
    }

    #[test]
    fn a_ledger_from_a_newer_hsmca_is_refused_and_an_unversioned_one_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        // A ledger made before the schema had versions: its tables, at user_version 0.
        {
            let connection = Connection::open(&path).unwrap();
            connection.execute_batch(MIGRATIONS[0]).unwrap();
            connection
                .execute(
                    "INSERT INTO bundles (sequence, sha256) VALUES (7, 'old')",
                    [],
                )
                .unwrap();
        }
        let mut ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.bundle_sequence("old").unwrap(), 7, "kept its rows");
        let version: i64 = ledger
            .connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .unwrap();
        assert_eq!(version, schema_version());
        ledger
            .connection
            .pragma_update(None, "user_version", schema_version() + 1)
            .unwrap();
        drop(ledger);
        let Err(error) = Ledger::open(&path) else {
            panic!("a newer schema was opened");
        };
        assert!(
            matches!(&error, LedgerError::SchemaTooNew { found, known, .. } if *found == schema_version() + 1 && *known == schema_version()),
            "{error}"
        );
        assert!(
            error.to_string().contains("newer than this hsmca knows"),
            "{error}"
        );
    }
}
