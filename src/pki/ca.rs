//! CA certificates: reading an issuer's certificate, and building, checking and signing a
//! new one (a self-signed root, an online intermediate, or a cross-signed root).

use std::path::Path;

use der::asn1::{Ia5String, OctetString};
use der::flagset::FlagSet;
use der::{Decode, Encode};
use serde::Deserialize;
use x509_cert::certificate::{Certificate, TbsCertificate, Version};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::constraints::name::GeneralSubtree;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AccessDescription, AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints,
    CrlDistributionPoints, KeyUsage, KeyUsages, NameConstraints, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

use super::issuer::{Issuer, key_identifier};
use super::{PkiError, Signer, lint, signed};
use crate::hsm::{PublicKey, SignatureAlgorithm};

/// The key usages a CA certificate may carry; consumers (SPIRE) reject anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaKeyUsage {
    /// `keyCertSign`: required on every CA.
    KeyCertSign,
    /// `cRLSign`: needed to sign CRLs.
    CrlSign,
    /// `digitalSignature`: tolerated, not needed by a CA.
    DigitalSignature,
}

impl CaKeyUsage {
    fn flag(self) -> KeyUsages {
        match self {
            CaKeyUsage::KeyCertSign => KeyUsages::KeyCertSign,
            CaKeyUsage::CrlSign => KeyUsages::CRLSign,
            CaKeyUsage::DigitalSignature => KeyUsages::DigitalSignature,
        }
    }
}

/// A CA certificate read from a file or just signed.
#[derive(Clone, Debug)]
pub struct CaCertificate {
    certificate: Certificate,
    der: Vec<u8>,
    public_key: PublicKey,
}

impl CaCertificate {
    /// Reads a certificate in PEM or DER and checks that it is a CA hsmca can sign with:
    /// `cA=true`, `keyCertSign`, a subject key identifier and a supported key.
    pub fn from_file(path: &Path) -> Result<Self, PkiError> {
        let what = format!("certificate {}", path.display());
        let der = super::read_pem_or_der(path, &["CERTIFICATE"], &what)?;
        Self::from_der(der, &what)
    }

    /// Parses and checks a DER certificate; `what` names it in errors.
    pub fn from_der(der: Vec<u8>, what: &str) -> Result<Self, PkiError> {
        let certificate = Certificate::from_der(&der).map_err(|e| PkiError::input(what, e))?;
        let spki = certificate
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| PkiError::input(what, e))?;
        let public_key = PublicKey::from_spki_der(&spki).map_err(|e| PkiError::input(what, e))?;
        let ca = CaCertificate {
            certificate,
            der,
            public_key,
        };
        match ca.basic_constraints() {
            Some(bc) if bc.ca => {}
            _ => {
                return Err(PkiError::input(
                    what,
                    "is not a CA certificate (no basicConstraints cA=true)",
                ));
            }
        }
        if !ca.key_usage().is_some_and(|ku| ku.key_cert_sign()) {
            return Err(PkiError::input(what, "lacks the keyCertSign key usage"));
        }
        if ca.key_identifier().is_none() {
            return Err(PkiError::input(what, "has no subject key identifier"));
        }
        Ok(ca)
    }

    /// The parsed certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate as a `CERTIFICATE` PEM block.
    pub fn to_pem(&self) -> String {
        super::to_pem("CERTIFICATE", &self.der)
    }

    /// The subject's public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// The subject name.
    pub fn subject(&self) -> &Name {
        &self.certificate.tbs_certificate.subject
    }

    /// The validity period.
    pub fn validity(&self) -> &Validity {
        &self.certificate.tbs_certificate.validity
    }

    /// The serial number in hex.
    pub fn serial_hex(&self) -> String {
        hex::encode(self.certificate.tbs_certificate.serial_number.as_bytes())
    }

    /// Lower-case hex SHA-256 of the DER certificate.
    pub fn sha256_fingerprint(&self) -> String {
        crate::digest::sha256_hex(&self.der)
    }

    /// The subject key identifier.
    pub fn key_identifier(&self) -> Option<Vec<u8>> {
        self.extension::<SubjectKeyIdentifier>()
            .map(|ski| ski.0.as_bytes().to_vec())
    }

    /// The basic constraints.
    pub fn basic_constraints(&self) -> Option<BasicConstraints> {
        self.extension()
    }

    /// The key usage.
    pub fn key_usage(&self) -> Option<KeyUsage> {
        self.extension()
    }

    /// True when subject and issuer names are equal (a root or a self-issued certificate).
    pub fn is_self_issued(&self) -> bool {
        let tbs = &self.certificate.tbs_certificate;
        tbs.subject == tbs.issuer
    }

    /// What the checks of a certificate or CRL this CA signs need to know about it.
    pub fn as_issuer(&self) -> Issuer {
        Issuer {
            name: self.subject().clone(),
            key_identifier: self.key_identifier().unwrap_or_default(),
            validity: *self.validity(),
            public_key: self.public_key.clone(),
            path_len: self
                .basic_constraints()
                .and_then(|bc| bc.path_len_constraint),
            key_usage: self.key_usage().map(|ku| ku.0).unwrap_or_default(),
            self_signed_subject: false,
        }
    }

    fn extension<T: for<'a> Decode<'a> + der::oid::AssociatedOid>(&self) -> Option<T> {
        lint::decode(lint::find_extension(
            &self.certificate.tbs_certificate,
            T::OID,
        ))
        .map(|(value, _critical)| value)
    }
}

/// Everything a CA certificate says, as the ceremony configuration spells it out.
#[derive(Clone, Debug)]
pub struct CaTemplate {
    /// The subject name.
    pub subject: Name,
    /// The subject's public key.
    pub public_key: PublicKey,
    /// The validity period.
    pub validity: Validity,
    /// The algorithm the issuer signs with.
    pub signature_algorithm: SignatureAlgorithm,
    /// The key usages (critical).
    pub key_usage: Vec<CaKeyUsage>,
    /// The path length constraint; `None` leaves the path unconstrained.
    pub path_length: Option<u8>,
    /// Permitted URI name-constraint hosts (e.g. a SPIFFE trust domain `example.org`).
    pub permitted_uri_domains: Vec<String>,
    /// Permitted DNS name-constraint domains.
    pub permitted_dns_domains: Vec<String>,
    /// CRL distribution point URLs.
    pub crl_distribution_points: Vec<String>,
    /// Authority information access URLs of the issuer's certificate (`caIssuers`).
    pub ca_issuers: Vec<String>,
    /// The SPIFFE trust domain ID (`spiffe://<trust domain>`) of an issuing CA, written as
    /// its only subjectAltName. Ceremony certificates have none.
    pub spiffe_id: Option<String>,
}

impl CaTemplate {
    fn key_usage_flags(&self) -> FlagSet<KeyUsages> {
        self.key_usage
            .iter()
            .fold(FlagSet::default(), |set, usage| set | usage.flag())
    }

    /// The issuer view of the self-signed certificate this template describes.
    pub fn as_own_issuer(&self) -> Issuer {
        Issuer {
            name: self.subject.clone(),
            key_identifier: key_identifier(&self.public_key),
            validity: self.validity,
            public_key: self.public_key.clone(),
            path_len: self.path_length,
            key_usage: self.key_usage_flags(),
            self_signed_subject: true,
        }
    }

    /// Builds the to-be-signed certificate with `serial`, issued by `issuer`.
    pub fn to_tbs(
        &self,
        serial: SerialNumber,
        issuer: &Issuer,
    ) -> Result<TbsCertificate, PkiError> {
        let mut extensions = vec![
            extension(
                &BasicConstraints {
                    ca: true,
                    path_len_constraint: self.path_length,
                },
                true,
            )?,
            extension(&KeyUsage(self.key_usage_flags()), true)?,
        ];
        extensions.extend(key_identifier_extensions(&self.public_key, issuer)?);
        if !self.permitted_uri_domains.is_empty() || !self.permitted_dns_domains.is_empty() {
            let subtrees = self
                .permitted_uri_domains
                .iter()
                .map(|host| ia5(host).map(GeneralName::UniformResourceIdentifier))
                .chain(
                    self.permitted_dns_domains
                        .iter()
                        .map(|domain| ia5(domain).map(GeneralName::DnsName)),
                )
                .map(|base| {
                    base.map(|base| GeneralSubtree {
                        base,
                        minimum: 0,
                        maximum: None,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            extensions.push(extension(
                &NameConstraints {
                    permitted_subtrees: Some(subtrees),
                    excluded_subtrees: None,
                },
                true,
            )?);
        }
        extensions.extend(crl_distribution_points(&self.crl_distribution_points)?);
        if !self.ca_issuers.is_empty() {
            let access = self
                .ca_issuers
                .iter()
                .map(|url| {
                    Ok(AccessDescription {
                        access_method: const_oid::db::rfc5280::ID_AD_CA_ISSUERS,
                        access_location: GeneralName::UniformResourceIdentifier(ia5(url)?),
                    })
                })
                .collect::<Result<Vec<_>, PkiError>>()?;
            extensions.push(extension(&AuthorityInfoAccessSyntax(access), false)?);
        }
        if let Some(id) = &self.spiffe_id {
            extensions.push(subject_alt_name(std::slice::from_ref(id), &[], false)?);
        }
        Ok(tbs_certificate(
            serial,
            self.signature_algorithm,
            issuer,
            self.validity,
            self.subject.clone(),
            &self.public_key,
            extensions,
        ))
    }

    /// Builds the certificate with `serial` and runs the pre-signing checks; the result
    /// waits for the issuer's signature.
    pub fn prepare(
        &self,
        serial: SerialNumber,
        issuer: &Issuer,
    ) -> Result<signed::Prepared, PkiError> {
        let tbs = self.to_tbs(serial, issuer)?;
        let checks = lint::check_ca_certificate(&tbs, issuer, self.signature_algorithm)?;
        prepared_certificate(&tbs, self.signature_algorithm, issuer, checks)
    }

    /// Builds, checks, signs and re-checks the certificate. Nothing reaches the signer
    /// unless every pre-signing check passes.
    pub fn issue(&self, issuer: &Issuer, signer: &dyn Signer) -> Result<Issued, PkiError> {
        let prepared = self.prepare(super::random_serial(signer)?, issuer)?;
        let checks = prepared.checks().to_vec();
        let der = prepared.sign_with(signer)?;
        let certificate = CaCertificate::from_der(der, "the signed certificate")?;
        Ok(Issued {
            certificate,
            checks,
        })
    }
}

/// A freshly signed certificate and the checks it passed before signing.
#[derive(Debug)]
pub struct Issued {
    /// The certificate.
    pub certificate: CaCertificate,
    /// The pre-signing checks, by name, all passed.
    pub checks: Vec<&'static str>,
}

/// Wraps an extension value; `critical` is decided by the profile, not by the type.
pub(crate) fn extension<T: Encode + der::oid::AssociatedOid>(
    value: &T,
    critical: bool,
) -> Result<Extension, PkiError> {
    let encoded = value
        .to_der()
        .map_err(|e| PkiError::input(format!("extension {}", T::OID), e))?;
    Ok(Extension {
        extn_id: T::OID,
        critical,
        extn_value: octets(encoded)?,
    })
}

/// The CRL distribution points extension for `urls`, none when there are none.
pub(crate) fn crl_distribution_points(urls: &[String]) -> Result<Option<Extension>, PkiError> {
    if urls.is_empty() {
        return Ok(None);
    }
    let points = urls
        .iter()
        .map(|url| {
            Ok(DistributionPoint {
                distribution_point: Some(DistributionPointName::FullName(vec![
                    GeneralName::UniformResourceIdentifier(ia5(url)?),
                ])),
                reasons: None,
                crl_issuer: None,
            })
        })
        .collect::<Result<Vec<_>, PkiError>>()?;
    Ok(Some(extension(&CrlDistributionPoints(points), false)?))
}

/// The subjectAltName extension holding `uris` then `dns_names`.
pub(crate) fn subject_alt_name(
    uris: &[String],
    dns_names: &[String],
    critical: bool,
) -> Result<Extension, PkiError> {
    let names = uris
        .iter()
        .map(|uri| ia5(uri).map(GeneralName::UniformResourceIdentifier))
        .chain(
            dns_names
                .iter()
                .map(|name| ia5(name).map(GeneralName::DnsName)),
        )
        .collect::<Result<Vec<_>, _>>()?;
    extension(&SubjectAltName(names), critical)
}

/// The key identifier extensions every certificate hsmca signs carries: SKI from the
/// subject key, AKI naming the issuer's.
pub(crate) fn key_identifier_extensions(
    subject_key: &PublicKey,
    issuer: &Issuer,
) -> Result<[Extension; 2], PkiError> {
    Ok([
        extension(
            &SubjectKeyIdentifier(octets(key_identifier(subject_key))?),
            false,
        )?,
        extension(
            &AuthorityKeyIdentifier {
                key_identifier: Some(octets(issuer.key_identifier.clone())?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
            false,
        )?,
    ])
}

/// A v3 TBS certificate issued by `issuer`.
pub(crate) fn tbs_certificate(
    serial: SerialNumber,
    algorithm: SignatureAlgorithm,
    issuer: &Issuer,
    validity: Validity,
    subject: Name,
    public_key: &PublicKey,
    extensions: Vec<Extension>,
) -> TbsCertificate {
    let spki = spki::SubjectPublicKeyInfoOwned::from_der(&public_key.to_spki_der())
        .expect("hsmca's own SubjectPublicKeyInfo always parses");
    TbsCertificate {
        version: Version::V3,
        serial_number: serial,
        signature: super::algorithm::identifier(algorithm),
        issuer: issuer.name.clone(),
        validity,
        subject,
        subject_public_key_info: spki,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    }
}

/// A checked TBS certificate, encoded and waiting for `issuer`'s signature.
pub(crate) fn prepared_certificate(
    tbs: &TbsCertificate,
    algorithm: SignatureAlgorithm,
    issuer: &Issuer,
    checks: Vec<&'static str>,
) -> Result<signed::Prepared, PkiError> {
    let tbs_der = tbs
        .to_der()
        .map_err(|e| PkiError::input("certificate", e))?;
    Ok(signed::Prepared::new(
        "certificate",
        tbs_der,
        algorithm,
        &issuer.public_key,
        checks,
    ))
}

/// Wraps bytes in an OCTET STRING.
pub(crate) fn octets(bytes: Vec<u8>) -> Result<OctetString, PkiError> {
    OctetString::new(bytes).map_err(|e| PkiError::input("octet string", e))
}

pub(crate) fn ia5(value: &str) -> Result<Ia5String, PkiError> {
    Ia5String::new(value)
        .map_err(|_| PkiError::input(format!("{value:?}"), "is not ASCII (IA5String)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hsm::KeyType;
    use crate::pki::{SoftwareKey, SubjectSpec, x509_time};

    fn name(cn: &str) -> Name {
        SubjectSpec {
            common_name: Some(cn.into()),
            ..Default::default()
        }
        .to_name()
        .unwrap()
    }

    fn validity(from: u16, to: u16) -> Validity {
        let at = |year| x509_time(der::DateTime::new(year, 1, 1, 0, 0, 0).unwrap()).unwrap();
        Validity {
            not_before: at(from),
            not_after: at(to),
        }
    }

    fn template(
        cn: &str,
        key: &PublicKey,
        validity: Validity,
        path_length: Option<u8>,
    ) -> CaTemplate {
        CaTemplate {
            subject: name(cn),
            public_key: key.clone(),
            validity,
            signature_algorithm: SignatureAlgorithm::EcdsaP256Sha256,
            key_usage: vec![CaKeyUsage::KeyCertSign, CaKeyUsage::CrlSign],
            path_length,
            permitted_uri_domains: Vec::new(),
            permitted_dns_domains: Vec::new(),
            crl_distribution_points: Vec::new(),
            ca_issuers: Vec::new(),
            spiffe_id: None,
        }
    }

    /// A software root with `path_length`, and a fresh key to certify under it.
    fn root(path_length: Option<u8>) -> (SoftwareKey, CaCertificate, SoftwareKey) {
        let root_key = SoftwareKey::generate(KeyType::EcdsaP256).unwrap();
        let root = template(
            "Root",
            root_key.public_key(),
            validity(2026, 2046),
            path_length,
        );
        let issued = root.issue(&root.as_own_issuer(), &root_key).unwrap();
        let subject_key = SoftwareKey::generate(KeyType::EcdsaP256).unwrap();
        (root_key, issued.certificate, subject_key)
    }

    fn findings(result: Result<Issued, PkiError>) -> String {
        match result {
            Err(PkiError::Lint { findings, .. }) => findings.join("\n"),
            other => panic!("expected a lint failure, got {other:?}"),
        }
    }

    #[test]
    fn a_sound_intermediate_is_issued_with_key_identifiers_chained() {
        let (root_key, root, key) = root(None);
        let intermediate = template("Online", key.public_key(), validity(2027, 2031), Some(1));
        let issued = intermediate.issue(&root.as_issuer(), &root_key).unwrap();
        assert_eq!(issued.checks.len(), 22);
        let tbs = &issued.certificate.certificate().tbs_certificate;
        let aki: AuthorityKeyIdentifier = issued.certificate.extension().unwrap();
        assert_eq!(
            aki.key_identifier.unwrap().as_bytes(),
            root.key_identifier().unwrap()
        );
        assert_eq!(
            tbs.issuer.to_der().unwrap(),
            root.subject().to_der().unwrap()
        );
        let serial = tbs.serial_number.as_bytes();
        assert_eq!(
            (serial.len(), serial[0]),
            (17, 0x01),
            "0x01 then 128 random bits"
        );
    }

    #[test]
    fn every_broken_rule_is_reported_before_signing() {
        let (root_key, root, key) = root(Some(0));
        let mut bad = template("Online", key.public_key(), validity(2025, 2047), Some(0));
        bad.key_usage = vec![CaKeyUsage::CrlSign];
        bad.permitted_uri_domains = vec!["spiffe://example.org".into()];
        bad.crl_distribution_points = vec!["ldap://crl.example.org".into()];
        let report = findings(bad.issue(&root.as_issuer(), &root_key));
        for expected in [
            "is not inside the issuer's",
            "allows no CA with pathLen",
            "keyUsage must be critical, include keyCertSign",
            "not a URI",
            "http:// URLs",
        ] {
            assert!(
                report.contains(expected),
                "missing {expected:?} in:\n{report}"
            );
        }
        assert_eq!(report.lines().count(), 5, "{report}");
    }

    #[test]
    fn the_wrong_issuer_key_is_caught_after_signing() {
        let (_, root, key) = root(None);
        let impostor = SoftwareKey::generate(KeyType::EcdsaP256).unwrap();
        let intermediate = template("Online", key.public_key(), validity(2027, 2031), Some(1));
        match intermediate.issue(&root.as_issuer(), &impostor) {
            Err(PkiError::PostSignCheck { reason, .. }) => {
                assert!(reason.contains("does not verify"), "{reason}")
            }
            other => panic!("expected a post-signing failure, got {other:?}"),
        }
    }

    #[test]
    fn an_algorithm_the_issuer_key_cannot_make_is_refused() {
        let (root_key, root, key) = root(None);
        let mut intermediate = template("Online", key.public_key(), validity(2027, 2031), Some(1));
        intermediate.signature_algorithm = SignatureAlgorithm::RsaPkcs1Sha256;
        let report = findings(intermediate.issue(&root.as_issuer(), &root_key));
        assert!(
            report.contains("cannot be made by the issuer's ecdsa-p256 key"),
            "{report}"
        );
    }
}
