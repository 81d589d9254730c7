//! Hostile websocket frames against the real server: each gets the close
//! code RFC 6455 gives, the connection ends, and the server keeps serving
//! everyone else.

mod util;

use std::io::{Read, Write};

use serde_json::json;

/// A raw websocket after a successful handshake.
fn raw_ws(server: &util::Server) -> util::Client {
    let mut c = server.connect();
    c.send(b"GET /1.0/events HTTP/1.1\r\nHost: lxd\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
    assert_eq!(c.read_reply(false).status, 101);
    c
}

/// A client frame with `b0` as first byte, masked with a fixed key.
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    guestsock::ws::frame::write_masked_frame(&mut out, b0, [1, 2, 3, 4], payload);
    out
}

/// Reads to EOF and returns the close code of the server's close frame
/// (skipping pings), or `None` if it sent none.
fn close_code(c: &mut util::Client) -> Option<u16> {
    let mut bytes = Vec::new();
    let _ = c.stream.read_to_end(&mut bytes);
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let len = usize::from(bytes[at + 1] & 0x7f);
        let payload = &bytes[at + 2..(at + 2 + len).min(bytes.len())];
        if opcode == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
        at += 2 + len;
    }
    None
}

#[test]
fn each_violation_gets_its_close_code() {
    let server = util::Server::start(json!([{
        "name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid(),
        "config": {"user.foo": "bar"},
    }]));
    let cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        ("unmasked", vec![0x81, 0x02, b'h', b'i'], Some(1002)),
        ("RSV1 set", masked(0xC1, b"hi"), Some(1002)),
        ("reserved data opcode", masked(0x83, b"hi"), Some(1002)),
        ("reserved control opcode", masked(0x8C, b""), Some(1002)),
        ("ping over 125 bytes", masked(0x89, &[7; 126]), Some(1002)),
        ("fragmented ping", masked(0x09, b"x"), Some(1002)),
        ("continuation first", masked(0x80, b"x"), Some(1002)),
        (
            "new message inside a fragmented one",
            [masked(0x01, b"a"), masked(0x81, b"b")].concat(),
            Some(1002),
        ),
        ("text not UTF-8", masked(0x81, &[0xc3, 0x28]), Some(1007)),
        (
            "message over the limit",
            masked(0x82, &vec![0; 70_000]),
            Some(1009),
        ),
        (
            "fragments over the limit",
            [masked(0x02, &[0; 40_000]), masked(0x80, &[0; 40_000])].concat(),
            Some(1009),
        ),
        (
            "64-bit length with the top bit",
            vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4],
            Some(1002),
        ),
        ("one-byte close", masked(0x88, &[3]), Some(1002)),
        (
            "close with a reserved code",
            masked(0x88, &1005u16.to_be_bytes()),
            Some(1002),
        ),
        (
            "close with bad UTF-8 reason",
            masked(0x88, &[0x03, 0xe8, 0xff]),
            Some(1007),
        ),
        (
            "clean close",
            masked(0x88, &1000u16.to_be_bytes()),
            Some(1000),
        ),
        ("empty close", masked(0x88, b""), None),
    ];
    for (what, bytes, want) in cases {
        let mut c = raw_ws(&server);
        // The server may answer a frame's head and close before the rest
        // of a long frame is written (the kernel writes it in parts): a
        // broken pipe then is its answer, still waiting to be read.
        match c.stream.write_all(&bytes) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            sent => sent.expect("send"),
        }
        assert_eq!(close_code(&mut c), want, "{what}");
        // Everyone else is still served.
        assert_eq!(
            server.get("/1.0/config/user.foo").text(),
            "bar",
            "after {what}"
        );
    }
}

#[test]
fn data_is_read_and_discarded_and_truncated_frames_cost_nothing() {
    let server = util::Server::start(json!([{
        "name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid(),
    }]));
    let mut c = raw_ws(&server);
    // Fine messages, fragmented and not, with a ping in the middle.
    let mut bytes = masked(0x01, "hé".as_bytes());
    bytes.extend(masked(0x89, b"p1"));
    bytes.extend(masked(0x80, "llo".as_bytes()));
    bytes.extend(masked(0x82, &[0; 60_000]));
    for chunk in bytes.chunks(7) {
        c.send(chunk);
    }
    let mut pong = [0u8; 4];
    c.stream.read_exact(&mut pong).unwrap();
    assert_eq!(pong, [0x8A, 0x02, b'p', b'1']);

    // A frame cut short, then EOF: the server just closes.
    let mut cut = raw_ws(&server);
    cut.send(&masked(0x81, b"hello")[..5]);
    cut.stream.shutdown(std::net::Shutdown::Write).unwrap();
    // Well before the first ping (10 s), which a missed EOF would wait for.
    cut.stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    cut.stream.read_to_end(&mut rest).expect("closed at EOF");
    assert!(rest.is_empty(), "{rest:?}");
    // The first client still works.
    c.send(&masked(0x89, b"p2"));
    c.stream.read_exact(&mut pong).unwrap();
    assert_eq!(pong, [0x8A, 0x02, b'p', b'2']);
    c.stream
        .write_all(&masked(0x88, &1000u16.to_be_bytes()))
        .unwrap();
    assert_eq!(close_code(&mut c), Some(1000));
}
