//! Certificate signing requests: made for HSM keys (to chain the mesh root under an external
//! CA), and received from intermediate CAs, whose proof of possession is verified here.

use const_oid::AssociatedOid;
use der::Decode;
use der::Encode;
use der::asn1::SetOfVec;
use x509_cert::attr::Attribute;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::name::Name;
use x509_cert::request::{CertReqInfo, ExtensionReq, Version};

use super::ca::extension;
use super::{PkiError, Signer, signed};
use crate::hsm::{PublicKey, SignatureAlgorithm};

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
        signed::Prepared::new(
            "CSR",
            info_der,
            self.signature_algorithm,
            signer.public_key(),
            Vec::new(),
        )
        .sign_with(signer)
    }
}

/// A certificate signing request whose signature has been verified: the requester holds the
/// private key of `public_key` (proof of possession). Nothing in it is trusted beyond that.
#[derive(Clone, Debug)]
pub struct VerifiedCsr {
    /// The requested subject; a profile decides what, if anything, is copied.
    pub subject: Name,
    /// The requester's public key, of a supported type and size.
    pub public_key: PublicKey,
    /// URI SANs requested in the extensionRequest.
    pub uri_sans: Vec<String>,
    /// DNS SANs requested in the extensionRequest.
    pub dns_sans: Vec<String>,
}

/// Why a CSR was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Neither a `CERTIFICATE REQUEST` PEM block nor DER.
    #[error("the CSR is not a PEM or DER certificate request: {0}")]
    Encoding(String),
    /// A version other than v1.
    #[error("the CSR has version {0}; only v1 (0) exists")]
    Version(u8),
    /// A key type or size hsmca does not accept.
    #[error("the CSR's public key is refused: {0}")]
    Key(String),
    /// The signature does not verify with the CSR's own key: no proof of possession.
    #[error(
        "the CSR's signature does not verify with its own public key (no proof of possession): {0}"
    )]
    Signature(String),
    /// The requested extensions cannot be read.
    #[error("the CSR's requested extensions are malformed: {0}")]
    Extensions(String),
}

/// Parses a CSR (PEM or DER), checks its key is supported and verifies its signature.
pub fn verify_csr(bytes: &[u8]) -> Result<VerifiedCsr, CsrError> {
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::request::CertReq;

    // "NEW CERTIFICATE REQUEST" is the label older tools (and some Java stacks) still write.
    let der = super::pem_or_der(bytes, &["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"])
        .map_err(CsrError::Encoding)?;
    let request = CertReq::from_der(&der).map_err(|e| CsrError::Encoding(e.to_string()))?;
    if request.info.version != Version::V1 {
        return Err(CsrError::Version(request.info.version as u8));
    }
    let spki = request
        .info
        .public_key
        .to_der()
        .map_err(|e| CsrError::Encoding(e.to_string()))?;
    let public_key = PublicKey::from_spki_der(&spki).map_err(CsrError::Key)?;
    signed::verify_signed(&der, &public_key).map_err(CsrError::Signature)?;
    let mut verified = VerifiedCsr {
        subject: request.info.subject,
        public_key,
        uri_sans: Vec::new(),
        dns_sans: Vec::new(),
    };
    let requested = request
        .info
        .attributes
        .iter()
        .filter(|attribute| attribute.oid == ExtensionReq::OID)
        .flat_map(|attribute| attribute.values.iter());
    for value in requested {
        let extensions: Vec<x509_cert::ext::Extension> = value
            .decode_as()
            .map_err(|e: der::Error| CsrError::Extensions(e.to_string()))?;
        for extension in extensions
            .iter()
            .filter(|e| e.extn_id == SubjectAltName::OID)
        {
            let names = SubjectAltName::from_der(extension.extn_value.as_bytes())
                .map_err(|e| CsrError::Extensions(e.to_string()))?;
            for name in names.0 {
                match name {
                    GeneralName::UniformResourceIdentifier(uri) => {
                        verified.uri_sans.push(uri.to_string())
                    }
                    GeneralName::DnsName(dns) => verified.dns_sans.push(dns.to_string()),
                    _ => {}
                }
            }
        }
    }
    Ok(verified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hsm::KeyType;
    use crate::pki::SoftwareKey;

    /// A CSR shaped like SPIRE's upstream request, made by rcgen (not our code).
    fn spire_like_csr(alg: &'static rcgen::SignatureAlgorithm) -> (String, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CountryName, "US");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "SPIFFE");
        params.subject_alt_names = vec![
            rcgen::SanType::URI("spiffe://example.org".try_into().unwrap()),
            rcgen::SanType::DnsName("spire.example.org".try_into().unwrap()),
        ];
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        (pem, key)
    }

    #[test]
    fn an_rcgen_csr_verifies_with_its_names_and_key() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let (pem, key) = spire_like_csr(alg);
            let csr = verify_csr(pem.as_bytes()).unwrap();
            assert_eq!(csr.uri_sans, ["spiffe://example.org"]);
            assert_eq!(csr.dns_sans, ["spire.example.org"]);
            assert_eq!(csr.subject.to_string(), "O=SPIFFE,C=US");
            assert_eq!(
                csr.public_key.to_spki_der(),
                rcgen::PublicKeyData::subject_public_key_info(&key)
            );
            // DER is accepted as well as PEM.
            let (_, der) = der::pem::decode_vec(pem.as_bytes()).unwrap();
            assert!(verify_csr(&der).is_ok());
            // So is the older "NEW CERTIFICATE REQUEST" label.
            let old_label = pem.replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST");
            assert!(verify_csr(old_label.as_bytes()).is_ok());
        }
    }

    #[test]
    fn a_forged_signature_is_no_proof_of_possession() {
        let (pem, _) = spire_like_csr(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, mut der) = der::pem::decode_vec(pem.as_bytes()).unwrap();
        // The subject's O=SPIFFE becomes O=SPIFFF: the signed bytes change, the signature not.
        let at = der.windows(6).position(|w| w == b"SPIFFE").unwrap();
        der[at + 5] = b'F';
        assert!(matches!(verify_csr(&der), Err(CsrError::Signature(_))));
    }

    #[test]
    fn garbage_and_the_wrong_pem_label_are_refused() {
        assert!(matches!(
            verify_csr(b"not a csr"),
            Err(CsrError::Encoding(_))
        ));
        let key = SoftwareKey::generate(KeyType::EcdsaP256).unwrap();
        let pem = key.public_key().to_pem();
        let err = verify_csr(pem.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("PUBLIC KEY"), "{err}");
    }

    /// A CSR made by `openssl req` with `-newkey spec`.
    fn openssl_csr(spec: &[&str]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new("openssl")
            .args([
                "req", "-new", "-nodes", "-subj", "/CN=weak", "-outform", "DER",
            ])
            .args(spec)
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .output()
            .expect("openssl is not installed: run softhsm/install-deps.sh");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    #[test]
    fn keys_below_policy_are_refused_by_name() {
        let rsa1024 = openssl_csr(&["-newkey", "rsa:1024"]);
        let err = verify_csr(&rsa1024).unwrap_err();
        assert!(
            matches!(&err, CsrError::Key(reason) if reason.contains("1024 bits")),
            "{err}"
        );
        let p521 = openssl_csr(&["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"]);
        let err = verify_csr(&p521).unwrap_err();
        assert!(
            matches!(&err, CsrError::Key(reason) if reason.contains("unsupported curve")),
            "{err}"
        );
        // The same tool's RSA-2048 request is accepted: the refusals are about the key.
        assert!(verify_csr(&openssl_csr(&["-newkey", "rsa:2048"])).is_ok());
    }

    #[test]
    fn our_own_csr_round_trips() {
        let key = SoftwareKey::generate(KeyType::Rsa2048).unwrap();
        let template = CsrTemplate {
            subject: crate::pki::SubjectSpec {
                common_name: Some("Mesh Root".into()),
                ..Default::default()
            }
            .to_name()
            .unwrap(),
            signature_algorithm: SignatureAlgorithm::RsaPssSha256,
        };
        let csr = verify_csr(&template.issue(&key).unwrap()).unwrap();
        assert_eq!(&csr.public_key, key.public_key());
        assert!(csr.uri_sans.is_empty());
    }
}
