//! A subscriber that never reads, while thousands of events are published:
//! it is cut off, the server's memory stays bounded, and a subscriber that
//! reads receives every event in order.

mod util;

use std::io::Read;
use std::thread;

use serde_json::json;

const ROUNDS: usize = 200;
const KEYS_PER_ROUND: usize = 100;
const VALUE_BYTES: usize = 1024;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_subscriber_that_never_reads_is_cut_off_and_memory_stays_bounded() {
    let server = util::Server::start(json!([{
        "name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid(),
    }]));
    // The slow one: handshake done, then never another read.
    let mut slow = server.connect();
    slow.send(b"GET /1.0/events HTTP/1.1\r\nHost: lxd\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
    assert_eq!(slow.read_reply(false).status, 101);
    let mut stream_slow = server.connect();
    stream_slow.send(b"GET /1.0/events HTTP/1.1\r\nHost: lxd\r\n\r\n");

    let mut fast = util::websocket(&server.socket, "/1.0/events");
    let reader = thread::spawn(move || {
        let mut last = None;
        for _ in 0..ROUNDS * KEYS_PER_ROUND {
            let event = util::next_event(&mut fast);
            last = Some(event["metadata"]["key"].as_str().unwrap().to_string());
        }
        last
    });
    let before = rss_kib(server.pid());
    let value = "v".repeat(VALUE_BYTES);
    let mut admin = server.admin();
    for round in 0..ROUNDS {
        let patch: serde_json::Map<String, serde_json::Value> = (0..KEYS_PER_ROUND)
            .map(|k| (format!("user.k{k:03}"), json!(format!("{round}{value}"))))
            .collect();
        let reply = admin.request(
            "PATCH",
            "/1.0/instances/c1/config",
            serde_json::to_vec(&patch).unwrap().as_slice(),
        );
        assert_eq!(reply.status, 200);
    }
    let after = rss_kib(server.pid());
    let published_kib = (ROUNDS * KEYS_PER_ROUND * VALUE_BYTES / 1024) as u64;
    eprintln!("published {published_kib} KiB of events; server RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + published_kib / 4,
        "server memory grew with the slow subscriber's backlog: {before} -> {after} KiB"
    );
    assert_eq!(reader.join().unwrap().as_deref(), Some("user.k099"));

    // The slow ones were cut off: after what the kernel buffered, EOF.
    for client in [&mut slow, &mut stream_slow] {
        let mut sink = Vec::new();
        client
            .stream
            .read_to_end(&mut sink)
            .expect("cut off, not left open");
        assert!(
            sink.len() < published_kib as usize * 1024 / 2,
            "{} bytes",
            sink.len()
        );
    }
    assert!(
        server.stderr().contains("cut off a slow event subscriber"),
        "{}",
        server.stderr()
    );
    assert_eq!(server.get("/1.0").status, 200);
}
