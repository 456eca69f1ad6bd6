//! Certificate signing requests for HSM keys, to chain the mesh root under an external CA.

use der::Decode;
use der::Encode;
use der::asn1::SetOfVec;
use x509_cert::attr::Attribute;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::name::Name;
use x509_cert::request::{CertReqInfo, ExtensionReq, Version};

use super::ca::extension;
use super::{PkiError, Signer, signed};
use crate::hsm::SignatureAlgorithm;

/// A CA's request to be certified: its subject, and the CA extensions it asks for.
#[derive(Clone, Debug)]
pub struct CsrTemplate {
    /// The subject name.
    pub subject: Name,
    /// The algorithm the key signs the request with.
    pub signature_algorithm: SignatureAlgorithm,
}

impl CsrTemplate {
    /// Builds the request for the signer's key, signs it, and verifies the signature. The
    /// request asks for `cA=true` and keyCertSign + cRLSign, both critical.
    pub fn issue(&self, signer: &dyn Signer) -> Result<Vec<u8>, PkiError> {
        let key_type = signer.public_key().key_type();
        if !self.signature_algorithm.works_with(key_type) {
            return Err(PkiError::Lint {
                what: format!("CSR \"{}\"", self.subject),
                findings: vec![format!(
                    "signature algorithm {} cannot be made by a {key_type} key",
                    self.signature_algorithm
                )],
            });
        }
        let requested = ExtensionReq(vec![
            extension(
                &BasicConstraints {
                    ca: true,
                    path_len_constraint: None,
                },
                true,
            )?,
            extension(&KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign), true)?,
        ]);
        let attribute =
            Attribute::try_from(requested).map_err(|e| PkiError::input("CSR extensions", e))?;
        let mut attributes = SetOfVec::new();
        attributes
            .insert(attribute)
            .map_err(|e| PkiError::input("CSR attributes", e))?;
        let info = CertReqInfo {
            version: Version::V1,
            subject: self.subject.clone(),
            public_key: spki::SubjectPublicKeyInfoOwned::from_der(
                &signer.public_key().to_spki_der(),
            )
            .expect("hsmca's own SubjectPublicKeyInfo always parses"),
            attributes,
        };
        let info_der = info.to_der().map_err(|e| PkiError::input("CSR", e))?;
        signed::sign_and_check(
            "CSR",
            &info_der,
            self.signature_algorithm,
            signer,
            signer.public_key(),
        )
    }
}
