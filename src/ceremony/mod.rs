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
mod kinds;
mod output;
mod progress;
mod transcript;

use std::path::{Path, PathBuf};

pub use config::{
    CertificateSpec, CrlConfig, CrossSignConfig, CsrConfig, Header, IntermediateConfig, KeyConfig,
    RootConfig,
};
pub use output::WrittenFile;
pub use progress::Progress;
pub use transcript::Transcript;

use crate::digest::sha256_hex;
use crate::hsm::{Hsm, HsmConfig, HsmError};
use crate::ledger::audit::{AuditError, AuditEvent, AuditLog};
use crate::pki::{PkiError, now};
use output::OutputFiles;
use transcript::{AuditRecord, ConfigRecord, TokenRecord};

/// The ceremonies hsmca knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Generate the root key and its self-signed certificate.
    Root,
    /// Generate a key pair and write its public key.
    Key,
    /// Sign an online intermediate CA certificate with the root key.
    Intermediate,
    /// Sign a new root's subject and key with an existing root key.
    CrossSign,
    /// Make a CSR for an HSM key.
    Csr,
    /// Sign a root CRL.
    Crl,
}

impl Kind {
    /// The name used on the command line and in records.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Root => "root",
            Kind::Key => "key",
            Kind::Intermediate => "intermediate",
            Kind::CrossSign => "cross-sign",
            Kind::Csr => "csr",
            Kind::Crl => "crl",
        }
    }
}

/// Why a ceremony stopped.
#[derive(Debug, thiserror::Error)]
pub enum CeremonyError {
    /// The config file could not be read.
    #[error("cannot read ceremony config {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("ceremony config {path} is invalid: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Where and what.
        message: String,
    },
    /// The config is well-formed but asks for something that cannot be done.
    #[error("{0}")]
    Invalid(String),
    /// An output exists already.
    #[error(
        "output {path} already exists; ceremonies never overwrite: move it away or name a new output"
    )]
    OutputExists {
        /// The file.
        path: PathBuf,
    },
    /// An output could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The HSM refused or failed.
    #[error(transparent)]
    Hsm(#[from] HsmError),
    /// Building, checking or signing failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The audit log could not be used.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// The state of a running ceremony shared by all kinds.
pub(crate) struct Context<'a> {
    kind: Kind,
    dry_run: bool,
    config_dir: PathBuf,
    progress: &'a Progress,
    transcript: Transcript,
    outputs: Option<OutputFiles>,
    transcript_base: PathBuf,
    audit_path: PathBuf,
    audit: Option<(AuditLog, PathBuf)>,
}

impl<'a> Context<'a> {
    /// A path from the config, resolved against the config's directory.
    pub(crate) fn path(&self, path: &Path) -> PathBuf {
        crate::config::resolve(&self.config_dir, path)
    }

    /// Takes the `[ceremony]` header: checks the officers, reserves `outputs` and the
    /// transcript files, and (unless dry-running) opens the audit log.
    pub(crate) fn begin(
        &mut self,
        header: &Header,
        outputs: &[&Path],
    ) -> Result<(), CeremonyError> {
        if header.officers.is_empty() || header.officers.iter().any(|o| o.trim().is_empty()) {
            return Err(CeremonyError::Invalid(
                "`ceremony.officers` must name everyone present; a ceremony has at least one officer".into(),
            ));
        }
        self.transcript.officers = header.officers.clone();
        self.transcript_base = self.path(&header.transcript);
        let mut paths: Vec<PathBuf> = outputs.iter().map(|p| self.path(p)).collect();
        paths.push(self.transcript_path("json"));
        paths.push(self.transcript_path("txt"));
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        self.outputs = Some(OutputFiles::reserve(&refs)?);
        self.progress.done(format!(
            "config accepted: {} officer(s), {} output file(s) free",
            header.officers.len(),
            paths.len()
        ));
        let audit_path = self.path(&header.audit_log);
        self.audit_path = audit_path.clone();
        if self.dry_run {
            if audit_path.exists() {
                let verified = crate::ledger::audit::verify(&audit_path)?;
                self.progress.done(format!(
                    "audit log {} verified: {} record(s), head {}",
                    audit_path.display(),
                    verified.records,
                    verified.head
                ));
            }
        } else {
            if let Some(parent) = audit_path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|source| CeremonyError::Write {
                    path: parent.to_owned(),
                    source,
                })?;
            }
            let log = AuditLog::open(&audit_path)?;
            self.progress.done(format!(
                "audit log {} verified and locked, head {}",
                audit_path.display(),
                log.head()
            ));
            self.audit = Some((log, audit_path));
        }
        Ok(())
    }

    /// The sequence numbers and details of earlier audit records of `event`, oldest first.
    /// Call after [`Context::begin`], which verified the log.
    pub(crate) fn earlier_records(&self, event: &str) -> Vec<(u64, serde_json::Value)> {
        let text = std::fs::read_to_string(&self.audit_path).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|record| record["event"] == event)
            .filter_map(|mut record| Some((record["seq"].as_u64()?, record["details"].take())))
            .collect()
    }

    /// True for `--dry-run`: the caller stops after the rehearsal.
    pub(crate) fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Opens the HSM for the real ceremony.
    pub(crate) fn open_hsm(&mut self, config: &HsmConfig) -> Result<Hsm, CeremonyError> {
        let mut config = config.clone();
        if let Some(pin_file) = &config.pin_file {
            config.pin_file = Some(self.path(pin_file));
        }
        let hsm = Hsm::open(&config)?;
        let token = hsm.token();
        self.progress.done(format!(
            "HSM token \"{}\" (serial {}, {} by {}) logged in",
            token.label, token.serial, token.model, token.manufacturer
        ));
        self.transcript.token = Some(TokenRecord::from(token));
        Ok(hsm)
    }

    /// Writes an output file and reports it.
    pub(crate) fn write(&mut self, path: &Path, contents: &[u8]) -> Result<(), CeremonyError> {
        self.write_resolved(&self.path(path), contents)
    }

    fn write_resolved(&mut self, path: &Path, contents: &[u8]) -> Result<(), CeremonyError> {
        let outputs = self
            .outputs
            .as_mut()
            .expect("begin() reserves the outputs first");
        outputs.write(path, contents)?;
        self.progress.done(format!(
            "wrote {} (sha256 {})",
            path.display(),
            sha256_hex(contents)
        ));
        Ok(())
    }

    /// The transcript being filled in.
    pub(crate) fn transcript(&mut self) -> &mut Transcript {
        &mut self.transcript
    }

    /// The progress display.
    pub(crate) fn progress(&self) -> &Progress {
        self.progress
    }

    fn transcript_path(&self, extension: &str) -> PathBuf {
        let mut path = self.transcript_base.clone().into_os_string();
        path.push(".");
        path.push(extension);
        PathBuf::from(path)
    }

    /// Appends the ceremony's audit record and writes the transcript.
    fn finish(mut self) -> Result<Transcript, CeremonyError> {
        self.transcript.finished_at = now().to_string();
        if let Some(outputs) = &self.outputs {
            self.transcript.outputs = outputs.written().to_vec();
        }
        let (mut log, log_path) = self
            .audit
            .take()
            .expect("a real ceremony holds the audit log");
        let previous_head = log.head().to_owned();
        let details =
            serde_json::to_value(&self.transcript).expect("a transcript always serialises");
        let receipt = log.append(&AuditEvent {
            event: format!("ceremony.{}", self.kind.name()),
            actor: self.transcript.officers.join(", "),
            details,
        })?;
        self.progress.done(format!(
            "audit record #{} appended, new head {}",
            receipt.seq, receipt.hash
        ));
        self.transcript.audit = Some(AuditRecord {
            log: log_path,
            previous_head,
            seq: receipt.seq,
            hash: receipt.hash,
        });
        let json = serde_json::to_string_pretty(&self.transcript)
            .expect("a transcript always serialises")
            + "\n";
        let text = self.transcript.to_text();
        let (json_path, text_path) = (self.transcript_path("json"), self.transcript_path("txt"));
        self.write_resolved(&json_path, json.as_bytes())?;
        self.write_resolved(&text_path, text.as_bytes())?;
        Ok(self.transcript)
    }

    /// Records a failed ceremony in the audit log, when it was opened.
    fn record_failure(&mut self, error: &CeremonyError) {
        if let Some((log, _)) = self.audit.as_mut() {
            let outputs: Vec<_> = self
                .outputs
                .iter()
                .flat_map(|o| o.written().to_vec())
                .collect();
            let details = serde_json::json!({
                "config": self.transcript.config,
                "token": self.transcript.token,
                "keys": self.transcript.keys,
                "outputs": outputs,
                "error": error.to_string(),
            });
            let event = AuditEvent {
                event: format!("ceremony.{}.failed", self.kind.name()),
                actor: self.transcript.officers.join(", "),
                details,
            };
            match log.append(&event) {
                Ok(receipt) => self.progress.say(format!(
                    "  [!!] failure recorded as audit record #{}",
                    receipt.seq
                )),
                Err(e) => self
                    .progress
                    .say(format!("  [!!] the failure could not be audited: {e}")),
            }
        }
    }
}

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
    let config_dir = config_path.parent().unwrap_or(Path::new("")).to_owned();
    let mut context = Context {
        kind,
        dry_run,
        config_dir,
        progress,
        transcript: Transcript {
            ceremony: kind.name(),
            hsmca_version: env!("CARGO_PKG_VERSION"),
            started_at,
            finished_at: String::new(),
            config: ConfigRecord {
                path: config_path.to_owned(),
                sha256: config_sha256,
            },
            officers: Vec::new(),
            token: None,
            keys: Vec::new(),
            certificates: Vec::new(),
            crl: None,
            checks: Vec::new(),
            outputs: Vec::new(),
            audit: None,
        },
        outputs: None,
        transcript_base: PathBuf::new(),
        audit_path: PathBuf::new(),
        audit: None,
    };
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
