//! The six ceremonies. Each one rehearses with throwaway software keys first, returns
//! there on `--dry-run`, and only then opens the HSM.

use std::path::Path;

use x509_cert::name::Name;

use super::config::{
    CertificateSpec, CrlConfig, CrossSignConfig, CsrConfig, IntermediateConfig, IssuerRef,
    KeyConfig, RootConfig, x509_time_of,
};
use super::context::Context;
use super::error::CeremonyError;
use super::transcript::{CertificateRecord, CrlRecord, KeyRecord};
use crate::digest::sha256_hex;
use crate::hsm::{Hsm, HsmKey, KeyType, PublicKey, SignatureAlgorithm};
use crate::pki::{
    CaCertificate, CaTemplate, CrlTemplate, CsrTemplate, HsmSigner, Issued, Issuer, PkiError,
    RevokedEntry, Signer, SoftwareKey, key_identifier, read_pem_or_der, read_public_key, to_pem,
    verify_signed,
};

/// `hsmca ceremony root`: a root key pair in the HSM and its self-signed certificate.
pub(crate) fn root(config: RootConfig, ctx: &mut Context) -> Result<(), CeremonyError> {
    let outputs = &config.outputs;
    ctx.begin(
        &config.ceremony,
        &[&outputs.certificate, &outputs.public_key],
    )?;
    let spec = &config.certificate;
    let subject = required_subject(spec)?;
    warn_interop(ctx, config.key.key_type, spec.signature_algorithm);

    let rehearsal_key = software_key(ctx, config.key.key_type)?;
    let template = ca_template(
        spec,
        subject.clone(),
        rehearsal_key.public_key().clone(),
        None,
    )?;
    rehearsed(
        ctx,
        "self-signed root certificate",
        template.issue(&template.as_own_issuer(), &rehearsal_key)?,
    );
    if ctx.dry_run() {
        return Ok(());
    }

    let hsm = ctx.open_hsm(&config.hsm)?;
    let (label, key_type) = (&config.key.label, config.key.key_type);
    let key = ctx.progress().spin(
        &format!("generating {key_type} key \"{label}\" in the HSM"),
        || hsm.generate_key(label, key_type),
    )?;
    report_key(ctx, "generated", &key);
    let public_key_pem = key.public_key().to_pem();
    let template = ca_template(spec, subject, key.public_key().clone(), None)?;
    let issued = template.issue(&template.as_own_issuer(), &HsmSigner::new(&hsm, key))?;
    report_issued(ctx, &issued);
    ctx.write(&outputs.certificate, issued.certificate.to_pem().as_bytes())?;
    ctx.write(&outputs.public_key, public_key_pem.as_bytes())
}

/// `hsmca ceremony key`: a key pair in the HSM, e.g. for an online intermediate.
pub(crate) fn key(config: KeyConfig, ctx: &mut Context) -> Result<(), CeremonyError> {
    ctx.begin(&config.ceremony, &[&config.outputs.public_key])?;
    let (label, key_type) = (&config.key.label, config.key.key_type);
    warn_interop(ctx, key_type, key_type.default_algorithm());
    let rehearsal_key = software_key(ctx, key_type)?;
    let challenge = b"hsmca key ceremony rehearsal";
    let algorithm = key_type.default_algorithm();
    let signature = rehearsal_key.sign(algorithm, challenge)?;
    if !rehearsal_key
        .public_key()
        .verify(algorithm, challenge, &signature)
    {
        return Err(
            PkiError::SoftwareKey("the rehearsal key's signature does not verify".into()).into(),
        );
    }
    ctx.progress()
        .done(format!("rehearsal: a {key_type} key signs and verifies"));
    if ctx.dry_run() {
        return Ok(());
    }

    let hsm = ctx.open_hsm(&config.hsm)?;
    let key = ctx.progress().spin(
        &format!("generating {key_type} key \"{label}\" in the HSM"),
        || hsm.generate_key(label, key_type),
    )?;
    // Lookup by label and public key signs a challenge and verifies it on the host.
    let found = hsm.find_key(label, Some(key.public_key()))?;
    ctx.progress()
        .done("the new key signs a challenge that verifies on the host");
    report_key(ctx, "generated", &found);
    ctx.write(
        &config.outputs.public_key,
        found.public_key().to_pem().as_bytes(),
    )
}

/// `hsmca ceremony intermediate`: the root key certifies an online intermediate's key.
pub(crate) fn intermediate(
    config: IntermediateConfig,
    ctx: &mut Context,
) -> Result<(), CeremonyError> {
    ctx.begin(&config.ceremony, &[&config.outputs.certificate])?;
    let issuer = read_issuer(ctx, &config.issuer)?;
    let public_key = read_public_key(&ctx.path(&config.subject.public_key))?;
    let spec = &config.certificate;
    let template = ca_template(spec, required_subject(spec)?, public_key, Some(1))?;
    warn_interop(
        ctx,
        template.public_key.key_type(),
        spec.signature_algorithm,
    );
    sign_certificate(
        ctx,
        &config.hsm,
        &config.issuer,
        &issuer,
        &template,
        &config.outputs.certificate,
    )
}

/// `hsmca ceremony cross-sign`: an existing root certifies a new root's subject and key.
pub(crate) fn cross_sign(config: CrossSignConfig, ctx: &mut Context) -> Result<(), CeremonyError> {
    ctx.begin(&config.ceremony, &[&config.outputs.certificate])?;
    let issuer = read_issuer(ctx, &config.issuer)?;
    let new_root_path = ctx.path(&config.subject.certificate);
    let new_root = CaCertificate::from_file(&new_root_path)?;
    let what = format!("new root {}", new_root_path.display());
    if !new_root.is_self_issued() {
        return Err(PkiError::input(
            what,
            "is not self-signed; cross-sign the new root's own certificate",
        )
        .into());
    }
    verify_signed(new_root.der(), new_root.public_key()).map_err(|e| PkiError::input(&what, e))?;
    if new_root.public_key() == issuer.public_key() {
        return Err(PkiError::input(
            what,
            "has the issuer's own key; a cross-signature needs a different root",
        )
        .into());
    }
    ctx.transcript()
        .certificates
        .push(CertificateRecord::new("subject", &new_root));
    let spec = &config.certificate;
    if spec.subject.is_some() {
        return Err(CeremonyError::Invalid(
            "`certificate.subject` must be absent for cross-sign: the subject is the new root's, byte for byte".into(),
        ));
    }
    let path_length = new_root
        .basic_constraints()
        .and_then(|bc| bc.path_len_constraint);
    let template = ca_template(
        spec,
        new_root.subject().clone(),
        new_root.public_key().clone(),
        path_length,
    )?;
    sign_certificate(
        ctx,
        &config.hsm,
        &config.issuer,
        &issuer,
        &template,
        &config.outputs.certificate,
    )
}

/// `hsmca ceremony csr`: a request for an HSM key, to chain the mesh root under another CA.
pub(crate) fn csr(config: CsrConfig, ctx: &mut Context) -> Result<(), CeremonyError> {
    ctx.begin(&config.ceremony, &[&config.outputs.csr])?;
    let expected = read_public_key(&ctx.path(&config.key.public_key))?;
    let template = CsrTemplate {
        subject: config.csr.subject.to_name()?,
        signature_algorithm: config.csr.signature_algorithm,
    };
    warn_interop(ctx, expected.key_type(), template.signature_algorithm);
    let rehearsal_key = software_key(ctx, expected.key_type())?;
    template.issue(&rehearsal_key)?;
    ctx.progress()
        .done("rehearsal: request built, signed and verified");
    if ctx.dry_run() {
        return Ok(());
    }

    let hsm = ctx.open_hsm(&config.hsm)?;
    let key = find_key(ctx, &hsm, "requesting", &config.key.label, &expected)?;
    let der = template.issue(&HsmSigner::new(&hsm, key))?;
    ctx.transcript()
        .checks
        .push("CSR signature verified with the requesting key".into());
    ctx.progress().done(format!(
        "HSM signed the request; signature verified (sha256 {})",
        sha256_hex(&der)
    ));
    ctx.write(
        &config.outputs.csr,
        to_pem("CERTIFICATE REQUEST", &der).as_bytes(),
    )
}

/// `hsmca ceremony crl`: a CRL from a CA key, revoking the certificates it lists.
pub(crate) fn crl(config: CrlConfig, ctx: &mut Context) -> Result<(), CeremonyError> {
    ctx.begin(&config.ceremony, &[&config.outputs.crl])?;
    let issuer = read_issuer(ctx, &config.issuer)?;
    let spec = &config.crl;
    check_crl_number(ctx, &issuer, spec.number)?;
    let mut revoked = Vec::new();
    for entry in &spec.revoked {
        let path = ctx.path(&entry.certificate);
        let what = format!("revoked certificate {}", path.display());
        let der = read_pem_or_der(&path, &["CERTIFICATE"], &what)?;
        let certificate = <x509_cert::Certificate as der::Decode>::from_der(&der)
            .map_err(|e| PkiError::input(&what, e))?;
        if certificate.tbs_certificate.issuer != *issuer.subject() {
            return Err(PkiError::input(
                what,
                format!(
                    "was issued by {}, not by this CRL's issuer",
                    certificate.tbs_certificate.issuer
                ),
            )
            .into());
        }
        verify_signed(&der, issuer.public_key()).map_err(|e| {
            PkiError::input(&what, format!("was not signed by this CRL's issuer: {e}"))
        })?;
        revoked.push(RevokedEntry {
            serial: certificate.tbs_certificate.serial_number,
            revoked_at: x509_time_of("crl.revoked.revoked_at", &entry.revoked_at)?,
            reason: entry.reason,
        });
    }
    let template = CrlTemplate {
        number: spec.number,
        this_update: x509_time_of("crl.this_update", &spec.this_update)?,
        next_update: x509_time_of("crl.next_update", &spec.next_update)?,
        signature_algorithm: spec.signature_algorithm,
        revoked,
    };
    let (rehearsal_key, rehearsal) = rehearsal_issuer(ctx, &issuer)?;
    let checks = template.issue(&rehearsal, &rehearsal_key)?.checks;
    ctx.progress().done(format!(
        "rehearsal: CRL passed {} checks, signed and verified",
        checks.len()
    ));
    if ctx.dry_run() {
        return Ok(());
    }

    let hsm = ctx.open_hsm(&config.hsm)?;
    let key = find_key(
        ctx,
        &hsm,
        "signing",
        &config.issuer.key_label,
        issuer.public_key(),
    )?;
    let issued = template.issue(&issuer.as_issuer(), &HsmSigner::new(&hsm, key))?;
    ctx.progress().done(format!(
        "HSM signed the CRL after {} checks; signature verified with the issuer key, TBS bytes identical",
        issued.checks.len()
    ));
    let transcript = ctx.transcript();
    transcript
        .checks
        .extend(issued.checks.iter().map(|c| c.to_string()));
    transcript.crl = Some(CrlRecord {
        number: spec.number,
        this_update: template.this_update.to_string(),
        next_update: template.next_update.to_string(),
        revoked: template
            .revoked
            .iter()
            .map(|r| (hex::encode(r.serial.as_bytes()), r.reason.name().to_owned()))
            .collect(),
        sha256: sha256_hex(&issued.der),
    });
    ctx.write(
        &config.outputs.crl,
        to_pem("X509 CRL", &issued.der).as_bytes(),
    )
}

/// CRL numbers grow: the audit log knows every earlier CRL ceremony and its issuer.
fn check_crl_number(
    ctx: &Context,
    issuer: &CaCertificate,
    number: u64,
) -> Result<(), CeremonyError> {
    let issuer_id = hex::encode(key_identifier(issuer.public_key()));
    let same_issuer = |details: &serde_json::Value| {
        details["certificates"]
            .as_array()
            .is_some_and(|certificates| {
                certificates
                    .iter()
                    .any(|c| c["role"] == "issuer" && c["key_identifier"] == issuer_id.as_str())
            })
    };
    let last = ctx
        .earlier_records("ceremony.crl")
        .into_iter()
        .filter(|(_, details)| same_issuer(details))
        .filter_map(|(seq, details)| Some((details["crl"]["number"].as_u64()?, seq)))
        .max();
    match last {
        Some((last, seq)) if number <= last => Err(CeremonyError::Invalid(format!(
            "`crl.number` {number} must be above {last}, the number of this issuer's CRL in audit record #{seq}"
        ))),
        Some((last, _)) => {
            ctx.progress().done(format!(
                "CRL number {number} follows {last}, this issuer's last"
            ));
            Ok(())
        }
        None => Ok(()),
    }
}

/// Rehearses, then signs `template` with the issuer's HSM key and writes it to `output`.
fn sign_certificate(
    ctx: &mut Context,
    hsm_config: &crate::hsm::HsmConfig,
    issuer_ref: &IssuerRef,
    issuer: &CaCertificate,
    template: &CaTemplate,
    output: &Path,
) -> Result<(), CeremonyError> {
    let (rehearsal_key, rehearsal) = rehearsal_issuer(ctx, issuer)?;
    rehearsed(
        ctx,
        "certificate",
        template.issue(&rehearsal, &rehearsal_key)?,
    );
    if ctx.dry_run() {
        return Ok(());
    }

    let hsm = ctx.open_hsm(hsm_config)?;
    let key = find_key(
        ctx,
        &hsm,
        "signing",
        &issuer_ref.key_label,
        issuer.public_key(),
    )?;
    let issued = template.issue(&issuer.as_issuer(), &HsmSigner::new(&hsm, key))?;
    report_issued(ctx, &issued);
    ctx.write(output, issued.certificate.to_pem().as_bytes())
}

/// A throwaway software key of the issuer key's type, and the issuer as the rehearsal sees
/// it: the real certificate's name, validity and constraints with that key.
fn rehearsal_issuer(
    ctx: &Context,
    issuer: &CaCertificate,
) -> Result<(SoftwareKey, Issuer), CeremonyError> {
    let key = software_key(ctx, issuer.public_key().key_type())?;
    let mut rehearsal = issuer.as_issuer();
    rehearsal.public_key = key.public_key().clone();
    Ok((key, rehearsal))
}

fn read_issuer(ctx: &mut Context, issuer: &IssuerRef) -> Result<CaCertificate, CeremonyError> {
    let path = ctx.path(&issuer.certificate);
    let certificate = CaCertificate::from_file(&path)?;
    ctx.progress().done(format!(
        "issuer certificate {}: \"{}\", sha256 {}",
        path.display(),
        certificate.subject(),
        certificate.sha256_fingerprint()
    ));
    ctx.transcript()
        .certificates
        .push(CertificateRecord::new("issuer", &certificate));
    Ok(certificate)
}

/// Finds the key by label, requires the expected public key, and proves the pair with a
/// test signature.
fn find_key(
    ctx: &mut Context,
    hsm: &Hsm,
    role: &'static str,
    label: &str,
    expected: &PublicKey,
) -> Result<HsmKey, CeremonyError> {
    let key = hsm.find_key(label, Some(expected))?;
    ctx.progress().done(format!(
        "key \"{label}\" found; it matches the expected public key and its test signature verifies"
    ));
    report_key(ctx, role, &key);
    Ok(key)
}

fn software_key(ctx: &Context, key_type: KeyType) -> Result<SoftwareKey, CeremonyError> {
    Ok(ctx.progress().spin(
        &format!("rehearsal: generating a throwaway {key_type} software key"),
        || SoftwareKey::generate(key_type),
    )?)
}

fn rehearsed(ctx: &Context, what: &str, issued: Issued) {
    ctx.progress().done(format!(
        "rehearsal: {what} passed {} pre-signing checks, was signed and verified",
        issued.checks.len()
    ));
}

fn report_key(ctx: &mut Context, role: &'static str, key: &HsmKey) {
    ctx.progress().done(format!(
        "{role} key \"{}\": id {}, public key sha256 {}",
        key.label(),
        hex::encode(key.id()),
        key.public_key().sha256_fingerprint()
    ));
    ctx.transcript().keys.push(KeyRecord::new(role, key));
}

fn report_issued(ctx: &mut Context, issued: &Issued) {
    let certificate = &issued.certificate;
    ctx.progress().done(format!(
        "HSM signed \"{}\" (serial {}) after {} pre-signing checks; signature verified with the issuer key, TBS bytes identical",
        certificate.subject(),
        certificate.serial_hex(),
        issued.checks.len()
    ));
    let transcript = ctx.transcript();
    transcript
        .checks
        .extend(issued.checks.iter().map(|c| c.to_string()));
    transcript
        .certificates
        .push(CertificateRecord::new("issued", certificate));
}

fn required_subject(spec: &CertificateSpec) -> Result<Name, CeremonyError> {
    match &spec.subject {
        Some(subject) => Ok(subject.to_name()?),
        None => Err(CeremonyError::Invalid(
            "`certificate.subject` is required: spell out the subject name".into(),
        )),
    }
}

fn ca_template(
    spec: &CertificateSpec,
    subject: Name,
    public_key: PublicKey,
    default_path_length: Option<u8>,
) -> Result<CaTemplate, CeremonyError> {
    if spec.key_usage.is_empty() {
        return Err(CeremonyError::Invalid(
            "`certificate.key_usage` is empty; a CA needs [\"key-cert-sign\", \"crl-sign\"]".into(),
        ));
    }
    Ok(CaTemplate {
        subject,
        public_key,
        validity: x509_cert::time::Validity {
            not_before: x509_time_of("certificate.not_before", &spec.not_before)?,
            not_after: x509_time_of("certificate.not_after", &spec.not_after)?,
        },
        signature_algorithm: spec.signature_algorithm,
        key_usage: spec.key_usage.clone(),
        path_length: spec.path_length.or(default_path_length),
        permitted_uri_domains: spec.permitted_uri_domains.clone(),
        permitted_dns_domains: spec.permitted_dns_domains.clone(),
        crl_distribution_points: spec.crl_distribution_points.clone(),
        ca_issuers: spec.ca_issuers.clone(),
        spiffe_id: None,
    })
}

/// Mesh consumers accept ECDSA P-256 and RSA 2048/4096 with PKCS#1 v1.5; anything else is
/// allowed, with a warning the officer sees before the HSM is used.
fn warn_interop(ctx: &Context, key_type: KeyType, algorithm: SignatureAlgorithm) {
    let key_warning = match key_type {
        KeyType::EcdsaP384 => Some("Linkerd rejects P-384 roots"),
        KeyType::Rsa3072 => Some("RSA-3072 is not among the sizes every mesh tests (2048, 4096)"),
        KeyType::Ed25519 => Some("Ed25519 is not accepted by SPIRE, Istio or Linkerd"),
        _ => None,
    };
    let algorithm_warning = matches!(
        algorithm,
        SignatureAlgorithm::RsaPssSha256
            | SignatureAlgorithm::RsaPssSha384
            | SignatureAlgorithm::RsaPssSha512
    )
    .then_some("Linkerd rejects RSA-PSS signatures");
    for warning in key_warning.into_iter().chain(algorithm_warning) {
        ctx.progress().say(format!(
            "  [warning] {warning}; ECDSA P-256 or RSA 2048/4096 with PKCS#1 v1.5 work everywhere"
        ));
    }
}
