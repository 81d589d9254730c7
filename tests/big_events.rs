//! An event larger than a subscriber's queue bound (a config value of up to
//! 1 MiB) reaches every subscriber that reads: a guest websocket, a guest
//! JSON stream and the host's admin stream. The bound cuts off only those
//! that fail to read (tests/slow_subscriber.rs).

mod util;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;

use serde_json::json;

/// A JSON-lines event stream (`GET /1.0/events` without an upgrade) on
/// `socket`: its events arrive on the returned channel, as they are read.
fn stream(socket: &std::path::Path) -> mpsc::Receiver<serde_json::Value> {
    let mut conn = UnixStream::connect(socket).expect("connect");
    conn.set_read_timeout(Some(util::PATIENCE))
        .expect("timeout");
    conn.write_all(b"GET /1.0/events HTTP/1.1\r\nHost: lxd\r\n\r\n")
        .expect("subscribe");
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    while line != "\r\n" {
        line.clear();
        reader.read_line(&mut line).expect("header");
    }
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let event = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("{e}: {:?}", &line[..line.len().min(200)]));
                    if tx.send(event).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// A guest websocket whose events arrive on the returned channel.
fn websocket(socket: &std::path::Path) -> mpsc::Receiver<serde_json::Value> {
    let mut ws = util::websocket(socket, "/1.0/events");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Text(text)) => {
                    let event = serde_json::from_str(text.as_str()).expect("event JSON");
                    if tx.send(event).is_err() {
                        return;
                    }
                }
                Ok(tungstenite::Message::Close(frame)) => {
                    let _ = tx.send(json!({"closed": format!("{frame:?}")}));
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

/// The next config event of `key` on `events`, skipping others.
fn config_event(
    events: &mpsc::Receiver<serde_json::Value>,
    key: &str,
    who: &str,
) -> serde_json::Value {
    loop {
        let event = events
            .recv_timeout(util::PATIENCE)
            .unwrap_or_else(|e| panic!("{who}: no event for {key}: {e}"));
        assert!(event.get("closed").is_none(), "{who} was cut off: {event}");
        if event["type"] == "config" && event["metadata"]["key"] == key {
            return event;
        }
    }
}

#[test]
fn events_larger_than_the_queue_bound_reach_every_kind_of_subscriber() {
    let server = util::Server::start(json!([{
        "name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid(),
    }]));
    let guest_ws = websocket(&server.socket);
    let guest_stream = stream(&server.socket);
    let admin_stream = stream(&server.admin_socket);
    for size in [200_000, 600_000, 1 << 20] {
        let value = "u".repeat(size);
        let reply = server.admin_call(
            "PUT",
            "/1.0/instances/c1/config/cloud-init.user-data",
            value.as_bytes(),
        );
        assert_eq!(reply.status, 200, "{}", reply.text());
        for (who, events) in [
            ("guest websocket", &guest_ws),
            ("guest stream", &guest_stream),
            ("admin stream", &admin_stream),
        ] {
            let event = config_event(events, "cloud-init.user-data", who);
            let got = event["metadata"]["value"].as_str().expect("value");
            assert_eq!(got.len(), size, "{who}");
            assert!(got.bytes().all(|b| b == b'u'), "{who}");
        }
    }
    // Several large events in one change: each subscriber reads them all.
    let patch = json!({"user.a": "a".repeat(400_000), "user.b": "b".repeat(400_000)});
    let reply = server.admin_call(
        "PATCH",
        "/1.0/instances/c1/config",
        patch.to_string().as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    for (who, events) in [
        ("guest websocket", &guest_ws),
        ("guest stream", &guest_stream),
        ("admin stream", &admin_stream),
    ] {
        for key in ["user.a", "user.b"] {
            let event = config_event(events, key, who);
            assert_eq!(
                event["metadata"]["value"].as_str().expect("value").len(),
                400_000
            );
        }
    }
    let metrics = server.admin_call("GET", "/1.0/metrics", b"").text();
    assert!(
        metrics.contains("guestsock_subscribers_dropped_total{reason=\"slow\"} 0"),
        "nobody was cut off: {}",
        metrics
            .lines()
            .filter(|l| l.contains("slow"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
