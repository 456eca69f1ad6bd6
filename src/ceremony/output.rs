//! Ceremony outputs: every file is checked to be absent before anything happens, then
//! created exclusively, so a ceremony never overwrites an earlier result.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::CeremonyError;
use crate::digest::sha256_hex;

/// A file a ceremony wrote, as the transcript records it.
#[derive(Clone, Debug, Serialize)]
pub struct WrittenFile {
    /// Where.
    pub path: PathBuf,
    /// SHA-256 of the contents.
    pub sha256: String,
}

/// The files a ceremony will write.
pub(crate) struct OutputFiles {
    written: Vec<WrittenFile>,
}

impl OutputFiles {
    /// Refuses when any of `paths` exists already or two of them are the same.
    pub(crate) fn reserve(paths: &[&Path]) -> Result<Self, CeremonyError> {
        for (i, path) in paths.iter().enumerate() {
            if path.symlink_metadata().is_ok() {
                return Err(CeremonyError::OutputExists {
                    path: path.to_path_buf(),
                });
            }
            if paths[..i].contains(path) {
                return Err(CeremonyError::Invalid(format!(
                    "the output {} is named twice; give each output its own file",
                    path.display()
                )));
            }
        }
        Ok(OutputFiles {
            written: Vec::new(),
        })
    }

    /// Creates `path` (never replacing a file), writes `contents` and syncs it to disk.
    pub(crate) fn write(&mut self, path: &Path, contents: &[u8]) -> Result<(), CeremonyError> {
        let io = |source| CeremonyError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        crate::files::create_new_file(path, contents, crate::files::PUBLIC).map_err(|source| {
            match source.kind() {
                std::io::ErrorKind::AlreadyExists => CeremonyError::OutputExists {
                    path: path.to_owned(),
                },
                _ => io(source),
            }
        })?;
        self.written.push(WrittenFile {
            path: path.to_owned(),
            sha256: sha256_hex(contents),
        });
        Ok(())
    }

    /// The files written so far.
    pub(crate) fn written(&self) -> &[WrittenFile] {
        &self.written
    }
}
