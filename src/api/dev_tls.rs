//! Development TLS material for the API: a throwaway TLS CA (its key is never written), a
//! server certificate for `localhost` and `127.0.0.1`, and client certificates whose URI SAN
//! is the client identity. For the quick start and tests only; production TLS certificates
//! come from the operator's own PKI.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::files::{PRIVATE, PUBLIC, create_new_file};

/// Writes `tls-ca.pem`, `server.pem`, `server-key.pem` and, for each `(name, uri)` client,
/// `<name>.pem` and `<name>-key.pem` into `dir`. Existing files are never replaced.
pub fn write(dir: &Path, clients: &[(String, String)]) -> Result<Vec<PathBuf>, String> {
    let failed = |e: rcgen::Error| format!("cannot make the development TLS material: {e}");
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(
        DnType::CommonName,
        "hsmca development TLS CA (not for production)",
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(failed)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut written = Vec::new();
    let mut write = |name: &str, contents: String, mode: u32| -> Result<(), String> {
        let path = dir.join(name);
        create_new_file(&path, contents.as_bytes(), mode)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        written.push(path);
        Ok(())
    };
    write("tls-ca.pem", ca_cert.pem(), PUBLIC)?;

    let leaf = |cn: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let certificate = params.signed_by(&key, &issuer)?;
        Ok::<_, rcgen::Error>((certificate.pem(), key.serialize_pem()))
    };
    let (server, server_key) = leaf(
        "localhost",
        vec![
            SanType::DnsName("localhost".try_into().map_err(failed)?),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ],
        ExtendedKeyUsagePurpose::ServerAuth,
    )
    .map_err(failed)?;
    write("server-key.pem", server_key, PRIVATE)?;
    write("server.pem", server, PUBLIC)?;
    for (name, uri) in clients {
        let (certificate, key) = leaf(
            name,
            vec![SanType::URI(
                uri.clone()
                    .try_into()
                    .map_err(|_| format!("{uri:?} is not a URI"))?,
            )],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
        .map_err(failed)?;
        write(&format!("{name}-key.pem"), key, PRIVATE)?;
        write(&format!("{name}.pem"), certificate, PUBLIC)?;
    }
    Ok(written)
}
