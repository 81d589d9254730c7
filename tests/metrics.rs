//! `GET /1.0/metrics` on the admin socket: Prometheus text with the counters
//! of what happened, and never a label a client chose.

mod util;

use serde_json::json;

#[test]
fn counters_follow_what_happened() {
    let server = util::Server::start_with(
        json!([{"name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid(),
                "config": {"user.foo": "bar"}}]),
        &["--max-per-instance", "3"],
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut c = server.connect();
    assert_eq!(c.request("GET", "/1.0/config/user.foo", b"").status, 200);
    assert_eq!(c.request("GET", "/1.0/config/user.foo", b"").status, 200);
    assert_eq!(c.request("GET", "/1.0/../../etc/shadow", b"").status, 404);
    let _ws = util::websocket(&server.socket, "/1.0/events");
    // The fourth connection of c1 (cap 3) and the next are refused.
    let _held = (server.connect(), server.connect());
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(server.refused().status, 503);
    assert_eq!(
        server
            .admin_call("PUT", "/1.0/instances/c1/config/user.foo", b"baz")
            .status,
        200
    );

    let reply = server.admin_call("GET", "/1.0/metrics", b"");
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = reply.text();
    for line in [
        "guestsock_requests_total{endpoint=\"/1.0/config/{key}\",status=\"200\"} 2",
        "guestsock_requests_total{endpoint=\"other\",status=\"404\"} 1",
        "guestsock_requests_total{endpoint=\"/1.0/instances...\",status=\"200\"} 1",
        "guestsock_limits_hit_total{limit=\"per_instance\"} 2",
        "guestsock_events_total{what=\"published\"} 1",
        "guestsock_events_total{what=\"delivered\"} 1",
        "guestsock_connections{kind=\"subscriber\"} 1",
        "guestsock_instances 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    assert!(!text.contains("shadow"));
    assert!(text.contains("guestsock_request_duration_seconds_count"));
}

#[test]
fn stats_shows_the_same_for_a_person() {
    let server = util::Server::start(json!([
        {"name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid()},
    ]));
    assert_eq!(server.get("/1.0").status, 200);
    assert_eq!(server.get("/nope").status, 404);
    let out = util::run_guestsock(
        &["stats", "--admin", server.admin_socket.to_str().unwrap()],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let value = |what: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(what))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(value("instances"), "1", "{text}");
    assert_eq!(value("requests answered"), "2", "{text}");
    assert_eq!(value("2xx"), "1", "{text}");
    assert_eq!(value("4xx"), "1", "{text}");
}

/// The refusals of guest requests are counted by what went wrong: the caller
/// matching no instance, a uid other than its instance's root, the rate
/// limit. Returns the statuses of `asks` requests and the metrics text.
fn refusal_counters(
    instances: serde_json::Value,
    extra: &[&str],
    asks: usize,
) -> (Vec<u16>, String) {
    let server = util::Server::start_with(instances, extra);
    let statuses = (0..asks).map(|_| server.get("/1.0").status).collect();
    (
        statuses,
        server.admin_call("GET", "/1.0/metrics", b"").text(),
    )
}

#[test]
fn refusals_are_counted_by_reason() {
    let me = util::my_uid();
    let has = |text: &str, line: String| {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    };
    let (statuses, text) = refusal_counters(
        json!([{"name": "other", "match": {"uid_range": [me.wrapping_add(1), 1]}}]),
        &[],
        2,
    );
    assert_eq!(statuses, [403, 403]);
    has(
        &text,
        "guestsock_identity_failures_total{reason=\"no_instance\"} 2".into(),
    );
    let (statuses, text) = refusal_counters(
        json!([{"name": "c1", "match": {"uid_range": [me, 1]}, "root_uid": me.wrapping_add(1)}]),
        &[],
        3,
    );
    assert_eq!(statuses, [401, 401, 401]);
    has(
        &text,
        "guestsock_identity_failures_total{reason=\"wrong_uid\"} 3".into(),
    );
    let (statuses, text) = refusal_counters(
        json!([{"name": "c1", "match": {"uid_range": [me, 1]}, "root_uid": me}]),
        &["--rate-limit", "1", "--rate-burst", "1"],
        4,
    );
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert!(limited > 0, "{statuses:?}");
    has(
        &text,
        format!("guestsock_limits_hit_total{{limit=\"rate\"}} {limited}"),
    );
    for reason in [
        "no_instance",
        "ambiguous",
        "unverified",
        "wrong_uid",
        "wrong_listener",
    ] {
        has(
            &text,
            format!("guestsock_identity_failures_total{{reason=\"{reason}\"}} 0"),
        );
    }
}
