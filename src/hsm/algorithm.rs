//! Key types and signature algorithms, and how each maps onto PKCS#11 mechanisms.
//!
//! Signatures leave this module in the encoding X.509 needs: ECDSA as a DER `Ecdsa-Sig-Value`,
//! RSA and Ed25519 as the raw signature bytes.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use der::Encode;
use der::asn1::UintRef;
use serde::Deserialize;

/// Why a key type or signature algorithm cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AlgorithmError {
    /// A key type name is not one hsmca supports.
    #[error("unsupported key type \"{name}\": use one of {}", KeyType::NAMES.join(", "))]
    UnsupportedKeyType {
        /// The name given.
        name: String,
    },

    /// A signature algorithm name is not one hsmca supports.
    #[error("unsupported signature algorithm \"{name}\": use one of {}", SignatureAlgorithm::NAMES.join(", "))]
    UnsupportedAlgorithm {
        /// The name given.
        name: String,
    },

    /// The algorithm cannot be used with this key.
    #[error("signature algorithm {algorithm} cannot be used with a {key_type} key")]
    AlgorithmMismatch {
        /// The key's type.
        key_type: KeyType,
        /// The requested algorithm.
        algorithm: SignatureAlgorithm,
    },

    /// The HSM returned a signature of the wrong shape.
    #[error("the HSM returned a malformed signature: {0}")]
    MalformedSignature(String),
}

/// Gives an enum its table of names, the one place they are spelled: `ALL`, `NAMES`, `name()`,
/// `Display`, `FromStr` (unknown names become the given error) and the `TryFrom<String>` that
/// serde uses.
macro_rules! named_enum {
    ($type:ident, $unknown:expr, [$($variant:ident => $name:literal),+ $(,)?]) => {
        impl $type {
            /// Every variant, in the order of `NAMES`.
            pub const ALL: &'static [$type] = &[$($type::$variant),+];
            /// The names accepted on the command line and in configuration files.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// This variant's name, as in `NAMES`.
            pub fn name(self) -> &'static str {
                match self {
                    $($type::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $type {
            type Err = AlgorithmError;

            fn from_str(name: &str) -> Result<Self, Self::Err> {
                match name {
                    $($name => Ok($type::$variant),)+
                    _ => Err(($unknown)(name.to_owned())),
                }
            }
        }

        impl TryFrom<String> for $type {
            type Error = AlgorithmError;

            fn try_from(name: String) -> Result<Self, Self::Error> {
                name.parse()
            }
        }
    };
}

/// The kinds of key hsmca generates and signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum KeyType {
    /// ECDSA on NIST P-256: the interop-safe default for SPIRE, Istio and Linkerd.
    EcdsaP256,
    /// ECDSA on NIST P-384 (Linkerd rejects P-384 roots).
    EcdsaP384,
    /// RSA with a 2048-bit modulus.
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    Rsa3072,
    /// RSA with a 4096-bit modulus.
    Rsa4096,
    /// Ed25519 (not accepted by every mesh).
    Ed25519,
}

named_enum!(KeyType, |name| AlgorithmError::UnsupportedKeyType { name }, [
    EcdsaP256 => "ecdsa-p256",
    EcdsaP384 => "ecdsa-p384",
    Rsa2048 => "rsa-2048",
    Rsa3072 => "rsa-3072",
    Rsa4096 => "rsa-4096",
    Ed25519 => "ed25519",
]);

impl KeyType {
    /// The algorithm used when none is asked for (and for key-pair self-tests).
    pub fn default_algorithm(self) -> SignatureAlgorithm {
        match self {
            KeyType::EcdsaP256 => SignatureAlgorithm::EcdsaP256Sha256,
            KeyType::EcdsaP384 => SignatureAlgorithm::EcdsaP384Sha384,
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                SignatureAlgorithm::RsaPkcs1Sha256
            }
            KeyType::Ed25519 => SignatureAlgorithm::Ed25519,
        }
    }

    /// RSA modulus size in bits, for RSA key types.
    pub fn rsa_bits(self) -> Option<u64> {
        match self {
            KeyType::Rsa2048 => Some(2048),
            KeyType::Rsa3072 => Some(3072),
            KeyType::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// The PKCS#11 mechanism that generates this kind of key pair.
    pub(crate) fn generation_mechanism(self) -> Mechanism<'static> {
        match self {
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => Mechanism::EccKeyPairGen,
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => Mechanism::RsaPkcsKeyPairGen,
            KeyType::Ed25519 => Mechanism::EccEdwardsKeyPairGen,
        }
    }
}

/// Signature algorithms, each tied to the key type it works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum SignatureAlgorithm {
    /// ECDSA P-256 over SHA-256.
    EcdsaP256Sha256,
    /// ECDSA P-384 over SHA-384.
    EcdsaP384Sha384,
    /// RSA PKCS#1 v1.5 with SHA-256.
    RsaPkcs1Sha256,
    /// RSA PKCS#1 v1.5 with SHA-384.
    RsaPkcs1Sha384,
    /// RSA PKCS#1 v1.5 with SHA-512.
    RsaPkcs1Sha512,
    /// RSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt (Linkerd rejects PSS).
    RsaPssSha256,
    /// RSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt.
    RsaPssSha384,
    /// RSA-PSS with SHA-512, MGF1-SHA-512 and a 64-byte salt.
    RsaPssSha512,
    /// Pure Ed25519.
    Ed25519,
}

named_enum!(SignatureAlgorithm, |name| AlgorithmError::UnsupportedAlgorithm { name }, [
    EcdsaP256Sha256 => "ecdsa-p256-sha256",
    EcdsaP384Sha384 => "ecdsa-p384-sha384",
    RsaPkcs1Sha256 => "rsa-pkcs1-sha256",
    RsaPkcs1Sha384 => "rsa-pkcs1-sha384",
    RsaPkcs1Sha512 => "rsa-pkcs1-sha512",
    RsaPssSha256 => "rsa-pss-sha256",
    RsaPssSha384 => "rsa-pss-sha384",
    RsaPssSha512 => "rsa-pss-sha512",
    Ed25519 => "ed25519",
]);

impl SignatureAlgorithm {
    /// True when a key of `key_type` can produce this signature.
    pub fn works_with(self, key_type: KeyType) -> bool {
        use SignatureAlgorithm as A;
        match self {
            A::EcdsaP256Sha256 => key_type == KeyType::EcdsaP256,
            A::EcdsaP384Sha384 => key_type == KeyType::EcdsaP384,
            A::RsaPkcs1Sha256
            | A::RsaPkcs1Sha384
            | A::RsaPkcs1Sha512
            | A::RsaPssSha256
            | A::RsaPssSha384
            | A::RsaPssSha512 => key_type.rsa_bits().is_some(),
            A::Ed25519 => key_type == KeyType::Ed25519,
        }
    }

    /// Refuses an algorithm the key cannot produce.
    pub fn check_key(self, key_type: KeyType) -> Result<(), AlgorithmError> {
        if self.works_with(key_type) {
            Ok(())
        } else {
            Err(AlgorithmError::AlgorithmMismatch {
                key_type,
                algorithm: self,
            })
        }
    }

    /// The PKCS#11 mechanism and the bytes to pass to `C_Sign`.
    ///
    /// ECDSA is hashed on the host and signed with plain `CKM_ECDSA`, because many modules
    /// (SoftHSM 2.6 among them) lack the combined `CKM_ECDSA_SHA*` mechanisms.
    pub(crate) fn mechanism_and_input(self, message: &[u8]) -> (Mechanism<'static>, Cow<'_, [u8]>) {
        use SignatureAlgorithm as A;
        let digest = |alg| Cow::Owned(aws_lc_rs::digest::digest(alg, message).as_ref().to_vec());
        let whole = Cow::Borrowed(message);
        match self {
            A::EcdsaP256Sha256 => (Mechanism::Ecdsa, digest(&aws_lc_rs::digest::SHA256)),
            A::EcdsaP384Sha384 => (Mechanism::Ecdsa, digest(&aws_lc_rs::digest::SHA384)),
            A::RsaPkcs1Sha256 => (Mechanism::Sha256RsaPkcs, whole),
            A::RsaPkcs1Sha384 => (Mechanism::Sha384RsaPkcs, whole),
            A::RsaPkcs1Sha512 => (Mechanism::Sha512RsaPkcs, whole),
            A::RsaPssSha256 => (
                Mechanism::Sha256RsaPkcsPss(pss(
                    MechanismType::SHA256,
                    PkcsMgfType::MGF1_SHA256,
                    32,
                )),
                whole,
            ),
            A::RsaPssSha384 => (
                Mechanism::Sha384RsaPkcsPss(pss(
                    MechanismType::SHA384,
                    PkcsMgfType::MGF1_SHA384,
                    48,
                )),
                whole,
            ),
            A::RsaPssSha512 => (
                Mechanism::Sha512RsaPkcsPss(pss(
                    MechanismType::SHA512,
                    PkcsMgfType::MGF1_SHA512,
                    64,
                )),
                whole,
            ),
            A::Ed25519 => (
                Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                whole,
            ),
        }
    }

    /// The PKCS#11 mechanism the token must offer for this algorithm.
    pub(crate) fn mechanism_type(self) -> MechanismType {
        self.mechanism_and_input(&[]).0.mechanism_type()
    }

    /// Turns the module's raw output into the X.509 encoding of the signature.
    pub(crate) fn encode_signature(self, raw: Vec<u8>) -> Result<Vec<u8>, AlgorithmError> {
        use SignatureAlgorithm as A;
        match self {
            A::EcdsaP256Sha256 => ecdsa_raw_to_der(&raw, 32),
            A::EcdsaP384Sha384 => ecdsa_raw_to_der(&raw, 48),
            A::Ed25519 if raw.len() != 64 => Err(AlgorithmError::MalformedSignature(format!(
                "Ed25519 signature of {} bytes, expected 64",
                raw.len()
            ))),
            _ => Ok(raw),
        }
    }
}

fn pss(hash_alg: MechanismType, mgf: PkcsMgfType, salt_len: u64) -> PkcsPssParams {
    PkcsPssParams {
        hash_alg,
        mgf,
        s_len: salt_len.into(),
    }
}

/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 3279).
#[derive(der::Sequence)]
pub(crate) struct EcdsaSigValue<'a> {
    /// `r`.
    pub(crate) r: UintRef<'a>,
    /// `s`.
    pub(crate) s: UintRef<'a>,
}

/// Converts PKCS#11's (and JOSE's) fixed-width `r‖s` into DER, as X.509 and TLS expect.
pub(crate) fn ecdsa_raw_to_der(raw: &[u8], scalar_len: usize) -> Result<Vec<u8>, AlgorithmError> {
    if raw.len() != 2 * scalar_len {
        return Err(AlgorithmError::MalformedSignature(format!(
            "ECDSA signature of {} bytes, expected {}",
            raw.len(),
            2 * scalar_len
        )));
    }
    let (r, s) = raw.split_at(scalar_len);
    if r.iter().all(|b| *b == 0) || s.iter().all(|b| *b == 0) {
        return Err(AlgorithmError::MalformedSignature(
            "ECDSA signature with a zero component".into(),
        ));
    }
    let value = EcdsaSigValue {
        r: UintRef::new(r).map_err(|e| AlgorithmError::MalformedSignature(e.to_string()))?,
        s: UintRef::new(s).map_err(|e| AlgorithmError::MalformedSignature(e.to_string()))?,
    };
    value
        .to_der()
        .map_err(|e| AlgorithmError::MalformedSignature(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &key_type in KeyType::ALL {
            assert_eq!(key_type.name().parse::<KeyType>().unwrap(), key_type);
        }
        for &alg in SignatureAlgorithm::ALL {
            assert_eq!(alg.name().parse::<SignatureAlgorithm>().unwrap(), alg);
        }
    }

    #[test]
    fn unknown_key_type_lists_the_choices() {
        let err = "dsa-1024".parse::<KeyType>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unsupported key type \"dsa-1024\": use one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096, ed25519"
        );
    }

    #[test]
    fn algorithms_refuse_foreign_keys() {
        assert!(
            SignatureAlgorithm::EcdsaP256Sha256
                .check_key(KeyType::EcdsaP384)
                .is_err()
        );
        assert!(
            SignatureAlgorithm::RsaPssSha512
                .check_key(KeyType::Rsa2048)
                .is_ok()
        );
        assert!(
            SignatureAlgorithm::Ed25519
                .check_key(KeyType::Rsa4096)
                .is_err()
        );
    }

    #[test]
    fn ecdsa_der_adds_sign_padding_and_strips_leading_zeros() {
        // r has its high bit set (needs a 0x00 pad); s starts with zero bytes (must be trimmed).
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80;
        raw[31] = 0x01;
        raw[62] = 0x12;
        raw[63] = 0x34;
        let der = ecdsa_raw_to_der(&raw, 32).unwrap();
        let mut expected = vec![0x30, 0x27, 0x02, 0x21, 0x00, 0x80];
        expected.extend_from_slice(&[0u8; 30]);
        expected.push(0x01);
        expected.extend_from_slice(&[0x02, 0x02, 0x12, 0x34]);
        assert_eq!(der, expected);
    }

    #[test]
    fn ecdsa_der_rejects_wrong_lengths_and_zero_scalars() {
        assert!(ecdsa_raw_to_der(&[1u8; 63], 32).is_err());
        let mut raw = vec![1u8; 64];
        raw[32..].fill(0);
        assert!(ecdsa_raw_to_der(&raw, 32).is_err());
    }
}
