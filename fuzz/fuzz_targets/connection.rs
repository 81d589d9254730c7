//! Fuzz target: see `guestsock::fuzzing::connection` for the properties checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guestsock::fuzzing::connection(data));
