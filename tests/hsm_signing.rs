//! Every key type and algorithm signs in SoftHSM2, and the signatures verify with tools we did
//! not write: `aws-lc-rs` on the raw key from the SubjectPublicKeyInfo, and `openssl`.

mod common;

use aws_lc_rs::signature as rs;
use common::{openssl_verify, shared_hsm};
use hsmca::hsm::{KeyType, PoolConfig, SignatureAlgorithm};
use spki::SubjectPublicKeyInfoRef;
use spki::der::Decode;

/// `aws-lc-rs` verification straight from the DER SubjectPublicKeyInfo, bypassing hsmca's code.
fn ring_verify(spki_der: &[u8], algorithm: SignatureAlgorithm, message: &[u8], sig: &[u8]) -> bool {
    use SignatureAlgorithm as A;
    let spki = SubjectPublicKeyInfoRef::from_der(spki_der).expect("valid SPKI");
    let key = spki.subject_public_key.raw_bytes();
    let verifier: &dyn rs::VerificationAlgorithm = match algorithm {
        A::EcdsaP256Sha256 => &rs::ECDSA_P256_SHA256_ASN1,
        A::EcdsaP384Sha384 => &rs::ECDSA_P384_SHA384_ASN1,
        A::RsaPkcs1Sha256 => &rs::RSA_PKCS1_2048_8192_SHA256,
        A::RsaPkcs1Sha384 => &rs::RSA_PKCS1_2048_8192_SHA384,
        A::RsaPkcs1Sha512 => &rs::RSA_PKCS1_2048_8192_SHA512,
        A::RsaPssSha256 => &rs::RSA_PSS_2048_8192_SHA256,
        A::RsaPssSha384 => &rs::RSA_PSS_2048_8192_SHA384,
        A::RsaPssSha512 => &rs::RSA_PSS_2048_8192_SHA512,
        A::Ed25519 => &rs::ED25519,
    };
    rs::UnparsedPublicKey::new(verifier, key)
        .verify(message, sig)
        .is_ok()
}

/// openssl's digest name and padding for an algorithm.
fn openssl_params(algorithm: SignatureAlgorithm) -> (Option<&'static str>, bool) {
    use SignatureAlgorithm as A;
    match algorithm {
        A::EcdsaP256Sha256 | A::RsaPkcs1Sha256 => (Some("sha256"), false),
        A::EcdsaP384Sha384 | A::RsaPkcs1Sha384 => (Some("sha384"), false),
        A::RsaPkcs1Sha512 => (Some("sha512"), false),
        A::RsaPssSha256 => (Some("sha256"), true),
        A::RsaPssSha384 => (Some("sha384"), true),
        A::RsaPssSha512 => (Some("sha512"), true),
        A::Ed25519 => (None, false),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_signs_in_the_hsm_and_verifies_independently() {
    let (_token, hsm) = shared_hsm();
    let pool = hsm.start_pool(&PoolConfig::default()).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for &key_type in KeyType::ALL {
        let key = hsm
            .generate_key(&format!("signing-{key_type}"), key_type)
            .unwrap();
        assert_eq!(key.key_type(), key_type);
        let spki = key.public_key().to_spki_der();
        let pem = key.public_key().to_pem();
        for &algorithm in SignatureAlgorithm::ALL
            .iter()
            .filter(|a| a.works_with(key_type))
        {
            let message = format!("to be signed by {key_type} with {algorithm}").into_bytes();
            let pooled = pool.sign(&key, algorithm, message.clone()).await.unwrap();
            let direct = hsm.sign(&key, algorithm, &message).unwrap();
            let (digest, pss) = openssl_params(algorithm);
            for signature in [&pooled, &direct] {
                assert!(
                    ring_verify(&spki, algorithm, &message, signature),
                    "aws-lc-rs rejected {algorithm} with {key_type}"
                );
                assert!(
                    openssl_verify(scratch.path(), &pem, digest, pss, &message, signature),
                    "openssl rejected {algorithm} with {key_type}"
                );
            }
            // The verifiers do reject: a changed message must fail both.
            let mut tampered = message.clone();
            tampered[0] ^= 1;
            assert!(!ring_verify(&spki, algorithm, &tampered, &pooled));
            assert!(!openssl_verify(
                scratch.path(),
                &pem,
                digest,
                pss,
                &tampered,
                &pooled
            ));
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        2 + 3 * 6 + 1,
        "every key type × algorithm pair was exercised"
    );
}

#[tokio::test]
async fn an_algorithm_the_key_cannot_produce_is_refused() {
    let (_token, hsm) = shared_hsm();
    let key = hsm
        .generate_key("mismatch-p256", KeyType::EcdsaP256)
        .unwrap();
    let err = hsm
        .sign(&key, SignatureAlgorithm::RsaPkcs1Sha256, b"m")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "signature algorithm rsa-pkcs1-sha256 cannot be used with a ecdsa-p256 key"
    );
    let pool = hsm.start_pool(&PoolConfig::default()).unwrap();
    let err = pool
        .sign(&key, SignatureAlgorithm::EcdsaP384Sha384, b"m".to_vec())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot be used"), "{err}");
}
