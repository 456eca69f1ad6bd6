//! A PIN the token rejects during recovery is tried once, never again: a service that kept
//! retrying it would lock the token's PIN within seconds.
//!
//! hsmca loads OpenSC's pkcs11-spy in front of SoftHSM2, so every PKCS#11 call is logged.

mod common;

use common::{PKCS11_SPY_MODULE, SOFTHSM_MODULE, TestToken, close_all_sessions_behind_hsmcas_back};
use cryptoki::context::Pkcs11;
use cryptoki::slot::Slot;
use hsmca::hsm::{HealthState, Hsm, HsmError, KeyType, PoolConfig, SignatureAlgorithm};
use secrecy::SecretString;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_changed_under_the_service_is_tried_once() {
    let token = TestToken::create("latch");
    let spy_log = token.dir.path().join("spy.log");
    // SAFETY: this binary holds this single test; no other thread reads the environment yet
    // and no PKCS#11 module is loaded before these are set.
    unsafe {
        std::env::set_var("SOFTHSM2_CONF", token.softhsm_conf());
        std::env::set_var("PKCS11SPY", SOFTHSM_MODULE);
        std::env::set_var("PKCS11SPY_OUTPUT", &spy_log);
    }
    let mut config = token.hsm_config();
    config.module = PKCS11_SPY_MODULE.into();
    let hsm = Hsm::open(&config).unwrap();
    let key = hsm.generate_key("latch", KeyType::EcdsaP256).unwrap();
    let pool = hsm
        .start_pool(&PoolConfig {
            sessions: Some(1),
            ..PoolConfig::default()
        })
        .unwrap();
    let algorithm = SignatureAlgorithm::EcdsaP256Sha256;
    pool.sign(&key, algorithm, b"ok".to_vec()).await.unwrap();

    // The user PIN changes under the running service (C_SetPIN through a second handle on the
    // loaded module: SoftHSM2 caches token state per process), then every session dies.
    let old_pin = SecretString::from(token.user_pin());
    let new_pin = SecretString::from("24681357");
    let pkcs11 = Pkcs11::new(SOFTHSM_MODULE).unwrap();
    let admin = pkcs11
        .open_rw_session(Slot::try_from(hsm.token().slot_id).unwrap())
        .unwrap();
    admin.set_pin(&old_pin, &new_pin).unwrap();
    drop(admin);
    close_all_sessions_behind_hsmcas_back(hsm.token().slot_id);

    for _ in 0..5 {
        let err = pool.sign(&key, algorithm, b"m".to_vec()).await.unwrap_err();
        assert!(matches!(err, HsmError::PinIncorrect { .. }), "{err}");
    }
    assert!(matches!(hsm.random(8), Err(HsmError::PinIncorrect { .. })));
    match pool.health().state {
        HealthState::Degraded { last_error, .. } => {
            assert!(last_error.contains("rejected the user PIN"), "{last_error}")
        }
        HealthState::Ok => panic!("health must be degraded"),
    }

    let calls = std::fs::read_to_string(&spy_log).unwrap();
    assert_eq!(
        calls.matches("CKR_PIN_INCORRECT").count(),
        1,
        "six failed operations, one rejected login"
    );
}
