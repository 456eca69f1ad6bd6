//! The PKCS#11 module, the chosen token and the login that sessions share.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Limit, Slot};

use super::config::HsmConfig;
use super::error::HsmError;
use super::health::HealthMonitor;
use super::pin::Pin;
use super::selector::TokenSelector;
use super::token_info::{self, TokenFields};

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
    /// The most sessions the token allows (`ulMaxSessionCount`); `None` when it sets no limit
    /// or does not say.
    pub max_sessions: Option<u64>,
}

/// The initialised module and the logged-in token. One per process: PKCS#11 initialisation
/// and login state are process-wide.
pub(crate) struct TokenContext {
    /// The loaded module and the token's slot. Replaced as a whole when the module is
    /// re-initialised; PKCS#11 calls hold the read lock, so none runs during a replacement.
    module: RwLock<Module>,
    /// What finds the token again after a re-initialisation.
    module_path: PathBuf,
    selector: TokenSelector,
    last_reinitialisation: Mutex<Option<Instant>>,
    /// The token as first found.
    pub(crate) description: TokenDescription,
    /// The user PIN, kept for logging in again after a session or module reset.
    pin: Pin,
    /// Set once the token rejects the PIN: a rejected PIN is never presented again.
    pin_rejected: AtomicBool,
    /// Health as the signing path sees it.
    pub(crate) health: HealthMonitor,
}

/// One initialisation of the PKCS#11 module.
pub(crate) struct Module {
    /// The module.
    pub(crate) pkcs11: Pkcs11,
    /// The token's slot in this initialisation (slot numbers may change across them).
    pub(crate) slot: Slot,
    /// Counts initialisations; sessions opened under an older one are stale.
    pub(crate) epoch: u64,
}

/// The shortest time between two module re-initialisations, so a token that stays away does
/// not turn every request into a C_Finalize/C_Initialize cycle.
const REINITIALISE_AT_MOST_EVERY: Duration = Duration::from_secs(1);

impl TokenContext {
    /// Loads the module, initialises it, finds the token and loads the PIN.
    pub(crate) fn open(config: &HsmConfig) -> Result<Self, HsmError> {
        let selector = config.token()?;
        let pin = Pin::load(&config.pin_source()?)?;
        let pkcs11 = load_module(&config.module)?;
        let (slot, description) = find_token(&pkcs11, &config.module, &selector)?;
        tracing::debug!(token = %description.label, serial = %description.serial, slot = description.slot_id, "token found");
        Ok(TokenContext {
            module: RwLock::new(Module {
                pkcs11,
                slot,
                epoch: 1,
            }),
            module_path: config.module.clone(),
            selector,
            last_reinitialisation: Mutex::new(None),
            description,
            pin,
            pin_rejected: AtomicBool::new(false),
            health: HealthMonitor::new(),
        })
    }

    /// Runs `op` with the current module; no re-initialisation happens meanwhile.
    pub(crate) fn with_module<T>(&self, op: impl FnOnce(&Module) -> T) -> T {
        op(&self.module.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Finalises and initialises the module again, then finds the token anew: what brings
    /// back a token that was removed and returned, which reopening sessions cannot do with
    /// modules that cache the token per process (SoftHSM2). Does nothing if another thread
    /// already did it since `seen_epoch`, or if the last attempt was under a second ago.
    /// Sessions of the old epoch become stale; their holders drop them without closing.
    pub(crate) fn reinitialise(&self, seen_epoch: u64) -> Result<(), HsmError> {
        {
            let mut last = self
                .last_reinitialisation
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < REINITIALISE_AT_MOST_EVERY) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let mut module = self.module.write().unwrap_or_else(|e| e.into_inner());
        if module.epoch != seen_epoch {
            return Ok(());
        }
        tracing::warn!(token = %self.description.label, "re-initialising the PKCS#11 module to find the token again");
        if let Err(err) = module.pkcs11.clone().finalize() {
            tracing::debug!(error = %HsmError::from(err), "C_Finalize before re-initialising failed");
        }
        let pkcs11 = Pkcs11::new(&self.module_path).map_err(|err| HsmError::ModuleLoad {
            path: self.module_path.clone(),
            reason: err.to_string(),
        })?;
        pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
        let (slot, _) = match find_token(&pkcs11, &self.module_path, &self.selector) {
            Ok(found) => found,
            Err(error) => {
                // Not installed, so finalised here: the old instance stays current (and is
                // finalised already), and the next attempt starts afresh.
                if let Err(err) = pkcs11.finalize() {
                    tracing::debug!(error = %HsmError::from(err), "C_Finalize of the instance that did not find the token failed");
                }
                return Err(error);
            }
        };
        *module = Module {
            pkcs11,
            slot,
            epoch: seen_epoch + 1,
        };
        tracing::info!(token = %self.description.label, "PKCS#11 module re-initialised; token found");
        Ok(())
    }

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
        let module = self.module.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = module.pkcs11.clone().finalize() {
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

/// The initialised tokens of the module loaded from `module_path`, with their slots. (Not
/// cryptoki's `get_slots_with_initialized_token`, which fails on a token info it cannot
/// parse.)
pub(crate) fn initialized_tokens(
    pkcs11: &Pkcs11,
    module_path: &Path,
) -> Result<Vec<(Slot, TokenDescription)>, HsmError> {
    let mut tokens = Vec::new();
    for slot in pkcs11.get_slots_with_token()? {
        let fields = match pkcs11.get_token_info(slot) {
            Ok(info) => TokenFields {
                label: info.label().to_owned(),
                serial: info.serial_number().to_owned(),
                model: info.model().to_owned(),
                manufacturer: info.manufacturer_id().to_owned(),
                max_sessions: match info.max_session_count() {
                    Limit::Max(max) => Some(max),
                    Limit::Unavailable | Limit::Infinite => None,
                },
                initialized: info.token_initialized(),
            },
            Err(error @ CkError::Pkcs11(..)) => return Err(error.into()),
            // The module answered, but cryptoki could not parse a field of the answer
            // (opencryptoki's clock): read the fields hsmca uses without it.
            Err(_) => token_info::read(module_path, slot)?,
        };
        if fields.initialized {
            tokens.push((
                slot,
                TokenDescription {
                    label: fields.label,
                    serial: fields.serial,
                    model: fields.model,
                    manufacturer: fields.manufacturer,
                    slot_id: slot.id(),
                    max_sessions: fields.max_sessions,
                },
            ));
        }
    }
    Ok(tokens)
}

fn find_token(
    pkcs11: &Pkcs11,
    module_path: &Path,
    selector: &TokenSelector,
) -> Result<(Slot, TokenDescription), HsmError> {
    let mut available = Vec::new();
    let mut matches = Vec::new();
    for (slot, description) in initialized_tokens(pkcs11, module_path)? {
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
    /// The session and the module epoch it was opened under.
    session: Option<(Session, u64)>,
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
        let context = self.context.clone();
        context.with_module(|module| self.connect_in(module))
    }

    /// Opens a session under `module` unless one of its epoch is open; drops a stale one.
    fn connect_in(&mut self, module: &Module) -> Result<(), HsmError> {
        if self
            .session
            .as_ref()
            .is_some_and(|(_, epoch)| *epoch != module.epoch)
        {
            self.discard_session(module.epoch);
        }
        if self.session.is_none() {
            let session = if self.read_write {
                module.pkcs11.open_rw_session(module.slot)?
            } else {
                module.pkcs11.open_ro_session(module.slot)?
            };
            self.context.login(&session)?;
            self.session = Some((session, module.epoch));
            self.generation += 1;
        }
        Ok(())
    }

    /// Runs `op` on the session. On a session, login or device error the session is
    /// reopened (logging in again if needed) and `op` is retried; if that fails too, the
    /// module is re-initialised and `op` tried a last time. A key that cannot be found while
    /// the HSM is already failing counts as such an error: a token that went away and came
    /// back looks exactly like that. The HSM's health records the failures and the recovery.
    pub(crate) fn run<T>(
        &mut self,
        mut op: impl FnMut(&Session, u64) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let mut reopened = false;
        let mut reinitialised = false;
        loop {
            let context = self.context.clone();
            let (attempt, epoch) = context.with_module(|module| {
                let attempt = self.connect_in(module).and_then(|()| {
                    let (session, _) = self.session.as_ref().expect("connected");
                    op(session, self.generation)
                });
                (attempt, module.epoch)
            });
            match attempt {
                Ok(value) => {
                    self.context.health.record_success();
                    return Ok(value);
                }
                Err(err) if err.is_session_fault() || self.lost_key(&err) => {
                    self.context.health.record_failure(&err.to_string());
                    self.discard_session(epoch);
                    if !reopened {
                        tracing::warn!(error = %err, "HSM session failed; reopening it and retrying");
                        self.context.health.record_session_reset();
                        reopened = true;
                        continue;
                    }
                    if !reinitialised {
                        reinitialised = true;
                        match self.context.reinitialise(epoch) {
                            Ok(()) => continue,
                            Err(reinit) => {
                                tracing::warn!(error = %reinit, "re-initialising the PKCS#11 module failed");
                            }
                        }
                    }
                    return Err(err);
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

    /// A key lookup that fails while the HSM is already degraded: the token most likely
    /// went away, rather than the key.
    fn lost_key(&self, err: &HsmError) -> bool {
        matches!(err, HsmError::KeyNotFound { .. })
            && !matches!(self.context.health.report().state, super::HealthState::Ok)
    }

    /// Drops the session: closed if it belongs to `current_epoch`, forgotten otherwise. A
    /// session of an older module initialisation must not be closed, since its handle
    /// number may now name another session; forgetting it leaks a few bytes per
    /// re-initialisation.
    fn discard_session(&mut self, current_epoch: u64) {
        if let Some((session, epoch)) = self.session.take() {
            if epoch == current_epoch {
                // The handle is most likely dead already; closing it is best effort.
                let _ = session.close();
            } else {
                std::mem::forget(session);
            }
        }
    }
}
