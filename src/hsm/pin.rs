//! The user PIN: loaded from a private file or an environment variable, held in a zeroizing
//! secret, and never printed.

use secrecy::SecretString;

use super::config::PinSource;
use super::error::HsmError;
use crate::secret::{SecretError, SecretSource};

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
        let source = match source {
            PinSource::File(path) => SecretSource::File(path.clone()),
            PinSource::Env(var) => SecretSource::Env(var.clone()),
        };
        crate::secret::load(&source)
            .map(Pin)
            .map_err(|error| match error {
                SecretError::File { path, source } => HsmError::PinFile { path, source },
                SecretError::Permissions { path, mode } => {
                    HsmError::PinFilePermissions { path, mode }
                }
                SecretError::EnvMissing { var } => HsmError::PinEnvMissing { var },
                SecretError::Empty { origin } => HsmError::PinEmpty { origin },
            })
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
