//! The JWT signing keys of `[jwt]`, found in the HSM and checked, and how they are
//! published: `jwt-svid` entries of the SPIFFE bundle, and the OIDC discovery document with
//! its JWKS for relying parties that speak OIDC.

use serde_json::{Value, json};

use super::error::StartError;
use crate::config::JwtConfig;
use crate::duration::Seconds;
use crate::hsm::{Hsm, HsmKey};
use crate::pki::jwt::{self, JwtAlgorithm};

/// The path of the JWKS the discovery document names, on the public listener.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The path of the OIDC discovery document, on the public listener.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// One JWT signing key, found in the HSM by label and checked to sign.
pub struct JwtKey {
    /// Its label in the HSM.
    pub label: String,
    /// The JOSE algorithm it signs with.
    pub algorithm: JwtAlgorithm,
    /// The key in the HSM.
    pub key: HsmKey,
    /// Its RFC 7638 thumbprint, the tokens' and the bundles' `kid`.
    pub kid: String,
}

impl JwtKey {
    /// The public JWK with `kid`, `use` and, for OIDC, `alg`.
    fn jwk(&self, usage: &str, with_alg: bool) -> Value {
        let mut entry = json!(jwt::public_jwk(self.key.public_key()));
        entry["kid"] = json!(self.kid);
        entry["use"] = json!(usage);
        if with_alg {
            entry["alg"] = json!(self.algorithm.jose_name());
        }
        entry
    }
}

/// `[jwt]`, loaded: the keys, the active one, the lifetimes and the issuer URL.
pub struct JwtIssuer {
    /// Every key, in configuration order; all published.
    pub keys: Vec<JwtKey>,
    /// The index in `keys` of the key that signs.
    active: usize,
    /// The `iss` claim, if configured.
    pub issuer_url: Option<String>,
    /// Lifetime when a request names none.
    pub default_ttl: Seconds,
    /// The longest lifetime any client may ask for.
    pub max_ttl: Seconds,
    /// The JWKS the discovery document names, made once per load: the public listener
    /// serves it to anyone.
    jwks: Value,
    /// The OIDC discovery document, when an issuer URL is configured; made once per load.
    discovery: Option<Value>,
}

impl JwtIssuer {
    /// Checks `[jwt]` and finds each key in `hsm` (by label; a test signature proves it
    /// signs). Blocks.
    pub(super) fn load(config: &JwtConfig, hsm: &Hsm) -> Result<Self, StartError> {
        let fail = |reason: String| StartError::Config(format!("[jwt]: {reason}"));
        if let Some(url) = &config.issuer_url {
            check_issuer_url(url).map_err(fail)?;
        }
        if config.default_ttl.0 == 0 || config.default_ttl > config.max_ttl {
            return Err(fail(format!(
                "default_ttl {} must be above zero and at most max_ttl {}",
                config.default_ttl, config.max_ttl
            )));
        }
        if config.keys.is_empty() {
            return Err(fail(
                "list at least one [[jwt.keys]] entry (a key made by `hsmca ceremony key`)".into(),
            ));
        }
        let mut keys = Vec::with_capacity(config.keys.len());
        for entry in &config.keys {
            if keys.iter().any(|k: &JwtKey| k.label == entry.label) {
                return Err(fail(format!("key {:?} is listed twice", entry.label)));
            }
            let key = hsm
                .find_key(&entry.label, None)
                .map_err(|e| fail(format!("key {:?}: {e}", entry.label)))?;
            if !entry.algorithm.fits(key.key_type()) {
                return Err(fail(format!(
                    "key {:?} is {}, which cannot sign {}",
                    entry.label,
                    key.key_type(),
                    entry.algorithm
                )));
            }
            let algorithm = entry.algorithm.signature_algorithm();
            hsm.require_algorithm(algorithm, key.key_type())
                .map_err(|e| fail(format!("key {:?}: {e}", entry.label)))?;
            keys.push(JwtKey {
                label: entry.label.clone(),
                algorithm: entry.algorithm,
                kid: jwt::thumbprint(key.public_key()),
                key,
            });
        }
        let active = keys
            .iter()
            .position(|k| k.label == config.active)
            .ok_or_else(|| {
                fail(format!(
                    "active = {:?} is not the label of a [[jwt.keys]] entry",
                    config.active
                ))
            })?;
        let jwks = json!({ "keys": keys.iter().map(|k| k.jwk("sig", true)).collect::<Vec<_>>() });
        let discovery = config
            .issuer_url
            .as_deref()
            .map(|issuer| discovery_document(issuer, &keys));
        Ok(JwtIssuer {
            keys,
            active,
            issuer_url: config.issuer_url.clone(),
            default_ttl: config.default_ttl,
            max_ttl: config.max_ttl,
            jwks,
            discovery,
        })
    }

    /// The key that signs.
    pub fn active(&self) -> &JwtKey {
        &self.keys[self.active]
    }

    /// The SPIFFE bundle's `jwt-svid` entries.
    pub fn spiffe_entries(&self) -> Vec<Value> {
        self.keys.iter().map(|k| k.jwk("jwt-svid", false)).collect()
    }

    /// What changes the published keys, for the bundle's sequence number.
    pub fn published_kids(&self) -> String {
        self.keys
            .iter()
            .map(|k| k.kid.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The JWKS the discovery document names: every key, `use: sig`, with its `alg`.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The OIDC discovery document, when an issuer URL is configured.
    pub fn discovery(&self) -> Option<&Value> {
        self.discovery.as_ref()
    }
}

/// The OIDC discovery document of `issuer` signing with `keys`.
fn discovery_document(issuer: &str, keys: &[JwtKey]) -> Value {
    let mut algorithms: Vec<&str> = keys.iter().map(|k| k.algorithm.jose_name()).collect();
    algorithms.sort_unstable();
    algorithms.dedup();
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algorithms,
    })
}

/// An issuer URL is `https://host[:port]` or `http://host[:port]`: no path (the discovery
/// document is served at the root's `/.well-known/`), no query, fragment or user info.
fn check_issuer_url(url: &str) -> Result<(), String> {
    let authority = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("issuer_url {url:?} must start with https:// (or http://)"))?;
    let bad = authority.is_empty()
        || authority
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')));
    if bad {
        return Err(format!(
            "issuer_url {url:?} must be scheme://host[:port], without a path, query, fragment or user info"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_issuer_url;

    #[test]
    fn issuer_urls_are_origins_only() {
        check_issuer_url("https://oidc.mesh.example").unwrap();
        check_issuer_url("http://127.0.0.1:8080").unwrap();
        for bad in [
            "oidc.mesh.example",
            "https://",
            "https://oidc.mesh.example/",
            "https://oidc.mesh.example/tenant",
            "https://a@oidc.mesh.example",
            "https://oidc.mesh.example?x=1",
            "ftp://oidc.mesh.example",
        ] {
            assert!(check_issuer_url(bad).is_err(), "{bad}");
        }
    }
}
