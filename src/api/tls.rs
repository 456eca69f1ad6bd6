//! The TLS side of the service: rustls with client certificates required and verified
//! against the configured client-CA bundle. The identity taken from a verified certificate
//! is [`super::identity`]'s.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::ServerConfig;

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
