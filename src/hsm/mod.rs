//! The PKCS#11 layer: everything hsmca asks of an HSM goes through here.
//!
//! * [`Hsm`] opens the module once per process, finds the token by label or serial, logs in
//!   once, and offers the control operations officers and start-up need: key generation,
//!   key lookup, random bytes, blocking signatures, the inventory.
//! * [`SignerPool`] signs from async code on a bounded pool of dedicated blocking workers,
//!   each with its own session, recovering from session, login and device errors.
//!
//! This layer knows nothing of X.509 beyond the two encodings signatures and public keys
//! must have (DER `Ecdsa-Sig-Value`, SubjectPublicKeyInfo).

mod algorithm;
mod config;
mod control;
mod error;
mod health;
mod info;
mod keys;
mod pin;
mod pool;
mod public_key;
mod selector;
mod token;
mod token_info;

use std::path::PathBuf;
use std::sync::Arc;

pub use algorithm::{AlgorithmError, KeyType, SignatureAlgorithm};
pub(crate) use algorithm::{EcdsaSigValue, ecdsa_raw_to_der};
pub use config::{HsmConfig, PinSource, PoolConfig};
pub use error::HsmError;
pub use health::{HealthReport, HealthState};
pub use info::{Inventory, KeyObject};
pub use keys::HsmKey;
pub use pin::Pin;
pub use pool::{SignerPool, Then};
pub use public_key::PublicKey;
pub(crate) use public_key::{RsaPublicKey, ec_params};
pub use selector::TokenSelector;
pub use token::TokenDescription;

use control::ControlSession;
use token::TokenContext;

/// The HSM: an initialised PKCS#11 module with a logged-in token.
///
/// Open it once per process ([`HsmError::AlreadyInitialized`] otherwise). A read-write
/// control session stays open for the lifetime of this value, which keeps the login alive.
pub struct Hsm {
    context: Arc<TokenContext>,
    control: ControlSession,
    module: PathBuf,
}

impl Hsm {
    /// Loads the module, finds the token and logs in. A rejected PIN fails at once and is
    /// never retried.
    pub fn open(config: &HsmConfig) -> Result<Self, HsmError> {
        let context = Arc::new(TokenContext::open(config)?);
        // A control call that runs past twice the operation timeout is taken for hung, as a
        // signature in the pool is.
        let control = ControlSession::open(context.clone(), config.pool.op_timeout() * 2)?;
        Ok(Hsm {
            context,
            control,
            module: config.module.clone(),
        })
    }

    /// The token in use.
    pub fn token(&self) -> &TokenDescription {
        &self.context.description
    }

    /// Generates a key pair labelled `label`; refuses a label already on the token.
    /// The token must be able to generate the key type and to sign with at least one algorithm
    /// for it (not necessarily hsmca's usual one: opencryptoki's soft token signs RSA with
    /// PSS only, for one).
    pub fn generate_key(&self, label: &str, key_type: KeyType) -> Result<HsmKey, HsmError> {
        self.require_mechanism(key_type.generation_mechanism().mechanism_type())?;
        self.self_test_algorithm(key_type)?;
        let state_public_usage = !self.derives_public_usage()?;
        let key = self
            .with_control(|session| keys::generate(session, label, key_type, state_public_usage))?;
        tracing::info!(label, key_type = %key_type, id = %hex::encode(key.id()), "key pair generated");
        Ok(key)
    }

    /// Finds the key pair labelled `label`, checks that it holds `expected` when given, and
    /// proves with a test signature that the private key matches the public key.
    pub fn find_key(&self, label: &str, expected: Option<&PublicKey>) -> Result<HsmKey, HsmError> {
        let key = self.with_control(|session| keys::find(session, label, expected))?;
        let algorithm = self.self_test_algorithm(key.key_type())?;
        self.with_control(|session| keys::self_test(session, &key, algorithm))?;
        Ok(key)
    }

    /// The signature algorithms for `key_type` keys whose mechanisms the token offers,
    /// hsmca's usual one first.
    pub fn signing_algorithms(
        &self,
        key_type: KeyType,
    ) -> Result<Vec<SignatureAlgorithm>, HsmError> {
        let supported = self.mechanisms()?;
        let mut algorithms: Vec<SignatureAlgorithm> = SignatureAlgorithm::ALL
            .iter()
            .copied()
            .filter(|a| a.works_with(key_type) && supported.contains(&a.mechanism_type()))
            .collect();
        algorithms.sort_by_key(|a| *a != key_type.default_algorithm());
        Ok(algorithms)
    }

    /// Refuses `algorithm` for a `key_type` key when the token lacks its mechanism, naming the
    /// mechanism and what the token offers instead.
    pub fn require_algorithm(
        &self,
        algorithm: SignatureAlgorithm,
        key_type: KeyType,
    ) -> Result<(), HsmError> {
        let offered = self.signing_algorithms(key_type)?;
        if offered.contains(&algorithm) {
            return Ok(());
        }
        Err(HsmError::AlgorithmUnsupported {
            algorithm,
            key_type,
            mechanism: algorithm.mechanism_type().to_string(),
            token: self.context.description.label.clone(),
            offered: offered.iter().map(ToString::to_string).collect(),
        })
    }

    /// The algorithm a key's self-test signs with: hsmca's usual one for the key type, or the
    /// first the token offers.
    fn self_test_algorithm(&self, key_type: KeyType) -> Result<SignatureAlgorithm, HsmError> {
        match self.signing_algorithms(key_type)?.first() {
            Some(algorithm) => Ok(*algorithm),
            None => self
                .require_algorithm(key_type.default_algorithm(), key_type)
                .map(|()| key_type.default_algorithm()),
        }
    }

    /// `len` random bytes from the token's RNG.
    pub fn random(&self, len: usize) -> Result<Vec<u8>, HsmError> {
        let mut bytes = vec![0u8; len];
        self.with_control(|session| Ok(session.generate_random_slice(&mut bytes)?))?;
        Ok(bytes)
    }

    /// Signs `message` on the control session, blocking the calling thread. For ceremonies
    /// and start-up; the service signs through a [`SignerPool`].
    pub fn sign(
        &self,
        key: &HsmKey,
        algorithm: SignatureAlgorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        algorithm.check_key(key.key_type())?;
        // Rare enough to ask the token each time, and a missing mechanism is then named.
        self.require_algorithm(algorithm, key.key_type())?;
        self.with_control(|session| {
            let handle = keys::private_handle(session, key)?;
            keys::sign(session, handle, algorithm, message)
        })
    }

    /// Starts a signing pool on this token.
    pub fn start_pool(&self, config: &PoolConfig) -> Result<SignerPool, HsmError> {
        let sessions = match config.sessions {
            Some(0) => {
                return Err(HsmError::Config(
                    "`hsm.pool.sessions` must be at least 1".into(),
                ));
            }
            Some(n) => match self.sessions_for_pool() {
                Some(allowed) if n > allowed => {
                    tracing::warn!(
                        configured = n,
                        token_allows = self.context.description.max_sessions,
                        pool_sessions = allowed,
                        "hsm.pool.sessions is more than the token allows beside the control session: the pool runs with fewer"
                    );
                    allowed
                }
                _ => n,
            },
            None => self.default_pool_size(),
        };
        if config.queue_depth() == 0 {
            return Err(HsmError::Config(
                "`hsm.pool.queue_depth` must be at least 1".into(),
            ));
        }
        SignerPool::start(
            self.context.clone(),
            sessions,
            config.queue_depth(),
            config.op_timeout(),
        )
    }

    /// The module, its tokens, and the selected token's mechanisms and keys.
    pub fn inventory(&self) -> Result<Inventory, HsmError> {
        let keys = self.with_control(info::key_objects)?;
        self.context
            .with_module(|module| info::inventory(&self.context, module, self.module.clone(), keys))
    }

    /// The HSM's health as seen by the operations so far.
    pub fn health(&self) -> HealthReport {
        self.context.health.report()
    }

    /// One session per core keeps a local HSM busy without oversubscribing the host; the
    /// token's own limit wins when lower (one session is kept for control).
    fn default_pool_size(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        cores.min(self.sessions_for_pool().unwrap_or(usize::MAX))
    }

    /// How many sessions the token's limit leaves for the pool: all but the control
    /// session's, at least one; `None` when the token sets no limit.
    fn sessions_for_pool(&self) -> Option<usize> {
        let max = self.context.description.max_sessions?;
        Some(
            usize::try_from(max.saturating_sub(1))
                .unwrap_or(usize::MAX)
                .max(1),
        )
    }

    fn require_mechanism(
        &self,
        mechanism: cryptoki::mechanism::MechanismType,
    ) -> Result<(), HsmError> {
        if self.mechanisms()?.contains(&mechanism) {
            Ok(())
        } else {
            Err(HsmError::MechanismUnsupported {
                mechanism: mechanism.to_string(),
                token: self.context.description.label.clone(),
            })
        }
    }

    /// Whether the module sets a public key's CKA_VERIFY and CKA_ENCRYPT itself and fails a
    /// template that states them: tpm2-pkcs11 does, and a first, failed attempt would leave a
    /// transient object in the TPM, whose three slots the second attempt then lacks.
    fn derives_public_usage(&self) -> Result<bool, HsmError> {
        let library = self
            .context
            .with_module(|module| module.pkcs11.get_library_info())?;
        Ok(library.manufacturer_id().starts_with("tpm2-software"))
    }

    fn mechanisms(&self) -> Result<Vec<cryptoki::mechanism::MechanismType>, HsmError> {
        Ok(self
            .context
            .with_module(|module| module.pkcs11.get_mechanism_list(module.slot))?)
    }

    fn with_control<T>(
        &self,
        op: impl FnMut(&cryptoki::session::Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        self.control.run(op)
    }
}
