//! Certificate revocation lists signed by a CA key (the root CRL is a ceremony).

use der::Encode;
use der::asn1::Uint;
use serde::Deserialize;
use x509_cert::certificate::Version;
use x509_cert::crl::{RevokedCert, TbsCertList};
use x509_cert::ext::pkix::crl::CrlNumber;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, CrlReason};
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

use super::ca::extension;
use super::issuer::Issuer;
use super::{PkiError, Signer, lint, signed};
use crate::hsm::SignatureAlgorithm;

/// Why a certificate was revoked (RFC 5280 5.3.1), as configuration files name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationReason {
    /// No reason given; the entry then carries no reason code at all, as RFC 5280 asks.
    Unspecified,
    /// The subject's private key was compromised.
    KeyCompromise,
    /// The issuing CA's key was compromised.
    CaCompromise,
    /// The subject's name or affiliation changed.
    AffiliationChanged,
    /// The certificate was replaced.
    Superseded,
    /// The certificate is no longer needed.
    CessationOfOperation,
    /// The certificate's privileges were withdrawn.
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every reason, in RFC 5280's order.
    pub const ALL: [RevocationReason; 7] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn,
    ];

    /// The reason named `name` (`key-compromise`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.name() == name)
    }

    /// The name configuration files and transcripts use.
    pub fn name(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "key-compromise",
            RevocationReason::CaCompromise => "ca-compromise",
            RevocationReason::AffiliationChanged => "affiliation-changed",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessation-of-operation",
            RevocationReason::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    fn code(self) -> Option<CrlReason> {
        match self {
            RevocationReason::Unspecified => None,
            RevocationReason::KeyCompromise => Some(CrlReason::KeyCompromise),
            RevocationReason::CaCompromise => Some(CrlReason::CaCompromise),
            RevocationReason::AffiliationChanged => Some(CrlReason::AffiliationChanged),
            RevocationReason::Superseded => Some(CrlReason::Superseded),
            RevocationReason::CessationOfOperation => Some(CrlReason::CessationOfOperation),
            RevocationReason::PrivilegeWithdrawn => Some(CrlReason::PrivilegeWithdrawn),
        }
    }
}

/// One revoked certificate.
#[derive(Clone, Debug)]
pub struct RevokedEntry {
    /// Its serial number.
    pub serial: SerialNumber,
    /// When it was revoked.
    pub revoked_at: Time,
    /// Why.
    pub reason: RevocationReason,
}

/// Everything a CRL says.
#[derive(Clone, Debug)]
pub struct CrlTemplate {
    /// The CRL number, which must grow with every CRL of an issuer.
    pub number: u64,
    /// `thisUpdate`.
    pub this_update: Time,
    /// `nextUpdate`.
    pub next_update: Time,
    /// The algorithm the issuer signs with.
    pub signature_algorithm: SignatureAlgorithm,
    /// The revoked certificates.
    pub revoked: Vec<RevokedEntry>,
}

/// A signed CRL and the checks it passed before signing.
#[derive(Debug)]
pub struct IssuedCrl {
    /// The DER CRL.
    pub der: Vec<u8>,
    /// The pre-signing checks, by name, all passed.
    pub checks: Vec<&'static str>,
}

impl CrlTemplate {
    /// Builds the to-be-signed CRL for `issuer`.
    pub fn to_tbs(&self, issuer: &Issuer) -> Result<TbsCertList, PkiError> {
        let revoked = self
            .revoked
            .iter()
            .map(|entry| {
                let extensions = match entry.reason.code() {
                    Some(code) => Some(vec![extension(&code, false)?]),
                    None => None,
                };
                Ok(RevokedCert {
                    serial_number: entry.serial.clone(),
                    revocation_date: entry.revoked_at,
                    crl_entry_extensions: extensions,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let number =
            Uint::new(&self.number.to_be_bytes()).map_err(|e| PkiError::input("CRL number", e))?;
        let key_identifier = der::asn1::OctetString::new(issuer.key_identifier.clone())
            .map_err(|e| PkiError::input("issuer key identifier", e))?;
        Ok(TbsCertList {
            version: Version::V2,
            signature: super::algorithm::identifier(self.signature_algorithm),
            issuer: issuer.name.clone(),
            this_update: self.this_update,
            next_update: Some(self.next_update),
            revoked_certificates: (!revoked.is_empty()).then_some(revoked),
            crl_extensions: Some(vec![
                extension(
                    &AuthorityKeyIdentifier {
                        key_identifier: Some(key_identifier),
                        authority_cert_issuer: None,
                        authority_cert_serial_number: None,
                    },
                    false,
                )?,
                extension(&CrlNumber(number), false)?,
            ]),
        })
    }

    /// Builds the CRL and runs the pre-signing checks; the result waits for the issuer's
    /// signature.
    pub fn prepare(&self, issuer: &Issuer) -> Result<signed::Prepared, PkiError> {
        let tbs = self.to_tbs(issuer)?;
        let checks = lint::check_crl(&tbs, issuer, self.signature_algorithm)?;
        let tbs_der = tbs.to_der().map_err(|e| PkiError::input("CRL", e))?;
        Ok(signed::Prepared::new(
            "CRL",
            tbs_der,
            self.signature_algorithm,
            &issuer.public_key,
            checks,
        ))
    }

    /// Builds, checks, signs and re-checks the CRL.
    pub fn issue(&self, issuer: &Issuer, signer: &dyn Signer) -> Result<IssuedCrl, PkiError> {
        let prepared = self.prepare(issuer)?;
        let checks = prepared.checks().to_vec();
        let der = prepared.sign_with(signer)?;
        Ok(IssuedCrl { der, checks })
    }
}
