//! Distinguished names written out attribute by attribute, in a fixed order, so an officer
//! reads in the config exactly what goes into the certificate.

use const_oid::db::rfc4519;
use der::asn1::{PrintableStringRef, SetOfVec, Utf8StringRef};
use der::{Any, Tag};
use serde::Deserialize;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

use super::PkiError;

/// A subject name. Attributes appear in the certificate in the order of the fields here
/// (country first, common name last), one attribute per RDN.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SubjectSpec {
    /// `C`: two upper-case letters (ISO 3166), encoded as a PrintableString.
    pub country: Option<String>,
    /// `ST`.
    pub state_or_province: Option<String>,
    /// `L`.
    pub locality: Option<String>,
    /// `O`.
    pub organization: Option<String>,
    /// `OU`.
    pub organizational_unit: Option<String>,
    /// `CN`.
    pub common_name: Option<String>,
    /// `serialNumber` (SPIRE puts one in its CSRs), encoded as a PrintableString.
    pub serial_number: Option<String>,
}

/// RFC 5280 Appendix A upper bounds (`ub-*`), in characters.
const UPPER_BOUND: usize = 64;

impl SubjectSpec {
    /// The encoded name; refuses empty names and values outside RFC 5280's bounds.
    pub fn to_name(&self) -> Result<Name, PkiError> {
        let fields = [
            (rfc4519::C, "country", &self.country, Tag::PrintableString),
            (
                rfc4519::ST,
                "state_or_province",
                &self.state_or_province,
                Tag::Utf8String,
            ),
            (rfc4519::L, "locality", &self.locality, Tag::Utf8String),
            (
                rfc4519::O,
                "organization",
                &self.organization,
                Tag::Utf8String,
            ),
            (
                rfc4519::OU,
                "organizational_unit",
                &self.organizational_unit,
                Tag::Utf8String,
            ),
            (
                rfc4519::CN,
                "common_name",
                &self.common_name,
                Tag::Utf8String,
            ),
            (
                rfc4519::SERIAL_NUMBER,
                "serial_number",
                &self.serial_number,
                Tag::PrintableString,
            ),
        ];
        let mut rdns = Vec::new();
        for (oid, field, value, tag) in fields {
            let Some(value) = value else { continue };
            let bad = |reason: &str| PkiError::input(format!("subject.{field} {value:?}"), reason);
            if value.is_empty() || value.trim() != value {
                return Err(bad("must be non-empty, without leading or trailing spaces"));
            }
            if value.chars().count() > UPPER_BOUND {
                return Err(bad("is longer than the 64 characters RFC 5280 allows"));
            }
            if field == "country"
                && !(value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase()))
            {
                return Err(bad(
                    "must be a two-letter upper-case ISO 3166 code such as \"US\"",
                ));
            }
            let encoded = match tag {
                Tag::PrintableString => Any::encode_from(
                    &PrintableStringRef::new(value)
                        .map_err(|_| bad("has characters a PrintableString cannot hold"))?,
                ),
                _ => Any::encode_from(&Utf8StringRef::new(value).expect("a &str is UTF-8")),
            }
            .map_err(|e| bad(&e.to_string()))?;
            let attribute = AttributeTypeAndValue {
                oid,
                value: encoded,
            };
            let set = SetOfVec::try_from(vec![attribute]).expect("a one-element set is valid");
            rdns.push(RelativeDistinguishedName(set));
        }
        if rdns.is_empty() {
            return Err(PkiError::input(
                "subject",
                "is empty; give at least a common_name",
            ));
        }
        Ok(RdnSequence(rdns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_keep_the_documented_order() {
        let spec = SubjectSpec {
            country: Some("US".into()),
            organization: Some("Example".into()),
            common_name: Some("Mesh Root".into()),
            ..Default::default()
        };
        assert_eq!(
            spec.to_name().unwrap().to_string(),
            "CN=Mesh Root,O=Example,C=US"
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        let cases = [
            (
                SubjectSpec {
                    country: Some("usa".into()),
                    ..Default::default()
                },
                "subject.country",
            ),
            (
                SubjectSpec {
                    common_name: Some("x".repeat(65)),
                    ..Default::default()
                },
                "64 characters",
            ),
            (
                SubjectSpec {
                    common_name: Some(" padded".into()),
                    ..Default::default()
                },
                "spaces",
            ),
            (SubjectSpec::default(), "is empty"),
        ];
        for (spec, expected) in cases {
            let err = spec.to_name().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
