//! The configuration loader on arbitrary text.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| hsmca::fuzzing::config(text));
