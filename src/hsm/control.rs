//! The control session: the one read-write session that key generation, key lookup and the
//! other control operations share, lent to one call at a time.
//!
//! A PKCS#11 call may never return (a network HSM's link gone silent). The session is
//! therefore not held under a lock while a call runs: it is taken out, and put back when the
//! call returns. A caller that finds it out for longer than the wait bound takes the call for
//! hung and opens another session (first re-initialising the module the hung call runs in,
//! so a network module gets a new connection); the hung call's session is dropped if it ever
//! comes back.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cryptoki::session::Session;

use super::error::HsmError;
use super::token::{SessionSlot, TokenContext};

/// The control session and who has it.
pub(crate) struct ControlSession {
    context: Arc<TokenContext>,
    state: Mutex<Lent>,
    returned: Condvar,
    /// How long a call may keep the session before the next caller opens another.
    hung_after: Duration,
}

/// Where the control session is.
struct Lent {
    /// The session, while no call has it.
    idle: Option<SessionSlot>,
    /// While a call has it: when the call took it, and the module epoch then.
    taken: Option<(Instant, u64)>,
}

impl ControlSession {
    /// Opens the session now, so that a bad token or PIN fails at once.
    pub(crate) fn open(context: Arc<TokenContext>, hung_after: Duration) -> Result<Self, HsmError> {
        let mut slot = SessionSlot::new(context.clone(), true);
        slot.connect()?;
        Ok(ControlSession {
            context,
            state: Mutex::new(Lent {
                idle: Some(slot),
                taken: None,
            }),
            returned: Condvar::new(),
            hung_after,
        })
    }

    /// Runs `op` on the control session (see [`SessionSlot::run`] for the recovery).
    pub(crate) fn run<T>(
        &self,
        mut op: impl FnMut(&Session) -> Result<T, HsmError>,
    ) -> Result<T, HsmError> {
        let mut slot = self.take();
        let result = slot.run(|session, _| op(session));
        self.give_back(slot);
        result
    }

    fn lock(&self) -> MutexGuard<'_, Lent> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the session, waiting while another call has had it for less than `hung_after`;
    /// past that, opens another.
    fn take(&self) -> SessionSlot {
        let mut lent = self.lock();
        loop {
            if let Some(slot) = lent.idle.take() {
                lent.taken = Some((Instant::now(), self.context.epoch()));
                return slot;
            }
            let (since, epoch) = lent
                .taken
                .unwrap_or_else(|| (Instant::now(), self.context.epoch()));
            let held = since.elapsed();
            if held >= self.hung_after {
                // The next caller waits for this replacement, not for the hung call.
                lent.taken = Some((Instant::now(), self.context.epoch()));
                drop(lent);
                tracing::warn!(
                    after_ms = held.as_millis() as u64,
                    "a PKCS#11 call on the control session has not returned; opening another session"
                );
                let slot = SessionSlot::new(self.context.clone(), true);
                slot.reinitialise_after_hang(epoch);
                return slot;
            }
            lent = self
                .returned
                .wait_timeout(lent, self.hung_after - held)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Puts the session back, unless a replacement is there already (then this one, whose
    /// call hung, is dropped).
    fn give_back(&self, slot: SessionSlot) {
        let mut lent = self.lock();
        let surplus = if lent.idle.is_none() {
            lent.idle = Some(slot);
            lent.taken = None;
            None
        } else {
            Some(slot)
        };
        drop(lent);
        self.returned.notify_one();
        drop(surplus);
    }
}
