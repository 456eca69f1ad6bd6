//! The TLS side of the service: rustls with client certificates required and verified
//! against the configured client-CA bundle, and the client identity taken from the verified
//! certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use super::config::{IdentitySource, ServerConfig};

/// Reads the certificates of a PEM file; `what` names it in errors.
pub fn read_certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{what} {} holds no CERTIFICATE block",
            path.display()
        ));
    }
    Ok(certificates)
}

/// Reads a private key that only its owner may read; `what` names it in errors.
pub fn read_private_key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{what} {} is readable by group or others (mode {:o}); run chmod 600 on it",
            path.display(),
            mode & 0o777
        ));
    }
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// The rustls server configuration: TLS 1.3 (1.2 when enabled), client certificates
/// required and verified against `client_ca`, HTTP/1.1.
pub fn server_config(
    server: &ServerConfig,
    resolve: impl Fn(&Path) -> std::path::PathBuf,
) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for certificate in read_certificates(&resolve(&server.client_ca), "server.client_ca")? {
        roots
            .add(certificate)
            .map_err(|e| format!("server.client_ca: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("server.client_ca: {e}"))?;
    let versions: &[&rustls::SupportedProtocolVersion] = if server.tls12 {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let chain = read_certificates(&resolve(&server.certificate), "server.certificate")?;
    let key = read_private_key(&resolve(&server.key), "server.key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("server.certificate and server.key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The identity of a verified client certificate, as `source` defines it.
pub fn client_identity(certificate: &[u8], source: IdentitySource) -> Result<String, String> {
    if source == IdentitySource::Fingerprint {
        return Ok(crate::digest::sha256_hex(certificate));
    }
    let parsed = x509_cert::Certificate::from_der(certificate)
        .map_err(|e| format!("the client certificate cannot be parsed: {e}"))?;
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
        [] => Err(format!(
            "the client certificate has no {} to identify it by",
            describe(source)
        )),
        _ => Err(format!(
            "the client certificate has {} {}s; identity must be unambiguous",
            candidates.len(),
            describe(source)
        )),
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
                .contains("2 URI SANs")
        );
        let none = certificate("x", vec![]);
        assert!(
            client_identity(&none, IdentitySource::UriSan)
                .unwrap_err()
                .contains("no URI SAN")
        );
    }
}
