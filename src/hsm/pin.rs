//! The user PIN: loaded from a private file or an environment variable, held in a zeroizing
//! secret, and never printed.

use std::path::Path;

use secrecy::SecretString;
use zeroize::Zeroizing;

use super::config::PinSource;
use super::error::HsmError;

/// A token user PIN. Its `Debug` output is redacted and its memory is wiped on drop.
pub struct Pin(SecretString);

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin([REDACTED])")
    }
}

impl Pin {
    /// Loads the PIN from its configured source.
    pub fn load(source: &PinSource) -> Result<Self, HsmError> {
        match source {
            PinSource::File(path) => Self::from_file(path),
            PinSource::Env(var) => Self::from_env(var),
        }
    }

    fn from_file(path: &Path) -> Result<Self, HsmError> {
        use std::os::unix::fs::PermissionsExt;

        let metadata = std::fs::metadata(path).map_err(|source| HsmError::PinFile {
            path: path.to_owned(),
            source,
        })?;
        let mode = metadata.permissions().mode() & 0o777;
        // A PIN readable by other users is a PIN already disclosed: refuse before reading it.
        if mode & 0o077 != 0 {
            return Err(HsmError::PinFilePermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| HsmError::PinFile {
                    path: path.to_owned(),
                    source,
                })?,
            );
        Self::from_text(&text).ok_or_else(|| HsmError::PinEmpty {
            origin: format!("file {}", path.display()),
        })
    }

    fn from_env(var: &str) -> Result<Self, HsmError> {
        let text = Zeroizing::new(std::env::var(var).map_err(|_| HsmError::PinEnvMissing {
            var: var.to_owned(),
        })?);
        Self::from_text(&text).ok_or_else(|| HsmError::PinEmpty {
            origin: format!("environment variable {var}"),
        })
    }

    /// Strips the line ending editors and `echo` add; an empty PIN is no PIN.
    fn from_text(text: &str) -> Option<Self> {
        let pin = text.trim_end_matches(['\n', '\r']);
        (!pin.is_empty()).then(|| Pin(SecretString::from(pin)))
    }

    pub(crate) fn secret(&self) -> &SecretString {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn pin_file(contents: &str, mode: u32) -> tempfile::TempPath {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), contents).unwrap();
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        file.into_temp_path()
    }

    #[test]
    fn reads_private_file_and_strips_newline() {
        use secrecy::ExposeSecret;
        let path = pin_file("123456\n", 0o600);
        let pin = Pin::load(&PinSource::File(path.to_path_buf())).unwrap();
        assert_eq!(pin.secret().expose_secret(), "123456");
    }

    #[test]
    fn refuses_group_or_world_readable_file() {
        for mode in [0o640, 0o604, 0o644, 0o660] {
            let path = pin_file("123456", mode);
            let err = Pin::load(&PinSource::File(path.to_path_buf())).unwrap_err();
            assert!(
                matches!(err, HsmError::PinFilePermissions { mode: m, .. } if m == mode),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn refuses_empty_pin() {
        let path = pin_file("\n", 0o600);
        let err = Pin::load(&PinSource::File(path.to_path_buf())).unwrap_err();
        assert!(matches!(err, HsmError::PinEmpty { .. }), "{err}");
    }

    #[test]
    fn missing_env_variable_is_named() {
        let err = Pin::load(&PinSource::Env("HSMCA_TEST_SURELY_UNSET_PIN".into())).unwrap_err();
        assert!(
            err.to_string().contains("HSMCA_TEST_SURELY_UNSET_PIN"),
            "{err}"
        );
    }

    #[test]
    fn debug_output_is_redacted() {
        let path = pin_file("987654", 0o600);
        let pin = Pin::load(&PinSource::File(path.to_path_buf())).unwrap();
        let shown = format!("{pin:?}");
        assert!(!shown.contains("987654"), "{shown}");
        assert_eq!(shown, "Pin([REDACTED])");
    }
}
