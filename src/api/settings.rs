//! What the configuration file decides and a reload may replace: the issuers (each checked
//! against its HSM key and chained to a root of `[trust]`), the profiles, the policy and the
//! trust bundle; and which sections only a restart can change.

use std::collections::BTreeMap;
use std::time::Duration;

use super::bundle;
use super::error::StartError;
use super::jwt_keys::JwtIssuer;
use crate::config::{
    AuditConfig, Config, CrlConfig, IssuerConfig, PublicConfig, ServerConfig, TrustConfig,
    VaultConfig,
};
use crate::hsm::{Hsm, HsmConfig, HsmKey, SignatureAlgorithm};
use crate::ledger::{StorageConfig, Store};
use crate::pki::{self, CaCertificate, Profile};
use crate::policy::Policy;

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
    /// The JWT-SVID keys and rules of `[jwt]`, when configured.
    pub jwt: Option<JwtIssuer>,
}

/// The sections a reload cannot change: they hold the listener, the HSM session pool, the
/// ledger, the audit log and the Vault tokens. Changing them needs a restart.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct FixedSections {
    hsm: HsmConfig,
    server: ServerConfig,
    storage: StorageConfig,
    crl: CrlConfig,
    vault: Option<VaultConfig>,
    audit: AuditConfig,
    /// `[public]`, the read-only listener.
    pub(super) public: Option<PublicConfig>,
}

impl FixedSections {
    /// The fixed sections of `config`, which `hsmca serve` has checked are present.
    pub(super) fn of(config: &Config) -> Self {
        FixedSections {
            hsm: config.hsm.clone(),
            server: config.server.clone().expect("checked at start"),
            storage: config.storage.clone().expect("checked at start"),
            crl: config.crl.clone(),
            vault: config.vault.clone(),
            audit: config.audit.clone(),
            public: config.public.clone(),
        }
    }

    /// The sections that differ from `self` in `other`.
    pub(super) fn changed(&self, other: &FixedSections) -> Vec<&'static str> {
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
        if self.audit != other.audit {
            changed.push("[audit]");
        }
        if self.public != other.public {
            changed.push("[public]");
        }
        changed
    }
}

impl Settings {
    /// Checks the reloadable sections of `config` and finds each issuer's key in `hsm`;
    /// `ledger` keeps the bundle's sequence. Blocks: run it where a thread may wait.
    pub(super) fn load(config: &Config, hsm: &Hsm, ledger: &Store) -> Result<Self, StartError> {
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
        let policy = check_policy(config)?;
        let (roots, intermediates) = load_trust(config, trust)?;
        let now = pki::now().unix_duration();
        let mut issuers = BTreeMap::new();
        for (name, issuer) in &config.issuers {
            let state = load_issuer(config, hsm, name, issuer, &roots, &intermediates, now)?;
            issuers.insert(name.clone(), state);
        }
        let jwt = config
            .jwt
            .as_ref()
            .map(|jwt| JwtIssuer::load(jwt, hsm))
            .transpose()?;
        let pem = bundle::pem_bundle(&roots);
        // The sequence grows when the published keys change: the roots, and the JWT keys
        // when there are any (without them the hash is the roots' alone, as before).
        let published = match &jwt {
            Some(jwt) => format!("{pem}\njwt-svid:{}", jwt.published_kids()),
            None => pem.clone(),
        };
        let sha256 = crate::digest::sha256_hex(published.as_bytes());
        let sequence = ledger.blocking(|store| store.bundle_sequence(&sha256))?;
        let jwt_entries = jwt.as_ref().map(JwtIssuer::spiffe_entries);
        let spiffe = bundle::spiffe_bundle(
            &roots,
            jwt_entries.unwrap_or_default(),
            sequence,
            trust.spiffe_refresh_hint.0,
        );
        Ok(Settings {
            issuers,
            profiles: config.profiles.clone(),
            policy,
            bundle: Bundle { roots, pem, spiffe },
            expiry_warning: trust.issuer_expiry_warning,
            jwt,
        })
    }
}

/// Checks the profiles against the issuers, the clients and officers against the profiles,
/// and `[vault]` against both; returns the policy.
fn check_policy(config: &Config) -> Result<Policy, StartError> {
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
    Ok(policy)
}

/// Checks `[issuers.<name>]`: its certificate, its key in `hsm` (found by label and public
/// key), its algorithm, its validity against now and its profiles' `max_ttl`, and its chain
/// to a root of `[trust]`.
fn load_issuer(
    config: &Config,
    hsm: &Hsm,
    name: &str,
    issuer: &IssuerConfig,
    roots: &[CaCertificate],
    intermediates: &[CaCertificate],
    now: Duration,
) -> Result<IssuerState, StartError> {
    let fail = |reason: String| StartError::Issuer {
        issuer: name.to_owned(),
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
    hsm.require_algorithm(algorithm, key.key_type())
        .map_err(|e| fail(format!("{e}: set signature_algorithm to one of those")))?;
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
    for (profile_name, profile) in config.profiles.iter().filter(|(_, p)| p.issuer == name) {
        if until < now + profile.max_ttl.duration() {
            return Err(fail(format!(
                "its certificate expires {} (or has expired), inside profile {profile_name}'s max_ttl {}; rotate the issuer or lower max_ttl",
                validity.not_after, profile.max_ttl
            )));
        }
    }
    let (chain, root) = chain_to_root(&certificate, intermediates, roots).map_err(fail)?;
    Ok(IssuerState {
        name: name.to_owned(),
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
    })
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
