//! Secrets from the configuration (the token PIN, the database password): read from a file
//! only its owner can read, or from an environment variable, into a zeroizing
//! [`SecretString`]; never echoed in an error.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use zeroize::Zeroizing;

/// Where a secret comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// A file, mode 0600 or stricter.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

/// Why a secret could not be read. Holds no part of the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Others may read the file.
    #[error("{path} is readable by other users (mode {mode:o}); restrict it with chmod 600 {path}")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The variable is not set.
    #[error("environment variable {var} is not set")]
    EnvMissing {
        /// The variable.
        var: String,
    },
    /// The source holds nothing (or only a line ending).
    #[error("{origin} is empty")]
    Empty {
        /// `file PATH` or `environment variable VAR`.
        origin: String,
    },
}

/// Reads the secret from `source`; the line ending an editor or `echo` adds is stripped.
pub fn load(source: &SecretSource) -> Result<SecretString, SecretError> {
    let (text, origin) = match source {
        SecretSource::File(path) => (from_file(path)?, format!("file {}", path.display())),
        SecretSource::Env(var) => (
            Zeroizing::new(
                std::env::var(var).map_err(|_| SecretError::EnvMissing { var: var.clone() })?,
            ),
            format!("environment variable {var}"),
        ),
    };
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(SecretError::Empty { origin });
    }
    Ok(SecretString::from(secret))
}

fn from_file(path: &Path) -> Result<Zeroizing<String>, SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |source| SecretError::File {
        path: path.to_owned(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(unreadable)?
        .permissions()
        .mode()
        & 0o777;
    // A secret readable by other users is a secret already disclosed: refuse before reading.
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(Zeroizing::new(
        std::fs::read_to_string(path).map_err(unreadable)?,
    ))
}
