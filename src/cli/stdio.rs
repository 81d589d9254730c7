//! Standard input and output for the commands: reading a body within the
//! admin body limit, printing `--json`, and writing an answer whole, saying
//! what failed to be written.
//!
//! Shared by every room of `cli` and importing none of them; what is
//! printed is each room's.

use std::io::{self, Write};

use serde_json::Value;

use crate::limits::{MAX_ADMIN_BODY_BYTES, read_at_most};

/// Writes `bytes` to standard output, saying what failed to be written.
pub(super) fn write_stdout(bytes: &[u8], what: &str) -> Result<(), String> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| format!("cannot write {what}: {e}"))
}

/// Reads standard input to its end, within the admin body limit.
pub(super) fn read_stdin(what: &str) -> Result<Vec<u8>, String> {
    read_at_most(io::stdin(), MAX_ADMIN_BODY_BYTES as u64)
        .map_err(|e| format!("cannot read {what} from standard input: {e}"))
}

/// Prints `value` as JSON (for `--json`).
pub(super) fn print_json(value: &Value) -> Result<(), String> {
    println!("{value}");
    Ok(())
}
