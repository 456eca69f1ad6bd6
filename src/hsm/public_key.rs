//! Public keys read back from the token, exported as SubjectPublicKeyInfo and checked on the
//! host with `aws-lc-rs`, independently of the HSM.

use const_oid::ObjectIdentifier;
use const_oid::db::{rfc5912, rfc8410};
use der::asn1::{AnyRef, BitString, OctetStringRef, UintRef};
use der::{Decode, Encode};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

use super::algorithm::{KeyType, SignatureAlgorithm};

/// A public key in the form each algorithm's verifier takes: the uncompressed EC point, the
/// PKCS#1 `RSAPublicKey` DER, or the 32 Ed25519 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key_type: KeyType,
    raw: Vec<u8>,
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (RFC 8017).
#[derive(der::Sequence)]
pub(crate) struct RsaPublicKey<'a> {
    /// `n`.
    pub(crate) modulus: UintRef<'a>,
    /// `e`.
    pub(crate) public_exponent: UintRef<'a>,
}

impl PublicKey {
    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// Builds an EC or Ed25519 key from `CKA_EC_PARAMS` and `CKA_EC_POINT`.
    ///
    /// The point is normally wrapped in a DER OCTET STRING (SoftHSM, most vendors); some
    /// modules return it bare, so both are accepted when the length says which it is.
    pub(crate) fn from_ec_attributes(params: &[u8], point: &[u8]) -> Result<Self, String> {
        let key_type = curve_from_params(params)?;
        let expected_len = match key_type {
            KeyType::EcdsaP256 => 65,
            KeyType::EcdsaP384 => 97,
            _ => 32,
        };
        let raw = if point.len() == expected_len {
            point.to_vec()
        } else {
            OctetStringRef::from_der(point)
                .map_err(|e| {
                    format!("CKA_EC_POINT is neither a bare point nor an OCTET STRING: {e}")
                })?
                .as_bytes()
                .to_vec()
        };
        if raw.len() != expected_len {
            return Err(format!(
                "{key_type} point of {} bytes, expected {expected_len}",
                raw.len()
            ));
        }
        if key_type != KeyType::Ed25519 && raw[0] != 0x04 {
            return Err("EC point is not in uncompressed form".into());
        }
        Ok(PublicKey { key_type, raw })
    }

    /// Builds an RSA key from `CKA_MODULUS` and `CKA_PUBLIC_EXPONENT`.
    pub(crate) fn from_rsa_attributes(modulus: &[u8], exponent: &[u8]) -> Result<Self, String> {
        let modulus = UintRef::new(modulus).map_err(|e| e.to_string())?;
        let bits = modulus.as_bytes().len() * 8;
        let key_type = match bits {
            2048 => KeyType::Rsa2048,
            3072 => KeyType::Rsa3072,
            4096 => KeyType::Rsa4096,
            other => return Err(format!("RSA modulus of {other} bits is not supported")),
        };
        let raw = RsaPublicKey {
            modulus,
            public_exponent: UintRef::new(exponent).map_err(|e| e.to_string())?,
        }
        .to_der()
        .map_err(|e| e.to_string())?;
        Ok(PublicKey { key_type, raw })
    }

    /// Parses a DER PKCS#1 `RSAPublicKey`.
    pub(crate) fn from_pkcs1_der(der: &[u8]) -> Result<Self, String> {
        let rsa = RsaPublicKey::from_der(der).map_err(|e| e.to_string())?;
        Self::from_rsa_attributes(rsa.modulus.as_bytes(), rsa.public_exponent.as_bytes())
    }

    /// Parses a DER SubjectPublicKeyInfo, e.g. from a certificate or a `PUBLIC KEY` PEM.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, String> {
        let spki = SubjectPublicKeyInfoOwned::from_der(der).map_err(|e| e.to_string())?;
        let raw = spki
            .subject_public_key
            .as_bytes()
            .ok_or("public key bit string has unused bits")?;
        match spki.algorithm.oid {
            rfc5912::ID_EC_PUBLIC_KEY => {
                let params = spki
                    .algorithm
                    .parameters
                    .ok_or("EC key without curve parameters")?
                    .to_der()
                    .map_err(|e| e.to_string())?;
                Self::from_ec_attributes(&params, raw)
            }
            rfc8410::ID_ED_25519 => Self::from_ec_attributes(&ED25519_PARAMS, raw),
            rfc5912::RSA_ENCRYPTION => Self::from_pkcs1_der(raw),
            other => Err(format!("unsupported public key algorithm {other}")),
        }
    }

    /// The content of the SubjectPublicKeyInfo's BIT STRING, from which key identifiers
    /// are derived.
    pub fn subject_public_key(&self) -> &[u8] {
        &self.raw
    }

    /// The DER SubjectPublicKeyInfo, as it goes into a certificate or a `PUBLIC KEY` PEM.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let (oid, parameters) = match self.key_type {
            KeyType::EcdsaP256 => (rfc5912::ID_EC_PUBLIC_KEY, Some(rfc5912::SECP_256_R_1)),
            KeyType::EcdsaP384 => (rfc5912::ID_EC_PUBLIC_KEY, Some(rfc5912::SECP_384_R_1)),
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                (rfc5912::RSA_ENCRYPTION, None)
            }
            KeyType::Ed25519 => (rfc8410::ID_ED_25519, None),
        };
        let parameters = match (self.key_type.rsa_bits(), parameters) {
            (_, Some(curve)) => Some(der::Any::from(&curve)),
            // rsaEncryption carries an explicit NULL (RFC 3279); Ed25519 carries nothing.
            (Some(_), None) => Some(AnyRef::NULL.into()),
            (None, None) => None,
        };
        SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned { oid, parameters },
            subject_public_key: BitString::from_bytes(&self.raw)
                .expect("a byte string is always a valid bit string"),
        }
        .to_der()
        .expect("a SubjectPublicKeyInfo built from valid parts always encodes")
    }

    /// The SubjectPublicKeyInfo as a `PUBLIC KEY` PEM block.
    pub fn to_pem(&self) -> String {
        der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, &self.to_spki_der())
            .expect("PEM encoding of DER bytes cannot fail")
    }

    /// Lower-case hex SHA-256 of the SubjectPublicKeyInfo: the fingerprint officers compare.
    pub fn sha256_fingerprint(&self) -> String {
        crate::digest::sha256_hex(&self.to_spki_der())
    }

    /// Verifies a signature in its X.509 encoding on the host, without the HSM.
    pub fn verify(&self, algorithm: SignatureAlgorithm, message: &[u8], signature: &[u8]) -> bool {
        use SignatureAlgorithm as A;
        use aws_lc_rs::signature as rs;
        if !algorithm.works_with(self.key_type) {
            return false;
        }
        let verifier: &dyn rs::VerificationAlgorithm = match algorithm {
            A::EcdsaP256Sha256 => &rs::ECDSA_P256_SHA256_ASN1,
            A::EcdsaP384Sha384 => &rs::ECDSA_P384_SHA384_ASN1,
            A::RsaPkcs1Sha256 => &rs::RSA_PKCS1_2048_8192_SHA256,
            A::RsaPkcs1Sha384 => &rs::RSA_PKCS1_2048_8192_SHA384,
            A::RsaPkcs1Sha512 => &rs::RSA_PKCS1_2048_8192_SHA512,
            A::RsaPssSha256 => &rs::RSA_PSS_2048_8192_SHA256,
            A::RsaPssSha384 => &rs::RSA_PSS_2048_8192_SHA384,
            A::RsaPssSha512 => &rs::RSA_PSS_2048_8192_SHA512,
            A::Ed25519 => &rs::ED25519,
        };
        rs::UnparsedPublicKey::new(verifier, &self.raw)
            .verify(message, signature)
            .is_ok()
    }
}

/// DER of the Ed25519 OID, the `CKA_EC_PARAMS` hsmca writes for Ed25519 keys.
const ED25519_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// The `CKA_EC_PARAMS` value that selects the curve of an EC or Ed25519 key.
pub(crate) fn ec_params(key_type: KeyType) -> Option<Vec<u8>> {
    let oid = match key_type {
        KeyType::EcdsaP256 => rfc5912::SECP_256_R_1,
        KeyType::EcdsaP384 => rfc5912::SECP_384_R_1,
        KeyType::Ed25519 => return Some(ED25519_PARAMS.to_vec()),
        _ => return None,
    };
    Some(oid.to_der().expect("a known OID always encodes"))
}

/// Reads the curve out of `CKA_EC_PARAMS`: a named-curve OID, or (PKCS#11 3.0 Edwards keys
/// from some modules) the PrintableString "edwards25519".
fn curve_from_params(params: &[u8]) -> Result<KeyType, String> {
    if let Ok(oid) = ObjectIdentifier::from_der(params) {
        return match oid {
            rfc5912::SECP_256_R_1 => Ok(KeyType::EcdsaP256),
            rfc5912::SECP_384_R_1 => Ok(KeyType::EcdsaP384),
            rfc8410::ID_ED_25519 => Ok(KeyType::Ed25519),
            other => Err(format!("unsupported curve {other}")),
        };
    }
    match der::asn1::PrintableStringRef::from_der(params) {
        Ok(name) if name.as_str() == "edwards25519" => Ok(KeyType::Ed25519),
        _ => Err("CKA_EC_PARAMS is not a named curve".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::KeyPair;

    #[test]
    fn spki_round_trips_and_verifies_aws_lc_signatures() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key = PublicKey::from_ec_attributes(
            &ec_params(KeyType::Ed25519).unwrap(),
            pair.public_key().as_ref(),
        )
        .unwrap();
        let reparsed = PublicKey::from_spki_der(&key.to_spki_der()).unwrap();
        assert_eq!(reparsed, key);
        let signature = pair.sign(b"hello");
        assert!(key.verify(SignatureAlgorithm::Ed25519, b"hello", signature.as_ref()));
        assert!(!key.verify(SignatureAlgorithm::Ed25519, b"hellO", signature.as_ref()));
    }

    #[test]
    fn wrapped_and_bare_ec_points_are_accepted() {
        let mut point = vec![0x04];
        point.extend_from_slice(&[7u8; 64]);
        let params = ec_params(KeyType::EcdsaP256).unwrap();
        let wrapped = OctetStringRef::new(&point).unwrap().to_der().unwrap();
        let a = PublicKey::from_ec_attributes(&params, &wrapped).unwrap();
        let b = PublicKey::from_ec_attributes(&params, &point).unwrap();
        assert_eq!(a, b);
        assert!(a.to_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
    }

    #[test]
    fn unsupported_rsa_sizes_are_refused() {
        let err = PublicKey::from_rsa_attributes(&[0xc0; 128], &[1, 0, 1]).unwrap_err();
        assert!(err.contains("1024 bits"), "{err}");
    }
}
