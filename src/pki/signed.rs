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

/// Signs `tbs_der` and returns the DER of the signed object, after checking that the
/// object carries exactly `tbs_der` and that its signature verifies with `verify_with`.
pub(crate) fn sign_and_check(
    what: &'static str,
    tbs_der: &[u8],
    algorithm: SignatureAlgorithm,
    signer: &dyn Signer,
    verify_with: &PublicKey,
) -> Result<Vec<u8>, PkiError> {
    let signature = signer.sign(algorithm, tbs_der)?;
    let encoding = |e: der::Error| PkiError::PostSignCheck {
        what,
        reason: format!("encoding the signed object failed: {e}"),
    };
    let signed = SignedRef {
        tbs: AnyRef::from_der(tbs_der).map_err(encoding)?,
        algorithm: algorithm::identifier(algorithm),
        signature: BitStringRef::from_bytes(&signature).map_err(encoding)?,
    }
    .to_der()
    .map_err(encoding)?;
    let checked_tbs = verify_signed(&signed, verify_with)
        .map_err(|reason| PkiError::PostSignCheck { what, reason })?;
    if checked_tbs != tbs_der {
        return Err(PkiError::PostSignCheck {
            what,
            reason: "the signed TBS bytes differ from the ones that were checked".into(),
        });
    }
    Ok(signed)
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
