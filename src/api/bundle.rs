//! The trust bundle in the two forms consumers read: concatenated PEM roots, and a SPIFFE
//! bundle (a JWK Set whose x509-svid entries each carry one root in `x5c`, beside the
//! jwt-svid keys).

use base64ct::{Base64, Encoding};
use serde_json::{Value, json};

use crate::pki::CaCertificate;
use crate::pki::jwt;

/// The roots as one PEM text, in configuration order.
pub fn pem_bundle(roots: &[CaCertificate]) -> String {
    roots.iter().map(CaCertificate::to_pem).collect()
}

/// The SPIFFE bundle document: `keys` (one `x509-svid` entry per root, then the `jwt-svid`
/// entries given), `spiffe_sequence`, `spiffe_refresh_hint`.
pub fn spiffe_bundle(
    roots: &[CaCertificate],
    jwt_svid_keys: Vec<Value>,
    sequence: u64,
    refresh_hint_seconds: u64,
) -> Value {
    let keys: Vec<Value> = roots.iter().map(jwk).chain(jwt_svid_keys).collect();
    json!({
        "keys": keys,
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": refresh_hint_seconds,
    })
}

/// One x509-svid JWK: the key's parameters plus the certificate, and no `kid` (the SPIFFE
/// trust domain bundle format says x509-svid entries have none).
fn jwk(root: &CaCertificate) -> Value {
    let mut entry = json!(jwt::public_jwk(root.public_key()));
    entry["use"] = json!("x509-svid");
    entry["x5c"] = json!([Base64::encode_string(root.der())]);
    entry
}
