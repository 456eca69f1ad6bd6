//! What the pre-signing checks know of an issuer, and how key identifiers are made.

use der::flagset::FlagSet;
use x509_cert::ext::pkix::KeyUsages;
use x509_cert::name::Name;
use x509_cert::time::Validity;

use crate::hsm::PublicKey;

/// The key identifier of a public key: the leftmost 160 bits of the SHA-256 of the
/// subjectPublicKey bits (RFC 7093 section 2, method 1), used for SKI and AKI.
pub fn key_identifier(public_key: &PublicKey) -> Vec<u8> {
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public_key.subject_public_key());
    digest.as_ref()[..20].to_vec()
}

/// The issuer of a certificate or CRL, as the pre-signing checks see it.
#[derive(Clone, Debug)]
pub struct Issuer {
    /// The issuer's subject name, which the new object's issuer must equal byte for byte.
    pub name: Name,
    /// The issuer's subject key identifier, which the new object's AKI must carry.
    pub key_identifier: Vec<u8>,
    /// The issuer's validity; what it signs must fit inside.
    pub validity: Validity,
    /// The key the signature must verify with.
    pub public_key: PublicKey,
    /// The issuer's path length constraint.
    pub path_len: Option<u8>,
    /// The issuer's key usage.
    pub key_usage: FlagSet<KeyUsages>,
    /// True when the certificate being checked is this issuer's own self-signed one.
    pub self_signed_subject: bool,
}
