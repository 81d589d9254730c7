//! Where guestsock refuses for a reason LXD also refuses for, the real binary
//! answers LXD's status, content type and body byte for byte (canonical/lxd
//! lxd/devlxd.go), and every HTTP answer, whatever its kind, carries a
//! `Date` header with the current time (RFC 9110 6.6.1).

mod util;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

fn server() -> util::Server {
    util::Server::start(json!([{
        "name": "c1",
        "match": {"uid_range": [util::my_uid(), 1]},
        "root_uid": util::my_uid(),
        "config": {"user.foo": "bar", "security.nesting": "true"},
    }]))
}

fn assert_plain(reply: &util::Reply, status: u16, body: &str) {
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (status, body),
        "{reply:?}"
    );
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
}

#[test]
fn a_key_outside_user_and_cloud_init_is_forbidden_as_lxd_says_it() {
    let server = server();
    // LXD's test suite: `[ "$(devlxd-client security.nesting)" = "Forbidden" ]`.
    assert_plain(
        &server.get("/1.0/config/security.nesting"),
        403,
        "Forbidden\n",
    );
    assert_plain(&server.get("/1.0/config/volatile.x"), 403, "Forbidden\n");
    assert_eq!(server.get("/1.0/config/user.foo").text(), "bar");
}

#[test]
fn image_export_is_refused_as_without_security_devlxd_images() {
    let server = server();
    for fingerprint in ["0123456789abcdef", "anything"] {
        let reply = server.get(&format!("/1.0/images/{fingerprint}/export"));
        assert_eq!(reply.status, 403, "{}", reply.text());
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
        // LXD's main-API error object, then Fprintln's extra newline.
        assert_eq!(
            reply.text(),
            "{\"type\":\"error\",\"status\":\"\",\"status_code\":0,\"operation\":\"\",\"error_code\":403,\"error\":\"Forbidden\",\"metadata\":null}\n\n"
        );
        // What LXD's Go client reports: the `error` field.
        assert_eq!(reply.json()["error"], "Forbidden");
    }
    assert_eq!(server.get("/1.0/images/x/export/").status, 404);
}

#[test]
fn ubuntu_pro_guest_attachment_is_off() {
    let server = server();
    let reply = server.get("/1.0/ubuntu-pro");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.text(), "{\"guest_attach\":\"off\"}\n");
    let reply = server
        .connect()
        .request("POST", "/1.0/ubuntu-pro/token", b"");
    assert_plain(
        &reply,
        403,
        "Failed getting an Ubuntu Pro guest token: Guest attachment not allowed\n",
    );
    let reply = server.get("/1.0/ubuntu-pro/token");
    assert_eq!((reply.status, reply.header("allow")), (405, Some("POST")));
}

/// Seconds since the epoch of an IMF-fixdate, read by GNU date (not by
/// guestsock's own code).
fn epoch_of(date: &str) -> u64 {
    let out = Command::new("date")
        .args(["-u", "-d", date, "+%s"])
        .output()
        .expect("run date");
    assert!(out.status.success(), "date cannot read {date:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Checks that a response head has exactly one `Date`, an IMF-fixdate
/// within a few seconds of now.
fn assert_dated(what: &str, date: Option<&str>) {
    let date = date.unwrap_or_else(|| panic!("{what}: no Date header"));
    assert_eq!(date.len(), 29, "{what}: {date:?} is not an IMF-fixdate");
    assert!(date.ends_with(" GMT"), "{what}: {date:?}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let then = epoch_of(date);
    assert!(
        then <= now && now - then <= 5,
        "{what}: Date {date:?} is {then}, now is {now}"
    );
}

/// The head of a response that has no length (a stream or a 101), read
/// line by line.
fn raw_head(stream: &mut UnixStream, request: &str) -> String {
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" || line.is_empty() {
            return head;
        }
    }
}

fn date_in(head: &str) -> Option<&str> {
    let dates: Vec<&str> = head
        .lines()
        .filter_map(|l| l.strip_prefix("Date: "))
        .collect();
    assert!(dates.len() <= 1, "more than one Date: {head}");
    dates.first().copied()
}

#[test]
fn every_answer_carries_a_date() {
    let server = util::Server::start_with(
        json!([{
            "name": "c1",
            "match": {"uid_range": [util::my_uid(), 1]},
            "root_uid": util::my_uid(),
            "config": {"user.foo": "bar"},
        }]),
        &["--max-per-instance", "3"],
    );
    let mut guest = server.connect();
    let ok = guest.request("GET", "/1.0", b"");
    assert_dated("guest 200", ok.header("date"));
    let raw = guest.request("GET", "/1.0/config/user.foo", b"");
    assert_dated("guest raw value", raw.header("date"));
    let tag = raw.header("etag").unwrap().to_owned();
    guest.send(
        format!("GET /1.0/config/user.foo HTTP/1.1\r\nHost: lxd\r\nIf-None-Match: {tag}\r\n\r\n")
            .as_bytes(),
    );
    let not_modified = guest.read_reply(false);
    assert_eq!(not_modified.status, 304);
    assert_dated("guest 304", not_modified.header("date"));
    let head = guest.request("HEAD", "/1.0", b"");
    assert_dated("guest HEAD", head.header("date"));
    assert_dated(
        "guest 404",
        guest.request("GET", "/nowhere", b"").header("date"),
    );
    assert_dated(
        "guest 405",
        guest.request("DELETE", "/1.0", b"").header("date"),
    );
    let mut bad = server.connect();
    bad.send(b"NOT HTTP\r\n\r\n");
    assert_dated("guest 400", bad.read_reply(false).header("date"));
    // Closed once answered: it no longer counts against the cap below.
    assert!(bad.is_closed_by_server());

    let mut stream = UnixStream::connect(&server.socket).unwrap();
    stream.set_read_timeout(Some(util::PATIENCE)).unwrap();
    let head = raw_head(&mut stream, "GET /1.0/events HTTP/1.1\r\nHost: lxd\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_dated("event stream", date_in(&head));

    let mut ws = UnixStream::connect(&server.socket).unwrap();
    ws.set_read_timeout(Some(util::PATIENCE)).unwrap();
    let head = raw_head(
        &mut ws,
        "GET /1.0/events HTTP/1.1\r\nHost: lxd\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert_dated("websocket 101", date_in(&head));

    // Three connections are open for c1 (guest, stream, websocket): the
    // next is refused at accept with 503.
    let refused = server.refused();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_dated("503 over a cap", refused.header("date"));

    let admin = server.admin_call("GET", "/1.0", b"");
    assert_eq!(admin.status, 200);
    assert_dated("admin 200", admin.header("date"));
    let admin = server.admin_call("GET", "/1.0/instances/nope", b"");
    assert_eq!(admin.status, 404);
    assert_dated("admin 404", admin.header("date"));
    let metrics = server.admin_call("GET", "/1.0/metrics", b"");
    assert_dated("admin metrics", metrics.header("date"));
}
