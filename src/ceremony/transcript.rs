//! The ceremony transcript: a JSON record for machines and a text the officers sign on paper.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::output::WrittenFile;
use crate::hsm::{HsmKey, TokenDescription};
use crate::pki::{CaCertificate, key_identifier};

/// Everything that happened in one ceremony.
#[derive(Clone, Debug, Serialize)]
pub struct Transcript {
    /// The ceremony kind, e.g. `root`.
    pub ceremony: &'static str,
    /// The hsmca version that ran it.
    pub hsmca_version: &'static str,
    /// When it started (UTC).
    pub started_at: String,
    /// When it finished (UTC).
    pub finished_at: String,
    /// The config file and its SHA-256.
    pub config: ConfigRecord,
    /// The officers named in the config.
    pub officers: Vec<String>,
    /// The token used.
    pub token: Option<TokenRecord>,
    /// The keys generated or used.
    pub keys: Vec<KeyRecord>,
    /// The certificates read or produced.
    pub certificates: Vec<CertificateRecord>,
    /// The CRL produced, if any.
    pub crl: Option<CrlRecord>,
    /// The pre-signing checks that passed.
    pub checks: Vec<String>,
    /// The files written.
    pub outputs: Vec<WrittenFile>,
    /// The audit record of this ceremony.
    pub audit: Option<AuditRecord>,
}

/// The config file.
#[derive(Clone, Debug, Serialize)]
pub struct ConfigRecord {
    /// Its path.
    pub path: PathBuf,
    /// SHA-256 of its bytes.
    pub sha256: String,
}

/// The token.
#[derive(Clone, Debug, Serialize)]
pub struct TokenRecord {
    /// Label.
    pub label: String,
    /// Serial number.
    pub serial: String,
    /// Model.
    pub model: String,
    /// Manufacturer.
    pub manufacturer: String,
}

impl From<&TokenDescription> for TokenRecord {
    fn from(token: &TokenDescription) -> Self {
        TokenRecord {
            label: token.label.clone(),
            serial: token.serial.clone(),
            model: token.model.clone(),
            manufacturer: token.manufacturer.clone(),
        }
    }
}

/// A key pair in the HSM.
#[derive(Clone, Debug, Serialize)]
pub struct KeyRecord {
    /// `generated`, `signing` or `requesting`.
    pub role: &'static str,
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID` in hex.
    pub id: String,
    /// The key type.
    pub key_type: String,
    /// SHA-256 of the SubjectPublicKeyInfo.
    pub public_key_sha256: String,
}

impl KeyRecord {
    /// Describes `key` in `role`.
    pub fn new(role: &'static str, key: &HsmKey) -> Self {
        KeyRecord {
            role,
            label: key.label().to_owned(),
            id: hex::encode(key.id()),
            key_type: key.key_type().to_string(),
            public_key_sha256: key.public_key().sha256_fingerprint(),
        }
    }
}

/// A certificate.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateRecord {
    /// `issued`, `issuer`, `subject` or `revoked`.
    pub role: &'static str,
    /// Subject name (RFC 4514).
    pub subject: String,
    /// Issuer name.
    pub issuer: String,
    /// Serial number in hex.
    pub serial: String,
    /// `notBefore`.
    pub not_before: String,
    /// `notAfter`.
    pub not_after: String,
    /// Subject key identifier in hex.
    pub key_identifier: String,
    /// SHA-256 of the DER certificate.
    pub sha256: String,
    /// SHA-256 of the SubjectPublicKeyInfo.
    pub public_key_sha256: String,
}

impl CertificateRecord {
    /// Describes `certificate` in `role`.
    pub fn new(role: &'static str, certificate: &CaCertificate) -> Self {
        let tbs = &certificate.certificate().tbs_certificate;
        CertificateRecord {
            role,
            subject: tbs.subject.to_string(),
            issuer: tbs.issuer.to_string(),
            serial: certificate.serial_hex(),
            not_before: tbs.validity.not_before.to_string(),
            not_after: tbs.validity.not_after.to_string(),
            key_identifier: hex::encode(key_identifier(certificate.public_key())),
            sha256: certificate.sha256_fingerprint(),
            public_key_sha256: certificate.public_key().sha256_fingerprint(),
        }
    }
}

/// A CRL.
#[derive(Clone, Debug, Serialize)]
pub struct CrlRecord {
    /// The CRL number.
    pub number: u64,
    /// `thisUpdate`.
    pub this_update: String,
    /// `nextUpdate`.
    pub next_update: String,
    /// The revoked serials (hex) with their reasons.
    pub revoked: Vec<(String, String)>,
    /// SHA-256 of the DER CRL.
    pub sha256: String,
}

/// Where the ceremony's audit record sits in the chain.
#[derive(Clone, Debug, Serialize)]
pub struct AuditRecord {
    /// The log.
    pub log: PathBuf,
    /// The head before this ceremony.
    pub previous_head: String,
    /// The record's sequence number.
    pub seq: u64,
    /// The record's hash: the new head.
    pub hash: String,
}

impl Transcript {
    /// The text the officers read and sign.
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(t, "HSMCA KEY CEREMONY TRANSCRIPT: {}", self.ceremony);
        let _ = writeln!(t, "{}", "=".repeat(72));
        let _ = writeln!(t, "hsmca version:  {}", self.hsmca_version);
        let _ = writeln!(t, "started (UTC):  {}", self.started_at);
        let _ = writeln!(t, "finished (UTC): {}", self.finished_at);
        let _ = writeln!(t, "config:         {}", self.config.path.display());
        let _ = writeln!(t, "config SHA-256: {}", self.config.sha256);
        if let Some(token) = &self.token {
            let _ = writeln!(
                t,
                "token:          \"{}\" serial {} ({} by {})",
                token.label, token.serial, token.model, token.manufacturer
            );
        }
        for key in &self.keys {
            let _ = writeln!(t, "\nKEY ({})", key.role);
            let _ = writeln!(t, "  label:              {}", key.label);
            let _ = writeln!(t, "  id:                 {}", key.id);
            let _ = writeln!(t, "  type:               {}", key.key_type);
            let _ = writeln!(t, "  public key SHA-256: {}", key.public_key_sha256);
        }
        for cert in &self.certificates {
            let _ = writeln!(t, "\nCERTIFICATE ({})", cert.role);
            let _ = writeln!(t, "  subject:            {}", cert.subject);
            let _ = writeln!(t, "  issuer:             {}", cert.issuer);
            let _ = writeln!(t, "  serial:             {}", cert.serial);
            let _ = writeln!(
                t,
                "  valid:              {} .. {}",
                cert.not_before, cert.not_after
            );
            let _ = writeln!(t, "  key identifier:     {}", cert.key_identifier);
            let _ = writeln!(t, "  public key SHA-256: {}", cert.public_key_sha256);
            let _ = writeln!(t, "  SHA-256:            {}", cert.sha256);
        }
        if let Some(crl) = &self.crl {
            let _ = writeln!(t, "\nCRL number {}", crl.number);
            let _ = writeln!(t, "  this update: {}", crl.this_update);
            let _ = writeln!(t, "  next update: {}", crl.next_update);
            for (serial, reason) in &crl.revoked {
                let _ = writeln!(t, "  revoked:     {serial} ({reason})");
            }
            let _ = writeln!(t, "  SHA-256:     {}", crl.sha256);
        }
        let _ = writeln!(t, "\nPRE-SIGNING CHECKS PASSED ({})", self.checks.len());
        for check in &self.checks {
            let _ = writeln!(t, "  - {check}");
        }
        let _ = writeln!(t, "\nOUTPUT FILES");
        for file in &self.outputs {
            let _ = writeln!(t, "  {}\n    SHA-256: {}", file.path.display(), file.sha256);
        }
        if let Some(audit) = &self.audit {
            let _ = writeln!(t, "\nAUDIT LOG {}", audit.log.display());
            let _ = writeln!(t, "  previous head: {}", audit.previous_head);
            let _ = writeln!(t, "  record:        #{}", audit.seq);
            let _ = writeln!(t, "  new head:      {}", audit.hash);
        }
        let _ = writeln!(
            t,
            "\nOFFICERS: by signing, each confirms the values above match the screen.\n"
        );
        for officer in &self.officers {
            let _ = writeln!(
                t,
                "  {officer}\n  signature: ______________________  date: ____________\n"
            );
        }
        t
    }
}
