//! Logging goes through the `log` facade: the real binary honours
//! `RUST_LOG` module filters (`guestsock::server=debug,warn`), shows the
//! lines of the crates underneath (mio) when asked, lets `--log-level`
//! override `RUST_LOG`, and keeps its one-line, no-colour format.

mod util;

use serde_json::json;

/// The info line every start logs, from `guestsock::server`.
const SERVING: &str = "guestsock: serving ";

/// A server whose one instance matches nobody here, so that this test's own
/// connection is a refused, logged (warning) caller.
fn start(extra: &[&str], rust_log: Option<&str>) -> util::Server {
    let env: Vec<(&str, &str)> = rust_log.map(|v| ("RUST_LOG", v)).into_iter().collect();
    let server = util::Server::start_with_env(
        json!([{"name": "c1", "match": {"uid_range": [3_999_000, 1]}}]),
        extra,
        &env,
    );
    // An unrecognised caller: one warning from guestsock::server.
    assert_eq!(server.get("/1.0").status, 403);
    server
}

/// The server's log after it stopped (all lines written).
fn log_of(server: util::Server) -> String {
    let dir = server.stop_keep();
    let log = std::fs::read_dir(&dir.path)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("stderr"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .expect("the server's stderr file");
    for line in log.lines() {
        assert!(line.starts_with("guestsock: "), "{line:?}");
        assert!(!line.contains('\x1b'), "no colours: {line:?}");
    }
    log
}

fn refusal_logged(log: &str) -> bool {
    log.contains("guestsock: warning: unrecognised caller: ")
}

#[test]
fn default_is_info_in_the_old_format() {
    let log = log_of(start(&[], None));
    assert!(log.contains(SERVING), "{log}");
    assert!(refusal_logged(&log), "{log}");
    // The refused caller's cgroup (this test's own), which says which rule
    // would have claimed it, though no cgroup rule is registered.
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    assert!(
        log.contains(&format!(
            "is not part of any registered instance; its cgroup is {own}\n"
        )),
        "{log}"
    );
    assert!(log.contains("guestsock: SIGTERM: stopping"), "{log}");
    assert!(!log.contains("trace: "), "{log}");
}

#[test]
fn a_bare_level_applies_to_every_module() {
    let log = log_of(start(&[], Some("warn")));
    assert!(!log.contains(SERVING), "{log}");
    assert!(refusal_logged(&log), "{log}");
}

#[test]
fn module_filters_are_honoured() {
    // guestsock::server at debug, the rest at warn: the server's info
    // lines show.
    let log = log_of(start(&[], Some("guestsock::server=debug,warn")));
    assert!(log.contains(SERVING), "{log}");
    assert!(refusal_logged(&log), "{log}");
    // Another module at info, the server at warn: they do not.
    let log = log_of(start(&[], Some("guestsock::store=info,warn")));
    assert!(!log.contains(SERVING), "{log}");
    assert!(refusal_logged(&log), "{log}");
    // A prefix that is not a module path covers nothing.
    let log = log_of(start(&[], Some("guestsock::serv=info,error")));
    assert!(!log.contains(SERVING), "{log}");
    assert!(!refusal_logged(&log), "{log}");
}

#[test]
fn the_crates_underneath_are_visible() {
    let log = log_of(start(&[], Some("mio=trace")));
    assert!(
        log.contains("guestsock: trace: mio::poll: registering event source with poller"),
        "{log}"
    );
    // Targets the spec does not name keep the default, info.
    assert!(log.contains(SERVING), "{log}");
    let log = log_of(start(&[], None));
    assert!(!log.contains("mio::"), "{log}");
}

#[test]
fn log_level_overrides_rust_log() {
    let log = log_of(start(&["--log-level", "error"], Some("trace")));
    assert!(!log.contains(SERVING), "{log}");
    assert!(!refusal_logged(&log), "{log}");
    assert!(!log.contains("mio::"), "{log}");
}

#[test]
fn an_unreadable_directive_is_reported_and_the_rest_kept() {
    let log = log_of(start(&[], Some("guestsock::server=loud,warn")));
    assert!(
        log.contains(
            "guestsock: warning: RUST_LOG: \"guestsock::server=loud\" is not TARGET=LEVEL; ignored"
        ),
        "{log}"
    );
    assert!(!log.contains(SERVING), "{log}");
}
