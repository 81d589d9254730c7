//! Fuzz target: see `guestsock::fuzzing::http_request` for the properties checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guestsock::fuzzing::http_request(data));
