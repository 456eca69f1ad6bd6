//! The running service: everything `hsmca serve` opens at start, and the state the handlers
//! share: the HSM pool, the recorder, the current settings, the audit helpers, readiness and
//! the metrics gauges. A configuration that cannot work is refused here (the checks are
//! [`super::settings`]'s), with the fix, before the listener opens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::checkpoints::Checkpointer;
use super::cpu::CpuPool;
use super::crl::Crls;
use super::error::{ApiError, StartError};
use super::jwt_keys::{DISCOVERY_PATH, JWKS_PATH};
use super::metrics::{ClientCas, Gauges, Metrics};
use super::serials::SerialSource;
use super::settings::{FixedSections, Settings};
use super::vault::VaultState;
use crate::config::{Config, ServerConfig};
use crate::duration::Seconds;
use crate::hsm::{HealthState, Hsm, SignerPool};
use crate::ledger::StorageBackend;
use crate::ledger::Store;
use crate::ledger::audit::{AuditEvent, DiscardedTail};
use crate::ledger::certificates::{CertificateFilter, Ledger, LedgerError};
use crate::ledger::journal::Journal;
use crate::ledger::postgres::PostgresLedger;
use crate::ledger::reconcile::report_recent;
use crate::ledger::recorder::Recorder;
use crate::ledger::sqlite_journal::SqliteJournal;
use crate::pki::{self, ProfileKind};
use crate::policy::RateLimiter;

/// Shared state of the running service.
pub struct Service {
    /// The `[server]` section.
    pub server: ServerConfig,
    /// The HSM session pool.
    pub pool: SignerPool,
    /// Per-client request rates.
    pub limiter: RateLimiter,
    /// Slots for signing requests in progress (`server.max_in_flight`).
    pub in_flight: tokio::sync::Semaphore,
    /// Threads for the signature verifications of a request, one per core.
    pub(crate) verifier: CpuPool,
    /// Ledger and audit log writer.
    pub recorder: Recorder,
    /// Serial numbers from the HSM's RNG.
    pub serials: SerialSource,
    /// Metrics.
    pub metrics: Metrics,
    /// The Vault-compatible dialect, when `[vault]` is configured.
    pub vault: Option<VaultState>,
    /// The ledger for lookups, revocations, CRLs and the bundle sequence: a second
    /// connection beside the recorder's, as these are rare and must not wait behind a group
    /// of issuances (SQLite's WAL lets it read while the recorder writes).
    pub ledger: Store,
    /// The current CRL of each issuer.
    pub crls: Crls,
    /// The incomplete last audit record cut off at start (a crash interrupted its write).
    pub discarded_audit_tail: Option<DiscardedTail>,
    /// Signed checkpoints of the audit chain, when `[audit]` asks for them.
    pub checkpoints: Option<Checkpointer>,
    /// The HSM, for finding the issuers' keys again on reload.
    pub(super) hsm: Arc<Hsm>,
    /// The configuration file, read again on reload.
    pub(super) config_path: PathBuf,
    /// The sections a reload must leave as they are.
    pub(super) fixed: FixedSections,
    settings: RwLock<Arc<Settings>>,
    /// One reload at a time.
    pub(super) reloading: tokio::sync::Mutex<()>,
    readiness: Mutex<Option<(Instant, Readiness)>>,
}

/// A readiness verdict: ready, or every reason not to be.
type Readiness = Result<(), Vec<String>>;

/// How long a readiness probe result is reused, so probes cannot load the HSM.
const READINESS_TTL: Duration = Duration::from_secs(1);

/// The storage a service runs on, opened.
struct OpenedStorage {
    /// Lookups, revocations, CRLs, the bundle sequence.
    store: Store,
    /// Where the recorder writes certificates with their audit records.
    journal: Box<dyn Journal>,
    /// The check of the chain the service starts on, run beside the first requests: the
    /// audit file's records before its last, or the database's whole chain.
    chain_check: Box<dyn FnOnce() -> Result<u64, String> + Send>,
    /// An incomplete last record cut from the audit file at open (SQLite).
    discarded_audit_tail: Option<DiscardedTail>,
}

/// Opens `[storage]`'s backend. Called with the runtime entered: PostgreSQL's pool lives on
/// it, and its connection is checked (and its schema migrated) before the service starts.
fn open_storage(backend: StorageBackend) -> Result<OpenedStorage, StartError> {
    match backend {
        StorageBackend::Sqlite { ledger, audit_log } => {
            // Only the audit file's last record is read now, so start-up does not grow with
            // the log; the rest is verified beside the first requests, and a broken chain
            // stops issuance.
            let (journal, earlier_records) = SqliteJournal::open(&ledger, &audit_log)?;
            let discarded_audit_tail = journal.discarded_tail().cloned();
            Ok(OpenedStorage {
                store: Store::new(Box::new(Ledger::open(&ledger)?)),
                journal: Box::new(journal),
                chain_check: Box::new(move || {
                    earlier_records
                        .verify()
                        .map(|verified| verified.records)
                        .map_err(|e| e.to_string())
                }),
                discarded_audit_tail,
            })
        }
        StorageBackend::Postgres(postgres) => {
            let runtime = tokio::runtime::Handle::current();
            let ledger = runtime.block_on(PostgresLedger::connect(&postgres, runtime.clone()))?;
            tracing::info!(target = %postgres.target(), pool_size = postgres.pool_size, "storage: PostgreSQL");
            let chain = ledger.clone();
            Ok(OpenedStorage {
                store: Store::new(Box::new(ledger.clone())),
                journal: Box::new(ledger),
                // Every replica checks the cluster's chain when it starts.
                chain_check: Box::new(move || {
                    let (records, _) = chain.verify_audit().map_err(|e| e.to_string())?;
                    match chain.reconcile_recent() {
                        Ok(found) => report_recent(&found),
                        Err(error) => {
                            tracing::warn!(%error, "the newest certificates could not be checked against the audit chain")
                        }
                    }
                    Ok(records)
                }),
                discarded_audit_tail: None,
            })
        }
    }
}

impl Service {
    /// Checks the configuration at `config_path` (already read into `config`) and opens the
    /// HSM, issuers, ledger and audit log.
    pub fn start(config: &Config, config_path: &Path) -> Result<Self, StartError> {
        let missing = |section: &str| {
            StartError::Config(format!(
                "`hsmca serve` needs a [{section}] section in the config file"
            ))
        };
        let server = config.server.clone().ok_or_else(|| missing("server"))?;
        let storage = config.storage.as_ref().ok_or_else(|| missing("storage"))?;
        if server.max_body_bytes == 0 {
            return Err(StartError::Config(
                "server.max_body_bytes must be above zero".into(),
            ));
        }
        if config.crl.refresh_before >= config.crl.validity {
            return Err(StartError::Config(format!(
                "crl.refresh_before {} must be shorter than crl.validity {}",
                config.crl.refresh_before, config.crl.validity
            )));
        }
        if let Some(public) = &config.public {
            public
                .check(&[DISCOVERY_PATH, JWKS_PATH])
                .map_err(StartError::Config)?;
        }
        let backend = storage
            .backend()
            .map_err(StartError::Config)?
            .resolved(|p| config.resolve(p));
        let hsm = Hsm::open(&config.hsm)?;
        let store_files: Vec<&Path> = match &backend {
            StorageBackend::Sqlite { ledger, audit_log } => vec![ledger, audit_log],
            StorageBackend::Postgres(_) => Vec::new(),
        };
        let checkpoints =
            Checkpointer::open(&config.audit, &hsm, |p| config.resolve(p), &store_files)?;
        let opened = open_storage(backend)?;
        let settings = Settings::load(config, &hsm, &opened.store)?;
        let vault = config
            .vault
            .as_ref()
            .map(|vault| VaultState::new(vault, opened.store.clone()))
            .transpose()
            .map_err(StartError::Config)?;
        let recorder = Recorder::start(opened.journal)
            .map_err(|e| StartError::Config(format!("cannot start the ledger writer: {e}")))?;
        recorder
            .verify_in_background(opened.chain_check)
            .map_err(|e| StartError::Config(format!("cannot start the audit chain check: {e}")))?;
        let discarded_audit_tail = opened.discarded_audit_tail;
        let ledger_admin = opened.store;
        let pool = hsm.start_pool(&config.hsm.pool)?;
        let hsm = Arc::new(hsm);
        let max_in_flight = server.max_in_flight.get();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let verifier = CpuPool::start(cores).map_err(|e| {
            StartError::Config(format!("cannot start the verification threads: {e}"))
        })?;
        Ok(Service {
            server,
            pool,
            limiter: RateLimiter::default(),
            in_flight: tokio::sync::Semaphore::new(max_in_flight),
            verifier,
            recorder,
            serials: SerialSource::new(config.hsm.pool.op_timeout()),
            metrics: Metrics::default(),
            vault,
            ledger: ledger_admin,
            crls: Crls::new(config.crl.clone()),
            discarded_audit_tail,
            checkpoints,
            hsm,
            config_path: config_path.to_owned(),
            fixed: FixedSections::of(config),
            settings: RwLock::new(Arc::new(settings)),
            reloading: tokio::sync::Mutex::new(()),
            readiness: Mutex::new(None),
        })
    }

    /// The current settings; hold the snapshot for the whole of a request.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts reloaded `settings` in place for the requests that follow; requests in flight
    /// keep the snapshot they took.
    pub(super) fn install(&self, settings: Settings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
    }

    /// Appends an audit record that comes with no certificate (a refusal, a revocation, a
    /// CRL, a login, a service event) and waits until it is durable. A failure is the 503
    /// every action gets that could not be audited.
    pub async fn audit(
        &self,
        event: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<(), ApiError> {
        let event = AuditEvent {
            event: event.into(),
            actor: actor.into(),
            details,
        };
        self.recorder
            .record(None, event)
            .await
            .map(|_| ())
            .map_err(|e| {
                ApiError::unavailable(
                    "audit_unavailable",
                    format!("not served: the audit log cannot be written: {e}"),
                    Duration::from_secs(5),
                )
            })
    }

    /// Whether no more signing requests are in progress than there are verification
    /// threads: then a verification may run on the async worker that needs it (`api::cpu`).
    pub(crate) fn lightly_loaded(&self) -> bool {
        let in_progress = self.server.max_in_flight.get() - self.in_flight.available_permits();
        in_progress <= self.verifier.threads()
    }

    /// Records a service event (start, stop, reload) in the audit log; a failure is logged,
    /// as there is no request to answer.
    pub async fn audit_service_event(&self, event: &str, details: serde_json::Value) {
        if let Err(error) = self.audit(event, "hsmca", details).await {
            tracing::error!(error = %error.message, "cannot audit a service event");
        }
    }

    /// Ready to issue: the HSM signs with every issuer key, the ledger answers, and the
    /// recorder has not stopped. Probed at most once a second.
    pub async fn readiness(&self) -> Readiness {
        if let Some((at, result)) = self
            .readiness
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            && at.elapsed() < READINESS_TTL
        {
            return result.clone();
        }
        let mut failures = Vec::new();
        if let Some(why) = self.recorder.stopped_because() {
            failures.push(format!(
                "{why}; nothing is issued until hsmca is restarted on sound storage (`hsmca audit verify` checks the log)"
            ));
        }
        if let Err(error) = self.ledger.ping().await {
            failures.push(format!("the ledger cannot be reached: {error}"));
        }
        let settings = self.settings();
        for issuer in settings.issuers.values() {
            if let Err(error) = self
                .pool
                .sign(
                    &issuer.key,
                    issuer.algorithm,
                    b"hsmca readiness probe".to_vec(),
                )
                .await
            {
                failures.push(format!("issuer {} cannot sign: {error}", issuer.name));
            }
        }
        if let HealthState::Degraded { last_error, .. } = self.pool.health().state {
            if failures.is_empty() {
                tracing::info!(%last_error, "HSM recovered after an earlier fault");
            } else {
                failures.push(format!("HSM degraded: {last_error}"));
            }
        }
        let result = if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        };
        *self.readiness.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), result.clone()));
        result
    }

    /// The issuers closer to their `notAfter` than `[trust] issuer_expiry_warning`, with the
    /// time they have left.
    pub fn expiring_issuers(&self) -> Vec<(String, Seconds)> {
        let settings = self.settings();
        let now = pki::now().unix_duration();
        settings
            .issuers
            .values()
            .filter_map(|issuer| {
                let left = issuer
                    .certificate
                    .validity()
                    .not_after
                    .to_unix_duration()
                    .saturating_sub(now);
                (left < settings.expiry_warning.duration())
                    .then(|| (issuer.name.clone(), Seconds(left.as_secs())))
            })
            .collect()
    }

    /// Per client identity, its CA certificates (those of `issuing-ca` profiles) still valid
    /// and not revoked: how many expire within `[trust] issuer_expiry_warning`, and the
    /// validity of the newest. A cluster CA that failed to rotate shows in both.
    pub async fn client_cas(&self) -> Result<BTreeMap<String, ClientCas>, LedgerError> {
        let settings = self.settings();
        let now = pki::now().unix_duration().as_secs() as i64;
        let margin = now + settings.expiry_warning.0 as i64;
        let mut cas: BTreeMap<String, ClientCas> = BTreeMap::new();
        let ca_profiles = settings
            .profiles
            .iter()
            .filter(|(_, profile)| profile.kind == ProfileKind::IssuingCa);
        for (name, _) in ca_profiles {
            let still_valid = CertificateFilter {
                profile: Some(name.clone()),
                expiring_before: Some(i64::MAX),
                ..CertificateFilter::default()
            };
            let listed = self.ledger.list(still_valid, now).await?;
            // A revoked CA is out of service already, rotated or not.
            for certificate in listed.into_iter().filter(|c| c.revoked.is_none()) {
                let client = cas.entry(certificate.client).or_default();
                client.expiring += u64::from(certificate.not_after <= margin);
                if certificate.not_after > client.newest.1 {
                    client.newest = (certificate.not_before, certificate.not_after);
                }
            }
        }
        Ok(cas)
    }

    /// Logs a warning for each issuer close to expiry; called at start, on reload and hourly.
    pub fn warn_expiring_issuers(&self) {
        for (issuer, left) in self.expiring_issuers() {
            tracing::warn!(%issuer, left = %left, "online intermediate close to expiry: rotate it (ceremony, then reload)");
        }
    }

    /// The gauges for a metrics scrape.
    pub fn gauges(&self) -> Gauges {
        let health = self.pool.health();
        let stats = self.recorder.stats();
        Gauges {
            pool_busy: self.pool.busy(),
            queue_depth: self.pool.queued(),
            pool_sessions: self.pool.sessions(),
            pool_stuck: self.pool.stuck(),
            session_resets: health.session_resets,
            hsm_up: matches!(health.state, HealthState::Ok),
            record_groups: stats.groups.load(std::sync::atomic::Ordering::Relaxed),
            record_entries: stats.entries.load(std::sync::atomic::Ordering::Relaxed),
            client_cas: None,
            // Exported with checkpoints off too (all zero), so the alert rules always
            // find them.
            checkpoints: self
                .checkpoints
                .as_ref()
                .map(Checkpointer::gauges)
                .unwrap_or_default(),
            issuer_expiring: self
                .expiring_issuers()
                .into_iter()
                .map(|(name, _)| name)
                .collect(),
            issuer_not_after: self
                .settings()
                .issuers
                .values()
                .map(|issuer| {
                    (
                        issuer.name.clone(),
                        issuer
                            .certificate
                            .validity()
                            .not_after
                            .to_unix_duration()
                            .as_secs(),
                    )
                })
                .collect(),
        }
    }
}
