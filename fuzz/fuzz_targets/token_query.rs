//! Fuzz target: see `guestsock::fuzzing::token_query` for the properties checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guestsock::fuzzing::token_query(data));
