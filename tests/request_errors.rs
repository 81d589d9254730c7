//! How the real server reads requests: every request-level error status of
//! PROTOCOL.md section 2, requests split across reads and pipelined in one,
//! HTTP/1.0 and keep-alive, and that one client's garbage costs no one else.

mod util;

use std::io::Read;
use std::thread;
use std::time::Duration;

use serde_json::json;

/// Rate limiting is off: these tests send hundreds of requests at once
/// (tests/limits.rs tests the limiter).
fn server() -> util::Server {
    util::Server::start_with(
        json!([{
            "name": "c1",
            "match": {"uid_range": [util::my_uid(), 1]},
            "root_uid": util::my_uid(),
            "config": {"user.foo": "bar"},
        }]),
        &["--rate-limit", "0"],
    )
}

/// Sends `raw` on a fresh connection and reads one answer; the server must
/// then close the connection.
fn answer_then_close(server: &util::Server, raw: &[u8]) -> util::Reply {
    let mut c = server.connect();
    c.send(raw);
    let reply = c.read_reply(false);
    assert_eq!(reply.header("connection"), Some("close"), "{reply:?}");
    assert!(
        c.is_closed_by_server(),
        "connection left open after {reply:?}"
    );
    reply
}

#[test]
fn each_request_error_gets_its_status() {
    let server = server();
    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: lxd\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: lxd\r\n{}\r\n",
        (0..100)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"GARBAGE\r\n\r\n".to_vec(), 400, "malformed"),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400, "Host"),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            400,
            "Host",
        ),
        (b"GET / HTTP/3.0\r\nHost: lxd\r\n\r\n".to_vec(), 400, ""),
        (
            b"GET / HTTP/1.1\r\nHost: lxd\r\nContent-Length: x\r\n\r\n".to_vec(),
            400,
            "Content-Length",
        ),
        (huge_header.into_bytes(), 431, ""),
        (many_headers.into_bytes(), 431, ""),
        (
            b"PATCH /1.0 HTTP/1.1\r\nHost: lxd\r\nContent-Length: 999999999\r\n\r\n".to_vec(),
            413,
            "",
        ),
        (
            b"PATCH /1.0 HTTP/1.1\r\nHost: lxd\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            501,
            "",
        ),
    ];
    for (raw, status, needle) in cases {
        let reply = answer_then_close(&server, &raw);
        assert_eq!(
            reply.status,
            status,
            "{:?}: {}",
            String::from_utf8_lossy(&raw[..40.min(raw.len())]),
            reply.text()
        );
        assert_eq!(
            reply.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert!(reply.text().contains(needle), "{}", reply.text());
    }
    // The server is unharmed.
    assert_eq!(server.get("/1.0/config/user.foo").text(), "bar");
}

#[test]
fn body_over_the_limit_is_refused_before_it_is_read() {
    let server = server();
    let mut c = server.connect();
    c.send(b"PATCH /1.0 HTTP/1.1\r\nHost: lxd\r\nContent-Length: 1000000\r\n\r\n");
    // Some of the body follows; the answer comes without waiting for the
    // rest (the server may already have answered and closed: a write error
    // here is the point, not a failure).
    let _ = std::io::Write::write_all(&mut c.stream, &[b'x'; 10000]);
    let reply = c.read_reply(false);
    assert_eq!(reply.status, 413);
}

#[test]
fn a_request_fed_one_byte_at_a_time() {
    let server = server();
    let mut c = server.connect();
    let raw = b"PATCH /1.0 HTTP/1.1\r\nHost: lxd\r\nContent-Length: 17\r\n\r\n{\"state\":\"Ready\"}GET /1.0/config/user.foo HTTP/1.1\r\nHost: lxd\r\n\r\n";
    for byte in raw {
        c.send(&[*byte]);
        thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(c.read_reply(false).status, 200);
    assert_eq!(c.read_reply(false).text(), "bar");
    assert_eq!(server.get("/1.0").json()["state"], "Ready");
}

#[test]
fn body_arriving_after_the_head() {
    let server = server();
    let mut c = server.connect();
    c.send(b"PATCH /1.0 HTTP/1.1\r\nHost: lxd\r\nContent-Length: 17\r\n\r\n{\"state\":");
    thread::sleep(Duration::from_millis(50));
    c.send(b"\"Ready\"}");
    assert_eq!(c.read_reply(false).status, 200);
    assert_eq!(server.get("/1.0").json()["state"], "Ready");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = server();
    let mut c = server.connect();
    let mut raw = Vec::new();
    let paths = [
        "/1.0/config/user.foo",
        "/",
        "/nope",
        "/1.0/config/user.foo",
        "/1.0",
    ];
    for _ in 0..50 {
        for path in paths {
            raw.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: lxd\r\n\r\n").as_bytes());
        }
    }
    c.send(&raw);
    for _ in 0..50 {
        assert_eq!(c.read_reply(false).text(), "bar");
        assert_eq!(c.read_reply(false).json(), json!(["/1.0"]));
        assert_eq!(c.read_reply(false).status, 404);
        assert_eq!(c.read_reply(false).text(), "bar");
        assert_eq!(c.read_reply(false).json()["api_version"], "1.0");
    }
}

#[test]
fn a_client_that_never_reads_its_pipelined_answers() {
    // Thousands of pipelined requests from a client that does not read: the
    // server stops reading once its output bound is reached instead of
    // buffering without limit, and serves others meanwhile.
    let server = server();
    let mut hog = server.connect();
    hog.stream.set_nonblocking(true).unwrap();
    let one = b"GET /1.0 HTTP/1.1\r\nHost: lxd\r\n\r\n";
    let mut sent = 0usize;
    let mut blocked = 0;
    while blocked < 20 && sent < 64 << 20 {
        match std::io::Write::write(&mut hog.stream, one) {
            Ok(n) => sent += n,
            Err(_) => {
                blocked += 1;
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
    assert!(blocked >= 20, "the server kept reading {sent} bytes");
    assert_eq!(server.get("/1.0/config/user.foo").text(), "bar");
}

#[test]
fn http10_closes_unless_keep_alive() {
    let server = server();
    let reply = answer_then_close(&server, b"GET /1.0/config/user.foo HTTP/1.0\r\n\r\n");
    assert_eq!(reply.text(), "bar");

    let mut c = server.connect();
    c.send(b"GET /1.0/config/user.foo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let reply = c.read_reply(false);
    assert_eq!(reply.header("connection"), Some("keep-alive"));
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read_reply(false).json(), json!(["/1.0"]));
}

#[test]
fn connection_close_is_honoured() {
    let server = server();
    let reply = answer_then_close(
        &server,
        b"GET / HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status, 200);
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let server = server();
    let mut c = server.connect();
    for _ in 0..1000 {
        assert_eq!(c.request("GET", "/1.0/config/user.foo", b"").text(), "bar");
    }
}

#[test]
fn half_closed_client_still_gets_its_answer() {
    let server = server();
    let mut c = server.connect();
    c.send(b"GET /1.0/config/user.foo HTTP/1.1\r\nHost: lxd\r\n\r\n");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.read_reply(false).text(), "bar");
    let mut rest = Vec::new();
    c.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

/// A field that HTTP allows once only and that guestsock acts on, sent
/// twice (same value, different values, or a name in another case), is
/// `400` naming the field, and the connection closes; a field that may
/// repeat (a list, or one guestsock does not read) still gets `200`.
#[test]
fn a_field_allowed_once_is_refused_twice() {
    let server = server();
    let websocket = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    // The field, two values, the path, and the other headers the request
    // needs to reach the field.
    let fields: [(&str, [&str; 2], &str, &str); 6] = [
        ("Host", ["lxd", "elsewhere"], "/1.0", ""),
        ("Content-Length", ["0", "2"], "/1.0", "Host: lxd\r\n"),
        (
            "Content-Type",
            ["application/json", "text/plain"],
            "/1.0",
            "Host: lxd\r\n",
        ),
        (
            "Guestsock-Identity",
            ["true", "false"],
            "/1.0/identity/token?audience=a",
            "Host: lxd\r\n",
        ),
        (
            "Sec-WebSocket-Key",
            ["dGhlIHNhbXBsZSBub25jZQ==", "AQIDBAUGBwgJCgsMDQ4PEA=="],
            "/1.0/events",
            "Host: lxd\r\nSec-WebSocket-Version: 13\r\n",
        ),
        (
            "Sec-WebSocket-Version",
            ["13", "8"],
            "/1.0/events",
            "Host: lxd\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ),
    ];
    for (name, [one, other], path, needs) in fields {
        let needs = if path == "/1.0/events" {
            format!("{needs}{websocket}")
        } else {
            needs.to_owned()
        };
        let lower = name.to_ascii_lowercase();
        for (first, second) in [
            (format!("{name}: {one}"), format!("{name}: {one}")),
            (format!("{name}: {one}"), format!("{name}: {other}")),
            (format!("{name}: {other}"), format!("{name}: {one}")),
            (
                format!("{lower}: {one}"),
                format!("{}: {one}", name.to_ascii_uppercase()),
            ),
        ] {
            let raw = format!("GET {path} HTTP/1.1\r\n{first}\r\n{needs}{second}\r\n\r\n");
            let reply = answer_then_close(&server, raw.as_bytes());
            assert_eq!(reply.status, 400, "{raw:?}: {}", reply.text());
            assert_eq!(
                reply.text(),
                format!("the header field {name} appears more than once; send it once\n"),
                "{raw:?}"
            );
        }
    }

    // Lists, and fields guestsock does not read, may repeat.
    let mut c = server.connect();
    c.send(
        b"GET /1.0/config/user.foo HTTP/1.1\r\nHost: lxd\r\nConnection: keep-alive\r\n\
          Connection: keep-alive\r\nAccept: text/plain\r\nAccept: */*\r\nX-Trace: 1\r\nX-Trace: 2\r\n\
          If-None-Match: \"no\"\r\nIf-None-Match: \"nor-this\"\r\n\r\n",
    );
    let reply = c.read_reply(false);
    assert_eq!((reply.status, reply.text()), (200, "bar".to_owned()));
    // Kept open: the next request on it is served.
    assert_eq!(c.request("GET", "/1.0/config/user.foo", b"").text(), "bar");
}
