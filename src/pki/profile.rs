//! Certificate profiles: what the signing API may make of a CSR. A profile decides the shape
//! of the certificate (an issuing CA or a leaf X509-SVID), which keys it accepts, how long it
//! may live and what it takes from the request; the CSR's own extension requests
//! (basicConstraints, keyUsage, EKU) are never copied.

use std::time::Duration;

use serde::Deserialize;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;

use super::ca::{CaKeyUsage, CaTemplate};
use super::issuer::Issuer;
use super::{LeafTemplate, PkiError, Prepared, SpiffeId, VerifiedCsr, x509_time};
use crate::duration::Seconds;
use crate::hsm::{KeyType, SignatureAlgorithm};

/// The two shapes of certificate the API issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileKind {
    /// A cluster's issuing CA (SPIRE, istiod, Linkerd): `cA=true`, keyCertSign + cRLSign,
    /// URI SAN exactly `spiffe://<trust domain>` or none.
    IssuingCa,
    /// A workload leaf X509-SVID: one SPIFFE ID with a path, digitalSignature, serverAuth +
    /// clientAuth.
    Workload,
}

/// Longest DNS name (RFC 1035), without the root's dot.
const MAX_DNS_NAME_LEN: usize = 253;
/// Longest DNS label.
const MAX_DNS_LABEL_LEN: usize = 63;

/// A DNS SAN must be a plain lower-case host name (RFC 1123 labels): no wildcard, no trailing
/// dot, nothing a consumer could read differently from the policy's suffix match (a NUL, an
/// upper-case twin of an allowed name).
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_DNS_NAME_LEN {
        return Err(format!("it must be 1 to {MAX_DNS_NAME_LEN} bytes long"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > MAX_DNS_LABEL_LEN {
            return Err(format!(
                "every label must be 1 to {MAX_DNS_LABEL_LEN} bytes long (no empty label, no trailing dot)"
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!(
                "labels may hold only lower-case letters, digits and '-'; found {bad:?}"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label may not start or end with '-'".into());
        }
    }
    Ok(())
}

/// Which verifiers refuse a chain through a CA with a permitted URI subtree, and why; logged
/// by `hsmca serve` for every profile with `name_constraints = true`.
pub const URI_NAME_CONSTRAINTS_WARNING: &str = "name_constraints = true writes URI name \
    constraints: rustls-webpki (ztunnel, linkerd2-proxy, spiffe-rustls) and pyca cryptography \
    refuse every certificate under such a CA (they do not evaluate URI subtrees and fail \
    closed); Go crypto/x509 (SPIRE, istiod) and OpenSSL accept it. Turn it off unless every \
    verifier in the mesh is Go or OpenSSL";

/// One `[profiles.<name>]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The certificate shape.
    pub kind: ProfileKind,
    /// The `[issuers.<name>]` that signs under this profile.
    pub issuer: String,
    /// Subject key types accepted. Default: P-256, P-384, RSA 2048/3072/4096; Ed25519 only
    /// when listed, as the mesh consumers do not all accept it.
    #[serde(default = "Profile::default_key_types")]
    pub key_types: Vec<KeyType>,
    /// Lifetime when the request names none.
    pub default_ttl: Seconds,
    /// Longest lifetime a request may ask for.
    pub max_ttl: Seconds,
    /// `issuing-ca` only: the path length constraint (default 0: the cluster CA issues
    /// leaves only).
    pub path_len: Option<u8>,
    /// `issuing-ca` only: add a critical nameConstraints extension permitting only URIs in
    /// the requested trust domain. Off by default: rustls-webpki (ztunnel, linkerd2-proxy,
    /// spiffe-rustls) and pyca `cryptography` refuse every chain through such a CA (see
    /// [`URI_NAME_CONSTRAINTS_WARNING`]).
    #[serde(default)]
    pub name_constraints: bool,
    /// `issuing-ca` only: DNS domains the new CA may issue for, written as permitted dNSName
    /// subtrees of a critical nameConstraints extension (e.g. Linkerd's
    /// `identity.linkerd.cluster.local`). Every verifier we know evaluates these, and they
    /// leave URI SANs unconstrained.
    #[serde(default)]
    pub permitted_dns_domains: Vec<String>,
    /// How far `notBefore` is set back to absorb clock skew (default 10 s, as SPIRE does).
    #[serde(default = "Profile::default_backdate")]
    pub backdate: Seconds,
    /// The shortest lifetime worth issuing: when the issuer's remaining validity clamps a
    /// certificate below this, the request is refused instead (default: any remainder).
    pub min_ttl: Option<Seconds>,
}

/// What a CSR asks for, checked against the profile and the SPIFFE ID rules; the policy
/// decides next whether this client may have it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestedNames {
    /// The subject, rebuilt from the CSR's with only the attributes hsmca writes.
    pub subject: Name,
    /// The SPIFFE ID: a trust domain ID for an issuing CA, a workload ID for a leaf.
    pub spiffe_id: Option<SpiffeId>,
    /// DNS names (leaves only).
    pub dns_names: Vec<String>,
}

/// Why a request does not fit its profile. `code` is stable for clients; `message` says
/// what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProfileRefusal {
    /// Machine-readable reason, e.g. `key_type_not_allowed`.
    pub code: &'static str,
    /// What was wrong, for the requester.
    pub message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> ProfileRefusal {
    ProfileRefusal {
        code,
        message: message.into(),
    }
}

/// A certificate ready to be prepared: which shape, built from the request.
#[derive(Clone, Debug)]
pub enum Template {
    /// An issuing CA.
    Ca(CaTemplate),
    /// A leaf X509-SVID.
    Leaf(LeafTemplate),
}

impl Template {
    /// Builds the TBS certificate with `serial` and runs the pre-signing checks.
    pub fn prepare(&self, serial: SerialNumber, issuer: &Issuer) -> Result<Prepared, PkiError> {
        match self {
            Template::Ca(template) => template.prepare(serial, issuer),
            Template::Leaf(template) => template.prepare(serial, issuer),
        }
    }

    /// The subject the certificate gets.
    pub fn subject(&self) -> &Name {
        match self {
            Template::Ca(template) => &template.subject,
            Template::Leaf(template) => &template.subject,
        }
    }

    /// The validity the certificate gets.
    pub fn validity(&self) -> &Validity {
        match self {
            Template::Ca(template) => &template.validity,
            Template::Leaf(template) => &template.validity,
        }
    }

    /// The subjectAltNames the certificate gets: its SPIFFE ID, then DNS names.
    pub fn sans(&self) -> Vec<String> {
        match self {
            Template::Ca(template) => template.spiffe_id.iter().cloned().collect(),
            Template::Leaf(template) => std::iter::once(template.spiffe_id.clone())
                .chain(template.dns_names.iter().cloned())
                .collect(),
        }
    }
}

impl Profile {
    fn default_key_types() -> Vec<KeyType> {
        vec![
            KeyType::EcdsaP256,
            KeyType::EcdsaP384,
            KeyType::Rsa2048,
            KeyType::Rsa3072,
            KeyType::Rsa4096,
        ]
    }

    fn default_backdate() -> Seconds {
        Seconds(10)
    }

    /// Checks the profile's own settings; `name` is its config name.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        if self.min_ttl.is_some_and(|min| min > self.default_ttl) {
            return Err(format!(
                "profile {name}: min_ttl is longer than default_ttl {}",
                self.default_ttl
            ));
        }
        if self.default_ttl > self.max_ttl {
            return Err(format!(
                "profile {name}: default_ttl {} is longer than max_ttl {}",
                self.default_ttl, self.max_ttl
            ));
        }
        if self.max_ttl.0 == 0 || self.key_types.is_empty() {
            return Err(format!(
                "profile {name}: max_ttl must be above zero and key_types must not be empty"
            ));
        }
        if self.kind == ProfileKind::Workload
            && (self.path_len.is_some()
                || self.name_constraints
                || !self.permitted_dns_domains.is_empty())
        {
            return Err(format!(
                "profile {name}: path_len, name_constraints and permitted_dns_domains apply to issuing-ca profiles only"
            ));
        }
        for domain in &self.permitted_dns_domains {
            // RFC 5280: "example.org" permits it and its subdomains, ".example.org" only the
            // subdomains; both forms are understood by rustls-webpki, Go, OpenSSL and pyca.
            let host = domain.strip_prefix('.').unwrap_or(domain);
            check_dns_name(host).map_err(|problem| {
                format!(
                    "profile {name}: permitted_dns_domains entry {domain:?} is not a DNS domain: {problem}"
                )
            })?;
        }
        Ok(())
    }

    /// The warning `hsmca serve` logs for this profile at start, if its certificates will be
    /// refused by some verifiers in the mesh.
    pub fn verifier_warning(&self) -> Option<&'static str> {
        self.name_constraints
            .then_some(URI_NAME_CONSTRAINTS_WARNING)
    }

    /// Checks the CSR's key, subject and SANs against this profile and the SPIFFE rules.
    pub fn requested_names(&self, csr: &VerifiedCsr) -> Result<RequestedNames, ProfileRefusal> {
        let key_type = csr.public_key.key_type();
        if !self.key_types.contains(&key_type) {
            let allowed: Vec<String> = self.key_types.iter().map(|t| t.to_string()).collect();
            return Err(refuse(
                "key_type_not_allowed",
                format!(
                    "this profile does not accept {key_type} keys; it accepts {}",
                    allowed.join(", ")
                ),
            ));
        }
        let subject = super::name::rebuild_requested_name(&csr.subject)
            .map_err(|message| refuse("subject_not_allowed", message))?;
        let spiffe_id = match csr.uri_sans.as_slice() {
            [] => None,
            [uri] => Some(SpiffeId::parse(uri).map_err(|e| {
                refuse(
                    "invalid_spiffe_id",
                    format!("the URI SAN {uri:?} is not a valid SPIFFE ID: {e}"),
                )
            })?),
            _ => {
                return Err(refuse(
                    "san_not_allowed",
                    format!(
                        "the CSR asks for {} URI SANs; a certificate holds at most one SPIFFE ID",
                        csr.uri_sans.len()
                    ),
                ));
            }
        };
        match self.kind {
            ProfileKind::IssuingCa => {
                if subject.is_empty() {
                    return Err(refuse(
                        "subject_required",
                        "an issuing CA needs a subject (SPIRE sends C=US, O=SPIFFE)",
                    ));
                }
                if !csr.dns_sans.is_empty() {
                    return Err(refuse(
                        "san_not_allowed",
                        "an issuing CA carries no DNS names; remove them from the CSR",
                    ));
                }
                if let Some(id) = spiffe_id.as_ref().filter(|id| !id.is_trust_domain_id()) {
                    return Err(refuse(
                        "san_not_allowed",
                        format!(
                            "an issuing CA's URI SAN must be exactly spiffe://{} without a path, not {id}",
                            id.trust_domain()
                        ),
                    ));
                }
            }
            ProfileKind::Workload => match &spiffe_id {
                Some(id) if !id.is_trust_domain_id() => {}
                _ => {
                    return Err(refuse(
                        "san_not_allowed",
                        "a workload certificate needs exactly one URI SAN, a SPIFFE ID with a path (spiffe://td/workload)",
                    ));
                }
            },
        }
        for name in &csr.dns_sans {
            if let Err(problem) = check_dns_name(name) {
                return Err(refuse(
                    "invalid_dns_name",
                    format!("the DNS SAN {name:?} is not a host name: {problem}"),
                ));
            }
        }
        Ok(RequestedNames {
            subject,
            spiffe_id,
            dns_names: csr.dns_sans.clone(),
        })
    }

    /// The lifetime a request gets: `requested`, or the profile's default; refused above the
    /// profile's maximum.
    pub fn ttl(&self, requested: Option<Seconds>) -> Result<Seconds, ProfileRefusal> {
        let ttl = requested.unwrap_or(self.default_ttl);
        if ttl.0 == 0 {
            return Err(refuse("invalid_ttl", "the ttl must be above zero"));
        }
        if ttl > self.max_ttl {
            return Err(refuse(
                "ttl_over_max",
                format!(
                    "the ttl {ttl} is over this profile's max_ttl {}",
                    self.max_ttl
                ),
            ));
        }
        Ok(ttl)
    }

    /// The certificate for `csr`, valid from `now - backdate` for `ttl`, both clamped to the
    /// issuer's validity: a certificate never outlives its issuer. It points at the issuer's
    /// CRL at `crl_url`, if there is one.
    #[allow(clippy::too_many_arguments)] // each is one independent input of the certificate
    pub fn template(
        &self,
        csr: &VerifiedCsr,
        names: &RequestedNames,
        ttl: Seconds,
        issuer: &Issuer,
        signature_algorithm: SignatureAlgorithm,
        crl_url: Option<&str>,
        now: Duration,
    ) -> Result<Template, ProfileRefusal> {
        let issuer_from = issuer.validity.not_before.to_unix_duration();
        let issuer_until = issuer.validity.not_after.to_unix_duration();
        let not_before = now
            .saturating_sub(self.backdate.duration())
            .max(issuer_from);
        let not_after = (now + ttl.duration()).min(issuer_until);
        if not_after <= now {
            return Err(refuse(
                "issuer_expired",
                "the issuer has expired; no certificate can be issued under it",
            ));
        }
        let remaining = Seconds((not_after - now).as_secs());
        if let Some(min_ttl) = self.min_ttl.filter(|min| remaining < *min) {
            return Err(refuse(
                "issuer_expiring",
                format!(
                    "the issuer expires in {remaining}, below this profile's min_ttl {min_ttl}; rotate the online intermediate"
                ),
            ));
        }
        let time = |at: Duration| {
            der::DateTime::from_unix_duration(Duration::from_secs(at.as_secs()))
                .map_err(|e| e.to_string())
                .and_then(|t| x509_time(t).map_err(|e| e.to_string()))
                .map_err(|e| {
                    refuse(
                        "invalid_ttl",
                        format!("the validity cannot be encoded: {e}"),
                    )
                })
        };
        let validity = Validity {
            not_before: time(not_before)?,
            not_after: time(not_after)?,
        };
        let subject = names.subject.clone();
        let spiffe_id = names.spiffe_id.as_ref().map(|id| id.to_string());
        Ok(match self.kind {
            ProfileKind::IssuingCa => Template::Ca(CaTemplate {
                subject,
                public_key: csr.public_key.clone(),
                validity,
                signature_algorithm,
                key_usage: vec![CaKeyUsage::KeyCertSign, CaKeyUsage::CrlSign],
                path_length: Some(self.path_len.unwrap_or(0)),
                permitted_uri_domains: match (&names.spiffe_id, self.name_constraints) {
                    (Some(id), true) => vec![id.trust_domain().to_owned()],
                    _ => Vec::new(),
                },
                permitted_dns_domains: self.permitted_dns_domains.clone(),
                crl_distribution_points: crl_url.iter().map(|url| url.to_string()).collect(),
                ca_issuers: Vec::new(),
                spiffe_id,
            }),
            ProfileKind::Workload => Template::Leaf(LeafTemplate {
                subject,
                public_key: csr.public_key.clone(),
                validity,
                signature_algorithm,
                spiffe_id: spiffe_id.expect("requested_names requires a workload SPIFFE ID"),
                dns_names: names.dns_names.clone(),
                crl_distribution_points: crl_url.iter().map(|url| url.to_string()).collect(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_sans_must_be_plain_lower_case_host_names() {
        for good in ["a.svc.cluster.local", "x-1.example", "a"] {
            assert!(check_dns_name(good).is_ok(), "{good}");
        }
        let long_label = format!("{}.example", "a".repeat(64));
        let long_name = ["abcdefghi"; 26].join(".");
        for (bad, why) in [
            ("", "1 to 253"),
            ("*.svc.cluster.local", "found '*'"),
            ("a.svc.cluster.local.", "trailing dot"),
            ("a\0.svc.cluster.local", "found '\\0'"),
            ("A.svc.cluster.local", "found 'A'"),
            ("-a.example", "start or end"),
            ("a..example", "no empty label"),
            (long_label.as_str(), "1 to 63"),
            (long_name.as_str(), "1 to 253"),
        ] {
            let problem = check_dns_name(bad).unwrap_err();
            assert!(problem.contains(why), "{bad:?}: {problem}");
        }
    }
    use crate::pki::{CaCertificate, Signer, SoftwareKey, SubjectSpec, verify_csr};
    use der::Tagged;

    fn profile(kind: &str) -> Profile {
        toml::from_str(&format!(
            "kind = \"{kind}\"\nissuer = \"i\"\ndefault_ttl = \"1h\"\nmax_ttl = \"24h\"\n"
        ))
        .unwrap()
    }

    fn csr(uris: &[&str], country_utf8: bool) -> VerifiedCsr {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if country_utf8 {
            params
                .distinguished_name
                .push(rcgen::DnType::CountryName, "US");
        }
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "SPIFFE");
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI(u.to_string().try_into().unwrap()))
            .collect();
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        verify_csr(pem.as_bytes()).unwrap()
    }

    /// A software issuer valid for 10 days from `now`.
    fn issuer(now: Duration) -> (SoftwareKey, CaCertificate) {
        let key = SoftwareKey::generate(KeyType::EcdsaP256).unwrap();
        let at = |t: Duration| x509_time(der::DateTime::from_unix_duration(t).unwrap()).unwrap();
        let template = CaTemplate {
            subject: SubjectSpec {
                common_name: Some("Online".into()),
                ..Default::default()
            }
            .to_name()
            .unwrap(),
            public_key: key.public_key().clone(),
            validity: Validity {
                not_before: at(now - Duration::from_secs(86_400)),
                not_after: at(now + Duration::from_secs(10 * 86_400)),
            },
            signature_algorithm: SignatureAlgorithm::EcdsaP256Sha256,
            key_usage: vec![CaKeyUsage::KeyCertSign, CaKeyUsage::CrlSign],
            path_length: Some(1),
            permitted_uri_domains: vec![],
            permitted_dns_domains: vec![],
            crl_distribution_points: vec![],
            ca_issuers: vec![],
            spiffe_id: None,
        };
        let certificate = template
            .issue(&template.as_own_issuer(), &key)
            .unwrap()
            .certificate;
        (key, certificate)
    }

    #[test]
    fn the_subject_is_rebuilt_with_rfc5280_string_types() {
        let names = profile("issuing-ca")
            .requested_names(&csr(&["spiffe://td"], true))
            .unwrap();
        let country = &names.subject.0[0].0.as_slice()[0];
        assert_eq!(country.value.tag(), der::Tag::PrintableString);
        assert_eq!(names.subject.to_string(), "O=SPIFFE,C=US");
    }

    #[test]
    fn each_profile_takes_only_the_sans_it_allows() {
        let ca = profile("issuing-ca");
        let leaf = profile("workload");
        let code = |r: Result<RequestedNames, ProfileRefusal>| r.unwrap_err().code;
        assert_eq!(
            code(ca.requested_names(&csr(&["spiffe://td/x"], true))),
            "san_not_allowed"
        );
        assert_eq!(
            code(ca.requested_names(&csr(&["spiffe://td", "spiffe://td2"], true))),
            "san_not_allowed"
        );
        assert_eq!(
            code(leaf.requested_names(&csr(&["spiffe://td"], true))),
            "san_not_allowed"
        );
        assert_eq!(
            code(leaf.requested_names(&csr(&[], true))),
            "san_not_allowed"
        );
        assert_eq!(
            code(leaf.requested_names(&csr(&["spiffe://TD/x"], true))),
            "invalid_spiffe_id"
        );
        assert!(ca.requested_names(&csr(&[], true)).is_ok());
    }

    #[test]
    fn validity_is_backdated_and_never_outlives_the_issuer() {
        let now = crate::pki::now().unix_duration();
        let (key, issuer) = issuer(now);
        let ca = profile("issuing-ca");
        let request = csr(&["spiffe://td"], true);
        let names = ca.requested_names(&request).unwrap();
        let Template::Ca(short) = ca
            .template(
                &request,
                &names,
                Seconds(3600),
                &issuer.as_issuer(),
                SignatureAlgorithm::EcdsaP256Sha256,
                None,
                now,
            )
            .unwrap()
        else {
            panic!("an issuing-ca profile makes CA templates")
        };
        assert_eq!(
            short.validity.not_before.to_unix_duration().as_secs(),
            now.as_secs() - 10
        );
        assert_eq!(
            short.validity.not_after.to_unix_duration().as_secs(),
            now.as_secs() + 3600
        );
        assert_eq!(short.path_length, Some(0));
        let long = ca
            .template(
                &request,
                &names,
                Seconds(365 * 86_400),
                &issuer.as_issuer(),
                SignatureAlgorithm::EcdsaP256Sha256,
                None,
                now,
            )
            .unwrap();
        let Template::Ca(long) = long else {
            unreachable!()
        };
        assert_eq!(long.validity.not_after, issuer.validity().not_after);
        // And the clamped certificate passes the CA lint under that issuer.
        let prepared = Template::Ca(long)
            .prepare(
                crate::pki::random_serial(&key).unwrap(),
                &issuer.as_issuer(),
            )
            .unwrap();
        prepared.sign_with(&key).unwrap();
    }

    #[test]
    fn an_issuer_too_close_to_expiry_for_min_ttl_is_refused() {
        let now = crate::pki::now().unix_duration();
        let (_, issuer) = issuer(now);
        let mut ca = profile("issuing-ca");
        ca.min_ttl = Some(Seconds(30 * 86_400));
        let request = csr(&["spiffe://td"], true);
        let names = ca.requested_names(&request).unwrap();
        let refused = ca
            .template(
                &request,
                &names,
                Seconds(365 * 86_400),
                &issuer.as_issuer(),
                SignatureAlgorithm::EcdsaP256Sha256,
                None,
                now,
            )
            .unwrap_err();
        assert_eq!(refused.code, "issuer_expiring");
        assert!(
            refused.message.contains("below this profile's min_ttl 30d"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn dns_name_constraints_are_checked_and_written_uri_ones_warn() {
        let mut ca = profile("issuing-ca");
        assert_eq!(ca.verifier_warning(), None);
        ca.name_constraints = true;
        assert!(
            ca.verifier_warning()
                .is_some_and(|w| w.contains("rustls-webpki") && w.contains("pyca"))
        );
        ca.permitted_dns_domains = vec![
            "identity.linkerd.cluster.local".into(),
            ".svc.example".into(),
        ];
        ca.validate("ca").unwrap();

        let now = crate::pki::now().unix_duration();
        let (_, issuer) = issuer(now);
        let request = csr(&["spiffe://td"], true);
        let names = ca.requested_names(&request).unwrap();
        let template = ca.template(
            &request,
            &names,
            Seconds(3600),
            &issuer.as_issuer(),
            SignatureAlgorithm::EcdsaP256Sha256,
            None,
            now,
        );
        let Ok(Template::Ca(template)) = template else {
            panic!("an issuing-ca profile makes CA templates")
        };
        assert_eq!(template.permitted_uri_domains, ["td"]);
        assert_eq!(template.permitted_dns_domains, ca.permitted_dns_domains);

        for (bad, why) in [
            ("*.linkerd.local", "found '*'"),
            ("Identity.local", "found 'I'"),
            ("local.", "trailing dot"),
            ("", "1 to 253"),
        ] {
            ca.permitted_dns_domains = vec![bad.into()];
            let problem = ca.validate("ca").unwrap_err();
            assert!(
                problem.contains("permitted_dns_domains") && problem.contains(why),
                "{bad:?}: {problem}"
            );
        }
        let mut leaf = profile("workload");
        leaf.permitted_dns_domains = vec!["example.org".into()];
        assert!(
            leaf.validate("w")
                .unwrap_err()
                .contains("issuing-ca profiles only")
        );
    }

    #[test]
    fn ttls_over_the_profile_maximum_are_refused() {
        let p = profile("workload");
        assert_eq!(p.ttl(None).unwrap(), Seconds(3600));
        assert_eq!(
            p.ttl(Some(Seconds(86_401))).unwrap_err().code,
            "ttl_over_max"
        );
        assert_eq!(p.ttl(Some(Seconds(0))).unwrap_err().code, "invalid_ttl");
    }
}
