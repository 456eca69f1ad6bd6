//! The PKCS#11 module, the chosen token and the login that sessions share.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;

use super::config::{HsmConfig, TokenSelector};
use super::error::HsmError;
use super::health::HealthMonitor;
use super::pin::Pin;

/// Identity of the token in use, for logs, transcripts and `hsm info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenDescription {
    /// The token's label.
    pub label: String,
    /// The token's serial number.
    pub serial: String,
    /// The token's model.
    pub model: String,
    /// The token's manufacturer.
    pub manufacturer: String,
    /// The PKCS#11 slot ID holding the token (it can change between runs).
    pub slot_id: u64,
}

/// The initialised module and the logged-in token. One per process: PKCS#11 initialisation
/// and login state are process-wide.
pub(crate) struct TokenContext {
    pub(crate) pkcs11: Pkcs11,
    pub(crate) slot: Slot,
    pub(crate) description: TokenDescription,
    pin: Pin,
    /// Set once the token rejects the PIN, so that no later recovery retries it: a token
    /// locks its PIN after a few failures, and a retry loop would lock it within seconds.
    pin_rejected: AtomicBool,
    pub(crate) health: HealthMonitor,
}

impl TokenContext {
    /// Loads the module, initialises it, finds the token and loads the PIN.
    pub(crate) fn open(config: &HsmConfig) -> Result<Self, HsmError> {
        let selector = config.token()?;
        let pin = Pin::load(&config.pin_source()?)?;
        let pkcs11 = load_module(&config.module)?;
        let (slot, description) = find_token(&pkcs11, &selector)?;
        tracing::debug!(token = %description.label, serial = %description.serial, slot = description.slot_id, "token found");
        Ok(TokenContext {
            pkcs11,
            slot,
            description,
            pin,
            pin_rejected: AtomicBool::new(false),
            health: HealthMonitor::new(),
        })
    }

    /// Opens a session and makes sure the application is logged in.
    pub(crate) fn open_session(&self, read_write: bool) -> Result<Session, HsmError> {
        let session = if read_write {
            self.pkcs11.open_rw_session(self.slot)?
        } else {
            self.pkcs11.open_ro_session(self.slot)?
        };
        self.login(&session)?;
        Ok(session)
    }

    /// Logs the application in through `session`. Login state is shared by all sessions of
    /// the application, so "already logged in" is success.
    fn login(&self, session: &Session) -> Result<(), HsmError> {
        if self.pin_rejected.load(Ordering::Acquire) {
            return Err(HsmError::PinIncorrect {
                token: self.description.label.clone(),
            });
        }
        match session.login(UserType::User, Some(self.pin.secret())) {
            Ok(()) => {
                tracing::info!(token = %self.description.label, "logged in to token");
                Ok(())
            }
            Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                self.pin_rejected.store(true, Ordering::Release);
                Err(HsmError::PinIncorrect {
                    token: self.description.label.clone(),
                })
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                self.pin_rejected.store(true, Ordering::Release);
                Err(HsmError::PinLocked {
                    token: self.description.label.clone(),
                })
            }
            Err(other) => Err(other.into()),
        }
    }
}

impl Drop for TokenContext {
    fn drop(&mut self) {
        // Every session is owned by a holder of this context, so none outlives it.
        if let Err(err) = self.pkcs11.clone().finalize() {
            tracing::warn!(error = %HsmError::from(err), "C_Finalize failed");
        }
    }
}

fn load_module(path: &Path) -> Result<Pkcs11, HsmError> {
    if !path.exists() {
        return Err(HsmError::ModuleNotFound {
            path: path.to_owned(),
        });
    }
    let pkcs11 = Pkcs11::new(path).map_err(|err| HsmError::ModuleLoad {
        path: path.to_owned(),
        reason: err.to_string(),
    })?;
    // OS_LOCKING_OK: sessions are used from several worker threads.
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => Ok(pkcs11),
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
            Err(HsmError::AlreadyInitialized)
        }
        Err(err) => Err(err.into()),
    }
}

fn find_token(
    pkcs11: &Pkcs11,
    selector: &TokenSelector,
) -> Result<(Slot, TokenDescription), HsmError> {
    let mut available = Vec::new();
    let mut matches = Vec::new();
    for slot in pkcs11.get_slots_with_initialized_token()? {
        let info = pkcs11.get_token_info(slot)?;
        let description = TokenDescription {
            label: info.label().to_owned(),
            serial: info.serial_number().to_owned(),
            model: info.model().to_owned(),
            manufacturer: info.manufacturer_id().to_owned(),
            slot_id: slot.id(),
        };
        available.push(format!(
            "\"{}\" (serial {})",
            description.label, description.serial
        ));
        let wanted = match selector {
            TokenSelector::Label(label) => &description.label == label,
            TokenSelector::Serial(serial) => &description.serial == serial,
        };
        if wanted {
            matches.push((slot, description));
        }
    }
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => Err(HsmError::TokenNotFound {
            selector: selector.clone(),
            available,
        }),
        count => Err(HsmError::AmbiguousToken {
            selector: selector.clone(),
            count,
        }),
    }
}

/// One session, reopened when it breaks. Both the pool's workers and the control path of
/// [`super::Hsm`] run their PKCS#11 calls through one of these.
pub(crate) struct SessionSlot {
    context: std::sync::Arc<TokenContext>,
    session: Option<Session>,
    read_write: bool,
    /// Increases each time a new session is opened, so callers can drop cached handles.
    generation: u64,
}

impl SessionSlot {
    pub(crate) fn new(context: std::sync::Arc<TokenContext>, read_write: bool) -> Self {
        SessionSlot {
            context,
            session: None,
            read_write,
            generation: 0,
        }
    }

    /// Opens the session now, so that configuration errors surface at start-up.
    pub(crate) fn connect(&mut self) -> Result<(), HsmError> {
        if self.session.is_none() {
            self.session = Some(self.context.open_session(self.read_write)?);
            self.generation += 1;
        }
        Ok(())
    }

    /// Runs `op` on the session. On a session, login or device error the session is
    /// reopened (logging in again if needed) and `op` is retried once; the HSM's health
    /// records both the failure and the recovery.
    pub(crate) fn run<T>(
        &mut self,
        mut op: impl FnMut(&Session, u64) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let mut retried = false;
        loop {
            let attempt = self
                .connect()
                .and_then(|()| op(self.session.as_ref().expect("connected"), self.generation));
            match attempt {
                Ok(value) => {
                    self.context.health.record_success();
                    return Ok(value);
                }
                Err(err) if err.is_session_fault() => {
                    self.context.health.record_failure(&err.to_string());
                    self.discard_session();
                    if retried {
                        return Err(err);
                    }
                    tracing::warn!(error = %err, "HSM session failed; reopening it and retrying once");
                    self.context.health.record_session_reset();
                    retried = true;
                }
                Err(err) => {
                    if matches!(
                        err,
                        HsmError::PinIncorrect { .. } | HsmError::PinLocked { .. }
                    ) {
                        self.context.health.record_failure(&err.to_string());
                    }
                    return Err(err);
                }
            }
        }
    }

    fn discard_session(&mut self) {
        if let Some(session) = self.session.take() {
            // The handle is most likely dead already; closing it is best effort.
            let _ = session.close();
        }
    }
}
