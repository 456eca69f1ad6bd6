//! SPIFFE IDs, validated to the SPIFFE ID specification: `spiffe://<trust domain><path>`.

use std::fmt;

/// The longest SPIFFE ID consumers must accept, in bytes.
const MAX_ID_LEN: usize = 2048;
/// The longest trust domain name, in bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A valid SPIFFE ID: a trust domain and a path that is empty or `/segment(/segment)*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    path: String,
}

/// Why a string is not a SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Longer than 2048 bytes.
    #[error("a SPIFFE ID is at most 2048 bytes; this one has {0}")]
    TooLong(usize),
    /// Not `spiffe://` (the scheme is lower case).
    #[error("a SPIFFE ID starts with \"spiffe://\"")]
    Scheme,
    /// No trust domain.
    #[error("the trust domain is missing")]
    EmptyTrustDomain,
    /// Over 255 bytes of trust domain.
    #[error("the trust domain is longer than 255 bytes")]
    TrustDomainTooLong,
    /// A character outside `[a-z0-9._-]` in the trust domain (upper case, port, user info).
    #[error(
        "the trust domain may hold only lower-case letters, digits, '.', '-' and '_'; found {0:?}"
    )]
    TrustDomainCharacter(char),
    /// A query or fragment.
    #[error("a SPIFFE ID has no query or fragment")]
    QueryOrFragment,
    /// An empty segment: `//` or a trailing `/`.
    #[error("the path has an empty segment (a doubled or trailing '/')")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("the path has a '.' or '..' segment")]
    DotSegment,
    /// A character outside `[A-Za-z0-9._-]` in the path.
    #[error("path segments may hold only letters, digits, '.', '-' and '_'; found {0:?}")]
    PathCharacter(char),
}

impl SpiffeId {
    /// Parses and validates `id`.
    pub fn parse(id: &str) -> Result<Self, SpiffeIdError> {
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(id.len()));
        }
        let rest = id.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        if rest.contains(['?', '#']) {
            return Err(SpiffeIdError::QueryOrFragment);
        }
        let (trust_domain, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if trust_domain.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TrustDomainTooLong);
        }
        if let Some(bad) = trust_domain.chars().find(|&c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        }) {
            return Err(SpiffeIdError::TrustDomainCharacter(bad));
        }
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                match segment {
                    "" => return Err(SpiffeIdError::EmptySegment),
                    "." | ".." => return Err(SpiffeIdError::DotSegment),
                    _ => {}
                }
                if let Some(bad) = segment
                    .chars()
                    .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                {
                    return Err(SpiffeIdError::PathCharacter(bad));
                }
            }
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path: empty for a trust domain's own ID, else `/segment(/segment)*`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// True for `spiffe://<trust domain>` with no path: the only SPIFFE URI a CA may carry.
    pub fn is_trust_domain_id(&self) -> bool {
        self.path.is_empty()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}{}", self.trust_domain, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SpiffeIdError as E;

    #[test]
    fn valid_ids_parse_and_print_unchanged() {
        for id in [
            "spiffe://example.org",
            "spiffe://prod.example-1_a.org/ns/default/sa/web",
            "spiffe://td/A.b-c_D",
        ] {
            let parsed = SpiffeId::parse(id).unwrap();
            assert_eq!(parsed.to_string(), id);
        }
        let td = SpiffeId::parse("spiffe://example.org").unwrap();
        assert!(td.is_trust_domain_id() && td.trust_domain() == "example.org");
        assert!(
            !SpiffeId::parse("spiffe://example.org/x")
                .unwrap()
                .is_trust_domain_id()
        );
    }

    #[test]
    fn each_rule_of_the_specification_is_enforced() {
        let long_path = format!("spiffe://example.org/{}", "a".repeat(2030));
        let long_domain = format!("spiffe://{}", "a".repeat(256));
        let cases: &[(&str, E)] = &[
            (&long_path, E::TooLong(long_path.len())),
            ("SPIFFE://example.org", E::Scheme),
            ("https://example.org/x", E::Scheme),
            ("spiffe:///path", E::EmptyTrustDomain),
            (&long_domain, E::TrustDomainTooLong),
            ("spiffe://Example.org", E::TrustDomainCharacter('E')),
            ("spiffe://example.org:8080/x", E::TrustDomainCharacter(':')),
            ("spiffe://user@example.org", E::TrustDomainCharacter('@')),
            ("spiffe://example.org/x?q=1", E::QueryOrFragment),
            ("spiffe://example.org/x#f", E::QueryOrFragment),
            ("spiffe://example.org/", E::EmptySegment),
            ("spiffe://example.org/a//b", E::EmptySegment),
            ("spiffe://example.org/a/../b", E::DotSegment),
            ("spiffe://example.org/./b", E::DotSegment),
            ("spiffe://example.org/a%20b", E::PathCharacter('%')),
            ("spiffe://example.org/caf\u{e9}", E::PathCharacter('\u{e9}')),
        ];
        for (id, expected) in cases {
            assert_eq!(SpiffeId::parse(id).as_ref(), Err(expected), "{id}");
        }
    }
}
