//! X.509 `AlgorithmIdentifier`s for the signature algorithms the HSM layer offers.

use const_oid::db::{rfc5912, rfc8410};
use der::asn1::{AnyRef, ObjectIdentifier};
use der::{Any, Encode};
use spki::AlgorithmIdentifierOwned;

use crate::hsm::SignatureAlgorithm;

/// `RSASSA-PSS-params` (RFC 4055), with the trailer field left at its default.
#[derive(der::Sequence)]
struct RsaPssParams {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    hash_algorithm: AlgorithmIdentifierOwned,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT")]
    mask_gen_algorithm: AlgorithmIdentifierOwned,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT")]
    salt_length: u32,
}

/// The identifier that names `algorithm` in a certificate, CRL or CSR.
pub fn identifier(algorithm: SignatureAlgorithm) -> AlgorithmIdentifierOwned {
    use SignatureAlgorithm as A;
    let bare = |oid| AlgorithmIdentifierOwned {
        oid,
        parameters: None,
    };
    // RFC 4055 spells the hash identifiers of RSA with an explicit NULL.
    let with_null = |oid| AlgorithmIdentifierOwned {
        oid,
        parameters: Some(AnyRef::NULL.into()),
    };
    let pss = |hash: ObjectIdentifier, salt_length: u32| {
        let params = RsaPssParams {
            hash_algorithm: with_null(hash),
            mask_gen_algorithm: AlgorithmIdentifierOwned {
                oid: rfc5912::ID_MGF_1,
                parameters: Some(Any::encode_from(&with_null(hash)).expect("encodes")),
            },
            salt_length,
        };
        AlgorithmIdentifierOwned {
            oid: rfc5912::ID_RSASSA_PSS,
            parameters: Some(Any::encode_from(&params).expect("PSS parameters always encode")),
        }
    };
    match algorithm {
        A::EcdsaP256Sha256 => bare(rfc5912::ECDSA_WITH_SHA_256),
        A::EcdsaP384Sha384 => bare(rfc5912::ECDSA_WITH_SHA_384),
        A::RsaPkcs1Sha256 => with_null(rfc5912::SHA_256_WITH_RSA_ENCRYPTION),
        A::RsaPkcs1Sha384 => with_null(rfc5912::SHA_384_WITH_RSA_ENCRYPTION),
        A::RsaPkcs1Sha512 => with_null(rfc5912::SHA_512_WITH_RSA_ENCRYPTION),
        A::RsaPssSha256 => pss(rfc5912::ID_SHA_256, 32),
        A::RsaPssSha384 => pss(rfc5912::ID_SHA_384, 48),
        A::RsaPssSha512 => pss(rfc5912::ID_SHA_512, 64),
        A::Ed25519 => bare(rfc8410::ID_ED_25519),
    }
}

/// The algorithm an identifier names, when it is exactly one hsmca produces.
///
/// Identifiers are compared by their DER encoding, so parameters must match too.
pub fn from_identifier(identifier: &AlgorithmIdentifierOwned) -> Option<SignatureAlgorithm> {
    let wanted = identifier.to_der().ok()?;
    SignatureAlgorithm::ALL
        .iter()
        .copied()
        .find(|&algorithm| self::identifier(algorithm).to_der().ok().as_deref() == Some(&wanted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;

    #[test]
    fn every_algorithm_round_trips_through_its_identifier() {
        for &algorithm in SignatureAlgorithm::ALL {
            assert_eq!(from_identifier(&identifier(algorithm)), Some(algorithm));
        }
    }

    #[test]
    fn pss_parameters_name_hash_mgf_and_salt() {
        let id = identifier(SignatureAlgorithm::RsaPssSha384);
        let params = RsaPssParams::from_der(&id.parameters.unwrap().to_der().unwrap()).unwrap();
        assert_eq!(params.hash_algorithm.oid, rfc5912::ID_SHA_384);
        assert_eq!(params.mask_gen_algorithm.oid, rfc5912::ID_MGF_1);
        assert_eq!(params.salt_length, 48);
    }
}
