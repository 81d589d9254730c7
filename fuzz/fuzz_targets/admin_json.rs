//! Fuzz target: see `guestsock::fuzzing::admin_json` for the properties checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guestsock::fuzzing::admin_json(data));
