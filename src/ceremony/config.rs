//! Ceremony configuration files: one strict TOML file per ceremony.
//!
//! Every key is known (anything else is an error with its line and column), every certificate
//! field is spelled out, and the PIN is never here: only a PIN file path or the name of an
//! environment variable, in `[hsm]`. Relative paths are relative to the config file.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::value::{Datetime, Offset};
use x509_cert::time::Time;

use super::error::CeremonyError;
use crate::hsm::{HsmConfig, KeyType, SignatureAlgorithm};
use crate::pki::{CaKeyUsage, RevocationReason, SubjectSpec, x509_time};

/// `[ceremony]`: who is present and where the records go.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The officers and witnesses present, as they will sign the transcript.
    pub officers: Vec<String>,
    /// The hash-chained audit log shared with the service.
    pub audit_log: PathBuf,
    /// The transcript path without extension: `.json` and `.txt` are written.
    pub transcript: PathBuf,
}

/// `[key]` of `root` and `key` ceremonies: a key pair to generate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// The label the key pair gets in the HSM; it must not exist yet.
    pub label: String,
    /// The key type.
    #[serde(rename = "type")]
    pub key_type: KeyType,
}

/// `[key]` of a `csr` ceremony: an existing key and the public key it must have.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExistingKey {
    /// The key pair's label in the HSM.
    pub label: String,
    /// A `PUBLIC KEY` PEM (or DER) the key must match.
    pub public_key: PathBuf,
}

/// `[issuer]`: the CA that signs, by certificate and HSM key label.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerRef {
    /// The issuer's certificate (PEM or DER).
    pub certificate: PathBuf,
    /// The issuer key's label in the HSM; the key must match the certificate.
    pub key_label: String,
}

/// `[certificate]`: every field of the CA certificate to sign.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// The subject (a cross-signed root takes its subject from the new root instead).
    pub subject: Option<SubjectSpec>,
    /// `notBefore`: a TOML date (midnight UTC) or date-time in UTC.
    pub not_before: Datetime,
    /// `notAfter`.
    pub not_after: Datetime,
    /// The algorithm the issuer key signs with.
    pub signature_algorithm: SignatureAlgorithm,
    /// The key usages: `key-cert-sign` and usually `crl-sign`.
    pub key_usage: Vec<CaKeyUsage>,
    /// The path length constraint (intermediates default to 1; roots to none).
    pub path_length: Option<u8>,
    /// Permitted URI name constraints: host names such as a SPIFFE trust domain.
    #[serde(default)]
    pub permitted_uri_domains: Vec<String>,
    /// Permitted DNS name constraints.
    #[serde(default)]
    pub permitted_dns_domains: Vec<String>,
    /// CRL distribution point URLs (http://).
    #[serde(default)]
    pub crl_distribution_points: Vec<String>,
    /// Where the issuer's certificate can be fetched (AIA caIssuers, http://).
    #[serde(default)]
    pub ca_issuers: Vec<String>,
}

/// `[subject]` of an `intermediate` ceremony.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectKey {
    /// The `PUBLIC KEY` PEM of the key to certify (from a `key` ceremony).
    pub public_key: PathBuf,
}

/// `[subject]` of a `cross-sign` ceremony.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectCertificate {
    /// The new root's self-signed certificate; its subject and key are cross-signed.
    pub certificate: PathBuf,
}

/// `[csr]`: the request's content.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrSpec {
    /// The subject.
    pub subject: SubjectSpec,
    /// The algorithm the key signs the request with.
    pub signature_algorithm: SignatureAlgorithm,
}

/// `[crl]`: the CRL's content.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlSpec {
    /// The CRL number: larger than any earlier CRL of this issuer.
    pub number: u64,
    /// `thisUpdate`.
    pub this_update: Datetime,
    /// `nextUpdate`.
    pub next_update: Datetime,
    /// The algorithm the issuer key signs with.
    pub signature_algorithm: SignatureAlgorithm,
    /// The revoked certificates; may be empty.
    #[serde(default)]
    pub revoked: Vec<RevokedSpec>,
}

/// One `[[crl.revoked]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedSpec {
    /// The revoked certificate; it must have been issued by the CRL's issuer.
    pub certificate: PathBuf,
    /// Why it was revoked.
    pub reason: RevocationReason,
    /// When it was revoked.
    pub revoked_at: Datetime,
}

/// `[outputs]` of a `root` ceremony.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootOutputs {
    /// The self-signed certificate (PEM).
    pub certificate: PathBuf,
    /// The public key (PEM).
    pub public_key: PathBuf,
}

/// `[outputs]` of a `key` ceremony.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyOutputs {
    /// The public key (PEM).
    pub public_key: PathBuf,
}

/// `[outputs]` of `intermediate` and `cross-sign` ceremonies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateOutputs {
    /// The signed certificate (PEM).
    pub certificate: PathBuf,
}

/// `[outputs]` of a `csr` ceremony.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrOutputs {
    /// The request (PEM).
    pub csr: PathBuf,
}

/// `[outputs]` of a `crl` ceremony.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlOutputs {
    /// The CRL (PEM).
    pub crl: PathBuf,
}

/// `hsmca ceremony root`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootConfig {
    /// Officers and records.
    pub ceremony: Header,
    /// The HSM.
    pub hsm: HsmConfig,
    /// The root key to generate.
    pub key: NewKey,
    /// The self-signed certificate.
    pub certificate: CertificateSpec,
    /// Output files.
    pub outputs: RootOutputs,
}

/// `hsmca ceremony key`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Officers and records.
    pub ceremony: Header,
    /// The HSM.
    pub hsm: HsmConfig,
    /// The key to generate.
    pub key: NewKey,
    /// Output files.
    pub outputs: KeyOutputs,
}

/// `hsmca ceremony intermediate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntermediateConfig {
    /// Officers and records.
    pub ceremony: Header,
    /// The HSM.
    pub hsm: HsmConfig,
    /// The signing CA.
    pub issuer: IssuerRef,
    /// The key to certify.
    pub subject: SubjectKey,
    /// The certificate.
    pub certificate: CertificateSpec,
    /// Output files.
    pub outputs: CertificateOutputs,
}

/// `hsmca ceremony cross-sign`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossSignConfig {
    /// Officers and records.
    pub ceremony: Header,
    /// The HSM.
    pub hsm: HsmConfig,
    /// The existing root that signs.
    pub issuer: IssuerRef,
    /// The new root.
    pub subject: SubjectCertificate,
    /// The cross certificate.
    pub certificate: CertificateSpec,
    /// Output files.
    pub outputs: CertificateOutputs,
}

/// `hsmca ceremony csr`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrConfig {
    /// Officers and records.
    pub ceremony: Header,
    /// The HSM.
    pub hsm: HsmConfig,
    /// The key that requests.
    pub key: ExistingKey,
    /// The request.
    pub csr: CsrSpec,
    /// Output files.
    pub outputs: CsrOutputs,
}

/// `hsmca ceremony crl`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlConfig {
    /// Officers and records.
    pub ceremony: Header,
    /// The HSM.
    pub hsm: HsmConfig,
    /// The CA whose CRL this is.
    pub issuer: IssuerRef,
    /// The CRL.
    pub crl: CrlSpec,
    /// Output files.
    pub outputs: CrlOutputs,
}

/// Parses a ceremony config, naming line and column of the first problem.
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(
    path: &Path,
    text: &str,
) -> Result<T, CeremonyError> {
    toml::from_str(text).map_err(|e| CeremonyError::Config {
        path: path.to_owned(),
        message: crate::config::describe_toml_error(text, &e),
    })
}

/// A TOML date (midnight UTC) or UTC date-time, as a certificate or CRL time in the encoding
/// RFC 5280 asks for; `field` names it in errors.
pub(crate) fn x509_time_of(field: &str, value: &Datetime) -> Result<Time, CeremonyError> {
    let invalid = |reason: String| CeremonyError::Invalid(format!("`{field}` = {value}{reason}"));
    let date = value.date.ok_or_else(|| invalid(" has no date".into()))?;
    let utc_offset = matches!(
        value.offset,
        Some(Offset::Z | Offset::Custom { minutes: 0 })
    );
    let plain_date = value.offset.is_none() && value.time.is_none();
    if !(utc_offset || plain_date) {
        return Err(invalid(
            " must be a date (2026-12-01) or a UTC date-time ending in Z (2026-12-01T00:00:00Z)"
                .into(),
        ));
    }
    let time = value.time.unwrap_or(toml::value::Time {
        hour: 0,
        minute: 0,
        second: 0,
        nanosecond: 0,
    });
    if time.nanosecond != 0 {
        return Err(invalid(": certificates hold whole seconds only".into()));
    }
    let date_time = der::DateTime::new(
        date.year,
        date.month,
        date.day,
        time.hour,
        time.minute,
        time.second,
    )
    .map_err(|e| invalid(format!(": {e}")))?;
    Ok(x509_time(date_time)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time_of(text: &str) -> Result<String, String> {
        let value: Datetime = text.parse().unwrap();
        x509_time_of("f", &value)
            .map(|t| t.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn dates_and_utc_date_times_are_accepted_and_nothing_else() {
        assert_eq!(time_of("2026-12-01").unwrap(), "2026-12-01T00:00:00Z");
        assert_eq!(
            time_of("2026-12-01T10:20:30Z").unwrap(),
            "2026-12-01T10:20:30Z"
        );
        assert_eq!(
            time_of("2026-12-01T10:20:30+00:00").unwrap(),
            "2026-12-01T10:20:30Z"
        );
        for bad in [
            "2026-12-01T10:20:30",
            "2026-12-01T10:20:30+01:00",
            "10:20:30",
        ] {
            let err = time_of(bad).unwrap_err();
            assert!(err.starts_with(&format!("`f` = {bad}")), "{err}");
        }
        assert!(
            time_of("2026-12-01T10:20:30.5Z")
                .unwrap_err()
                .contains("whole seconds")
        );
    }
}
