//! Vault signing request bodies (JSON fields as Vault reads them) on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|body: &[u8]| hsmca::fuzzing::vault_sign_body(body));
