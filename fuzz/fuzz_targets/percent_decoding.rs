//! Fuzz target: see `guestsock::fuzzing::percent_decoding` for the properties checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guestsock::fuzzing::percent_decoding(data));
