//! `SIGNED{ToBeSigned}` (RFC 5280): assembling a signed certificate, CRL or CSR around the
//! exact TBS bytes that were checked, and checking it again after the HSM has signed.

use der::asn1::{AnyRef, BitStringRef};
use der::{Decode, Encode};
use spki::AlgorithmIdentifierOwned;

use super::{PkiError, Signer, algorithm};
use crate::hsm::{PublicKey, SignatureAlgorithm};

/// The outer shape shared by certificates, CRLs and CSRs, read without interpreting the
/// TBS part so its bytes can be compared exactly.
#[derive(der::Sequence)]
struct SignedRef<'a> {
    tbs: AnyRef<'a>,
    algorithm: AlgorithmIdentifierOwned,
    signature: BitStringRef<'a>,
}

/// A to-be-signed object that passed its pre-signing checks, waiting for its signature.
/// The signature may come from a blocking [`Signer`] or from the HSM session pool; either
/// way [`Prepared::finish`] only returns an object that carries exactly these TBS bytes and
/// whose signature verifies with the issuer's key.
#[derive(Clone, Debug)]
pub struct Prepared {
    what: &'static str,
    tbs_der: Vec<u8>,
    algorithm: SignatureAlgorithm,
    verify_with: PublicKey,
    checks: Vec<&'static str>,
}

impl Prepared {
    pub(crate) fn new(
        what: &'static str,
        tbs_der: Vec<u8>,
        algorithm: SignatureAlgorithm,
        verify_with: &PublicKey,
        checks: Vec<&'static str>,
    ) -> Self {
        Prepared {
            what,
            tbs_der,
            algorithm,
            verify_with: verify_with.clone(),
            checks,
        }
    }

    /// The exact bytes to sign.
    pub fn tbs_der(&self) -> &[u8] {
        &self.tbs_der
    }

    /// The algorithm the signature must be made with.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    /// The names of the pre-signing checks that passed.
    pub fn checks(&self) -> &[&'static str] {
        &self.checks
    }

    /// Signs with `signer` and finishes.
    pub fn sign_with(self, signer: &dyn Signer) -> Result<Vec<u8>, PkiError> {
        let signature = signer.sign(self.algorithm, &self.tbs_der)?;
        self.finish(&signature)
    }

    /// Assembles the signed object around the checked TBS bytes and `signature`, then checks
    /// that it carries exactly those bytes and that the signature verifies with the issuer's
    /// key. Returns the DER of the signed object.
    pub fn finish(self, signature: &[u8]) -> Result<Vec<u8>, PkiError> {
        let what = self.what;
        let encoding = |e: der::Error| PkiError::PostSignCheck {
            what,
            reason: format!("encoding the signed object failed: {e}"),
        };
        let signed = SignedRef {
            tbs: AnyRef::from_der(&self.tbs_der).map_err(encoding)?,
            algorithm: algorithm::identifier(self.algorithm),
            signature: BitStringRef::from_bytes(signature).map_err(encoding)?,
        }
        .to_der()
        .map_err(encoding)?;
        let checked_tbs = verify_signed(&signed, &self.verify_with)
            .map_err(|reason| PkiError::PostSignCheck { what, reason })?;
        if checked_tbs != self.tbs_der {
            return Err(PkiError::PostSignCheck {
                what,
                reason: "the signed TBS bytes differ from the ones that were checked".into(),
            });
        }
        Ok(signed)
    }
}

/// Verifies the signature of a signed object with `public_key` and returns its TBS bytes.
pub fn verify_signed(signed_der: &[u8], public_key: &PublicKey) -> Result<Vec<u8>, String> {
    let signed =
        SignedRef::from_der(signed_der).map_err(|e| format!("not a signed object: {e}"))?;
    let tbs = signed.tbs.to_der().map_err(|e| e.to_string())?;
    let algorithm = algorithm::from_identifier(&signed.algorithm).ok_or_else(|| {
        format!(
            "signature algorithm {} is not one hsmca supports",
            signed.algorithm.oid
        )
    })?;
    let signature = signed
        .signature
        .as_bytes()
        .ok_or("the signature bit string has unused bits")?;
    if public_key.verify(algorithm, &tbs, signature) {
        Ok(tbs)
    } else {
        Err(format!(
            "the {algorithm} signature does not verify with the public key {}",
            public_key.sha256_fingerprint()
        ))
    }
}
