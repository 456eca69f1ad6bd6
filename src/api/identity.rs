//! Who is asking: the client identity of a connection, taken once from its verified client
//! certificate (as `server.client_identity` says) and handed to every request on it.

use axum::http::StatusCode;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use super::error::ApiError;
use crate::config::IdentitySource;

/// The client identity of the connection, or why its certificate gives none.
#[derive(Clone, Debug)]
pub enum ClientIdentity {
    /// The identity `[[clients]]` and `[[officers]]` name.
    Known(String),
    /// The connection has no usable identity.
    Unidentified(Unidentified),
}

/// Why a connection has no client identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unidentified {
    /// The client presented no certificate.
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate is not valid DER.
    #[error("the client certificate cannot be parsed: {0}")]
    Unparsable(String),
    /// The certificate has nothing of the kind the identity is taken from.
    #[error("the client certificate has no {} to identify it by", describe(*.0))]
    Missing(IdentitySource),
    /// The certificate has several, and it is not clear which one is the identity.
    #[error("the client certificate has {count} {}s; identity must be unambiguous", describe(*.from))]
    Ambiguous {
        /// What the identity is taken from.
        from: IdentitySource,
        /// How many the certificate has.
        count: usize,
    },
}

impl ClientIdentity {
    /// The identity of a verified client certificate (DER), as `source` defines it.
    pub fn of_certificate(certificate: &[u8], source: IdentitySource) -> Self {
        match client_identity(certificate, source) {
            Ok(identity) => ClientIdentity::Known(identity),
            Err(why) => ClientIdentity::Unidentified(why),
        }
    }

    /// Who the audit log names as the actor: the identity, or `(unidentified)`.
    pub fn actor(&self) -> String {
        match self {
            ClientIdentity::Known(identity) => identity.clone(),
            ClientIdentity::Unidentified(_) => "(unidentified)".into(),
        }
    }

    /// The identity, or the 403 `client_unidentified` that refuses the request.
    pub fn require(&self) -> Result<&str, ApiError> {
        match self {
            ClientIdentity::Known(identity) => Ok(identity),
            ClientIdentity::Unidentified(why) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "client_unidentified",
                why.to_string(),
            )),
        }
    }
}

/// The identity of a verified client certificate, as `source` defines it.
fn client_identity(certificate: &[u8], source: IdentitySource) -> Result<String, Unidentified> {
    if source == IdentitySource::Fingerprint {
        return Ok(crate::digest::sha256_hex(certificate));
    }
    let parsed = x509_cert::Certificate::from_der(certificate)
        .map_err(|e| Unidentified::Unparsable(e.to_string()))?;
    let tbs = &parsed.tbs_certificate;
    let candidates: Vec<String> = match source {
        IdentitySource::CommonName => tbs
            .subject
            .0
            .iter()
            .flat_map(|rdn| rdn.0.iter())
            .filter(|attribute| attribute.oid == const_oid::db::rfc4519::CN)
            .filter_map(|attribute| crate::pki::directory_string(&attribute.value))
            .collect(),
        IdentitySource::UriSan | IdentitySource::DnsSan => {
            let san = crate::pki::find_san(tbs);
            san.iter()
                .flat_map(|san: &SubjectAltName| san.0.iter())
                .filter_map(|name| match (name, source) {
                    (GeneralName::UniformResourceIdentifier(uri), IdentitySource::UriSan) => {
                        Some(uri.to_string())
                    }
                    (GeneralName::DnsName(dns), IdentitySource::DnsSan) => Some(dns.to_string()),
                    _ => None,
                })
                .collect()
        }
        IdentitySource::Fingerprint => unreachable!("handled above"),
    };
    match candidates.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Unidentified::Missing(source)),
        _ => Err(Unidentified::Ambiguous {
            from: source,
            count: candidates.len(),
        }),
    }
}

fn describe(source: IdentitySource) -> &'static str {
    match source {
        IdentitySource::UriSan => "URI SAN",
        IdentitySource::DnsSan => "DNS SAN",
        IdentitySource::CommonName => "subject CN",
        IdentitySource::Fingerprint => "fingerprint",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(cn: &str, sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(value: &str) -> rcgen::SanType {
        rcgen::SanType::URI(value.to_string().try_into().unwrap())
    }

    #[test]
    fn each_identity_source_reads_its_part_and_refuses_ambiguity() {
        let der = certificate(
            "spire-server",
            vec![
                uri("spiffe://td/spire"),
                rcgen::SanType::DnsName("spire.td".try_into().unwrap()),
            ],
        );
        assert_eq!(
            client_identity(&der, IdentitySource::UriSan).unwrap(),
            "spiffe://td/spire"
        );
        assert_eq!(
            client_identity(&der, IdentitySource::DnsSan).unwrap(),
            "spire.td"
        );
        assert_eq!(
            client_identity(&der, IdentitySource::CommonName).unwrap(),
            "spire-server"
        );
        assert_eq!(
            client_identity(&der, IdentitySource::Fingerprint).unwrap(),
            crate::digest::sha256_hex(&der)
        );
        let two = certificate("x", vec![uri("spiffe://td/a"), uri("spiffe://td/b")]);
        assert!(
            client_identity(&two, IdentitySource::UriSan)
                .unwrap_err()
                .to_string()
                .contains("2 URI SANs")
        );
        let none = certificate("x", vec![]);
        assert!(
            client_identity(&none, IdentitySource::UriSan)
                .unwrap_err()
                .to_string()
                .contains("no URI SAN")
        );
    }
}
