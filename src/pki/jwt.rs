//! JWT-SVIDs as JWS compact tokens (RFC 7515, RFC 7519, the SPIFFE JWT-SVID specification):
//! the JOSE algorithms hsmca signs with, public keys as JWKs and their RFC 7638 thumbprints,
//! the signing input, and the signature's JOSE encoding. Which key signs, and where, is the
//! caller's: this module only shapes bytes and checks them.

use std::collections::BTreeMap;

use base64ct::{Base64UrlUnpadded, Encoding};
use der::Decode;
use serde::{Deserialize, Serialize};

use crate::hsm::{
    EcdsaSigValue, KeyType, PublicKey, RsaPublicKey, SignatureAlgorithm, ecdsa_raw_to_der,
};

/// The JOSE algorithms a JWT signing key may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JwtAlgorithm {
    /// ECDSA P-256 with SHA-256 (`ES256`): the default, and what SPIRE uses.
    Es256,
    /// RSA PKCS#1 v1.5 with SHA-256 (`RS256`), for relying parties that need RSA.
    Rs256,
    /// RSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt (`PS256`).
    Ps256,
}

impl JwtAlgorithm {
    /// The `alg` header value.
    pub fn jose_name(self) -> &'static str {
        match self {
            JwtAlgorithm::Es256 => "ES256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Ps256 => "PS256",
        }
    }

    /// The HSM signature algorithm that makes this JOSE signature.
    pub fn signature_algorithm(self) -> SignatureAlgorithm {
        match self {
            JwtAlgorithm::Es256 => SignatureAlgorithm::EcdsaP256Sha256,
            JwtAlgorithm::Rs256 => SignatureAlgorithm::RsaPkcs1Sha256,
            JwtAlgorithm::Ps256 => SignatureAlgorithm::RsaPssSha256,
        }
    }

    /// Whether a key of `key_type` can sign with this algorithm. RS256 and PS256 take RSA
    /// keys of 2048 bits or more (RFC 7518 3.3); ES256 only P-256.
    pub fn fits(self, key_type: KeyType) -> bool {
        self.signature_algorithm().works_with(key_type)
    }
}

impl std::fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.jose_name())
    }
}

/// Why a token could not be made or does not verify.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// The key's type has no JWK form hsmca publishes for JWTs.
    #[error("a {0} key cannot be a JWT signing key: use ecdsa-p256 (ES256) or RSA (RS256, PS256)")]
    KeyType(KeyType),
    /// The HSM's signature is not a valid encoding for the algorithm.
    #[error("the HSM returned a malformed {algorithm} signature: {reason}")]
    MalformedSignature {
        /// The JOSE algorithm.
        algorithm: JwtAlgorithm,
        /// What was wrong.
        reason: String,
    },
    /// The token is not three base64url parts, or its header is not the one expected.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify with the key.
    #[error("the token's signature does not verify with key {kid}")]
    BadSignature {
        /// The key's `kid`.
        kid: String,
    },
}

/// A public key as a JWK holding only its required members (RFC 7638 3.2), in lexicographic
/// order: `crv`, `kty`, `x`, `y` for EC and OKP keys, `e`, `kty`, `n` for RSA.
pub fn public_jwk(key: &PublicKey) -> BTreeMap<&'static str, String> {
    let raw = key.subject_public_key();
    let b64url = |bytes: &[u8]| Base64UrlUnpadded::encode_string(bytes);
    let mut jwk = BTreeMap::new();
    match key.key_type() {
        KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
            // An uncompressed point: 0x04 || x || y.
            let coordinates = &raw[1..];
            let (x, y) = coordinates.split_at(coordinates.len() / 2);
            let crv = if key.key_type() == KeyType::EcdsaP256 {
                "P-256"
            } else {
                "P-384"
            };
            jwk.insert("kty", "EC".to_owned());
            jwk.insert("crv", crv.to_owned());
            jwk.insert("x", b64url(x));
            jwk.insert("y", b64url(y));
        }
        KeyType::Ed25519 => {
            jwk.insert("kty", "OKP".to_owned());
            jwk.insert("crv", "Ed25519".to_owned());
            jwk.insert("x", b64url(raw));
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let rsa = RsaPublicKey::from_der(raw).expect("a parsed RSA key re-parses");
            jwk.insert("kty", "RSA".to_owned());
            jwk.insert("n", b64url(rsa.modulus.as_bytes()));
            jwk.insert("e", b64url(rsa.public_exponent.as_bytes()));
        }
    }
    jwk
}

/// The RFC 7638 JWK thumbprint of `key`: base64url of the SHA-256 of its required members,
/// serialised in lexicographic order without whitespace. Used as the key's `kid`.
pub fn thumbprint(key: &PublicKey) -> String {
    let canonical =
        serde_json::to_string(&public_jwk(key)).expect("a map of strings always serialises");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    Base64UrlUnpadded::encode_string(digest.as_ref())
}

/// The claims of a JWT-SVID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtSvidClaims {
    /// The SPIFFE ID of the workload.
    pub sub: String,
    /// The audiences, one or more.
    pub aud: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// The issuer URL, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub iss: Option<String>,
}

/// The JOSE header of a JWT-SVID.
#[derive(Debug, Serialize)]
struct Header<'a> {
    alg: &'static str,
    kid: &'a str,
    typ: &'static str,
}

/// A token's header and claims, encoded, waiting for the signature.
#[derive(Clone, Debug)]
pub struct SigningInput {
    algorithm: JwtAlgorithm,
    /// `base64url(header) "." base64url(claims)`.
    text: String,
}

impl SigningInput {
    /// Encodes the header (`alg` from `algorithm`, `kid`, `typ: JWT`) and `claims`.
    pub fn new(algorithm: JwtAlgorithm, kid: &str, claims: &JwtSvidClaims) -> Self {
        let header = Header {
            alg: algorithm.jose_name(),
            kid,
            typ: "JWT",
        };
        let text = format!("{}.{}", encode_json(&header), encode_json(claims));
        SigningInput { algorithm, text }
    }

    /// The bytes the signature covers.
    pub fn as_bytes(&self) -> &[u8] {
        self.text.as_bytes()
    }

    /// The compact token, from the signature in its X.509 encoding (what
    /// [`crate::hsm::SignerPool::sign`] returns: DER `Ecdsa-Sig-Value` for ECDSA, the raw
    /// bytes for RSA). ES256 signatures become the fixed-width `r || s` of RFC 7518 3.4.
    pub fn finish(self, x509_signature: &[u8]) -> Result<String, JwtError> {
        let jose = match self.algorithm {
            JwtAlgorithm::Es256 => ecdsa_der_to_fixed(x509_signature, 32).map_err(|reason| {
                JwtError::MalformedSignature {
                    algorithm: self.algorithm,
                    reason,
                }
            })?,
            JwtAlgorithm::Rs256 | JwtAlgorithm::Ps256 => x509_signature.to_vec(),
        };
        Ok(format!(
            "{}.{}",
            self.text,
            Base64UrlUnpadded::encode_string(&jose)
        ))
    }
}

/// base64url of `value`'s JSON.
fn encode_json(value: &impl Serialize) -> String {
    let json =
        serde_json::to_vec(value).expect("a header or claims of strings and numbers serialise");
    Base64UrlUnpadded::encode_string(&json)
}

/// DER `Ecdsa-Sig-Value` to the fixed-width `r || s` JOSE uses, each `scalar_len` bytes.
fn ecdsa_der_to_fixed(der: &[u8], scalar_len: usize) -> Result<Vec<u8>, String> {
    let value = EcdsaSigValue::from_der(der).map_err(|e| e.to_string())?;
    let mut out = vec![0u8; 2 * scalar_len];
    for (scalar, half) in [value.r, value.s].iter().zip(out.chunks_mut(scalar_len)) {
        let bytes = scalar.as_bytes();
        if bytes.len() > scalar_len || bytes.iter().all(|b| *b == 0) {
            return Err(format!(
                "a scalar of {} bytes, expected 1 to {scalar_len}",
                bytes.len()
            ));
        }
        half[scalar_len - bytes.len()..].copy_from_slice(bytes);
    }
    Ok(out)
}

/// Verifies a compact token made by [`SigningInput::finish`] with `key` on the host: its
/// header must name `algorithm` and `kid` (never `none`), and its signature must verify.
/// Returns the claims. Used after every HSM signature, so a token that does not verify never
/// leaves; it checks no claim.
pub fn verify(
    token: &str,
    algorithm: JwtAlgorithm,
    kid: &str,
    key: &PublicKey,
) -> Result<JwtSvidClaims, JwtError> {
    let malformed = |why: &str| JwtError::Malformed(why.to_owned());
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not three dot-separated parts"));
    };
    let decode = |part: &str| {
        Base64UrlUnpadded::decode_vec(part).map_err(|_| malformed("a part is not base64url"))
    };
    let header: serde_json::Value =
        serde_json::from_slice(&decode(header)?).map_err(|_| malformed("header is not JSON"))?;
    if header["alg"] != algorithm.jose_name() || header["kid"] != kid || header["typ"] != "JWT" {
        return Err(malformed("the header does not name the key's alg and kid"));
    }
    let signature = decode(signature)?;
    let x509_signature = match algorithm {
        JwtAlgorithm::Es256 => ecdsa_raw_to_der(&signature, 32)
            .map_err(|_| malformed("an ES256 signature is 64 bytes"))?,
        JwtAlgorithm::Rs256 | JwtAlgorithm::Ps256 => signature,
    };
    let signed = &token[..token.rfind('.').expect("three parts")];
    if !key.verify(
        algorithm.signature_algorithm(),
        signed.as_bytes(),
        &x509_signature,
    ) {
        return Err(JwtError::BadSignature {
            kid: kid.to_owned(),
        });
    }
    serde_json::from_slice(&decode(claims)?).map_err(|_| malformed("claims are not a JWT-SVID's"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED, EcdsaKeyPair, KeyPair,
        UnparsedPublicKey,
    };

    /// RFC 7638 3.1's example key and its thumbprint.
    #[test]
    fn thumbprint_matches_rfc_7638() {
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let n = Base64UrlUnpadded::decode_vec(n).unwrap();
        let key = PublicKey::from_pkcs1_der(
            &der::Encode::to_der(&RsaPublicKey {
                modulus: der::asn1::UintRef::new(&n).unwrap(),
                public_exponent: der::asn1::UintRef::new(&[1, 0, 1]).unwrap(),
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            thumbprint(&key),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    fn p256() -> (EcdsaKeyPair, PublicKey) {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let params = crate::hsm::ec_params(KeyType::EcdsaP256).unwrap();
        let key = PublicKey::from_ec_attributes(&params, pair.public_key().as_ref()).unwrap();
        (pair, key)
    }

    fn claims() -> JwtSvidClaims {
        JwtSvidClaims {
            sub: "spiffe://mesh.example/ns/prod/sa/web".into(),
            aud: vec!["payments".into()],
            exp: 2_000_000_300,
            iat: 2_000_000_000,
            iss: None,
        }
    }

    #[test]
    fn es256_tokens_carry_fixed_width_signatures_that_verify() {
        let (pair, key) = p256();
        let kid = thumbprint(&key);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        for _ in 0..20 {
            let input = SigningInput::new(JwtAlgorithm::Es256, &kid, &claims());
            let der = pair.sign(&rng, input.as_bytes()).unwrap();
            let token = input.clone().finish(der.as_ref()).unwrap();
            let (signed, signature) = token.rsplit_once('.').unwrap();
            let signature = Base64UrlUnpadded::decode_vec(signature).unwrap();
            assert_eq!(signature.len(), 64);
            // An independent verifier of the JOSE (fixed) form.
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.subject_public_key())
                .verify(signed.as_bytes(), &signature)
                .unwrap();
            assert_eq!(
                verify(&token, JwtAlgorithm::Es256, &kid, &key).unwrap(),
                claims()
            );
        }
        let header = token_header(&SigningInput::new(JwtAlgorithm::Es256, &kid, &claims()).text);
        assert_eq!(
            header,
            serde_json::json!({"alg": "ES256", "kid": kid, "typ": "JWT"})
        );
    }

    fn token_header(text: &str) -> serde_json::Value {
        let header = text.split('.').next().unwrap();
        serde_json::from_slice(&Base64UrlUnpadded::decode_vec(header).unwrap()).unwrap()
    }

    #[test]
    fn tampered_and_unsigned_tokens_do_not_verify() {
        let (pair, key) = p256();
        let kid = thumbprint(&key);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let input = SigningInput::new(JwtAlgorithm::Es256, &kid, &claims());
        let der = pair.sign(&rng, input.as_bytes()).unwrap();
        let token = input.finish(der.as_ref()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut other = claims();
        other.sub = "spiffe://mesh.example/ns/prod/sa/admin".into();
        let forged_claims = Base64UrlUnpadded::encode_string(&serde_json::to_vec(&other).unwrap());
        let tampered = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert_eq!(
            verify(&tampered, JwtAlgorithm::Es256, &kid, &key),
            Err(JwtError::BadSignature { kid: kid.clone() })
        );
        let none_header = Base64UrlUnpadded::encode_string(
            serde_json::json!({"alg": "none", "kid": kid, "typ": "JWT"})
                .to_string()
                .as_bytes(),
        );
        let unsigned = format!("{none_header}.{}.", parts[1]);
        assert!(matches!(
            verify(&unsigned, JwtAlgorithm::Es256, &kid, &key),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn der_to_fixed_pads_short_scalars_and_refuses_long_ones() {
        let mut raw = vec![0u8; 64];
        raw[31] = 1; // r = 1: one byte in DER
        raw[32] = 0x80; // s has its high bit set: a 0x00 pad in DER
        let der = ecdsa_raw_to_der(&raw, 32).unwrap();
        assert_eq!(ecdsa_der_to_fixed(&der, 32).unwrap(), raw);
        assert!(ecdsa_der_to_fixed(&der, 16).is_err());
        assert!(ecdsa_der_to_fixed(b"not der", 32).is_err());
    }

    #[test]
    fn algorithms_fit_their_keys_only() {
        assert!(JwtAlgorithm::Es256.fits(KeyType::EcdsaP256));
        assert!(!JwtAlgorithm::Es256.fits(KeyType::EcdsaP384));
        assert!(JwtAlgorithm::Ps256.fits(KeyType::Rsa2048));
        assert!(!JwtAlgorithm::Rs256.fits(KeyType::EcdsaP256));
    }
}
