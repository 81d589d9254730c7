//! Replays every fuzz seed and every input that ever broke a fuzz target
//! (`fuzz/seeds/`, `fuzz/regressions/`) through the target's properties.

use std::fs;
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = fs::read(&path).unwrap();
            eprintln!("{}", path.display());
            check(&bytes);
            count += 1;
        }
    }
    assert!(count > 0, "no seeds for {target}");
}

#[test]
fn http_request() {
    replay("http_request", guestsock::fuzzing::http_request);
}

#[test]
fn http_response() {
    replay("http_response", guestsock::fuzzing::http_response);
}

#[test]
fn ws_reader() {
    replay("ws_reader", guestsock::fuzzing::ws_reader);
}

#[test]
fn admin_json() {
    replay("admin_json", guestsock::fuzzing::admin_json);
}

#[test]
fn percent_decoding() {
    replay("percent_decoding", guestsock::fuzzing::percent_decoding);
}

#[test]
fn token_query() {
    replay("token_query", guestsock::fuzzing::token_query);
}

#[test]
fn connection() {
    replay("connection", guestsock::fuzzing::connection);
}

#[test]
fn vm_connection() {
    replay("vm_connection", guestsock::fuzzing::vm_connection);
}
