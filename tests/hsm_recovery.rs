//! The pool and the control path recover when every session is closed behind their back.

mod common;

use common::{close_all_sessions_behind_hsmcas_back, shared_hsm};
use hsmca::hsm::{HealthState, KeyType, PoolConfig, SignatureAlgorithm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_recovers_after_all_sessions_are_closed() {
    let (_token, hsm) = shared_hsm();
    let key = hsm.generate_key("recovery", KeyType::EcdsaP256).unwrap();
    let pool = hsm
        .start_pool(&PoolConfig {
            sessions: Some(2),
            ..PoolConfig::default()
        })
        .unwrap();
    let algorithm = SignatureAlgorithm::EcdsaP256Sha256;
    pool.sign(&key, algorithm, b"before".to_vec())
        .await
        .unwrap();
    assert_eq!(pool.health().session_resets, 0);

    close_all_sessions_behind_hsmcas_back(hsm.token().slot_id);

    // Enough requests to reach both workers; each reopens its session, logs in, retries once.
    for i in 0..16 {
        let message = format!("after {i}").into_bytes();
        let signature = pool
            .sign(&key, algorithm, message.clone())
            .await
            .expect("the pool recovers without failing a request");
        assert!(key.public_key().verify(algorithm, &message, &signature));
    }
    let health = pool.health();
    assert_eq!(health.state, HealthState::Ok);
    assert!(
        (1..=2).contains(&health.session_resets),
        "one reset per broken session: {health:?}"
    );

    // The control session died too; key lookup (with its test signature) recovers the same way.
    let found = hsm.find_key("recovery", Some(key.public_key())).unwrap();
    assert_eq!(found.id(), key.id());
    assert_eq!(hsm.health().session_resets, health.session_resets + 1);
}
