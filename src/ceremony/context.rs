//! The state a running ceremony keeps: which one, its outputs, transcript and audit log.

use std::path::{Path, PathBuf};

use super::config::Header;
use super::error::CeremonyError;
use super::output::OutputFiles;
use super::progress::Progress;
use super::transcript::{AuditRecord, ConfigRecord, TokenRecord, Transcript};
use crate::digest::sha256_hex;
use crate::hsm::{Hsm, HsmConfig};
use crate::ledger::audit::{AuditEvent, AuditLog};
use crate::pki::now;

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
    /// A ceremony of `kind` about to run from the config at `config_path` (whose SHA-256 is
    /// `config_sha256`), started at `started_at`.
    pub(super) fn new(
        kind: Kind,
        dry_run: bool,
        config_path: &Path,
        config_sha256: String,
        started_at: String,
        progress: &'a Progress,
    ) -> Self {
        let config_dir = config_path.parent().unwrap_or(Path::new("")).to_owned();
        Context {
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
        }
    }

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
    pub(super) fn finish(mut self) -> Result<Transcript, CeremonyError> {
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
    pub(super) fn record_failure(&mut self, error: &CeremonyError) {
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
