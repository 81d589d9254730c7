//! SIGTERM: stop accepting, end websockets with 1001, answer waiting
//! requests, finish answers in flight, keep state, exit 0 promptly.

mod util;

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::json;

#[test]
fn sigterm_ends_everything_cleanly_and_keeps_state() {
    let mut server = util::Server::start(json!([{
        "name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid(),
        "config": {"user.foo": "bar"},
    }]));
    assert_eq!(
        server
            .admin_call("PUT", "/1.0/instances/c1/config/user.kept", b"yes")
            .status,
        200
    );
    let mut ws = util::websocket(&server.socket, "/1.0/events");
    let mut idle = server.connect();
    assert_eq!(
        idle.request("GET", "/1.0/config/user.foo", b"").text(),
        "bar"
    );
    let mut waiter = server.connect();
    let tag = waiter
        .request("GET", "/1.0/config/user.foo", b"")
        .header("etag")
        .unwrap()
        .to_string();
    waiter.send(format!("GET /1.0/config/user.foo?wait_for_change=true&timeout_sec=300 HTTP/1.1\r\nHost: lxd\r\nIf-None-Match: {tag}\r\n\r\n").as_bytes());
    std::thread::sleep(Duration::from_millis(200));

    let start = Instant::now();
    let status = server.stop();
    assert!(status.success(), "{status}: {}", server.stderr());
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );

    // The websocket was told the server is going away.
    let code = loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(code, Some(1001));
    // The waiting request got the value there is, then the connection closed.
    let reply = waiter.read_reply(false);
    assert_eq!((reply.status, reply.text().as_str()), (200, "bar"));
    let mut rest = Vec::new();
    idle.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert!(
        !server.socket.exists() && !server.admin_socket.exists(),
        "sockets removed"
    );
    assert!(server.stderr().contains("stopping"), "{}", server.stderr());

    // And what was acknowledged is there on the next start.
    let dir = util::TempDir {
        path: std::mem::take(&mut server.dir.path),
    };
    drop(server);
    let server = util::Server::start_in(dir, &[]);
    assert_eq!(server.get("/1.0/config/user.kept").text(), "yes");
}

#[test]
fn a_connection_whose_first_request_was_a_wait_does_not_hold_the_stop() {
    let mut server = util::Server::start(json!([{
        "name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid(),
        "config": {"user.foo": "bar"},
    }]));
    let tag = server
        .get("/1.0/config/user.foo")
        .header("etag")
        .unwrap()
        .to_string();
    let mut waiter = server.connect();
    waiter.send(format!("GET /1.0/config/user.foo?wait_for_change=true HTTP/1.1\r\nHost: lxd\r\nIf-None-Match: {tag}\r\n\r\n").as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    assert!(server.stop().success());
    // Answered at once, then closed: not kept for the 5 s grace.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}: {}",
        start.elapsed(),
        server.stderr()
    );
    assert_eq!(waiter.read_reply(false).text(), "bar");
}
