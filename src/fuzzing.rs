//! The properties the fuzz targets check, one function per target, here so
//! that `cargo test` can replay every input that ever broke one
//! (`fuzz/regressions/<target>/`, see `tests/fuzz_regressions.rs`).
//!
//! Each function panics if a property fails; a panic is what libFuzzer
//! reports. None of this is used by the server itself.

use crate::client::encode_segment;
use crate::http::request::{self, Parsed, Request};
use crate::instance::InstanceSpec;
use crate::ws::frame::{parse_header, write_frame};
use crate::ws::reader::{Action, Reader};

/// The HTTP request parser, fed `data` in chunks whose sizes come from its
/// first byte, as a connection would see it:
/// - it never panics, and never claims more bytes than it was given;
/// - parsing incrementally (with the scan hints) decides exactly what
///   parsing the whole input at once decides;
/// - a complete request, written out again in canonical form, parses to
///   the same request.
pub fn http_request(data: &[u8]) {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    let max_body = 1024;
    let whole = request::parse(input, 0, max_body);
    let mut hint = 0;
    let mut end = 0;
    let incremental = loop {
        end = (end + step).min(input.len());
        let result = request::parse(&input[..end], hint, max_body);
        match result {
            Ok(Parsed::Partial { scan_from, .. }) if end < input.len() => {
                assert!(scan_from <= end, "hint past the input");
                hint = scan_from;
            }
            other => break other,
        }
    };
    match (&whole, &incremental) {
        (Ok(Parsed::Complete(a)), Ok(Parsed::Complete(b))) => {
            assert_eq!(a, b, "incremental and whole parses differ");
            assert!(a.len <= input.len());
            round_trip(a);
        }
        (Ok(Parsed::Partial { .. }), Ok(Parsed::Partial { .. })) => {}
        (Err(a), Err(b)) => assert_eq!(a, b, "incremental and whole errors differ"),
        // A request that completed early in the incremental run completes
        // on the whole input too, and vice versa.
        (a, b) => panic!("whole {a:?} but incremental {b:?}"),
    }
}

/// Writes `req` in canonical form and checks it parses back the same.
fn round_trip(req: &Request<'_>) {
    let mut text = format!(
        "{} {}{}{} HTTP/1.{}\r\nHost: lxd\r\n",
        req.method,
        req.path,
        if req.query.is_empty() { "" } else { "?" },
        req.query,
        if req.http10 { 0 } else { 1 },
    );
    let mut connection = Vec::new();
    if req.http10 && req.keep_alive {
        connection.push("keep-alive");
    }
    if !req.http10 && !req.keep_alive {
        connection.push("close");
    }
    if req.websocket.connection_upgrade {
        connection.push("upgrade");
    }
    if !connection.is_empty() {
        text.push_str(&format!("Connection: {}\r\n", connection.join(", ")));
    }
    if req.websocket.upgrade_websocket {
        text.push_str("Upgrade: websocket\r\n");
    }
    if let Some(v) = req.websocket.version {
        text.push_str(&format!("Sec-WebSocket-Version: {v}\r\n"));
    }
    if let Some(k) = req.websocket.key {
        text.push_str(&format!("Sec-WebSocket-Key: {k}\r\n"));
    }
    if let Some(tag) = req.if_none_match {
        text.push_str(&format!("If-None-Match: {tag}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", req.body.len()));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(req.body);
    let again = match request::parse(&bytes, 0, usize::MAX) {
        Ok(Parsed::Complete(again)) => again,
        other => panic!("canonical form of {req:?} does not parse: {other:?}"),
    };
    assert_eq!(
        (
            again.method,
            again.path,
            again.query,
            again.http10,
            again.keep_alive
        ),
        (req.method, req.path, req.query, req.http10, req.keep_alive)
    );
    assert_eq!(
        (again.if_none_match, again.websocket, again.body),
        (req.if_none_match, req.websocket, req.body)
    );
    assert_eq!(again.len, bytes.len());
}

/// The websocket reader, fed `data` in chunks as a connection would:
/// - it never panics and never consumes more than it is given;
/// - once it reports a close or a failure it reads nothing more;
/// - a failure closes with 1002, 1007 or 1009, the codes RFC 6455 gives for
///   what a client can break;
/// - a pong echoes at most 125 bytes (a control frame's limit).
///
/// Also: any payload written as a server frame parses back to its header.
pub fn ws_reader(data: &[u8]) {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 32) + 1;
    let mut reader = Reader::new(4096);
    let mut buf: Vec<u8> = Vec::new();
    let mut done = false;
    for chunk in input.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            let (used, action) = reader.feed(&mut buf);
            assert!(used <= before, "consumed past the input");
            buf.drain(..used);
            if done {
                assert_eq!((used, &action), (0, &None), "read after the end");
                break;
            }
            match action {
                Some(Action::Close(_)) => done = true,
                Some(Action::Fail(violation)) => {
                    assert!(matches!(violation.close_code(), 1002 | 1007 | 1009));
                    done = true;
                }
                Some(Action::Pong(payload)) => assert!(payload.len() <= 125),
                Some(Action::Alive) => {}
                None if used == 0 => break,
                None => {}
            }
        }
    }
    let mut frame = Vec::new();
    write_frame(&mut frame, 0x1, input);
    let (header, len) = parse_header(&frame)
        .expect("own frame parses")
        .expect("own frame is complete");
    assert_eq!(
        (header.len, header.mask, header.fin),
        (input.len() as u64, None, true)
    );
    assert_eq!(&frame[len..], input);
}

/// The admin API's JSON bodies: an instance object that parses and
/// validates serializes back to itself; a config patch parses or is refused
/// without panicking.
pub fn admin_json(data: &[u8]) {
    if let Ok(spec) = serde_json::from_slice::<InstanceSpec>(data)
        && let Ok(valid) = spec.validate("host")
    {
        let text = serde_json::to_vec(&valid).expect("serializes");
        let again: InstanceSpec = serde_json::from_slice(&text).expect("parses back");
        assert_eq!(again, valid);
        assert_eq!(
            again.validate("host").as_ref(),
            Ok(&valid),
            "validation is stable"
        );
    }
    let _ = serde_json::from_slice::<std::collections::BTreeMap<String, Option<String>>>(data);
}

/// Percent-decoding of keys and paths: decoding what `encode_segment` made
/// gives the original back, and decoding is never longer than its input.
pub fn percent_decoding(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(decoded) = request::percent_decode(text) {
        assert!(decoded.len() <= text.len());
    }
    let encoded = encode_segment(text);
    assert_eq!(request::percent_decode(&encoded).as_deref(), Some(text));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_hold_on_simple_inputs() {
        http_request(b"\x05GET /1.0?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi");
        http_request(b"\x01PATCH / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        http_request(b"\x03G\r\n\r\n");
        ws_reader(&[3, 0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
        admin_json(br#"{"name":"c1","match":{"cgroup":"/a"},"config":{"user.x":"1"}}"#);
        percent_decoding("user.é%zz/ ?".as_bytes());
    }
}
