//! The checks a certificate or CRL must pass before the HSM is asked to sign it: our CA
//! profile (what SPIRE, Istio and Linkerd accept) and the RFC 5280 rules it relies on.
//!
//! Every check runs, and every failure is reported at once, so an officer fixes a config in
//! one round. The names of the passed checks go into the ceremony transcript.

use std::collections::HashSet;

use const_oid::ObjectIdentifier;
use const_oid::db::rfc5280 as oids;
use der::flagset::FlagSet;
use der::{Decode, Encode};
use spki::AlgorithmIdentifierOwned;
use x509_cert::certificate::{TbsCertificate, Version};
use x509_cert::crl::TbsCertList;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::crl::CrlNumber;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{
    AuthorityInfoAccessSyntax, AuthorityKeyIdentifier, BasicConstraints, CrlDistributionPoints,
    CrlReason, ExtendedKeyUsage, KeyUsage, KeyUsages, NameConstraints, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};

use super::issuer::{Issuer, key_identifier};
use super::time::has_rfc5280_encoding;
use super::{PkiError, SpiffeId, algorithm};
use crate::hsm::{PublicKey, SignatureAlgorithm};

/// Collects check results: the names of those that passed, the reasons of those that failed.
struct Checks {
    passed: Vec<&'static str>,
    failed: Vec<String>,
}

impl Checks {
    fn new() -> Self {
        Checks {
            passed: Vec::new(),
            failed: Vec::new(),
        }
    }

    fn check(&mut self, name: &'static str, ok: bool, failure: impl FnOnce() -> String) {
        if ok {
            self.passed.push(name);
        } else {
            self.failed.push(failure());
        }
    }

    /// The two checks every signed object shares: its signature field names `algorithm`,
    /// which the issuer's key can make, and its issuer name is the issuer's subject, byte for
    /// byte. `named` says which name field is meant in the failure message.
    fn signed_by(
        &mut self,
        issuer: &Issuer,
        algorithm: SignatureAlgorithm,
        signature_field: &AlgorithmIdentifierOwned,
        issuer_field: &Name,
        named: &str,
    ) {
        let key_type = issuer.public_key.key_type();
        self.check(
            "signature algorithm matches the issuer key",
            *signature_field == algorithm::identifier(algorithm) && algorithm.works_with(key_type),
            || {
                format!(
                    "signature algorithm {algorithm} cannot be made by the issuer's {key_type} key"
                )
            },
        );
        self.check(
            "issuer name equals the issuer's subject byte for byte",
            issuer_field.to_der().ok() == issuer.name.to_der().ok(),
            || {
                format!(
                    "{named} {issuer_field} differs from the issuer's subject {}",
                    issuer.name
                )
            },
        );
    }

    fn finish(self, what: String) -> Result<Vec<&'static str>, PkiError> {
        if self.failed.is_empty() {
            Ok(self.passed)
        } else {
            Err(PkiError::Lint {
                what,
                findings: self.failed,
            })
        }
    }
}

/// The extension with `oid`, if present.
pub(crate) fn find_extension(tbs: &TbsCertificate, oid: ObjectIdentifier) -> Option<&Extension> {
    tbs.extensions
        .iter()
        .flatten()
        .find(|ext| ext.extn_id == oid)
}

/// The extension's value and criticality, when present and decodable.
pub(crate) fn decode<T: for<'a> Decode<'a>>(ext: Option<&Extension>) -> Option<(T, bool)> {
    let ext = ext?;
    T::from_der(ext.extn_value.as_bytes())
        .ok()
        .map(|value| (value, ext.critical))
}

/// True when the extension is absent, or decodes and `accepted(value, critical)` holds.
fn absent_or<T: for<'a> Decode<'a>>(
    ext: Option<&Extension>,
    accepted: impl FnOnce(&T, bool) -> bool,
) -> bool {
    ext.is_none() || decode::<T>(ext).is_some_and(|(value, critical)| accepted(&value, critical))
}

fn unique_extensions(extensions: Option<&Vec<Extension>>) -> bool {
    let mut seen = HashSet::new();
    extensions
        .into_iter()
        .flatten()
        .all(|ext| seen.insert(ext.extn_id))
}

fn serial_is_sound(serial: &SerialNumber) -> bool {
    // The DER content octets: a leading 0x00 only pads a positive value whose top bit is set.
    let bytes = serial.as_bytes();
    let positive = bytes.first().is_some_and(|&b| b & 0x80 == 0) && bytes.iter().any(|&b| b != 0);
    let significant = bytes.iter().skip_while(|&&b| b == 0).count();
    positive && (8..=20).contains(&bytes.len()) && significant >= 8
}

fn inside(inner: &Validity, outer: &Validity) -> bool {
    inner.not_before.to_unix_duration() >= outer.not_before.to_unix_duration()
        && inner.not_after.to_unix_duration() <= outer.not_after.to_unix_duration()
}

fn http_url(name: &GeneralName) -> Option<&str> {
    match name {
        GeneralName::UniformResourceIdentifier(uri) if uri.as_str().starts_with("http://") => {
            Some(uri.as_str())
        }
        _ => None,
    }
}

/// A host name: labels of letters, digits and hyphens, optionally with a leading dot
/// (a name constraint for subdomains only).
fn is_constraint_host(host: &str) -> bool {
    let host = host.strip_prefix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// The checks every certificate hsmca signs must pass, CA or leaf: encoding, serial, issuer,
/// key, validity, and the key identifiers that chain it to `issuer`.
fn certificate_basics(
    c: &mut Checks,
    tbs: &TbsCertificate,
    issuer: &Issuer,
    algorithm: SignatureAlgorithm,
) {
    let exts = tbs.extensions.as_ref();
    c.check("version is v3", tbs.version == Version::V3, || {
        "the version is not v3".into()
    });
    c.check(
        "serial is positive with 64-159 random bits",
        serial_is_sound(&tbs.serial_number),
        || {
            format!(
                "the serial {} must be positive, 8 to 20 bytes, with at least 64 significant bits",
                hex::encode(tbs.serial_number.as_bytes())
            )
        },
    );
    c.signed_by(
        issuer,
        algorithm,
        &tbs.signature,
        &tbs.issuer,
        "the issuer name",
    );
    c.check(
        "subject public key is supported",
        tbs.subject_public_key_info
            .to_der()
            .ok()
            .is_some_and(|der| PublicKey::from_spki_der(&der).is_ok()),
        || "the subject public key is not a supported key".into(),
    );
    let validity = &tbs.validity;
    c.check(
        "notBefore is before notAfter",
        validity.not_before.to_unix_duration() < validity.not_after.to_unix_duration(),
        || {
            format!(
                "notBefore {} is not before notAfter {}",
                validity.not_before, validity.not_after
            )
        },
    );
    c.check(
        "validity lies inside the issuer's",
        issuer.self_signed_subject || inside(validity, &issuer.validity),
        || {
            format!(
                "the validity {} .. {} is not inside the issuer's {} .. {}",
                validity.not_before,
                validity.not_after,
                issuer.validity.not_before,
                issuer.validity.not_after
            )
        },
    );
    c.check(
        "times use UTCTime through 2049 and GeneralizedTime after",
        has_rfc5280_encoding(&validity.not_before) && has_rfc5280_encoding(&validity.not_after),
        || "a validity time has the wrong encoding for its year (RFC 5280 4.1.2.5)".into(),
    );
    c.check(
        "no unique identifiers",
        tbs.issuer_unique_id.is_none() && tbs.subject_unique_id.is_none(),
        || "issuer or subject unique identifiers are present".into(),
    );
    c.check(
        "each extension appears once",
        unique_extensions(exts),
        || "an extension appears more than once".into(),
    );
    c.check(
        "issuer may sign certificates (keyCertSign)",
        issuer.key_usage.contains(KeyUsages::KeyCertSign),
        || "the issuer's key usage lacks keyCertSign".into(),
    );
    let ski: Option<(SubjectKeyIdentifier, bool)> =
        decode(find_extension(tbs, oids::ID_CE_SUBJECT_KEY_IDENTIFIER));
    let expected_ski = tbs
        .subject_public_key_info
        .to_der()
        .ok()
        .and_then(|der| PublicKey::from_spki_der(&der).ok())
        .map(|key| key_identifier(&key));
    c.check(
        "subjectKeyIdentifier is present, non-critical, derived from the key",
        ski.as_ref().is_some_and(|(ski, critical)| {
            !*critical && Some(ski.0.as_bytes().to_vec()) == expected_ski
        }),
        || {
            "subjectKeyIdentifier must be present, non-critical and derived from the subject key"
                .into()
        },
    );
    let aki: Option<(AuthorityKeyIdentifier, bool)> =
        decode(find_extension(tbs, oids::ID_CE_AUTHORITY_KEY_IDENTIFIER));
    c.check(
        "authorityKeyIdentifier is present, non-critical, the issuer's key identifier",
        aki.as_ref().is_some_and(|(aki, critical)| {
            !*critical
                && aki.authority_cert_issuer.is_none()
                && aki.authority_cert_serial_number.is_none()
                && aki.key_identifier.as_ref().map(|id| id.as_bytes()) == Some(issuer.key_identifier.as_slice())
        }),
        || "authorityKeyIdentifier must be present, non-critical, and hold only the issuer's key identifier".into(),
    );
}

/// Checks a CA certificate about to be signed by `issuer` with `algorithm`. Returns the names
/// of the passed checks, or every failure.
pub fn check_ca_certificate(
    tbs: &TbsCertificate,
    issuer: &Issuer,
    algorithm: SignatureAlgorithm,
) -> Result<Vec<&'static str>, PkiError> {
    let mut c = Checks::new();
    certificate_basics(&mut c, tbs, issuer, algorithm);
    c.check("subject is not empty", !tbs.subject.is_empty(), || {
        "the subject is empty".into()
    });
    let basic: Option<(BasicConstraints, bool)> =
        decode(find_extension(tbs, oids::ID_CE_BASIC_CONSTRAINTS));
    c.check(
        "basicConstraints is critical with cA=true",
        basic
            .as_ref()
            .is_some_and(|(bc, critical)| bc.ca && *critical),
        || "basicConstraints must be present, critical and cA=true".into(),
    );
    let path_len = basic.as_ref().and_then(|(bc, _)| bc.path_len_constraint);
    c.check(
        "path length fits under the issuer's",
        issuer.self_signed_subject
            || match issuer.path_len {
                None => true,
                Some(issuer_len) => issuer_len >= 1 && path_len.is_some_and(|len| len < issuer_len),
            },
        || {
            format!(
                "the issuer's pathLen {:?} allows no CA with pathLen {:?} under it; a subordinate CA needs a pathLen below its issuer's",
                issuer.path_len, path_len
            )
        },
    );

    let usage: Option<(KeyUsage, bool)> = decode(find_extension(tbs, oids::ID_CE_KEY_USAGE));
    let allowed = KeyUsages::KeyCertSign | KeyUsages::CRLSign | KeyUsages::DigitalSignature;
    c.check(
        "keyUsage is critical with keyCertSign and no usage beyond cRLSign, digitalSignature",
        usage.as_ref().is_some_and(|(ku, critical)| {
            *critical && ku.key_cert_sign() && (ku.0 - allowed).is_empty()
        }),
        || "keyUsage must be critical, include keyCertSign, and add nothing but cRLSign or digitalSignature".into(),
    );

    c.check(
        "no extendedKeyUsage on a CA",
        find_extension(tbs, oids::ID_CE_EXT_KEY_USAGE).is_none(),
        || "a CA certificate must not carry extendedKeyUsage".into(),
    );
    c.check(
        "subjectAltName, if any, is one non-critical SPIFFE trust domain ID",
        absent_or(
            find_extension(tbs, oids::ID_CE_SUBJECT_ALT_NAME),
            |san: &SubjectAltName, critical| {
                !critical
                    && matches!(san.0.as_slice(), [GeneralName::UniformResourceIdentifier(uri)]
                        if SpiffeId::parse(uri.as_str()).is_ok_and(|id| id.is_trust_domain_id()))
            },
        ),
        || "a CA's subjectAltName may only be one URI spiffe://<trust domain>, without a path (SPIFFE X509-SVID)".into(),
    );

    c.check(
        "nameConstraints, if any, are critical host names",
        absent_or(
            find_extension(tbs, oids::ID_CE_NAME_CONSTRAINTS),
            |nc: &NameConstraints, critical| {
                critical
                    && nc.excluded_subtrees.is_none()
                    && nc.permitted_subtrees.as_ref().is_some_and(|subtrees| {
                        !subtrees.is_empty()
                            && subtrees.iter().all(|subtree| {
                                subtree.minimum == 0
                                    && subtree.maximum.is_none()
                                    && match &subtree.base {
                                        GeneralName::UniformResourceIdentifier(host)
                                        | GeneralName::DnsName(host) => is_constraint_host(host.as_str()),
                                        _ => false,
                                    }
                            })
                    })
            }),
        || "nameConstraints must be critical, list permitted subtrees only, and each must be a lower-case host name such as example.org or .example.org (not a URI)".into(),
    );
    distribution_extensions(&mut c, tbs);
    c.finish(format!("certificate \"{}\"", tbs.subject))
}

/// Checks a leaf X509-SVID about to be signed by `issuer` with `algorithm`: the SPIFFE rules
/// for leaves (one SPIFFE ID with a path, `cA=false`, digitalSignature only, serverAuth and
/// clientAuth) on top of the checks every certificate passes.
pub fn check_leaf_certificate(
    tbs: &TbsCertificate,
    issuer: &Issuer,
    algorithm: SignatureAlgorithm,
) -> Result<Vec<&'static str>, PkiError> {
    let mut c = Checks::new();
    certificate_basics(&mut c, tbs, issuer, algorithm);
    c.check(
        "basicConstraints is critical with cA=false",
        decode::<BasicConstraints>(find_extension(tbs, oids::ID_CE_BASIC_CONSTRAINTS))
            .is_some_and(|(bc, critical)| critical && !bc.ca && bc.path_len_constraint.is_none()),
        || "a leaf's basicConstraints must be present, critical and cA=false".into(),
    );
    c.check(
        "keyUsage is critical with digitalSignature only",
        decode::<KeyUsage>(find_extension(tbs, oids::ID_CE_KEY_USAGE))
            .is_some_and(|(ku, critical)| critical && ku.0 == FlagSet::from(KeyUsages::DigitalSignature)),
        || "a leaf's keyUsage must be critical and digitalSignature only (never keyCertSign or cRLSign)".into(),
    );
    c.check(
        "extendedKeyUsage is serverAuth and clientAuth",
        decode::<ExtendedKeyUsage>(find_extension(tbs, oids::ID_CE_EXT_KEY_USAGE)).is_some_and(
            |(eku, critical)| {
                !critical
                    && eku.0.len() == 2
                    && eku.0.contains(&const_oid::db::rfc5280::ID_KP_SERVER_AUTH)
                    && eku.0.contains(&const_oid::db::rfc5280::ID_KP_CLIENT_AUTH)
            },
        ),
        || "a leaf's extendedKeyUsage must be non-critical serverAuth and clientAuth".into(),
    );
    c.check(
        "subjectAltName holds one SPIFFE ID with a path, critical when the subject is empty",
        decode::<SubjectAltName>(find_extension(tbs, oids::ID_CE_SUBJECT_ALT_NAME)).is_some_and(
            |(san, critical)| {
                let uris: Vec<_> = san
                    .0
                    .iter()
                    .filter_map(|name| match name {
                        GeneralName::UniformResourceIdentifier(uri) => Some(uri.as_str()),
                        _ => None,
                    })
                    .collect();
                critical == tbs.subject.is_empty()
                    && san.0.iter().all(|name| {
                        matches!(
                            name,
                            GeneralName::UniformResourceIdentifier(_) | GeneralName::DnsName(_)
                        )
                    })
                    && matches!(uris.as_slice(), [uri]
                        if SpiffeId::parse(uri).is_ok_and(|id| !id.is_trust_domain_id()))
            },
        ),
        || "a leaf's subjectAltName must hold exactly one SPIFFE ID with a path (plus DNS names only), and be critical exactly when the subject is empty".into(),
    );
    c.check(
        "no nameConstraints on a leaf",
        find_extension(tbs, oids::ID_CE_NAME_CONSTRAINTS).is_none(),
        || "a leaf must not carry nameConstraints".into(),
    );
    distribution_extensions(&mut c, tbs);
    c.finish(format!("certificate \"{}\"", tbs.subject))
}

/// CRL distribution points and authority information access, which CAs and leaves share.
fn distribution_extensions(c: &mut Checks, tbs: &TbsCertificate) {
    c.check(
        "CRL distribution points, if any, are non-critical http:// URLs",
        absent_or(
            find_extension(tbs, oids::ID_CE_CRL_DISTRIBUTION_POINTS),
            |points: &CrlDistributionPoints, critical| {
                !critical
                    && !points.0.is_empty()
                    && points
                        .0
                        .iter()
                        .all(|point| match &point.distribution_point {
                            Some(DistributionPointName::FullName(names)) => {
                                names.iter().all(|name| http_url(name).is_some())
                            }
                            _ => false,
                        })
            },
        ),
        || "CRL distribution points must be non-critical http:// URLs (RFC 5280 4.2.1.13)".into(),
    );
    c.check(
        "authority information access, if any, is non-critical http:// caIssuers",
        absent_or(
            find_extension(tbs, oids::ID_PE_AUTHORITY_INFO_ACCESS),
            |access: &AuthorityInfoAccessSyntax, critical| {
                !critical
                    && access.0.iter().all(|desc| {
                        desc.access_method == oids::ID_AD_CA_ISSUERS && http_url(&desc.access_location).is_some()
                    })
            }),
        || "authority information access must be non-critical caIssuers http:// URLs (RFC 5280 4.2.2.1)".into(),
    );
}

/// Checks a CRL about to be signed by `issuer` with `algorithm`.
pub fn check_crl(
    tbs: &TbsCertList,
    issuer: &Issuer,
    algorithm: SignatureAlgorithm,
) -> Result<Vec<&'static str>, PkiError> {
    let mut c = Checks::new();
    c.check("version is v2", tbs.version == Version::V2, || {
        "a CRL with extensions must be v2".into()
    });
    c.signed_by(
        issuer,
        algorithm,
        &tbs.signature,
        &tbs.issuer,
        "the CRL issuer",
    );
    c.check(
        "issuer may sign CRLs (cRLSign)",
        issuer.key_usage.contains(KeyUsages::CRLSign),
        || "the issuer's key usage lacks cRLSign".into(),
    );
    let this_update = tbs.this_update.to_unix_duration();
    c.check(
        "nextUpdate is present and after thisUpdate",
        tbs.next_update
            .is_some_and(|next| next.to_unix_duration() > this_update),
        || "nextUpdate must be present and later than thisUpdate".into(),
    );
    c.check(
        "thisUpdate lies inside the issuer's validity",
        this_update >= issuer.validity.not_before.to_unix_duration()
            && this_update <= issuer.validity.not_after.to_unix_duration(),
        || {
            format!(
                "thisUpdate {} is outside the issuer's validity",
                tbs.this_update
            )
        },
    );
    let times: Vec<&Time> = std::iter::once(&tbs.this_update)
        .chain(tbs.next_update.as_ref())
        .chain(
            tbs.revoked_certificates
                .iter()
                .flatten()
                .map(|r| &r.revocation_date),
        )
        .collect();
    c.check(
        "times use UTCTime through 2049 and GeneralizedTime after",
        times.iter().all(|t| has_rfc5280_encoding(t)),
        || "a time has the wrong encoding for its year (RFC 5280 5.1.2.4)".into(),
    );
    c.check(
        "each extension appears once",
        unique_extensions(tbs.crl_extensions.as_ref()),
        || "an extension appears more than once".into(),
    );
    let find = |oid| {
        tbs.crl_extensions
            .iter()
            .flatten()
            .find(|ext| ext.extn_id == oid)
    };
    let aki: Option<(AuthorityKeyIdentifier, bool)> =
        decode(find(oids::ID_CE_AUTHORITY_KEY_IDENTIFIER));
    c.check(
        "authorityKeyIdentifier is present, non-critical, the issuer's key identifier",
        aki.as_ref().is_some_and(|(aki, critical)| {
            !*critical && aki.key_identifier.as_ref().map(|id| id.as_bytes()) == Some(issuer.key_identifier.as_slice())
        }),
        || "authorityKeyIdentifier must be present, non-critical and hold the issuer's key identifier".into(),
    );
    let number: Option<(CrlNumber, bool)> = decode(find(oids::ID_CE_CRL_NUMBER));
    c.check(
        "cRLNumber is present, non-critical, at most 20 octets",
        number
            .as_ref()
            .is_some_and(|(n, critical)| !*critical && n.0.as_bytes().len() <= 20),
        || "cRLNumber must be present, non-critical and fit in 20 octets".into(),
    );
    let mut serials = HashSet::new();
    let revoked: Vec<_> = tbs.revoked_certificates.iter().flatten().collect();
    c.check(
        "revoked serials are unique",
        revoked
            .iter()
            .all(|r| serials.insert(r.serial_number.as_bytes().to_vec())),
        || "a serial is listed twice".into(),
    );
    c.check(
        "revocation dates are not after thisUpdate",
        revoked
            .iter()
            .all(|r| r.revocation_date.to_unix_duration() <= this_update),
        || "a revocation date is after thisUpdate".into(),
    );
    c.check(
        "reason codes are present only when meaningful",
        revoked.iter().all(|r| {
            r.crl_entry_extensions.iter().flatten().all(|ext| {
                ext.extn_id == oids::ID_CE_CRL_REASONS
                    && !ext.critical
                    && CrlReason::from_der(ext.extn_value.as_bytes())
                        .is_ok_and(|reason| !matches!(reason, CrlReason::Unspecified | CrlReason::RemoveFromCRL))
            })
        }),
        || "entry extensions must be non-critical reason codes other than unspecified (omit it) and removeFromCRL (delta CRLs only)".into(),
    );
    c.finish(format!("CRL of \"{}\"", tbs.issuer))
}
