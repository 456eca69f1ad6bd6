//! Certificate authority logic, independent of which HSM signs: CA certificates, CRLs and
//! CSRs built with `x509-cert`, checked against our profile and RFC 5280 before anything is
//! signed, and checked again after.
//!
//! Signing goes through the [`Signer`] trait, so the same code runs with a key in the HSM
//! ([`HsmSigner`]) and, for dry runs, with a throwaway [`SoftwareKey`].

mod algorithm;
mod ca;
mod crl;
mod csr;
mod error;
mod leaf;
mod lint;
mod name;
mod profile;
mod signed;
mod signer;
mod spiffe;
mod time;

pub use algorithm::{
    from_identifier as algorithm_from_identifier, identifier as algorithm_identifier,
};
pub use ca::{CaCertificate, CaKeyUsage, CaTemplate, Issued, Issuer, key_identifier};
pub use crl::{CrlTemplate, IssuedCrl, RevocationReason, RevokedEntry};
pub use csr::{CsrError, CsrTemplate, VerifiedCsr, verify_csr};
pub use error::PkiError;
pub use leaf::LeafTemplate;
pub use lint::{check_ca_certificate, check_crl, check_leaf_certificate};
pub use name::{SubjectSpec, directory_string, rebuild_requested_name};
pub use profile::{
    Profile, ProfileKind, ProfileRefusal, RequestedNames, Template, URI_NAME_CONSTRAINTS_WARNING,
};
pub use signed::{Prepared, verify_signed};
pub use signer::{HsmSigner, Signer, SoftwareKey};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use time::{has_rfc5280_encoding, now, x509_time};

use std::path::Path;

use x509_cert::serial_number::SerialNumber;

/// A positive 17-byte serial carrying 128 random bits from the signer's RNG (the HSM's, for
/// HSM keys): a fixed `0x01` byte, then 16 random bytes. The prefix keeps it positive and its
/// length fixed without spending random bits, well inside RFC 5280's 20 octets and far above
/// the 64 random bits CAs must use.
pub fn random_serial(signer: &dyn Signer) -> Result<SerialNumber, PkiError> {
    let bytes: [u8; SERIAL_LEN] = signer
        .random(SERIAL_LEN)?
        .try_into()
        .map_err(|_| PkiError::input("serial number", "the RNG returned the wrong length"))?;
    Ok(serial_from_random(bytes))
}

/// Bytes of randomness a serial number takes: 128 bits.
pub const SERIAL_LEN: usize = 16;

/// The serial made of `random` as [`random_serial`] describes.
pub fn serial_from_random(random: [u8; SERIAL_LEN]) -> SerialNumber {
    let mut bytes = [0x01; SERIAL_LEN + 1];
    bytes[1..].copy_from_slice(&random);
    SerialNumber::new(&bytes).expect("17 bytes of a positive integer are a valid serial")
}

/// The subjectAltName of a certificate, when present and decodable.
pub fn find_san(
    tbs: &x509_cert::certificate::TbsCertificate,
) -> Option<x509_cert::ext::pkix::SubjectAltName> {
    lint::decode(lint::find_extension(
        tbs,
        const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME,
    ))
    .map(|(san, _critical)| san)
}

/// PEM text for DER bytes under `label`.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der)
        .expect("PEM encoding of bytes cannot fail")
}

/// The DER inside `bytes`: a PEM block with one of `labels`, or DER as is.
pub fn pem_or_der(bytes: &[u8], labels: &[&str]) -> Result<Vec<u8>, String> {
    let text = bytes.trim_ascii_start();
    if text.starts_with(b"-----BEGIN") {
        let (found, der) = der::pem::decode_vec(text).map_err(|e| format!("not valid PEM: {e}"))?;
        if !labels.contains(&found) {
            return Err(format!(
                "holds a {found} PEM block, expected {}",
                labels.join(" or ")
            ));
        }
        Ok(der)
    } else {
        Ok(bytes.to_vec())
    }
}

/// Reads a file holding a PEM block with one of `labels`, or DER; `what` names it in errors.
pub fn read_pem_or_der(path: &Path, labels: &[&str], what: &str) -> Result<Vec<u8>, PkiError> {
    let bytes = std::fs::read(path).map_err(|e| PkiError::input(what, e))?;
    pem_or_der(&bytes, labels).map_err(|e| PkiError::input(what, e))
}
