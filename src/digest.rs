//! The one fingerprint format hsmca prints and records: lower-case hex SHA-256.

/// Lower-case hex SHA-256 of `bytes`, as transcripts, audit records and officers compare it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}
