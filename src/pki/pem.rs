//! PEM and DER: the encodings certificates, CSRs and CRLs are read and written in.

use std::path::Path;

use super::PkiError;
use crate::hsm::PublicKey;

/// PEM text for DER bytes under `label`.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der)
        .expect("PEM encoding of bytes cannot fail")
}

/// The DER inside `bytes`: a PEM block with one of `labels`, or DER as is.
pub fn pem_or_der(bytes: &[u8], labels: &[&str]) -> Result<Vec<u8>, String> {
    let text = bytes.trim_ascii_start();
    if text.starts_with(b"-----BEGIN") {
        let (found, der) = der::pem::decode_vec(text).map_err(|e| format!("not valid PEM: {e}"))?;
        if !labels.contains(&found) {
            return Err(format!(
                "holds a {found} PEM block, expected {}",
                labels.join(" or ")
            ));
        }
        Ok(der)
    } else {
        Ok(bytes.to_vec())
    }
}

/// Reads a file holding a PEM block with one of `labels`, or DER; `what` names it in errors.
pub fn read_pem_or_der(path: &Path, labels: &[&str], what: &str) -> Result<Vec<u8>, PkiError> {
    let bytes = std::fs::read(path).map_err(|e| PkiError::input(what, e))?;
    pem_or_der(&bytes, labels).map_err(|e| PkiError::input(what, e))
}

/// Reads a public key (PEM `PUBLIC KEY` or DER SubjectPublicKeyInfo), as key ceremonies write
/// them.
pub fn read_public_key(path: &Path) -> Result<PublicKey, PkiError> {
    let what = format!("public key {}", path.display());
    let der = read_pem_or_der(path, &["PUBLIC KEY"], &what)?;
    PublicKey::from_spki_der(&der).map_err(|e| PkiError::input(&what, e))
}
