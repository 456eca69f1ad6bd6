//! CSR parsing, proof-of-possession and profile checks on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| hsmca::fuzzing::csr(bytes));
