//! Fuzz target: see `guestsock::fuzzing::vm_connection` for the properties checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| guestsock::fuzzing::vm_connection(data));
