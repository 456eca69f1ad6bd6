//! The trust bundle in the two forms consumers read: concatenated PEM roots, and a SPIFFE
//! bundle (a JWK Set whose x509-svid entries each carry one root in `x5c`).

use base64ct::{Base64, Base64UrlUnpadded, Encoding};
use der::Decode;
use der::asn1::UintRef;
use serde_json::{Value, json};

use crate::hsm::KeyType;
use crate::pki::CaCertificate;

/// PKCS#1 RSAPublicKey, to take the modulus and exponent apart for a JWK.
#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    modulus: UintRef<'a>,
    public_exponent: UintRef<'a>,
}

/// The roots as one PEM text, in configuration order.
pub fn pem_bundle(roots: &[CaCertificate]) -> String {
    roots.iter().map(CaCertificate::to_pem).collect()
}

/// The SPIFFE bundle document: `keys`, `spiffe_sequence`, `spiffe_refresh_hint`.
pub fn spiffe_bundle(roots: &[CaCertificate], sequence: u64, refresh_hint_seconds: u64) -> Value {
    let keys: Vec<Value> = roots.iter().map(jwk).collect();
    json!({
        "keys": keys,
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": refresh_hint_seconds,
    })
}

/// One x509-svid JWK: the key's parameters plus the certificate, and no `kid` (the SPIFFE
/// trust domain bundle format says x509-svid entries have none).
fn jwk(root: &CaCertificate) -> Value {
    let key = root.public_key();
    let raw = key.subject_public_key();
    let b64url = |bytes: &[u8]| Base64UrlUnpadded::encode_string(bytes);
    let mut entry = match key.key_type() {
        KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
            // An uncompressed point: 0x04 || x || y.
            let coordinates = &raw[1..];
            let (x, y) = coordinates.split_at(coordinates.len() / 2);
            let crv = if key.key_type() == KeyType::EcdsaP256 {
                "P-256"
            } else {
                "P-384"
            };
            json!({ "kty": "EC", "crv": crv, "x": b64url(x), "y": b64url(y) })
        }
        KeyType::Ed25519 => json!({ "kty": "OKP", "crv": "Ed25519", "x": b64url(raw) }),
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let rsa = RsaPublicKey::from_der(raw).expect("a parsed RSA key re-parses");
            json!({
                "kty": "RSA",
                "n": b64url(rsa.modulus.as_bytes()),
                "e": b64url(rsa.public_exponent.as_bytes()),
            })
        }
    };
    entry["use"] = json!("x509-svid");
    entry["x5c"] = json!([Base64::encode_string(root.der())]);
    entry
}
