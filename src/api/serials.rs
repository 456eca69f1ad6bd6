//! Serial numbers from the HSM's random number generator, fetched in blocks so that one
//! HSM call serves many requests.

use std::sync::Mutex;
use std::time::Duration;

use x509_cert::serial_number::SerialNumber;

use crate::hsm::{HsmError, SignerPool};
use crate::pki::{SERIAL_LEN, serial_from_random};

/// Serials per HSM call.
const SERIALS_PER_FETCH: usize = 256;

/// Serials left when the request that takes one fetches the next block: the fetch waits its
/// turn in the HSM pool's queue behind the signatures, and the other requests draw from what
/// is left meanwhile instead of all waiting for it.
const FETCH_BELOW: usize = 64;

/// A buffer of HSM randomness handed out [`SERIAL_LEN`] bytes at a time. Bytes are used once
/// and dropped as they are taken.
pub struct SerialSource {
    buffer: Mutex<Vec<u8>>,
    /// Held by the one refill in progress while its caller waits for the HSM.
    refill: tokio::sync::Mutex<()>,
    /// How long a caller waits for a refill, as for a signature.
    timeout: Duration,
}

impl SerialSource {
    /// An empty source; a caller waits at most `timeout` for the HSM.
    pub fn new(timeout: Duration) -> Self {
        SerialSource {
            buffer: Mutex::new(Vec::new()),
            refill: tokio::sync::Mutex::new(()),
            timeout,
        }
    }

    /// The next serial; fetches the next block from the HSM through `pool` when the buffer
    /// runs low, and waits for it only when the buffer is empty (a pool session, so a call
    /// that hangs is the watchdog's to replace, and holds nothing that later fetches need).
    /// Fails with [`HsmError::Timeout`] when the HSM does not answer in time.
    pub async fn next(&self, pool: &SignerPool) -> Result<SerialNumber, HsmError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some((bytes, left)) = self.take() {
                if left < FETCH_BELOW * SERIAL_LEN
                    && let Ok(_refilling) = self.refill.try_lock()
                {
                    // This request has its serial: a failed fetch is for the next to retry.
                    let _ = self.fetch(pool, deadline).await;
                }
                return Ok(serial_from_random(bytes));
            }
            // One refill at a time: the callers behind it take from what it fetched.
            let _refilling = tokio::time::timeout_at(deadline, self.refill.lock())
                .await
                .map_err(|_| self.timed_out())?;
            if self.buffer_len() >= SERIAL_LEN {
                continue;
            }
            self.fetch(pool, deadline).await?;
        }
    }

    /// Fetches one block into the buffer, by `deadline`; the caller holds `refill`.
    async fn fetch(
        &self,
        pool: &SignerPool,
        deadline: tokio::time::Instant,
    ) -> Result<(), HsmError> {
        let fresh = tokio::time::timeout_at(deadline, pool.random(SERIAL_LEN * SERIALS_PER_FETCH))
            .await
            .map_err(|_| self.timed_out())??;
        lock(&self.buffer).extend_from_slice(&fresh);
        Ok(())
    }

    fn timed_out(&self) -> HsmError {
        HsmError::Timeout {
            after: self.timeout,
        }
    }

    fn buffer_len(&self) -> usize {
        lock(&self.buffer).len()
    }

    /// One serial's bytes, and how many bytes are left.
    fn take(&self) -> Option<([u8; SERIAL_LEN], usize)> {
        let mut buffer = lock(&self.buffer);
        let start = buffer.len().checked_sub(SERIAL_LEN)?;
        let bytes: [u8; SERIAL_LEN] = buffer[start..].try_into().ok()?;
        buffer.truncate(start);
        Some((bytes, start))
    }
}

fn lock(buffer: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    buffer.lock().unwrap_or_else(|e| e.into_inner())
}
