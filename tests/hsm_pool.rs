//! The session pool under concurrency and back-pressure.
//!
//! The busy and timeout cases make HSM jobs deliberately long (hashing many megabytes), so that
//! they outlast the microseconds it takes to queue the requests by orders of magnitude.

mod common;

use common::shared_hsm;
use futures::future::join_all;
use hsmca::hsm::{HsmError, KeyType, PoolConfig, SignatureAlgorithm};

const P256: SignatureAlgorithm = SignatureAlgorithm::EcdsaP256Sha256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_more_concurrent_signs_than_sessions_all_succeed_and_verify() {
    let (_token, hsm) = shared_hsm();
    let key = hsm
        .generate_key("pool-concurrency", KeyType::EcdsaP256)
        .unwrap();
    let pool = std::sync::Arc::new(
        hsm.start_pool(&PoolConfig {
            sessions: Some(3),
            ..PoolConfig::default()
        })
        .unwrap(),
    );
    assert_eq!(pool.sessions(), 3);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..400u32 {
        let (pool, key) = (pool.clone(), key.clone());
        tasks.spawn(async move {
            let message = format!("request {i}").into_bytes();
            let signature = pool.sign(&key, P256, message.clone()).await;
            (message, signature)
        });
    }
    let mut verified = 0;
    while let Some(joined) = tasks.join_next().await {
        let (message, signature) = joined.unwrap();
        let signature = signature.expect("every request is signed");
        assert!(key.public_key().verify(P256, &message, &signature));
        verified += 1;
    }
    assert_eq!(verified, 400);
}

#[test]
fn default_pool_has_one_session_per_core() {
    let (_token, hsm) = shared_hsm();
    let pool = hsm.start_pool(&PoolConfig::default()).unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    // SoftHSM2 reports no session limit, so the cores decide.
    assert_eq!(pool.sessions(), cores);
}

#[test]
fn zero_sessions_or_queue_is_a_config_error() {
    let (_token, hsm) = shared_hsm();
    for config in [
        PoolConfig {
            sessions: Some(0),
            ..PoolConfig::default()
        },
        PoolConfig {
            queue_depth: Some(0),
            ..PoolConfig::default()
        },
    ] {
        let err = hsm.start_pool(&config).err().expect("refused");
        assert!(matches!(err, HsmError::Config(_)), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_busy_at_once_and_the_rest_complete() {
    let (_token, hsm) = shared_hsm();
    let key = hsm.generate_key("pool-busy", KeyType::EcdsaP256).unwrap();
    let pool = hsm
        .start_pool(&PoolConfig {
            sessions: Some(1),
            queue_depth: Some(2),
            op_timeout_ms: Some(120_000),
        })
        .unwrap();
    // Each job hashes 16 MiB on the worker: milliseconds, against microseconds to queue them.
    let message = vec![0x5a; 16 << 20];
    let requests = (0..12).map(|_| pool.sign(&key, P256, message.clone()));
    let results = join_all(requests).await;
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(HsmError::Busy { queue_depth: 2 })))
        .count();
    let signed: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(busy + signed.len(), 12, "only busy or signed: {results:?}");
    assert!(
        busy >= 1,
        "a queue of 2 behind 1 session must overflow with 12 requests"
    );
    assert!(signed.len() >= 3, "the session and the queue were used");
    for signature in signed {
        assert!(key.public_key().verify(P256, &message, signature));
    }
    let err = results.into_iter().find_map(Result::err).unwrap();
    assert_eq!(
        err.to_string(),
        "the HSM is busy: 2 operations already wait for a session; retry shortly"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_over_its_deadline_times_out() {
    let (_token, hsm) = shared_hsm();
    let key = hsm.generate_key("pool-timeout", KeyType::Rsa2048).unwrap();
    let pool = hsm
        .start_pool(&PoolConfig {
            sessions: Some(1),
            queue_depth: Some(8),
            op_timeout_ms: Some(5),
        })
        .unwrap();
    // SoftHSM hashes 64 MiB inside CKM_SHA256_RSA_PKCS: far longer than 5 ms. Had the caller
    // waited for the HSM instead of its deadline, it would hold a signature, not a timeout.
    let message = vec![0xa5; 64 << 20];
    let results = join_all(
        (0..2).map(|_| pool.sign(&key, SignatureAlgorithm::RsaPkcs1Sha256, message.clone())),
    )
    .await;
    for result in &results {
        assert!(
            matches!(result, Err(HsmError::Timeout { after }) if after.as_millis() == 5),
            "{result:?}"
        );
    }
    assert_eq!(
        results[0].as_ref().unwrap_err().to_string(),
        "the HSM did not complete the operation within 5 ms"
    );
}

#[test]
fn a_signature_handed_on_runs_its_next_step_on_the_session_thread_and_a_panic_there_costs_only_its_own()
 {
    let (_token, hsm) = shared_hsm();
    let key = hsm.generate_key("pool-then", KeyType::EcdsaP256).unwrap();
    let pool = hsm
        .start_pool(&PoolConfig {
            sessions: Some(1),
            ..PoolConfig::default()
        })
        .unwrap();
    let (sender, received) = std::sync::mpsc::channel();
    let handed_on = |message: &'static [u8]| -> hsmca::hsm::Then {
        let sender = sender.clone();
        Box::new(move |signature| {
            let thread = std::thread::current().name().map(str::to_owned);
            let _ = sender.send((message, signature, thread));
        })
    };
    // One session: the panicking step and the one after it ran on the same thread.
    pool.sign_then(
        &key,
        P256,
        b"first".to_vec(),
        Box::new(|_| panic!("a step panics")),
    )
    .unwrap();
    for message in [&b"second"[..], &b"third"[..]] {
        pool.sign_then(&key, P256, message.to_vec(), handed_on(message))
            .unwrap();
    }
    for expected in [&b"second"[..], &b"third"[..]] {
        let (message, signature, thread) = received
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the session survived the panic and went on");
        assert_eq!(message, expected);
        assert!(key.public_key().verify(P256, message, &signature.unwrap()));
        let thread = thread.unwrap();
        assert!(thread.starts_with("hsm-session-"), "ran on {thread}");
    }
}
