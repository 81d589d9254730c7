//! Fuzz target: see `guestsock::fuzzing::ws_reader` for the properties checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guestsock::fuzzing::ws_reader(data));
