//! Distinguished names written out attribute by attribute, in a fixed order, so an officer
//! reads in the config exactly what goes into the certificate.

use const_oid::ObjectIdentifier;
use const_oid::db::rfc4519;
use der::asn1::{PrintableStringRef, SetOfVec, Utf8StringRef};
use der::{Any, Tag, Tagged};
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

/// The attributes hsmca writes, in the order a [`SubjectSpec`] writes them: OID, the config
/// field name, the short name, and the string type RFC 5280 asks for.
const ATTRIBUTES: [(ObjectIdentifier, &str, &str, Tag); 7] = [
    (rfc4519::C, "country", "C", Tag::PrintableString),
    (rfc4519::ST, "state_or_province", "ST", Tag::Utf8String),
    (rfc4519::L, "locality", "L", Tag::Utf8String),
    (rfc4519::O, "organization", "O", Tag::Utf8String),
    (rfc4519::OU, "organizational_unit", "OU", Tag::Utf8String),
    (rfc4519::CN, "common_name", "CN", Tag::Utf8String),
    (
        rfc4519::SERIAL_NUMBER,
        "serial_number",
        "serialNumber",
        Tag::PrintableString,
    ),
];

impl SubjectSpec {
    /// The encoded name; refuses empty names and values outside RFC 5280's bounds.
    pub fn to_name(&self) -> Result<Name, PkiError> {
        let values = [
            &self.country,
            &self.state_or_province,
            &self.locality,
            &self.organization,
            &self.organizational_unit,
            &self.common_name,
            &self.serial_number,
        ];
        let mut rdns = Vec::new();
        for ((oid, field, _, tag), value) in ATTRIBUTES.iter().zip(values) {
            let Some(value) = value else { continue };
            rdns.push(
                encode_attribute(*oid, value, *tag).map_err(|reason| {
                    PkiError::input(format!("subject.{field} {value:?}"), reason)
                })?,
            );
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

/// One single-valued RDN holding `value` as `tag`, checked against RFC 5280's bounds.
fn encode_attribute(
    oid: ObjectIdentifier,
    value: &str,
    tag: Tag,
) -> Result<RelativeDistinguishedName, String> {
    if value.is_empty() || value.trim() != value {
        return Err("must be non-empty, without leading or trailing spaces".into());
    }
    if value.chars().count() > UPPER_BOUND {
        return Err("is longer than the 64 characters RFC 5280 allows".into());
    }
    if oid == rfc4519::C && !(value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err("must be a two-letter upper-case ISO 3166 code such as \"US\"".into());
    }
    let encoded = match tag {
        Tag::PrintableString => Any::encode_from(
            &PrintableStringRef::new(value)
                .map_err(|_| "has characters a PrintableString cannot hold".to_string())?,
        ),
        _ => Any::encode_from(&Utf8StringRef::new(value).expect("a &str is UTF-8")),
    }
    .map_err(|e| e.to_string())?;
    let attribute = AttributeTypeAndValue {
        oid,
        value: encoded,
    };
    let set = SetOfVec::try_from(vec![attribute]).expect("a one-element set is valid");
    Ok(RelativeDistinguishedName(set))
}

/// A requested subject (from a CSR) rebuilt the way hsmca writes names: the same attributes
/// in the same order, one per RDN, each re-encoded with the string type RFC 5280 asks for
/// (a requester's UTF8String country becomes a PrintableString). Attributes other than C,
/// ST, L, O, OU, CN and serialNumber, multi-valued RDNs, and values that are not text are
/// refused with the reason.
pub fn rebuild_requested_name(requested: &Name) -> Result<Name, String> {
    let mut rdns = Vec::new();
    for rdn in requested.0.iter() {
        let [attribute] = rdn.0.as_slice() else {
            return Err("multi-valued RDNs are not accepted in the subject".into());
        };
        let Some((oid, _, short, tag)) = ATTRIBUTES.iter().find(|(oid, ..)| *oid == attribute.oid)
        else {
            let allowed: Vec<&str> = ATTRIBUTES.iter().map(|(_, _, short, _)| *short).collect();
            return Err(format!(
                "the subject attribute {} is not accepted; use only {}",
                attribute.oid,
                allowed.join(", ")
            ));
        };
        let value = directory_string(&attribute.value)
            .ok_or_else(|| format!("the subject's {short} is not a text string"))?;
        rdns.push(
            encode_attribute(*oid, &value, *tag)
                .map_err(|reason| format!("the subject's {short} {value:?} {reason}"))?,
        );
    }
    Ok(RdnSequence(rdns))
}

/// The text of a UTF8String, PrintableString or IA5String attribute value.
pub fn directory_string(value: &Any) -> Option<String> {
    use der::asn1::Ia5StringRef;
    match value.tag() {
        Tag::Utf8String => value
            .decode_as::<Utf8StringRef<'_>>()
            .ok()
            .map(|s| s.to_string()),
        Tag::PrintableString => value
            .decode_as::<PrintableStringRef<'_>>()
            .ok()
            .map(|s| s.to_string()),
        Tag::Ia5String => value
            .decode_as::<Ia5StringRef<'_>>()
            .ok()
            .map(|s| s.to_string()),
        _ => None,
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
