//! Writing output files that must never replace an existing one.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Mode of certificates, public keys and transcripts: anyone may read them.
pub const PUBLIC: u32 = 0o644;
/// Mode of private keys: the owner only, from the moment the file exists.
pub const PRIVATE: u32 = 0o600;

/// Creates `path` with `contents` and `mode`, and syncs it to disk. Fails with
/// [`std::io::ErrorKind::AlreadyExists`] rather than replace a file.
pub fn create_new_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
