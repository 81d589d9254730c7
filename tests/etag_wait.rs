//! Change notification without a websocket (PROTOCOL.md section 5): ETags,
//! `If-None-Match` -> `304`, and `?wait_for_change=true` held until the
//! answer changes or `timeout_sec` passes.

mod util;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

fn server() -> util::Server {
    util::Server::start_with(
        json!([{
            "name": "c1",
            "match": {"uid_range": [util::my_uid(), 1]},
            "root_uid": util::my_uid(),
            "config": {"user.foo": "bar"},
        }]),
        &["--max-per-instance", "1000", "--rate-limit", "0"],
    )
}

fn get(c: &mut util::Client, path: &str, if_none_match: Option<&str>) -> util::Reply {
    let extra = if_none_match
        .map(|t| format!("If-None-Match: {t}\r\n"))
        .unwrap_or_default();
    c.send(format!("GET {path} HTTP/1.1\r\nHost: lxd\r\n{extra}\r\n").as_bytes());
    c.read_reply(false)
}

/// Sets config keys of c1 from another thread through the admin API, each
/// `(milliseconds after the previous, key, value)` in turn.
fn set_later(
    server: &util::Server,
    steps: &[(u64, &'static str, &'static [u8])],
) -> thread::JoinHandle<()> {
    let admin_socket = server.admin_socket.clone();
    let steps = steps.to_vec();
    thread::spawn(move || {
        let mut admin = util::Client::connect(&admin_socket);
        for (millis, key, value) in steps {
            thread::sleep(Duration::from_millis(millis));
            let path = format!("/1.0/instances/c1/config/{key}");
            assert_eq!(admin.request("PUT", &path, value).status, 200);
        }
    })
}

#[test]
fn etags_and_not_modified() {
    let server = server();
    let mut c = server.connect();
    for path in [
        "/1.0/config",
        "/1.0/config/user.foo",
        "/1.0/devices",
        "/1.0/meta-data",
    ] {
        let first = get(&mut c, path, None);
        let tag = first
            .header("etag")
            .unwrap_or_else(|| panic!("{path} has no ETag"))
            .to_string();
        assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
        let again = get(&mut c, path, Some(&tag));
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag"), Some(tag.as_str()));
        assert_eq!(
            get(&mut c, path, Some("\"other\", W/".to_string().as_str())).status,
            200
        );
        assert_eq!(
            get(&mut c, path, Some(&format!("\"x\", W/{tag}"))).status,
            304
        );
    }
    let before = get(&mut c, "/1.0/config/user.foo", None)
        .header("etag")
        .unwrap()
        .to_string();
    assert_eq!(
        server
            .admin_call("PUT", "/1.0/instances/c1/config/user.foo", b"baz")
            .status,
        200
    );
    let after = get(&mut c, "/1.0/config/user.foo", Some(&before));
    assert_eq!((after.status, after.text().as_str()), (200, "baz"));
    assert_ne!(after.header("etag"), Some(before.as_str()));
    // An unrelated key does not move this key's tag.
    let tag = after.header("etag").unwrap().to_string();
    assert_eq!(
        server
            .admin_call("PUT", "/1.0/instances/c1/config/user.other", b"1")
            .status,
        200
    );
    assert_eq!(get(&mut c, "/1.0/config/user.foo", Some(&tag)).status, 304);
    // Untagged paths have none.
    assert_eq!(get(&mut c, "/1.0", None).header("etag"), None);
}

#[test]
fn wait_for_change_answers_when_the_value_moves() {
    let server = server();
    let mut c = server.connect();
    let tag = get(&mut c, "/1.0/config/user.foo", None)
        .header("etag")
        .unwrap()
        .to_string();
    // A change elsewhere does not wake it; the second one does.
    let setter = set_later(
        &server,
        &[(300, "user.other", b"1"), (100, "user.foo", b"new")],
    );
    let start = Instant::now();
    let reply = get(
        &mut c,
        "/1.0/config/user.foo?wait_for_change=true&timeout_sec=30",
        Some(&tag),
    );
    assert_eq!((reply.status, reply.text().as_str()), (200, "new"));
    assert!(
        start.elapsed() >= Duration::from_millis(350),
        "answered before the change"
    );
    setter.join().unwrap();
    // The connection goes on serving.
    assert_eq!(get(&mut c, "/1.0/config/user.foo", None).text(), "new");

    // `last_etag=` works like If-None-Match, and a key that is not set yet
    // can be waited for.
    let missing = get(&mut c, "/1.0/config/user.later", None);
    assert_eq!(missing.status, 404);
    let tag = missing
        .header("etag")
        .unwrap()
        .trim_matches('"')
        .to_string();
    let setter = set_later(&server, &[(200, "user.later", b"here")]);
    let reply = get(
        &mut c,
        &format!("/1.0/config/user.later?wait_for_change=1&last_etag=%22{tag}%22"),
        None,
    );
    assert_eq!((reply.status, reply.text().as_str()), (200, "here"));
    setter.join().unwrap();
}

#[test]
fn wait_for_change_times_out_with_the_unchanged_value() {
    let server = server();
    let mut c = server.connect();
    let tag = get(&mut c, "/1.0/config", None)
        .header("etag")
        .unwrap()
        .to_string();
    let start = Instant::now();
    let reply = get(
        &mut c,
        "/1.0/config?wait_for_change=true&timeout_sec=1",
        Some(&tag),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!(["/1.0/config/user.foo"]));
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );
    // Without a tag, or with a stale one, it answers at once.
    let start = Instant::now();
    assert_eq!(
        get(&mut c, "/1.0/config?wait_for_change=true", None).status,
        200
    );
    assert_eq!(
        get(
            &mut c,
            "/1.0/config?wait_for_change=true",
            Some("\"stale\"")
        )
        .status,
        200
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn bad_wait_parameters_are_refused() {
    let server = server();
    let mut c = server.connect();
    let tag = get(&mut c, "/1.0/config", None)
        .header("etag")
        .unwrap()
        .to_string();
    for query in [
        "wait_for_change=true&timeout_sec=301",
        "wait_for_change=true&timeout_sec=-1",
        "wait_for_change=true&timeout_sec=x",
        "wait_for_change=maybe",
    ] {
        let mut c = server.connect();
        let reply = get(&mut c, &format!("/1.0/config?{query}"), Some(&tag));
        assert_eq!(reply.status, 400, "{query}");
    }
}

#[test]
fn many_waiters_are_all_woken_and_others_unaffected() {
    let server = server();
    let tag = server
        .get("/1.0/config/user.foo")
        .header("etag")
        .unwrap()
        .to_string();
    let mut waiters: Vec<util::Client> = (0..200)
        .map(|_| {
            let mut c = server.connect();
            c.send(format!("GET /1.0/config/user.foo?wait_for_change=true&timeout_sec=60 HTTP/1.1\r\nHost: lxd\r\nIf-None-Match: {tag}\r\n\r\n").as_bytes());
            c
        })
        .collect();
    // A waiting client that goes away costs nothing.
    drop(waiters.pop());
    assert_eq!(server.get("/1.0/config/user.foo").text(), "bar");
    assert_eq!(
        server
            .admin_call("PUT", "/1.0/instances/c1/config/user.foo", b"go")
            .status,
        200
    );
    for c in &mut waiters {
        assert_eq!(c.read_reply(false).text(), "go");
    }
}
