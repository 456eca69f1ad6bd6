//! The HSM's health as the service's readiness check sees it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

/// Whether the last operations reached the HSM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthState {
    /// The last operation succeeded.
    Ok,
    /// The last operation failed with a session, login or device error.
    Degraded {
        /// The error, as an operator should read it.
        last_error: String,
        /// When the HSM became degraded.
        since: SystemTime,
    },
}

/// A snapshot of the HSM's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// The current state.
    pub state: HealthState,
    /// How many times a session was reopened after a session, login or device error.
    pub session_resets: u64,
}

/// Shared, cheap-to-update health tracking. Successes on the hot path cost one atomic load.
#[derive(Debug)]
pub(crate) struct HealthMonitor {
    degraded: AtomicBool,
    state: Mutex<HealthState>,
    session_resets: AtomicU64,
}

impl HealthMonitor {
    pub(crate) fn new() -> Self {
        HealthMonitor {
            degraded: AtomicBool::new(false),
            state: Mutex::new(HealthState::Ok),
            session_resets: AtomicU64::new(0),
        }
    }

    pub(crate) fn record_success(&self) {
        if self.degraded.load(Ordering::Acquire) {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            *state = HealthState::Ok;
            self.degraded.store(false, Ordering::Release);
            tracing::info!("HSM healthy again");
        }
    }

    pub(crate) fn record_failure(&self, error: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let since = match &*state {
            HealthState::Degraded { since, .. } => *since,
            HealthState::Ok => SystemTime::now(),
        };
        *state = HealthState::Degraded {
            last_error: error.to_owned(),
            since,
        };
        self.degraded.store(true, Ordering::Release);
    }

    pub(crate) fn record_session_reset(&self) {
        self.session_resets.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn report(&self) -> HealthReport {
        HealthReport {
            state: self.state.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            session_resets: self.session_resets.load(Ordering::Relaxed),
        }
    }
}
