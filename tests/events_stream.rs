//! `GET /1.0/events` without a websocket: `200`, `application/json`, no
//! length, one event per line, until a byte from the client or EOF ends it.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;

use serde_json::json;

fn server() -> util::Server {
    util::Server::start(json!([{
        "name": "c1",
        "match": {"uid_range": [util::my_uid(), 1]},
        "root_uid": util::my_uid(),
    }]))
}

/// Opens a stream subscription; returns the reader positioned after the head.
fn subscribe(server: &util::Server, query: &str) -> (UnixStream, BufReader<UnixStream>) {
    let mut stream = UnixStream::connect(&server.socket).unwrap();
    stream.set_read_timeout(Some(util::PATIENCE)).unwrap();
    write!(
        stream,
        "GET /1.0/events{query} HTTP/1.1\r\nHost: lxd\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: application/json\r\n"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    (stream, reader)
}

fn set(server: &util::Server, key: &str, value: &str) {
    let reply = server.admin_call(
        "PUT",
        &format!("/1.0/instances/c1/config/{key}"),
        value.as_bytes(),
    );
    assert_eq!(reply.status, 200);
}

#[test]
fn one_json_event_per_line() {
    let server = server();
    let (_stream, mut reader) = subscribe(&server, "");
    for i in 0..50 {
        set(&server, "user.i", &i.to_string());
    }
    set(&server, "user.text", "multi\nline \"quoted\"");
    for i in 0..50 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(event["metadata"]["value"], i.to_string());
    }
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(
        line.ends_with("}\n") && line.matches('\n').count() == 1,
        "{line:?}"
    );
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["metadata"]["value"], "multi\nline \"quoted\"");
}

#[test]
fn a_byte_from_the_client_ends_it() {
    let server = server();
    let (mut stream, mut reader) = subscribe(&server, "?type=config");
    stream.write_all(b"x").unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn eof_from_the_client_ends_it() {
    let server = server();
    let (stream, mut reader) = subscribe(&server, "");
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // And the server serves on.
    assert_eq!(server.get("/1.0").status, 200);
}
