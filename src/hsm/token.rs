//! The PKCS#11 module, the chosen token and the login that sessions share.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
    /// The current initialisation of the module and the token's slot in it. A PKCS#11 call
    /// takes its own reference and holds no lock while it runs, so a call that never returns
    /// (a network HSM's link dropped in the middle of a reply) holds up neither the other
    /// calls nor a re-initialisation. The lock is held for writing only to swap in a new
    /// initialisation, and while waiting for calls to leave one that must be finalised first.
    module: RwLock<Arc<Module>>,
    /// What finds the token again after a re-initialisation.
    module_path: PathBuf,
    selector: TokenSelector,
    /// When re-initialisation was last tried (at most once a second).
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
    /// PKCS#11 calls running in this initialisation now.
    calls: AtomicUsize,
    /// Set once `C_Finalize` was called on it, so it is never called twice: on a module with
    /// one instance per process, a second call would end the initialisation that replaced it.
    finalised: AtomicBool,
    /// Set when a fresh instance replaced it: the last call to leave finalises it.
    retired: AtomicBool,
}

impl Module {
    fn new(pkcs11: Pkcs11, slot: Slot, epoch: u64) -> Arc<Self> {
        Arc::new(Module {
            pkcs11,
            slot,
            epoch,
            calls: AtomicUsize::new(0),
            finalised: AtomicBool::new(false),
            retired: AtomicBool::new(false),
        })
    }

    /// Marks a replaced instance retired, and finalises it if no call runs in it; otherwise
    /// the last call to leave does.
    fn retire(self: &Arc<Self>) {
        self.retired.store(true, Ordering::SeqCst);
        if self.calls.load(Ordering::SeqCst) == 0 {
            self.finalise_in_background();
        } else {
            tracing::warn!(
                calls = self.calls.load(Ordering::SeqCst),
                "calls are still running in the replaced PKCS#11 module instance; it is finalised when they return"
            );
        }
    }

    /// Finalises the instance on a thread of its own: over a dropped or silent link,
    /// `C_Finalize` may wait as long as any call.
    fn finalise_in_background(self: &Arc<Self>) {
        let module = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("hsm-finalise".into())
            .spawn(move || {
                if let Err(err) = module.finalise() {
                    tracing::debug!(error = %HsmError::from(err), "C_Finalize of a replaced instance failed");
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a thread to finalise a replaced PKCS#11 module instance");
        }
    }

    /// Calls `C_Finalize` unless that was done already.
    fn finalise(&self) -> Result<(), CkError> {
        if self.finalised.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.pkcs11.clone().finalize()
    }
}

/// A PKCS#11 call running in a [`Module`]: counted from creation to drop.
struct Call(Arc<Module>);

impl Drop for Call {
    fn drop(&mut self) {
        if self.0.calls.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.retired.load(Ordering::SeqCst)
        {
            self.0.finalise_in_background();
        }
    }
}

/// The shortest time between two module re-initialisations, so a token that stays away does
/// not turn every request into a C_Finalize/C_Initialize cycle.
const REINITIALISE_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// What a re-initialisation that must finalise the module first does about the calls running
/// in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunningCalls {
    /// Wait up to [`FINALISE_WAITS_FOR_CALLS`] for them to end, new calls waiting meanwhile.
    Wait,
    /// One of them is known to hang: fail at once rather than hold up every other call.
    OneHangs,
}

/// How long a re-initialisation that must finalise the module first waits for the calls
/// running in it to end. Calls wait for the re-initialisation meanwhile; calls to a token
/// that went away fail fast, so only a call that hangs is still running after this.
const FINALISE_WAITS_FOR_CALLS: Duration = Duration::from_millis(500);

impl TokenContext {
    /// Loads the module, initialises it, finds the token and loads the PIN.
    pub(crate) fn open(config: &HsmConfig) -> Result<Self, HsmError> {
        let selector = config.token()?;
        let pin = Pin::load(&config.pin_source()?)?;
        let pkcs11 = load_module(&config.module)?;
        let (slot, description) = find_token(&pkcs11, &config.module, &selector)?;
        tracing::debug!(token = %description.label, serial = %description.serial, slot = description.slot_id, "token found");
        Ok(TokenContext {
            module: RwLock::new(Module::new(pkcs11, slot, 1)),
            module_path: config.module.clone(),
            selector,
            last_reinitialisation: Mutex::new(None),
            description,
            pin,
            pin_rejected: AtomicBool::new(false),
            health: HealthMonitor::new(),
        })
    }

    /// Runs `op` with the current module; that initialisation is not finalised meanwhile.
    pub(crate) fn with_module<T>(&self, op: impl FnOnce(&Module) -> T) -> T {
        let call = {
            let current = self.module.read().unwrap_or_else(|e| e.into_inner());
            // Counted under the lock, so a re-initialisation that swapped the module out
            // sees every call that will ever run in the old one.
            current.calls.fetch_add(1, Ordering::SeqCst);
            Call(Arc::clone(&current))
        };
        op(&call.0)
    }

    /// The epoch of the current initialisation.
    pub(crate) fn epoch(&self) -> u64 {
        self.module.read().unwrap_or_else(|e| e.into_inner()).epoch
    }

    /// Initialises the module again and finds the token anew: what brings back a token that
    /// was removed and returned (which reopening sessions cannot do with modules that cache
    /// the token per process, SoftHSM2) and a network HSM whose link dropped (p11-kit's
    /// client connects once per initialisation). Does nothing if the current initialisation
    /// is newer than `seen_epoch` or if the last attempt began under a second ago. Sessions
    /// of the old epoch become stale; their holders drop them without closing.
    ///
    /// A module that hands out an instance per `C_GetFunctionList` (p11-kit's client) gets a
    /// fresh instance beside the old one, which is finalised once no call runs in it (a call
    /// that never returns keeps it, and its connection, open). A module with one instance per
    /// process (SoftHSM2, most vendor modules) must be finalised first: that waits for the
    /// calls in it as `running` says, and fails with [`HsmError::ModuleBusy`] if one is still
    /// running.
    pub(crate) fn reinitialise(
        &self,
        seen_epoch: u64,
        running: RunningCalls,
    ) -> Result<(), HsmError> {
        {
            // Only the time is kept under the lock: an attempt may hang in the module (a
            // network HSM that stopped answering), and must not hold up later attempts.
            let mut last = self
                .last_reinitialisation
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < REINITIALISE_AT_MOST_EVERY) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        let old = Arc::clone(&self.module.read().unwrap_or_else(|e| e.into_inner()));
        if old.epoch != seen_epoch {
            return Ok(());
        }
        tracing::warn!(token = %self.description.label, "re-initialising the PKCS#11 module to find the token again");
        let fresh = Pkcs11::new(&self.module_path).map_err(|err| HsmError::ModuleLoad {
            path: self.module_path.clone(),
            reason: err.to_string(),
        })?;
        match fresh.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {
                // A fresh instance (or the one instance, finalised by an earlier attempt).
                let slot = self.find_token_in(&fresh)?;
                {
                    let mut current = self.module.write().unwrap_or_else(|e| e.into_inner());
                    if current.epoch != seen_epoch {
                        // An earlier attempt that was slower got there first.
                        let _ = fresh.finalize();
                        return Ok(());
                    }
                    *current = Module::new(fresh, slot, seen_epoch + 1);
                }
                // No call can start in `old` any more.
                old.retire();
            }
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                if running == RunningCalls::OneHangs {
                    return Err(HsmError::ModuleBusy {
                        calls: old.calls.load(Ordering::SeqCst),
                        waited: Duration::ZERO,
                    });
                }
                let mut current = self.module.write().unwrap_or_else(|e| e.into_inner());
                if current.epoch != seen_epoch {
                    return Ok(());
                }
                let waiting = Instant::now();
                loop {
                    let calls = old.calls.load(Ordering::SeqCst);
                    if calls == 0 {
                        break;
                    }
                    if waiting.elapsed() >= FINALISE_WAITS_FOR_CALLS {
                        return Err(HsmError::ModuleBusy {
                            calls,
                            waited: waiting.elapsed(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                if let Err(err) = old.finalise() {
                    tracing::debug!(error = %HsmError::from(err), "C_Finalize before re-initialising failed");
                }
                // From here `old` stays current, finalised, until a new one is installed: calls
                // in it fail with CKR_CRYPTOKI_NOT_INITIALIZED and the next attempt starts afresh.
                fresh.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
                let slot = self.find_token_in(&fresh)?;
                *current = Module::new(fresh, slot, seen_epoch + 1);
            }
            Err(err) => return Err(err.into()),
        }
        tracing::info!(token = %self.description.label, "PKCS#11 module re-initialised; token found");
        Ok(())
    }

    /// The token's slot in a newly initialised `pkcs11`, which is finalised again when the
    /// token is not there (so the next attempt starts afresh).
    fn find_token_in(&self, pkcs11: &Pkcs11) -> Result<Slot, HsmError> {
        match find_token(pkcs11, &self.module_path, &self.selector) {
            Ok((slot, _)) => Ok(slot),
            Err(error) => {
                if let Err(err) = pkcs11.clone().finalize() {
                    tracing::debug!(error = %HsmError::from(err), "C_Finalize of the instance that did not find the token failed");
                }
                Err(error)
            }
        }
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
        // Every session is owned by a holder of this context, so none outlives it. A call
        // that never returned (see `reinitialise`) keeps its initialisation unfinalised.
        let module = self.module.get_mut().unwrap_or_else(|e| e.into_inner());
        if module.calls.load(Ordering::SeqCst) > 0 {
            return;
        }
        if let Err(err) = module.finalise() {
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
    context: Arc<TokenContext>,
    /// The session and the module epoch it was opened under.
    session: Option<(Session, u64)>,
    read_write: bool,
    /// Increases each time a new session is opened, so callers can drop cached handles.
    generation: u64,
}

impl SessionSlot {
    pub(crate) fn new(context: Arc<TokenContext>, read_write: bool) -> Self {
        SessionSlot {
            context,
            session: None,
            read_write,
            generation: 0,
        }
    }

    /// The epoch of the module's current initialisation.
    pub(crate) fn epoch(&self) -> u64 {
        self.context.epoch()
    }

    /// Re-initialises the module if a call in its initialisation `epoch` hangs; logs a
    /// failure, which the next job's own recovery retries.
    pub(crate) fn reinitialise_after_hang(&self, epoch: u64) {
        if let Err(error) = self.context.reinitialise(epoch, RunningCalls::OneHangs) {
            tracing::warn!(%error, "re-initialising the PKCS#11 module after a call hung failed");
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
                        match self.context.reinitialise(epoch, RunningCalls::Wait) {
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

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.discard_session(self.context.epoch());
    }
}
