//! Certificate serial numbers: 128 random bits from the signer's RNG.

use x509_cert::serial_number::SerialNumber;

use super::{PkiError, Signer};

/// A positive 17-byte serial carrying 128 random bits from the signer's RNG (the HSM's, for
/// HSM keys): a fixed `0x01` byte, then 16 random bytes. The prefix keeps it positive and its
/// length fixed without spending random bits, well inside RFC 5280's 20 octets and far above
/// the 64 random bits CAs must use.
pub fn random_serial(signer: &dyn Signer) -> Result<SerialNumber, PkiError> {
    let bytes: [u8; SERIAL_LEN] = signer
        .random(SERIAL_LEN)?
        .try_into()
        .map_err(|_| PkiError::input("serial number", "the RNG returned the wrong length"))?;
    Ok(serial_from_random(bytes))
}

/// Bytes of randomness a serial number takes: 128 bits.
pub const SERIAL_LEN: usize = 16;

/// The serial made of `random` as [`random_serial`] describes.
pub fn serial_from_random(random: [u8; SERIAL_LEN]) -> SerialNumber {
    let mut bytes = [0x01; SERIAL_LEN + 1];
    bytes[1..].copy_from_slice(&random);
    SerialNumber::new(&bytes).expect("17 bytes of a positive integer are a valid serial")
}
