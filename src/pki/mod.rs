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
mod issuer;
pub mod jwt;
mod leaf;
mod lint;
mod name;
mod pem;
mod profile;
mod serial;
mod signed;
mod signer;
mod spiffe;
mod time;

pub use algorithm::{
    from_identifier as algorithm_from_identifier, identifier as algorithm_identifier,
};
pub use ca::{CaCertificate, CaKeyUsage, CaTemplate, Issued};
pub use crl::{CrlTemplate, IssuedCrl, RevocationReason, RevokedEntry};
pub use csr::{CsrError, CsrTemplate, VerifiedCsr, verify_csr};
pub use error::PkiError;
pub use issuer::{Issuer, key_identifier};
pub use leaf::LeafTemplate;
pub use lint::{check_ca_certificate, check_crl, check_leaf_certificate};
pub use name::{SubjectSpec, directory_string, rebuild_requested_name};
pub use pem::{pem_or_der, read_pem_or_der, read_public_key, to_pem};
pub use profile::{
    Profile, ProfileKind, ProfileRefusal, RequestedNames, Template, URI_NAME_CONSTRAINTS_WARNING,
};
pub use serial::{SERIAL_LEN, random_serial, serial_from_random};
pub use signed::{Prepared, verify_signed};
pub use signer::{HsmSigner, Signer, SoftwareKey};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use time::{has_rfc5280_encoding, now, x509_time};

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
