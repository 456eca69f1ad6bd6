//! Errors of the PKCS#11 layer: each says what went wrong and what to do about it, and none
//! carries secret material.

use std::path::PathBuf;
use std::time::Duration;

use cryptoki::error::{Error as CkError, RvError};

use super::algorithm::{AlgorithmError, KeyType, SignatureAlgorithm};
use super::selector::TokenSelector;

/// Everything that can go wrong between hsmca and the HSM.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The `[hsm]` section is inconsistent.
    #[error("invalid [hsm] configuration: {0}")]
    Config(String),

    /// The configured PKCS#11 library does not exist.
    #[error(
        "PKCS#11 module {path} does not exist: install the HSM vendor's library (SoftHSM2: apt-get install softhsm2) or fix `hsm.module`"
    )]
    ModuleNotFound {
        /// The configured path.
        path: PathBuf,
    },

    /// The library exists but could not be loaded as a PKCS#11 module.
    #[error(
        "cannot load PKCS#11 module {path}: {reason}; check that it is the vendor's PKCS#11 library for this architecture"
    )]
    ModuleLoad {
        /// The configured path.
        path: PathBuf,
        /// The loader's explanation.
        reason: String,
    },

    /// `C_Initialize` was already called in this process.
    #[error(
        "the PKCS#11 module is already initialised in this process: open the HSM once and share it"
    )]
    AlreadyInitialized,

    /// No slot holds a token matching the selector.
    #[error("no token with {selector} in this module (tokens present: {}); check `hsm.token_label`/`hsm.token_serial` against `hsmca hsm info`", list_or_none(.available))]
    TokenNotFound {
        /// What was asked for.
        selector: TokenSelector,
        /// Labels and serials of the tokens that are present.
        available: Vec<String>,
    },

    /// Several tokens match the selector.
    #[error("{count} tokens match {selector}: select the token by `hsm.token_serial` instead")]
    AmbiguousToken {
        /// What was asked for.
        selector: TokenSelector,
        /// How many tokens matched.
        count: usize,
    },

    /// The PIN file could not be read.
    #[error("cannot read PIN file {path}: {source}; check `hsm.pin_file`")]
    PinFile {
        /// The configured path.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// The PIN file is readable by group or others.
    #[error(
        "PIN file {path} has mode {mode:o}, readable by other users: run `chmod 600 {path}` and make it owned by the hsmca user"
    )]
    PinFilePermissions {
        /// The configured path.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },

    /// The PIN environment variable is not set.
    #[error(
        "environment variable {var} named by `hsm.pin_env` is not set: export it or use `hsm.pin_file`"
    )]
    PinEnvMissing {
        /// The variable's name.
        var: String,
    },

    /// The PIN source is empty.
    #[error("the PIN from {origin} is empty: write the token's user PIN there")]
    PinEmpty {
        /// Where the PIN was read from (never the PIN).
        origin: String,
    },

    /// The token rejected the PIN. Never retried: tokens lock after a few failures.
    #[error(
        "the token \"{token}\" rejected the user PIN (CKR_PIN_INCORRECT); hsmca did not retry, because tokens lock after a few failures: fix the PIN source and run again"
    )]
    PinIncorrect {
        /// The token label.
        token: String,
    },

    /// The token's user PIN is locked.
    #[error(
        "the user PIN of token \"{token}\" is locked (CKR_PIN_LOCKED): a security officer must unlock or reset it"
    )]
    PinLocked {
        /// The token label.
        token: String,
    },

    /// A key type or algorithm name is unknown, an algorithm does not fit a key, or a
    /// signature has the wrong shape.
    #[error(transparent)]
    Algorithm(#[from] AlgorithmError),

    /// The token lacks a mechanism hsmca needs.
    #[error(
        "token \"{token}\" does not support {mechanism}: use another key type or a module that offers it"
    )]
    MechanismUnsupported {
        /// The PKCS#11 mechanism name.
        mechanism: String,
        /// The token label.
        token: String,
    },

    /// The token cannot make a signature algorithm: it lacks the mechanism.
    #[error(
        "token \"{token}\" does not support {mechanism}, which {algorithm} needs; for {key_type} keys it offers: {}",
        if offered.is_empty() { "none".to_owned() } else { offered.join(", ") }
    )]
    AlgorithmUnsupported {
        /// The algorithm asked for.
        algorithm: SignatureAlgorithm,
        /// The key type.
        key_type: KeyType,
        /// The PKCS#11 mechanism it needs.
        mechanism: String,
        /// The token label.
        token: String,
        /// The algorithms for this key type the token does support.
        offered: Vec<String>,
    },

    /// A generated private key came out with other attributes than asked for (the module
    /// ignored part of the template); it was destroyed.
    #[error(
        "the module made key \"{label}\" with unsafe attributes ({reason}); it was destroyed: this module cannot hold hsmca's keys safely"
    )]
    UnsafeKey {
        /// The label.
        label: String,
        /// Which attributes are wrong.
        reason: String,
    },

    /// Key generation refused: the label is taken.
    #[error(
        "a key labelled \"{label}\" already exists on the token: choose a new label (keys are never replaced)"
    )]
    KeyLabelExists {
        /// The label.
        label: String,
    },

    /// No private key has this label.
    #[error(
        "no private key labelled \"{label}\" on the token: check the label with `hsmca hsm info`"
    )]
    KeyNotFound {
        /// The label.
        label: String,
    },

    /// Several keys share the label, so the choice would be a guess.
    #[error(
        "{count} private keys are labelled \"{label}\": labels must be unique; remove the stray key with the vendor's tools"
    )]
    KeyAmbiguous {
        /// The label.
        label: String,
        /// How many matched.
        count: usize,
    },

    /// The key's public half is not the one expected.
    #[error(
        "the key labelled \"{label}\" does not hold the expected public key: the label points at a different key than the certificate or config names"
    )]
    PublicKeyMismatch {
        /// The label.
        label: String,
    },

    /// The private key does not produce signatures the public key verifies.
    #[error(
        "the private key labelled \"{label}\" does not match its public key object (a test signature did not verify): the token holds an inconsistent key pair"
    )]
    KeyPairMismatch {
        /// The label.
        label: String,
    },

    /// A public key attribute could not be decoded.
    #[error("cannot decode the public key of \"{label}\": {reason}")]
    MalformedPublicKey {
        /// The label.
        label: String,
        /// What was wrong.
        reason: String,
    },

    /// The signing queue is full.
    #[error("the HSM is busy: {queue_depth} operations already wait for a session; retry shortly")]
    Busy {
        /// The queue's capacity.
        queue_depth: usize,
    },

    /// The operation did not finish in time.
    #[error("the HSM did not complete the operation within {} ms", .after.as_millis())]
    Timeout {
        /// The configured timeout.
        after: Duration,
    },

    /// The pool was shut down.
    #[error("the HSM session pool is shut down")]
    ShutDown,

    /// The module could not be re-initialised: it has one instance per process, and calls
    /// were still running in it (`C_Finalize` must not run beside them).
    #[error(
        "cannot re-initialise the PKCS#11 module: {calls} call(s) still running in it after {} ms",
        .waited.as_millis()
    )]
    ModuleBusy {
        /// Calls still running when the wait ended.
        calls: usize,
        /// How long they were waited for.
        waited: Duration,
    },

    /// Any other PKCS#11 failure.
    #[error("PKCS#11 call {call} failed with {code}")]
    Pkcs11 {
        /// The PKCS#11 function, e.g. `C_Sign`.
        call: String,
        /// The return value's name, e.g. `CKR_DEVICE_ERROR`.
        code: String,
        /// The return value, for classification.
        rv: Option<RvError>,
    },
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

impl HsmError {
    /// True when the token refused a session because it has as many open as it allows
    /// (`CKR_SESSION_COUNT`).
    pub fn is_session_limit(&self) -> bool {
        matches!(
            self,
            HsmError::Pkcs11 {
                rv: Some(RvError::SessionCount),
                ..
            }
        )
    }

    /// True when the error means the session (or the login behind it) is gone and a fresh
    /// session may succeed: the cases the pool recovers from by reopening and retrying once.
    pub fn is_session_fault(&self) -> bool {
        matches!(
            self,
            HsmError::Pkcs11 {
                rv: Some(
                    RvError::SessionHandleInvalid
                        | RvError::SessionClosed
                        | RvError::UserNotLoggedIn
                        | RvError::DeviceError
                        | RvError::DeviceRemoved
                        | RvError::TokenNotPresent
                        | RvError::KeyHandleInvalid
                        | RvError::ObjectHandleInvalid
                        | RvError::CryptokiNotInitialized
                ),
                ..
            }
        )
    }

    /// The PKCS#11 return value behind this error, if it came from the module.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            HsmError::Pkcs11 { rv, .. } => *rv,
            _ => None,
        }
    }
}

impl From<CkError> for HsmError {
    fn from(err: CkError) -> Self {
        match err {
            CkError::Pkcs11(rv, function) => HsmError::Pkcs11 {
                call: format!("C_{function:?}"),
                code: ckr_name(rv),
                rv: Some(rv),
            },
            other => HsmError::Pkcs11 {
                call: "cryptoki".into(),
                code: other.to_string(),
                rv: None,
            },
        }
    }
}

/// `RvError::DeviceRemoved` → `CKR_DEVICE_REMOVED`: the name operators find in vendor docs.
fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut name = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;

    #[test]
    fn pkcs11_errors_use_specification_names() {
        let err = HsmError::from(CkError::Pkcs11(RvError::DeviceRemoved, Function::Sign));
        assert_eq!(
            err.to_string(),
            "PKCS#11 call C_Sign failed with CKR_DEVICE_REMOVED"
        );
        assert!(err.is_session_fault());
    }

    #[test]
    fn non_session_errors_are_not_retried() {
        let err = HsmError::from(CkError::Pkcs11(RvError::MechanismInvalid, Function::Sign));
        assert!(!err.is_session_fault());
    }
}
