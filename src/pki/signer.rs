//! Who signs: a key in the HSM, or (for dry runs) a throwaway key in memory. Everything
//! above this trait (building, linting, checking) is the same for both.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{self, KeySize};
use aws_lc_rs::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

use crate::hsm::{Hsm, HsmError, HsmKey, KeyType, PublicKey, SignatureAlgorithm};

use super::PkiError;

/// Something that signs with one key and can say which.
pub trait Signer {
    /// The public half of the signing key.
    fn public_key(&self) -> &PublicKey;

    /// Signs `message`, returning the signature in its X.509 encoding.
    fn sign(&self, algorithm: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, PkiError>;

    /// `len` random bytes for serial numbers: from the HSM's RNG when there is one.
    fn random(&self, len: usize) -> Result<Vec<u8>, PkiError>;
}

/// A key pair in the HSM, signing on the control session.
pub struct HsmSigner<'a> {
    hsm: &'a Hsm,
    key: HsmKey,
}

impl<'a> HsmSigner<'a> {
    /// Signs with `key` on `hsm`.
    pub fn new(hsm: &'a Hsm, key: HsmKey) -> Self {
        HsmSigner { hsm, key }
    }
}

impl Signer for HsmSigner<'_> {
    fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    fn sign(&self, algorithm: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        Ok(self.hsm.sign(&self.key, algorithm, message)?)
    }

    fn random(&self, len: usize) -> Result<Vec<u8>, PkiError> {
        Ok(self.hsm.random(len)?)
    }
}

/// A throwaway key pair in memory, for dry runs: never written anywhere, gone on drop.
pub struct SoftwareKey {
    pair: SoftwarePair,
    public_key: PublicKey,
}

enum SoftwarePair {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(rsa::KeyPair),
}

impl SoftwareKey {
    /// Generates a key of `key_type` with aws-lc-rs.
    pub fn generate(key_type: KeyType) -> Result<Self, PkiError> {
        let failed = |e: aws_lc_rs::error::Unspecified| {
            PkiError::SoftwareKey(format!("generating a {key_type} key failed: {e}"))
        };
        let pair = match key_type {
            KeyType::EcdsaP256 => SoftwarePair::Ecdsa(
                EcdsaKeyPair::generate(&sig::ECDSA_P256_SHA256_ASN1_SIGNING).map_err(failed)?,
            ),
            KeyType::EcdsaP384 => SoftwarePair::Ecdsa(
                EcdsaKeyPair::generate(&sig::ECDSA_P384_SHA384_ASN1_SIGNING).map_err(failed)?,
            ),
            KeyType::Ed25519 => SoftwarePair::Ed25519(Ed25519KeyPair::generate().map_err(failed)?),
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
                let size = match key_type {
                    KeyType::Rsa2048 => KeySize::Rsa2048,
                    KeyType::Rsa3072 => KeySize::Rsa3072,
                    _ => KeySize::Rsa4096,
                };
                SoftwarePair::Rsa(rsa::KeyPair::generate(size).map_err(failed)?)
            }
        };
        let public_key = match &pair {
            SoftwarePair::Ecdsa(pair) => PublicKey::from_ec_attributes(
                &crate::hsm::ec_params(key_type).expect("EC key types have curve parameters"),
                pair.public_key().as_ref(),
            ),
            SoftwarePair::Ed25519(pair) => PublicKey::from_ec_attributes(
                &crate::hsm::ec_params(key_type).expect("Ed25519 has curve parameters"),
                pair.public_key().as_ref(),
            ),
            SoftwarePair::Rsa(pair) => PublicKey::from_pkcs1_der(pair.public_key().as_ref()),
        }
        .map_err(PkiError::SoftwareKey)?;
        Ok(SoftwareKey { pair, public_key })
    }
}

impl Signer for SoftwareKey {
    fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    fn sign(&self, algorithm: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        use SignatureAlgorithm as A;
        algorithm
            .check_key(self.public_key.key_type())
            .map_err(HsmError::from)?;
        let rng = SystemRandom::new();
        let failed = |e: aws_lc_rs::error::Unspecified| {
            PkiError::SoftwareKey(format!("signing with {algorithm} failed: {e}"))
        };
        match &self.pair {
            SoftwarePair::Ecdsa(pair) => {
                Ok(pair.sign(&rng, message).map_err(failed)?.as_ref().to_vec())
            }
            SoftwarePair::Ed25519(pair) => Ok(pair.sign(message).as_ref().to_vec()),
            SoftwarePair::Rsa(pair) => {
                let padding: &'static dyn sig::RsaEncoding = match algorithm {
                    A::RsaPkcs1Sha256 => &sig::RSA_PKCS1_SHA256,
                    A::RsaPkcs1Sha384 => &sig::RSA_PKCS1_SHA384,
                    A::RsaPkcs1Sha512 => &sig::RSA_PKCS1_SHA512,
                    A::RsaPssSha256 => &sig::RSA_PSS_SHA256,
                    A::RsaPssSha384 => &sig::RSA_PSS_SHA384,
                    _ => &sig::RSA_PSS_SHA512,
                };
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(padding, &rng, message, &mut signature)
                    .map_err(failed)?;
                Ok(signature)
            }
        }
    }

    fn random(&self, len: usize) -> Result<Vec<u8>, PkiError> {
        let mut bytes = vec![0u8; len];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|e| PkiError::SoftwareKey(format!("random bytes: {e}")))?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn software_keys_sign_what_public_key_verify_accepts() {
        for &algorithm in SignatureAlgorithm::ALL {
            let key_type = KeyType::ALL
                .iter()
                .copied()
                .find(|&k| algorithm.works_with(k))
                .unwrap();
            let key = SoftwareKey::generate(key_type).unwrap();
            let signature = key.sign(algorithm, b"to be signed").unwrap();
            assert!(
                key.public_key()
                    .verify(algorithm, b"to be signed", &signature),
                "{algorithm}"
            );
            assert!(
                !key.public_key()
                    .verify(algorithm, b"to be signeD", &signature),
                "{algorithm}"
            );
        }
    }
}
