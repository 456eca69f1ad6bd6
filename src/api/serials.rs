//! Serial numbers from the HSM's random number generator, fetched in blocks so that one
//! control-session call serves many requests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use x509_cert::serial_number::SerialNumber;

use crate::hsm::{Hsm, HsmError};
use crate::pki::{SERIAL_LEN, serial_from_random};

/// Serials per HSM call.
const SERIALS_PER_FETCH: usize = 256;

/// A buffer of HSM randomness handed out [`SERIAL_LEN`] bytes at a time. Bytes are used once
/// and dropped as they are taken.
pub struct SerialSource {
    hsm: Arc<Hsm>,
    buffer: Arc<Mutex<Vec<u8>>>,
    /// Held by the one refill in progress, for as long as its HSM call runs.
    refill: Arc<tokio::sync::Mutex<()>>,
    /// How long a caller waits for a refill, as for a signature.
    timeout: Duration,
}

impl SerialSource {
    /// Draws from `hsm`; a caller waits at most `timeout` for the HSM.
    pub fn new(hsm: Arc<Hsm>, timeout: Duration) -> Self {
        SerialSource {
            hsm,
            buffer: Arc::new(Mutex::new(Vec::new())),
            refill: Arc::new(tokio::sync::Mutex::new(())),
            timeout,
        }
    }

    /// The next serial; refills from the HSM (on a blocking thread) when the buffer is empty.
    /// Fails with [`HsmError::Timeout`] when the HSM does not answer in time.
    pub async fn next(&self) -> Result<SerialNumber, HsmError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timed_out = || HsmError::Timeout {
            after: self.timeout,
        };
        loop {
            if let Some(bytes) = self.take() {
                return Ok(serial_from_random(bytes));
            }
            // One refill at a time, and its lock travels with the HSM call: a hung HSM holds
            // one blocking thread, not one per waiting request, and a late answer still fills
            // the buffer for the callers after the timeout.
            let guard = tokio::time::timeout_at(deadline, self.refill.clone().lock_owned())
                .await
                .map_err(|_| timed_out())?;
            if self.buffer_len() >= SERIAL_LEN {
                continue;
            }
            let (hsm, buffer) = (self.hsm.clone(), self.buffer.clone());
            let refill = tokio::task::spawn_blocking(move || {
                let _refilling = guard;
                let fresh = hsm.random(SERIAL_LEN * SERIALS_PER_FETCH)?;
                lock(&buffer).extend_from_slice(&fresh);
                Ok::<(), HsmError>(())
            });
            tokio::time::timeout_at(deadline, refill)
                .await
                .map_err(|_| timed_out())?
                .map_err(|_| HsmError::ShutDown)??;
        }
    }

    fn buffer_len(&self) -> usize {
        lock(&self.buffer).len()
    }

    fn take(&self) -> Option<[u8; SERIAL_LEN]> {
        let mut buffer = lock(&self.buffer);
        let start = buffer.len().checked_sub(SERIAL_LEN)?;
        let bytes: [u8; SERIAL_LEN] = buffer[start..].try_into().ok()?;
        buffer.truncate(start);
        Some(bytes)
    }
}

fn lock(buffer: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    buffer.lock().unwrap_or_else(|e| e.into_inner())
}
