//! Key ceremonies: security officers manage the root and online intermediate keys only
//! through these, one strict config file per ceremony.
//!
//! Every ceremony runs the same way:
//! 1. the config is parsed (unknown keys refused) and every output, transcript included, is
//!    checked to be absent;
//! 2. a rehearsal runs every build, check and signature with throwaway software keys, so a
//!    config mistake is caught before the HSM is touched (`--dry-run` stops here);
//! 3. the audit log is verified and locked, the HSM opened, the keys found by label *and*
//!    public key, and the real objects checked, signed in the HSM and checked again;
//! 4. outputs are written exclusively, the audit record appended, and the transcript
//!    (JSON + text to sign) written. A failure after step 3 began is audited too.

mod config;
mod context;
mod error;
mod kinds;
mod output;
mod progress;
mod transcript;

use std::path::Path;

pub use config::{
    CertificateSpec, CrlConfig, CrossSignConfig, CsrConfig, Header, IntermediateConfig, KeyConfig,
    RootConfig,
};
use context::Context;
pub use context::Kind;
pub use error::CeremonyError;
pub use output::WrittenFile;
pub use progress::Progress;
pub use transcript::Transcript;

use crate::digest::sha256_hex;
use crate::pki::now;

/// Runs the ceremony `kind` from the config at `config_path`. Returns the transcript, or
/// `None` after a successful dry run (which writes nothing and never loads the HSM module).
pub fn run(
    kind: Kind,
    config_path: &Path,
    dry_run: bool,
    progress: &Progress,
) -> Result<Option<Transcript>, CeremonyError> {
    let started_at = now().to_string();
    let bytes = std::fs::read(config_path).map_err(|source| CeremonyError::ReadConfig {
        path: config_path.to_owned(),
        source,
    })?;
    let text = String::from_utf8(bytes.clone()).map_err(|_| CeremonyError::Config {
        path: config_path.to_owned(),
        message: "the file is not UTF-8 text".into(),
    })?;
    let config_sha256 = sha256_hex(&bytes);
    progress.say(format!(
        "hsmca ceremony {}{}: {} (sha256 {config_sha256})",
        kind.name(),
        if dry_run { " --dry-run" } else { "" },
        config_path.display()
    ));
    let mut context = Context::new(
        kind,
        dry_run,
        config_path,
        config_sha256,
        started_at,
        progress,
    );
    let result = match kind {
        Kind::Root => config::parse(config_path, &text).and_then(|c| kinds::root(c, &mut context)),
        Kind::Key => config::parse(config_path, &text).and_then(|c| kinds::key(c, &mut context)),
        Kind::Intermediate => {
            config::parse(config_path, &text).and_then(|c| kinds::intermediate(c, &mut context))
        }
        Kind::CrossSign => {
            config::parse(config_path, &text).and_then(|c| kinds::cross_sign(c, &mut context))
        }
        Kind::Csr => config::parse(config_path, &text).and_then(|c| kinds::csr(c, &mut context)),
        Kind::Crl => config::parse(config_path, &text).and_then(|c| kinds::crl(c, &mut context)),
    };
    match result {
        Err(error) => {
            context.record_failure(&error);
            Err(error)
        }
        Ok(()) if dry_run => {
            progress.say("dry run passed: every check succeeded with throwaway software keys; the HSM was not touched and nothing was written");
            Ok(None)
        }
        Ok(()) => {
            let transcript = context.finish()?;
            progress.say(format!("ceremony {} complete", kind.name()));
            Ok(Some(transcript))
        }
    }
}
