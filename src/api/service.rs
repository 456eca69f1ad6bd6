//! The running service: everything `hsmca serve` checks and opens at start, and the state the
//! handlers share. A configuration that cannot work is refused here, with the fix, before the
//! listener opens.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::hsm::{HealthState, Hsm, HsmKey, SignatureAlgorithm, SignerPool};
use crate::ledger::audit::{AuditEvent, AuditLog};
use crate::ledger::certificates::{CertificateStore, Ledger};
use crate::ledger::recorder::Recorder;
use crate::pki::{self, CaCertificate, Profile};
use crate::policy::{Policy, RateLimiter};

use super::config::{ServerConfig, TrustConfig};
use super::metrics::{Gauges, Metrics};
use super::{bundle, serials::SerialSource};

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is incomplete or inconsistent.
    #[error("{0}")]
    Config(String),
    /// An issuer cannot be used.
    #[error("issuer {issuer}: {reason}")]
    Issuer {
        /// The `[issuers.<name>]`.
        issuer: String,
        /// Why, and what to do.
        reason: String,
    },
    /// The HSM cannot be opened or used.
    #[error(transparent)]
    Hsm(#[from] crate::hsm::HsmError),
    /// The ledger cannot be opened.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::certificates::LedgerError),
    /// The audit log cannot be opened.
    #[error(transparent)]
    Audit(#[from] crate::ledger::audit::AuditError),
}

/// An online intermediate, checked and ready to sign.
pub struct IssuerState {
    /// Its name in the configuration.
    pub name: String,
    /// Its certificate.
    pub certificate: CaCertificate,
    /// Its key in the HSM, found by label and checked against the certificate.
    pub key: HsmKey,
    /// The algorithm it signs with.
    pub algorithm: SignatureAlgorithm,
    /// What the pre-signing checks need to know about it.
    pub view: pki::Issuer,
    /// PEM of its certificate, the intermediates above it, and last the root of `[trust]`
    /// they end at; encoded once, since every answer carries some of it.
    pub path_pem: Vec<String>,
    /// Its CRL's URL, written into what it issues.
    pub crl_url: Option<String>,
}

impl IssuerState {
    /// The chain as PEM, issuer first, up to but not including the root.
    pub fn chain_pem(&self) -> String {
        self.path_pem[..self.path_pem.len() - 1].concat()
    }
}

/// The trust bundle as served.
pub struct Bundle {
    /// The roots.
    pub roots: Vec<CaCertificate>,
    /// Concatenated PEM.
    pub pem: String,
    /// The SPIFFE bundle document.
    pub spiffe: serde_json::Value,
}

/// What the configuration file decides and a reload may replace: issuers, profiles, policy
/// and trust bundle. A request takes one snapshot and keeps it to the end, so a reload never
/// changes the rules under a request in flight.
pub struct Settings {
    /// Online intermediates by name.
    pub issuers: BTreeMap<String, IssuerState>,
    /// Profiles by name.
    pub profiles: BTreeMap<String, Profile>,
    /// Client and officer policy.
    pub policy: Policy,
    /// The trust bundle.
    pub bundle: Bundle,
    /// How close to expiry an issuer is reported.
    pub expiry_warning: crate::duration::Seconds,
}

/// The sections a reload cannot change: they hold the listener, the HSM session pool, the
/// ledger, the audit log and the Vault tokens. Changing them needs a restart.
#[derive(Clone, Debug, PartialEq)]
struct FixedSections {
    hsm: crate::hsm::HsmConfig,
    server: ServerConfig,
    storage: super::config::StorageConfig,
    crl: super::config::CrlConfig,
    vault: Option<super::config::VaultConfig>,
}

impl FixedSections {
    fn of(config: &Config) -> Self {
        FixedSections {
            hsm: config.hsm.clone(),
            server: config.server.clone().expect("checked at start"),
            storage: config.storage.clone().expect("checked at start"),
            crl: config.crl.clone(),
            vault: config.vault.clone(),
        }
    }

    /// The sections that differ from `self` in `other`.
    fn changed(&self, other: &FixedSections) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.hsm != other.hsm {
            changed.push("[hsm]");
        }
        if self.server != other.server {
            changed.push("[server]");
        }
        if self.storage != other.storage {
            changed.push("[storage]");
        }
        if self.crl != other.crl {
            changed.push("[crl]");
        }
        if self.vault != other.vault {
            changed.push("[vault]");
        }
        changed
    }
}

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
    pub(crate) verifier: super::cpu::CpuPool,
    /// Ledger and audit log writer.
    pub recorder: Recorder,
    /// Serial numbers from the HSM's RNG.
    pub serials: SerialSource,
    /// Metrics.
    pub metrics: Metrics,
    /// The Vault-compatible dialect, when `[vault]` is configured.
    pub vault: Option<super::vault::VaultState>,
    /// A second connection to the ledger for lookups, revocations and CRLs, which are rare
    /// and must not wait behind a group of issuances; WAL lets it read while the recorder
    /// writes, and SQLite serialises the writes.
    pub ledger_admin: Mutex<Ledger>,
    /// The current CRL of each issuer.
    pub crls: super::crl::Crls,
    /// The incomplete last audit record cut off at start (a crash interrupted its write).
    pub discarded_audit_tail: Option<crate::ledger::audit::DiscardedTail>,
    hsm: Arc<Hsm>,
    config_path: PathBuf,
    fixed: FixedSections,
    settings: RwLock<Arc<Settings>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    readiness: Mutex<Option<(Instant, Readiness)>>,
}

/// A readiness verdict: ready, or every reason not to be.
type Readiness = Result<(), Vec<String>>;

/// How long a readiness probe result is reused, so probes cannot load the HSM.
const READINESS_TTL: Duration = Duration::from_secs(1);

impl Settings {
    /// Checks the reloadable sections of `config` and finds each issuer's key in `hsm`;
    /// `ledger` keeps the bundle's sequence.
    fn load(config: &Config, hsm: &Hsm, ledger: &Mutex<Ledger>) -> Result<Self, StartError> {
        let missing = |section: &str| {
            StartError::Config(format!(
                "`hsmca serve` needs a [{section}] section in the config file"
            ))
        };
        let trust = config.trust.as_ref().ok_or_else(|| missing("trust"))?;
        if config.issuers.is_empty() {
            return Err(missing("issuers.<name>"));
        }
        if config.profiles.is_empty() {
            return Err(missing("profiles.<name>"));
        }
        for (name, profile) in &config.profiles {
            profile.validate(name).map_err(StartError::Config)?;
            if let Some(warning) = profile.verifier_warning() {
                tracing::warn!(profile = %name, "{warning}");
            }
            if !config.issuers.contains_key(&profile.issuer) {
                return Err(StartError::Config(format!(
                    "profile {name}: issuer {:?} is not defined in [issuers]",
                    profile.issuer
                )));
            }
        }
        let policy = Policy::new(&config.clients, |p| config.profiles.contains_key(p))
            .and_then(|policy| policy.with_officers(&config.officers))
            .map_err(StartError::Config)?;
        if config.clients.is_empty() {
            tracing::warn!("no [[clients]] configured: every signing request will be refused");
        }
        if let Some(vault) = &config.vault {
            super::vault::VaultState::check(
                vault,
                |name| config.profiles.get(name).map(|p| p.kind),
                |identity| policy.client(identity).is_ok(),
            )
            .map_err(StartError::Config)?;
        }
        let (roots, intermediates) = load_trust(config, trust)?;
        let now = pki::now().unix_duration();
        let mut issuers = BTreeMap::new();
        for (name, issuer) in &config.issuers {
            let fail = |reason: String| StartError::Issuer {
                issuer: name.clone(),
                reason,
            };
            if let Some(url) = issuer
                .crl_url
                .as_deref()
                .filter(|u| !u.starts_with("http://"))
            {
                return Err(fail(format!(
                    "crl_url {url:?} must be an http:// URL (RFC 5280 4.2.1.13; relying parties fetch CRLs without TLS)"
                )));
            }
            let certificate = CaCertificate::from_file(&config.resolve(&issuer.certificate))
                .map_err(|e| fail(e.to_string()))?;
            let key = hsm
                .find_key(&issuer.key_label, Some(certificate.public_key()))
                .map_err(|e| fail(e.to_string()))?;
            let algorithm = issuer
                .signature_algorithm
                .unwrap_or_else(|| key.key_type().default_algorithm());
            if !algorithm.works_with(key.key_type()) {
                return Err(fail(format!(
                    "signature_algorithm {algorithm} cannot be made by its {} key",
                    key.key_type()
                )));
            }
            let validity = certificate.validity();
            let (from, until) = (
                validity.not_before.to_unix_duration(),
                validity.not_after.to_unix_duration(),
            );
            if now < from {
                return Err(fail(format!(
                    "its certificate is not valid before {}",
                    validity.not_before
                )));
            }
            for (profile_name, profile) in config.profiles.iter().filter(|(_, p)| &p.issuer == name)
            {
                if until < now + profile.max_ttl.duration() {
                    return Err(fail(format!(
                        "its certificate expires {} (or has expired), inside profile {profile_name}'s max_ttl {}; rotate the issuer or lower max_ttl",
                        validity.not_after, profile.max_ttl
                    )));
                }
            }
            let (chain, root) =
                chain_to_root(&certificate, &intermediates, &roots).map_err(fail)?;
            issuers.insert(
                name.clone(),
                IssuerState {
                    name: name.clone(),
                    view: certificate.as_issuer(),
                    certificate,
                    key,
                    algorithm,
                    path_pem: chain
                        .iter()
                        .chain(std::iter::once(&root))
                        .map(CaCertificate::to_pem)
                        .collect(),
                    crl_url: issuer.crl_url.clone(),
                },
            );
        }
        let pem = bundle::pem_bundle(&roots);
        let sequence = ledger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bundle_sequence(&crate::digest::sha256_hex(pem.as_bytes()))?;
        let spiffe = bundle::spiffe_bundle(&roots, sequence, trust.spiffe_refresh_hint.0);
        Ok(Settings {
            issuers,
            profiles: config.profiles.clone(),
            policy,
            bundle: Bundle { roots, pem, spiffe },
            expiry_warning: trust.issuer_expiry_warning,
        })
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
        let hsm = Hsm::open(&config.hsm)?;
        let ledger = Ledger::open(&config.resolve(&storage.ledger))?;
        let ledger_admin = Mutex::new(Ledger::open(&config.resolve(&storage.ledger))?);
        let settings = Settings::load(config, &hsm, &ledger_admin)?;
        let vault = config
            .vault
            .as_ref()
            .map(super::vault::VaultState::new)
            .transpose()
            .map_err(StartError::Config)?;
        // Only the last record is read now, so start-up does not grow with the log; the rest
        // is verified beside the first requests, and a broken chain stops issuance.
        let (audit, earlier_records) = AuditLog::open_at_tail(&config.resolve(&storage.audit_log))?;
        let discarded_audit_tail = audit.discarded_tail().cloned();
        let recorder = Recorder::start(Box::new(ledger), audit)
            .map_err(|e| StartError::Config(format!("cannot start the ledger writer: {e}")))?;
        recorder
            .verify_in_background(earlier_records)
            .map_err(|e| StartError::Config(format!("cannot start the audit log check: {e}")))?;
        let pool = hsm.start_pool(&config.hsm.pool)?;
        let hsm = Arc::new(hsm);
        let max_in_flight = server.max_in_flight.get();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let verifier = super::cpu::CpuPool::start(cores).map_err(|e| {
            StartError::Config(format!("cannot start the verification threads: {e}"))
        })?;
        Ok(Service {
            server,
            pool,
            limiter: RateLimiter::default(),
            in_flight: tokio::sync::Semaphore::new(max_in_flight),
            verifier,
            recorder,
            serials: SerialSource::new(hsm.clone(), config.hsm.pool.op_timeout()),
            metrics: Metrics::default(),
            vault,
            ledger_admin,
            crls: super::crl::Crls::new(config.crl.clone()),
            discarded_audit_tail,
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

    /// Reads the configuration file again and, if it is sound, puts its issuers, profiles,
    /// policy and trust bundle in place for the requests that follow; requests in flight
    /// finish under the settings they started with, and no connection is dropped. A file that
    /// does not load, or that changes a section only a restart can change, is refused and the
    /// running settings stay. Audited either way.
    pub async fn reload(self: &Arc<Self>, actor: &str) -> Result<serde_json::Value, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let service = self.clone();
        let loaded = tokio::task::spawn_blocking(move || -> Result<Settings, String> {
            let config = Config::load(&service.config_path).map_err(|e| e.to_string())?;
            let changed = service.fixed.changed(&FixedSections::of(&config));
            if !changed.is_empty() {
                return Err(format!(
                    "{} changed; those sections need a restart (nothing was reloaded)",
                    changed.join(", ")
                ));
            }
            Settings::load(&config, &service.hsm, &service.ledger_admin).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("the reload task failed: {e}"))
        .and_then(|result| result);
        match loaded {
            Ok(settings) => {
                let summary = serde_json::json!({
                    "issuers": settings.issuers.keys().collect::<Vec<_>>(),
                    "profiles": settings.profiles.iter().map(|(name, p)| (name.clone(), p.issuer.clone())).collect::<BTreeMap<_, _>>(),
                    "roots": settings.bundle.roots.iter().map(|r| r.subject().to_string()).collect::<Vec<_>>(),
                    "spiffe_sequence": settings.bundle.spiffe["spiffe_sequence"],
                });
                *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
                tracing::info!(%summary, "configuration reloaded");
                self.audit_service_event(
                    "config.reloaded",
                    serde_json::json!({ "by": actor, "now": summary }),
                )
                .await;
                // New issuers get their CRL now rather than at the next minute.
                self.refresh_crls().await;
                self.warn_expiring_issuers();
                Ok(summary)
            }
            Err(reason) => {
                tracing::warn!(%reason, "configuration reload refused; the running configuration stays");
                self.audit_service_event(
                    "config.reload.refused",
                    serde_json::json!({ "by": actor, "reason": reason }),
                )
                .await;
                Err(reason)
            }
        }
    }

    /// Appends an audit record that comes with no certificate (a refusal, a revocation, a
    /// CRL, a login, a service event) and waits until it is durable. A failure is the 503
    /// every action gets that could not be audited.
    pub async fn audit(
        &self,
        event: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<(), super::ApiError> {
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
                super::ApiError::unavailable(
                    "audit_unavailable",
                    format!("not served: the audit log cannot be written: {e}"),
                    Duration::from_secs(5),
                )
            })
    }

    /// Records a service event (start, stop, reload) in the audit log; a failure is logged,
    /// as there is no request to answer.
    pub async fn audit_service_event(&self, event: &str, details: serde_json::Value) {
        if let Err(error) = self.audit(event, "hsmca", details).await {
            tracing::error!(error = %error.message, "cannot audit a service event");
        }
    }

    /// Ready to issue: the HSM signs with every issuer key, and the ledger and audit log are
    /// writable. Probed at most once a second.
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
    pub fn expiring_issuers(&self) -> Vec<(String, crate::duration::Seconds)> {
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
                (left < settings.expiry_warning.duration()).then(|| {
                    (
                        issuer.name.clone(),
                        crate::duration::Seconds(left.as_secs()),
                    )
                })
            })
            .collect()
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
            session_resets: health.session_resets,
            hsm_up: matches!(health.state, HealthState::Ok),
            record_groups: stats.groups.load(std::sync::atomic::Ordering::Relaxed),
            record_entries: stats.entries.load(std::sync::atomic::Ordering::Relaxed),
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

/// Loads the roots (self-signed) and intermediates of `[trust]`.
fn load_trust(
    config: &Config,
    trust: &TrustConfig,
) -> Result<(Vec<CaCertificate>, Vec<CaCertificate>), StartError> {
    if trust.roots.is_empty() {
        return Err(StartError::Config(
            "trust.roots must list at least one root certificate".into(),
        ));
    }
    let load = |path: &std::path::PathBuf| {
        CaCertificate::from_file(&config.resolve(path))
            .map_err(|e| StartError::Config(format!("[trust]: {e}")))
    };
    let roots = trust
        .roots
        .iter()
        .map(load)
        .collect::<Result<Vec<_>, _>>()?;
    for (root, path) in roots.iter().zip(&trust.roots) {
        let self_signed =
            root.is_self_issued() && pki::verify_signed(root.der(), root.public_key()).is_ok();
        if !self_signed {
            return Err(StartError::Config(format!(
                "trust.roots: {} is not a self-signed root",
                path.display()
            )));
        }
    }
    let intermediates = trust
        .intermediates
        .iter()
        .map(load)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((roots, intermediates))
}

/// The path from `issuer` up to one of `roots`, each link's signature verified: the issuer
/// and the intermediates above it, and the root they end at.
fn chain_to_root(
    issuer: &CaCertificate,
    intermediates: &[CaCertificate],
    roots: &[CaCertificate],
) -> Result<(Vec<CaCertificate>, CaCertificate), String> {
    let signed_by = |child: &CaCertificate, parent: &CaCertificate| {
        child.certificate().tbs_certificate.issuer == *parent.subject()
            && pki::verify_signed(child.der(), parent.public_key()).is_ok()
    };
    let mut chain = vec![issuer.clone()];
    while chain.len() <= intermediates.len() + 1 {
        let last = chain.last().expect("the chain starts with the issuer");
        if let Some(root) = roots.iter().find(|root| signed_by(last, root)) {
            return Ok((chain, root.clone()));
        }
        match intermediates.iter().find(|parent| signed_by(last, parent)) {
            Some(parent) => chain.push(parent.clone()),
            None => break,
        }
    }
    Err(format!(
        "its certificate does not chain to any of trust.roots (issuer {}); add the root, or the intermediates between, to [trust]",
        issuer.certificate().tbs_certificate.issuer
    ))
}
