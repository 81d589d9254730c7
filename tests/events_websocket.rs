//! `GET /1.0/events` over a websocket, with a real client (tungstenite):
//! config and device events in PROTOCOL.md section 5's shapes, in order,
//! filtered by `?type=`, and never a host-only key; pings, closes, and the
//! admin event stream.

mod util;

use serde_json::{Value, json};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Bytes, Message};

fn server() -> util::Server {
    util::Server::start(json!([{
        "name": "c1",
        "match": {"uid_range": [util::my_uid(), 1]},
        "root_uid": util::my_uid(),
        "config": {"user.foo": "bar"},
        "devices": {"eth0": {"type": "nic"}},
    }]))
}

fn put(server: &util::Server, path: &str, body: &[u8]) {
    let reply = server.admin_call("PUT", path, body);
    assert_eq!(reply.status, 200, "{}", reply.text());
}

fn is_timestamp(v: &Value) -> bool {
    let s = v.as_str().unwrap_or_default();
    // 2026-11-22T10:00:00.123456789Z
    s.len() == 30 && s.as_bytes()[10] == b'T' && s.ends_with('Z') && s.as_bytes()[19] == b'.'
}

#[test]
fn config_and_device_events_in_protocol_shape_and_order() {
    let server = server();
    let mut ws = util::websocket(&server.socket, "/1.0/events");
    put(&server, "/1.0/instances/c1/config/user.foo", b"baz");
    let event = util::next_event(&mut ws);
    assert_eq!(event["type"], "config");
    assert!(is_timestamp(&event["timestamp"]), "{event}");
    assert_eq!(
        event["metadata"],
        json!({"key": "user.foo", "old_value": "bar", "value": "baz"})
    );
    assert!(
        event.get("instance").is_none(),
        "guests are not told instance names"
    );

    // Host-only keys never make an event; the next visible one does.
    put(&server, "/1.0/instances/c1/config/volatile.secret", b"x");
    put(
        &server,
        "/1.0/instances/c1/config/cloud-init.user-data",
        b"#cloud-config\n",
    );
    let event = util::next_event(&mut ws);
    assert_eq!(event["metadata"]["key"], "cloud-init.user-data");
    assert_eq!(event["metadata"]["old_value"], "");

    let reply = server.admin_call("DELETE", "/1.0/instances/c1/config/user.foo", b"");
    assert_eq!(reply.status, 200);
    assert_eq!(
        util::next_event(&mut ws)["metadata"],
        json!({"key": "user.foo", "old_value": "baz", "value": ""})
    );

    put(
        &server,
        "/1.0/instances/c1/devices/kvm",
        br#"{"type": "unix-char", "path": "/dev/kvm"}"#,
    );
    let event = util::next_event(&mut ws);
    assert_eq!(event["type"], "device");
    assert_eq!(
        event["metadata"],
        json!({"action": "added", "config": {"type": "unix-char", "path": "/dev/kvm"}, "name": "kvm"})
    );
    put(
        &server,
        "/1.0/instances/c1/devices/kvm",
        br#"{"type": "unix-char", "path": "/dev/kvm2"}"#,
    );
    assert_eq!(util::next_event(&mut ws)["metadata"]["action"], "updated");
    assert_eq!(
        server
            .admin_call("DELETE", "/1.0/instances/c1/devices/eth0", b"")
            .status,
        200
    );
    let event = util::next_event(&mut ws);
    assert_eq!(
        event["metadata"],
        json!({"action": "removed", "config": {"type": "nic"}, "name": "eth0"})
    );

    // Many changes arrive in the order they were made.
    for i in 0..200 {
        put(
            &server,
            "/1.0/instances/c1/config/user.n",
            i.to_string().as_bytes(),
        );
    }
    for i in 0..200 {
        assert_eq!(
            util::next_event(&mut ws)["metadata"]["value"],
            i.to_string()
        );
    }
}

#[test]
fn type_filter_selects_events() {
    let server = server();
    let mut devices_only = util::websocket(&server.socket, "/1.0/events?type=device");
    let mut unknown = util::websocket(&server.socket, "/1.0/events?type=bogus");
    let mut both = util::websocket(&server.socket, "/1.0/events?type=config%2Cdevice");
    put(&server, "/1.0/instances/c1/config/user.foo", b"x");
    put(
        &server,
        "/1.0/instances/c1/devices/d1",
        br#"{"type": "disk"}"#,
    );
    assert_eq!(util::next_event(&mut devices_only)["type"], "device");
    assert_eq!(util::next_event(&mut both)["type"], "config");
    assert_eq!(util::next_event(&mut both)["type"], "device");
    // Nothing at all for an unknown type: the next thing it sees is our close.
    unknown.close(None).unwrap();
    loop {
        match unknown.read() {
            Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => break,
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn ping_is_answered_and_close_is_echoed() {
    let server = server();
    let mut ws = util::websocket(&server.socket, "/1.0/events");
    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Pong(payload) => {
                assert_eq!(&payload[..], b"are you there");
                break;
            }
            Message::Ping(_) => {}
            other => panic!("{other:?}"),
        }
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "bye".into(),
    }))
    .unwrap();
    let echoed = loop {
        match ws.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(echoed.map(|f| u16::from(f.code)), Some(4000));
}

#[test]
fn removing_the_instance_ends_its_subscriptions() {
    let server = server();
    let mut ws = util::websocket(&server.socket, "/1.0/events");
    assert_eq!(
        server.admin_call("DELETE", "/1.0/instances/c1", b"").status,
        200
    );
    let ended = loop {
        match ws.read() {
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(Message::Ping(_)) => {}
            Err(_) => break None,
            Ok(other) => panic!("{other:?}"),
        }
    };
    assert!(matches!(ended, Some(1001) | None), "{ended:?}");
}

#[test]
fn admin_stream_names_each_instance() {
    let server = server();
    let mut admin = util::websocket(&server.admin_socket, "/1.0/events");
    let body = json!({"name": "c2", "match": {"uid_range": [90000, 10]}});
    server.create_instance(&body);
    let event = util::next_event(&mut admin);
    assert_eq!(
        (event["type"].as_str(), event["instance"].as_str()),
        (Some("instance-created"), Some("c2"))
    );

    put(&server, "/1.0/instances/c2/config/volatile.x", b"1");
    let event = util::next_event(&mut admin);
    assert_eq!(event["type"], "config", "the host sees every key");
    assert_eq!(event["instance"], "c2");
    assert_eq!(event["metadata"]["key"], "volatile.x");

    server.guest_ready();
    let event = util::next_event(&mut admin);
    assert_eq!(
        (event["type"].as_str(), event["instance"].as_str()),
        (Some("instance-ready"), Some("c1"))
    );
    put(
        &server,
        "/1.0/instances/c1/state",
        br#"{"state":"Started"}"#,
    );
    let event = util::next_event(&mut admin);
    assert_eq!(event["type"], "state");
    assert_eq!(event["metadata"]["state"], "Started");

    let replaced =
        json!({"name": "c2", "match": {"uid_range": [90000, 10]}, "config": {"user.a": "1"}});
    put(
        &server,
        "/1.0/instances/c2",
        replaced.to_string().as_bytes(),
    );
    assert_eq!(util::next_event(&mut admin)["type"], "instance-updated");
    let event = util::next_event(&mut admin);
    assert_eq!(
        event["metadata"],
        json!({"key": "user.a", "old_value": "", "value": "1"})
    );
    let event = util::next_event(&mut admin);
    assert_eq!(event["metadata"]["key"], "volatile.x");

    assert_eq!(
        server.admin_call("DELETE", "/1.0/instances/c2", b"").status,
        200
    );
    let event = util::next_event(&mut admin);
    assert_eq!(
        (event["type"].as_str(), event["instance"].as_str()),
        (Some("instance-removed"), Some("c2"))
    );

    let mut filtered = util::websocket(&server.admin_socket, "/1.0/events?type=instance-ready");
    put(&server, "/1.0/instances/c1/config/user.z", b"1");
    server.guest_ready();
    assert_eq!(util::next_event(&mut filtered)["type"], "instance-ready");
}

#[test]
fn handshake_errors() {
    let server = server();
    let good = "GET /1.0/events HTTP/1.1\r\nHost: lxd\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut c = server.connect();
    c.send(good.as_bytes());
    let reply = c.read_reply(false);
    assert_eq!(reply.status, 101);
    assert_eq!(
        reply.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    for (from, to, status) in [
        ("Version: 13", "Version: 8", 426),
        (
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Key: c2hvcnQ=",
            400,
        ),
        ("Connection: Upgrade", "Connection: keep-alive", 400),
        ("Upgrade: websocket\r\n", "", 400),
    ] {
        let mut c = server.connect();
        c.send(good.replace(from, to).as_bytes());
        let reply = c.read_reply(false);
        assert_eq!(reply.status, status, "{to}: {}", reply.text());
        if status == 426 {
            assert_eq!(reply.header("sec-websocket-version"), Some("13"));
        }
    }
    let reply = server.connect().request("POST", "/1.0/events", b"");
    assert_eq!((reply.status, reply.header("allow")), (405, Some("GET")));
    // A stranger cannot subscribe.
    let stranger =
        util::Server::start(json!([{"name": "x", "match": {"uid_range": [4000000, 1]}}]));
    let mut c = stranger.connect();
    c.send(good.as_bytes());
    assert_eq!(c.read_reply(false).status, 403);
}
