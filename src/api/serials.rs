//! Serial numbers from the HSM's random number generator, fetched in blocks so that one
//! control-session call serves many requests.

use std::sync::{Arc, Mutex};

use x509_cert::serial_number::SerialNumber;

use crate::hsm::{Hsm, HsmError};
use crate::pki::{SERIAL_LEN, serial_from_random};

/// Serials per HSM call.
const SERIALS_PER_FETCH: usize = 256;

/// A buffer of HSM randomness handed out [`SERIAL_LEN`] bytes at a time. Bytes are used once
/// and dropped as they are taken.
pub struct SerialSource {
    hsm: Arc<Hsm>,
    buffer: Mutex<Vec<u8>>,
}

impl SerialSource {
    /// Draws from `hsm`.
    pub fn new(hsm: Arc<Hsm>) -> Self {
        SerialSource {
            hsm,
            buffer: Mutex::new(Vec::new()),
        }
    }

    /// The next serial; refills from the HSM (on a blocking thread) when the buffer is empty.
    pub async fn next(&self) -> Result<SerialNumber, HsmError> {
        loop {
            if let Some(bytes) = self.take() {
                return Ok(serial_from_random(bytes));
            }
            let hsm = self.hsm.clone();
            let fresh =
                tokio::task::spawn_blocking(move || hsm.random(SERIAL_LEN * SERIALS_PER_FETCH))
                    .await
                    .map_err(|_| HsmError::ShutDown)??;
            self.buffer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&fresh);
        }
    }

    fn take(&self) -> Option<[u8; SERIAL_LEN]> {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        let start = buffer.len().checked_sub(SERIAL_LEN)?;
        let bytes: [u8; SERIAL_LEN] = buffer[start..].try_into().ok()?;
        buffer.truncate(start);
        Some(bytes)
    }
}
