//! What can go wrong while building, checking and signing certificates, CRLs and CSRs.

use crate::hsm::HsmError;

/// A PKI failure, with enough context to say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The HSM failed to sign or to produce random bytes.
    #[error(transparent)]
    Hsm(#[from] HsmError),

    /// The to-be-signed object broke our profile or RFC 5280; nothing was signed.
    #[error("{what} fails {} pre-signing check(s), nothing was signed: {}", findings.len(), findings.join("; "))]
    Lint {
        /// What was being checked, e.g. `certificate "CN=Mesh Root"`.
        what: String,
        /// Every failed check, in the order they were run.
        findings: Vec<String>,
    },

    /// The signed object did not pass the checks made after signing.
    #[error(
        "the signed {what} failed its post-signing check: {reason}; it was not written, report this as a defect of the HSM or of hsmca"
    )]
    PostSignCheck {
        /// The kind of object.
        what: &'static str,
        /// What did not match.
        reason: String,
    },

    /// An input certificate, key or value could not be used.
    #[error("{what}: {reason}")]
    Input {
        /// The input and where it came from, e.g. `issuer certificate out/root.pem`.
        what: String,
        /// Why it was refused.
        reason: String,
    },

    /// A software key for a dry run could not be made or used.
    #[error("software key: {0}")]
    SoftwareKey(String),
}

impl PkiError {
    /// An [`PkiError::Input`] error.
    pub fn input(what: impl Into<String>, reason: impl ToString) -> Self {
        PkiError::Input {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}
