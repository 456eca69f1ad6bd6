//! The sections only the signing service (`hsmca serve`, [`crate::api`]) reads: `[server]`,
//! `[trust]`, `[issuers.<name>]`, `[crl]`, `[vault]`, `[jwt]` and `[public]`. They are defined here rather than in
//! `api` because the service reads the whole file, at start and on reload: `api` depends on
//! `config`, never the other way round.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use serde::Deserialize;

use crate::duration::Seconds;
use crate::hsm::SignatureAlgorithm;
use crate::pki::jwt::JwtAlgorithm;

/// Which part of a client certificate is the client's identity in `[[clients]]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentitySource {
    /// The URI SAN (a SPIFFE ID); the certificate must have exactly one.
    #[default]
    UriSan,
    /// The DNS SAN; the certificate must have exactly one.
    DnsSan,
    /// The subject's common name; the certificate must have exactly one.
    CommonName,
    /// The lower-case hex SHA-256 of the whole DER certificate.
    Fingerprint,
}

/// `[server]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on (default `127.0.0.1:8443`).
    #[serde(default = "ServerConfig::default_listen")]
    pub listen: SocketAddr,
    /// The server's TLS certificate chain (PEM, leaf first).
    pub certificate: PathBuf,
    /// The server's TLS private key (PEM, PKCS#8, SEC1 or PKCS#1); must not be readable by
    /// group or others.
    pub key: PathBuf,
    /// The CA certificates client certificates must chain to (PEM). Keep this apart from the
    /// mesh root: the mesh root vouches for workloads, this bundle for API clients.
    pub client_ca: PathBuf,
    /// Also accept TLS 1.2 (default: TLS 1.3 only).
    #[serde(default)]
    pub tls12: bool,
    /// What names a client in `[[clients]]` (default `uri-san`).
    #[serde(default)]
    pub client_identity: IdentitySource,
    /// Largest request body accepted (default 64 KiB).
    #[serde(default = "ServerConfig::default_max_body")]
    pub max_body_bytes: usize,
    /// Time a request may take from its headers to its answer (default 10 s).
    #[serde(default = "ServerConfig::default_request_timeout")]
    pub request_timeout: Seconds,
    /// Time for the TLS handshake and the request headers to arrive (default 5 s).
    #[serde(default = "ServerConfig::default_header_timeout")]
    pub header_read_timeout: Seconds,
    /// How long SIGTERM waits for in-flight requests (default 30 s).
    #[serde(default = "ServerConfig::default_shutdown_grace")]
    pub shutdown_grace: Seconds,
    /// Signing requests handled at once (default 128). One more is answered at once with
    /// 503 `overloaded` and Retry-After instead of waiting: once the cores and the HSM are
    /// busy, a longer queue only adds latency, and a client told to come back can go to
    /// another replica.
    #[serde(default = "ServerConfig::default_max_in_flight")]
    pub max_in_flight: NonZeroUsize,
    /// A second, plain-HTTP listener for `/healthz`, `/readyz` and `/metrics` only, for
    /// probes and scrapers that hold no client certificate (Kubernetes, Prometheus). Bind it
    /// to an address only they reach. Default: none.
    pub ops_listen: Option<SocketAddr>,
}

impl ServerConfig {
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8443))
    }
    fn default_max_body() -> usize {
        64 * 1024
    }
    fn default_request_timeout() -> Seconds {
        Seconds(10)
    }
    fn default_header_timeout() -> Seconds {
        Seconds(5)
    }
    fn default_shutdown_grace() -> Seconds {
        Seconds(30)
    }
    fn default_max_in_flight() -> NonZeroUsize {
        NonZeroUsize::new(128).expect("128 is not zero")
    }
}

/// `[trust]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Root certificates published by `/v1/bundle` and `/v1/bundle/spiffe` (PEM files).
    pub roots: Vec<PathBuf>,
    /// Intermediate certificates between an issuer and its root, if any (PEM files).
    #[serde(default)]
    pub intermediates: Vec<PathBuf>,
    /// How often bundle consumers should refresh (`spiffe_refresh_hint`, default 5 min).
    #[serde(default = "TrustConfig::default_refresh_hint")]
    pub spiffe_refresh_hint: Seconds,
    /// An issuer closer to its `notAfter` than this is reported: a warning in the log every
    /// hour and `hsmca_issuer_expiring{issuer} 1` (default 30 days).
    #[serde(default = "TrustConfig::default_expiry_warning")]
    pub issuer_expiry_warning: Seconds,
}

impl TrustConfig {
    fn default_refresh_hint() -> Seconds {
        Seconds(300)
    }
    fn default_expiry_warning() -> Seconds {
        Seconds(30 * 86_400)
    }
}

/// `[issuers.<name>]`: an online intermediate.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Its certificate (from the intermediate ceremony).
    pub certificate: PathBuf,
    /// The label of its private key in the HSM.
    pub key_label: String,
    /// The signature algorithm (default: the key type's usual one).
    pub signature_algorithm: Option<SignatureAlgorithm>,
    /// Where relying parties fetch this issuer's CRL (an `http://` URL, typically a mirror of
    /// `GET /v1/crl/<name>`); written into every certificate it issues. None: no CRL pointer.
    pub crl_url: Option<String>,
}

/// `[crl]`: the CRLs hsmca signs for its online intermediates.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlConfig {
    /// `nextUpdate - thisUpdate` (default 24 h).
    #[serde(default = "CrlConfig::default_validity")]
    pub validity: Seconds,
    /// A new CRL is signed this long before the current one's `nextUpdate` (default 8 h).
    #[serde(default = "CrlConfig::default_refresh_before")]
    pub refresh_before: Seconds,
}

impl Default for CrlConfig {
    fn default() -> Self {
        CrlConfig {
            validity: Self::default_validity(),
            refresh_before: Self::default_refresh_before(),
        }
    }
}

impl CrlConfig {
    fn default_validity() -> Seconds {
        Seconds(86_400)
    }
    fn default_refresh_before() -> Seconds {
        Seconds(8 * 3600)
    }
}

/// `[vault]`: the Vault PKI-compatible endpoints, for clients that already speak Vault
/// (SPIRE's `vault` UpstreamAuthority, cert-manager's Vault issuer, hvac). Absent: none.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// The secrets mount the PKI endpoints live under (default `pki`: `/v1/pki/...`).
    #[serde(default = "VaultConfig::default_mount")]
    pub mount: String,
    /// The profile `root/sign-intermediate` issues under (an `issuing-ca` profile).
    pub sign_intermediate_profile: String,
    /// Vault roles for `sign/<role>`, each naming a profile.
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, String>,
    /// Lifetime of a token from `auth/cert/login` (default 1 h).
    #[serde(default = "VaultConfig::default_token_ttl")]
    pub token_ttl: Seconds,
    /// No renewal takes a token past this age (default 24 h).
    #[serde(default = "VaultConfig::default_token_max_ttl")]
    pub token_max_ttl: Seconds,
    /// Tokens configured ahead, for clients that use token auth: stored as SHA-256 only.
    #[serde(default)]
    pub static_tokens: Vec<StaticToken>,
}

/// A `[[vault.static_tokens]]` entry.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    /// Lower-case hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
    /// The client identity the token is bound to: it is accepted only on a connection whose
    /// client certificate has this identity, and that client's policy applies.
    pub identity: String,
}

impl VaultConfig {
    fn default_mount() -> String {
        "pki".into()
    }
    fn default_token_ttl() -> Seconds {
        Seconds(3600)
    }
    fn default_token_max_ttl() -> Seconds {
        Seconds(86_400)
    }
}

/// `[audit]`: signed checkpoints of the audit chain and the witnesses that keep them
/// (docs/operations.md, "Checkpoints and witnesses"). Absent or without `checkpoint_key`:
/// no checkpoints, and `hsmca serve` says so at start.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The label of the checkpoint key in the HSM: generated by a key ceremony, used for
    /// nothing else.
    pub checkpoint_key: Option<String>,
    /// How often a checkpoint of the chain's newest record is signed, if records were added
    /// since the last (default 5 min); also at start and at stop. This bounds the records a
    /// rewrite of the store could cut unseen.
    #[serde(default = "AuditConfig::default_interval")]
    pub checkpoint_interval: Seconds,
    /// A file on another path (another disk, a mount shipped elsewhere) that every checkpoint
    /// is appended to and synced.
    pub witness_file: Option<PathBuf>,
    /// Syslog's local datagram socket (`/dev/log`, also journald's): every checkpoint is sent
    /// there as an `auth.notice` message.
    pub witness_syslog: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_key: None,
            checkpoint_interval: Self::default_interval(),
            witness_file: None,
            witness_syslog: None,
        }
    }
}

impl AuditConfig {
    fn default_interval() -> Seconds {
        Seconds(300)
    }
}

/// `[jwt]`: JWT-SVIDs signed in the HSM (`POST /v1/jwt`) and the keys published for them.
/// Absent: no JWT-SVIDs.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The `iss` claim and the OIDC discovery document's `issuer`: `https://host[:port]` (or
    /// `http://` behind an ingress), no path. Absent: tokens carry no `iss` and the public
    /// listener serves no discovery document.
    pub issuer_url: Option<String>,
    /// Lifetime of a token when the request names none (default 5 min), shortened to the
    /// client's `jwt_max_ttl`.
    #[serde(default = "JwtConfig::default_ttl")]
    pub default_ttl: Seconds,
    /// The longest lifetime any client may ask for (default 1 h).
    #[serde(default = "JwtConfig::default_max_ttl")]
    pub max_ttl: Seconds,
    /// The label of the key that signs; the others are only published.
    pub active: String,
    /// The signing keys, each generated in the HSM by a key ceremony.
    pub keys: Vec<JwtKeyConfig>,
}

impl JwtConfig {
    fn default_ttl() -> Seconds {
        Seconds(300)
    }
    fn default_max_ttl() -> Seconds {
        Seconds(3600)
    }
}

/// A `[[jwt.keys]]` entry.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// The key's label in the HSM.
    pub label: String,
    /// `es256` (an ecdsa-p256 key), `rs256` or `ps256` (an RSA key of 2048 bits or more).
    pub algorithm: JwtAlgorithm,
}

/// `[public]`: a read-only listener without client certificates, for relying parties: the
/// SPIFFE bundle, and with `[jwt] issuer_url` the OIDC discovery document and its JWKS.
/// Plain HTTP: put it behind an ingress that terminates TLS. Absent: none.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// The path the SPIFFE bundle is served at (default `/bundle.spiffe.json`).
    #[serde(default = "PublicConfig::default_bundle_path")]
    pub spiffe_bundle_path: String,
    /// Requests per minute the listener answers, from everyone together (default 6000);
    /// more get 429 with `Retry-After`. One bucket for all: the documents are small and
    /// cached, and relying parties refresh every few minutes; a CDN or ingress in front
    /// shields the appliance from a flood better than a per-address count would.
    #[serde(default = "PublicConfig::default_rate")]
    pub requests_per_minute: u32,
    /// Requests allowed in a burst above that rate (default 600).
    #[serde(default = "PublicConfig::default_burst")]
    pub burst: u32,
}

impl PublicConfig {
    fn default_bundle_path() -> String {
        "/bundle.spiffe.json".into()
    }
    fn default_rate() -> u32 {
        6000
    }
    fn default_burst() -> u32 {
        600
    }

    /// Refuses a bundle path that is not a plain absolute path, or that is one of the
    /// `reserved` paths the listener serves for something else.
    pub fn check(&self, reserved: &[&str]) -> Result<(), String> {
        let path = &self.spiffe_bundle_path;
        let plain = path.starts_with('/')
            && path.len() > 1
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '-' | '_'));
        if !plain || reserved.contains(&path.as_str()) {
            return Err(format!(
                "public.spiffe_bundle_path {path:?} must be an absolute path of letters, digits, '/', '.', '-' and '_', other than {}",
                reserved.join(", ")
            ));
        }
        Ok(())
    }
}
