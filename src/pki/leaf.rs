//! Leaf X509-SVIDs: the workload certificates the `workload` profile issues.

use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

use super::ca::{
    crl_distribution_points, extension, key_identifier_extensions, prepared_certificate,
    subject_alt_name, tbs_certificate,
};
use super::issuer::Issuer;
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
    /// CRL distribution point URLs (`http://`).
    pub crl_distribution_points: Vec<String>,
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
        extensions.extend(crl_distribution_points(&self.crl_distribution_points)?);
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
        prepared_certificate(&tbs, self.signature_algorithm, issuer, checks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hsm::KeyType;
    use crate::pki::{
        CaKeyUsage, CaTemplate, PkiError, Signer, SoftwareKey, SubjectSpec, random_serial,
        x509_time,
    };

    fn issuer() -> (SoftwareKey, Issuer) {
        let key = SoftwareKey::generate(KeyType::EcdsaP256).unwrap();
        let at = |year| x509_time(der::DateTime::new(year, 1, 1, 0, 0, 0).unwrap()).unwrap();
        let template = CaTemplate {
            subject: SubjectSpec {
                common_name: Some("Issuer".into()),
                ..Default::default()
            }
            .to_name()
            .unwrap(),
            public_key: key.public_key().clone(),
            validity: Validity {
                not_before: at(2026),
                not_after: at(2036),
            },
            signature_algorithm: SignatureAlgorithm::EcdsaP256Sha256,
            key_usage: vec![CaKeyUsage::KeyCertSign],
            path_length: Some(0),
            permitted_uri_domains: vec![],
            permitted_dns_domains: vec![],
            crl_distribution_points: vec![],
            ca_issuers: vec![],
            spiffe_id: None,
        };
        let issued = template.issue(&template.as_own_issuer(), &key).unwrap();
        (key, issued.certificate.as_issuer())
    }

    fn leaf(spiffe_id: &str) -> LeafTemplate {
        let at = |year| x509_time(der::DateTime::new(year, 6, 1, 0, 0, 0).unwrap()).unwrap();
        LeafTemplate {
            subject: Name::default(),
            public_key: SoftwareKey::generate(KeyType::EcdsaP256)
                .unwrap()
                .public_key()
                .clone(),
            validity: Validity {
                not_before: at(2027),
                not_after: at(2028),
            },
            signature_algorithm: SignatureAlgorithm::EcdsaP256Sha256,
            spiffe_id: spiffe_id.into(),
            dns_names: vec!["web.svc.cluster.local".into()],
            crl_distribution_points: vec!["http://pki.example.org/crl/online.crl".into()],
        }
    }

    #[test]
    fn an_svid_with_an_empty_subject_passes_with_a_critical_san() {
        let (key, issuer) = issuer();
        let prepared = leaf("spiffe://td/ns/web")
            .prepare(random_serial(&key).unwrap(), &issuer)
            .unwrap();
        let der = prepared.sign_with(&key).unwrap();
        let certificate = <x509_cert::Certificate as der::Decode>::from_der(&der).unwrap();
        let san = super::lint::find_extension(
            &certificate.tbs_certificate,
            const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME,
        )
        .unwrap();
        assert!(san.critical);
    }

    #[test]
    fn a_trust_domain_id_is_no_workload_identity() {
        let (key, issuer) = issuer();
        match leaf("spiffe://td").prepare(random_serial(&key).unwrap(), &issuer) {
            Err(PkiError::Lint { findings, .. }) => {
                assert_eq!(findings.len(), 1, "{findings:?}");
                assert!(
                    findings[0].contains("SPIFFE ID with a path"),
                    "{findings:?}"
                );
            }
            other => panic!("expected a lint failure, got {other:?}"),
        }
    }
}
