//! Leaf X509-SVIDs: the workload certificates the `workload` profile issues.

use der::Encode;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

use super::ca::{Issuer, extension, key_identifier_extensions, subject_alt_name, tbs_certificate};
use super::{PkiError, lint, signed};
use crate::hsm::{PublicKey, SignatureAlgorithm};

/// Everything a leaf X509-SVID says.
#[derive(Clone, Debug)]
pub struct LeafTemplate {
    /// The subject name; may be empty, which makes the subjectAltName critical.
    pub subject: Name,
    /// The workload's public key.
    pub public_key: PublicKey,
    /// The validity period.
    pub validity: Validity,
    /// The algorithm the issuer signs with.
    pub signature_algorithm: SignatureAlgorithm,
    /// The workload's SPIFFE ID, the one URI SAN.
    pub spiffe_id: String,
    /// DNS SANs, after the SPIFFE ID.
    pub dns_names: Vec<String>,
}

impl LeafTemplate {
    /// Builds the certificate with `serial` and runs the leaf checks; the result waits for
    /// the issuer's signature.
    pub fn prepare(
        &self,
        serial: SerialNumber,
        issuer: &Issuer,
    ) -> Result<signed::Prepared, PkiError> {
        let mut extensions = vec![
            extension(
                &BasicConstraints {
                    ca: false,
                    path_len_constraint: None,
                },
                true,
            )?,
            extension(&KeyUsage(KeyUsages::DigitalSignature.into()), true)?,
            extension(
                &ExtendedKeyUsage(vec![
                    const_oid::db::rfc5280::ID_KP_SERVER_AUTH,
                    const_oid::db::rfc5280::ID_KP_CLIENT_AUTH,
                ]),
                false,
            )?,
        ];
        extensions.extend(key_identifier_extensions(&self.public_key, issuer)?);
        // RFC 5280 4.2.1.6: with an empty subject the names live only in the SAN, which must
        // then be critical.
        extensions.push(subject_alt_name(
            std::slice::from_ref(&self.spiffe_id),
            &self.dns_names,
            self.subject.is_empty(),
        )?);
        let tbs = tbs_certificate(
            serial,
            self.signature_algorithm,
            issuer,
            self.validity,
            self.subject.clone(),
            &self.public_key,
            extensions,
        );
        let checks = lint::check_leaf_certificate(&tbs, issuer, self.signature_algorithm)?;
        let tbs_der = tbs
            .to_der()
            .map_err(|e| PkiError::input("certificate", e))?;
        Ok(signed::Prepared::new(
            "certificate",
            tbs_der,
            self.signature_algorithm,
            &issuer.public_key,
            checks,
        ))
    }
}
