//! `guestsock agent --host-unix`: the in-guest relay with a unix socket the
//! test owns standing in for the vsock leg. The preamble carries the real
//! caller's uid, gid and pid (a setuid child through setpriv); bytes go
//! both ways, a long-lived stream survives while it moves and a half-close
//! is passed on; a silent connection ends at the idle timeout; the host
//! gone is `503` in LXD's error envelope; past the cap, `503` at once; a
//! served socket is refused to a second agent, a stale one replaced.

mod util;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use util::agent::Agent;
use util::{Client, PATIENCE, TempDir, tool};

/// One relayed connection as the host side sees it: the preamble line
/// (without CRLF) and what came after it so far.
fn accept_relayed(listener: &UnixListener) -> (UnixStream, String, Vec<u8>) {
    let (mut conn, _) = listener.accept().expect("accept a relayed connection");
    conn.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(at) = bytes.windows(2).position(|w| w == b"\r\n") {
            break at;
        }
        let n = conn.read(&mut chunk).expect("read the preamble");
        assert!(n > 0, "EOF before the preamble: {bytes:?}");
        bytes.extend_from_slice(&chunk[..n]);
    };
    let preamble = String::from_utf8(bytes[..end].to_vec()).expect("UTF-8 preamble");
    let rest = bytes[end + 2..].to_vec();
    (conn, preamble, rest)
}

/// Reads from `conn` into `got` until it holds `needle`.
fn read_until(conn: &mut UnixStream, got: &mut Vec<u8>, needle: &[u8]) {
    let mut chunk = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = conn.read(&mut chunk).expect("read");
        assert!(
            n > 0,
            "EOF before {:?}: {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
}

/// The start of the preamble for a caller of this process's credentials.
fn own_preamble() -> String {
    format!(
        "GUESTSOCK-AGENT 1 uid={} gid={} pid=",
        util::my_uid(),
        nix::unistd::getgid()
    )
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn the_preamble_carries_the_real_callers_credentials_and_bytes_round_trip() {
    require_root!(); // a setuid child
    let dir = TempDir::new();
    let host = UnixListener::bind(dir.join("host.sock")).expect("bind");
    let agent = Agent::start(&dir, &dir.join("host.sock"), &[]);
    assert_eq!(mode(&dir.join("lxd")), 0o755);
    assert!(
        fs::symlink_metadata(&agent.socket)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_eq!(mode(&agent.socket), 0o666);

    let answer = r#"{"api_version":"1.0"}"#;
    let server = thread::spawn(move || {
        let (mut conn, preamble, mut rest) = accept_relayed(&host);
        read_until(&mut conn, &mut rest, b"\r\n\r\n");
        conn.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            )
            .as_bytes(),
        )
        .unwrap();
        (preamble, String::from_utf8(rest).unwrap())
    });
    let curl = Command::new(tool("setpriv"))
        .args([
            "--reuid=1234",
            "--regid=4321",
            "--clear-groups",
            tool("curl"),
            "-sS",
            "--unix-socket",
        ])
        .arg(&agent.socket)
        .arg("http://lxd/1.0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn curl");
    // setpriv execs curl: the same process connects.
    let pid = curl.id();
    let out = curl.wait_with_output().expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), answer);
    let (preamble, request) = server.join().unwrap();
    assert_eq!(
        preamble,
        format!("GUESTSOCK-AGENT 1 uid=1234 gid=4321 pid={pid}")
    );
    assert!(
        request.starts_with("GET /1.0 HTTP/1.1\r\nHost: lxd\r\n"),
        "{request:?}"
    );
}

#[test]
fn a_long_lived_stream_lasts_while_it_moves_and_a_half_close_is_passed_on() {
    let dir = TempDir::new();
    let host = UnixListener::bind(dir.join("host.sock")).expect("bind");
    // A 1 s idle timeout: the stream below lasts longer, never silent that long.
    let agent = Agent::start(&dir, &dir.join("host.sock"), &["--idle-timeout", "1"]);
    let upgrade = "GET /1.0/events HTTP/1.1\r\nHost: lxd\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    let server = thread::spawn(move || {
        let (mut conn, preamble, mut rest) = accept_relayed(&host);
        read_until(&mut conn, &mut rest, b"\r\n\r\n");
        assert_eq!(String::from_utf8(rest).unwrap(), upgrade);
        conn.write_all(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            .unwrap();
        // Events one way, each echoed the other way, for well past the
        // idle timeout.
        let mut echoes = Vec::new();
        for i in 0..8 {
            thread::sleep(Duration::from_millis(300));
            let event = format!("event {i};");
            conn.write_all(event.as_bytes()).unwrap();
            read_until(&mut conn, &mut echoes, format!("echo {i};").as_bytes());
        }
        // The guest's half-close arrives as an end of stream, and the
        // other way stays open.
        conn.read_to_end(&mut echoes)
            .expect("the end of the guest's side");
        let all: String = (0..8).map(|i| format!("echo {i};")).collect();
        assert_eq!(String::from_utf8(echoes).unwrap(), all + "last words");
        conn.write_all(b"goodbye").unwrap();
        preamble
    });
    let mut guest = UnixStream::connect(&agent.socket).expect("connect");
    guest.set_read_timeout(Some(PATIENCE)).unwrap();
    guest.write_all(upgrade.as_bytes()).unwrap();
    let mut got = Vec::new();
    read_until(&mut guest, &mut got, b"\r\n\r\n");
    assert_eq!(got, b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
    let started = Instant::now();
    for i in 0..8 {
        let mut event = Vec::new();
        read_until(&mut guest, &mut event, format!("event {i};").as_bytes());
        assert_eq!(event, format!("event {i};").as_bytes());
        guest.write_all(format!("echo {i};").as_bytes()).unwrap();
    }
    assert!(started.elapsed() > Duration::from_secs(2));
    guest.write_all(b"last words").unwrap();
    guest.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    guest.read_to_end(&mut rest).expect("the host's last bytes");
    assert_eq!(rest, b"goodbye");
    assert!(server.join().unwrap().starts_with(&own_preamble()));
}

#[test]
fn a_silent_connection_is_closed_at_the_idle_timeout() {
    let dir = TempDir::new();
    let host = UnixListener::bind(dir.join("host.sock")).expect("bind");
    let agent = Agent::start(&dir, &dir.join("host.sock"), &["--idle-timeout", "1"]);
    let mut guest = UnixStream::connect(&agent.socket).expect("connect");
    guest.set_read_timeout(Some(PATIENCE)).unwrap();
    let (mut conn, _, _) = accept_relayed(&host);
    let started = Instant::now();
    let mut byte = [0u8; 1];
    assert_eq!(guest.read(&mut byte).expect("EOF, not a timeout"), 0);
    assert_eq!(conn.read(&mut byte).expect("EOF, not a timeout"), 0);
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_millis(800) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
}

#[test]
fn the_host_gone_is_answered_503_in_lxds_error_envelope() {
    let dir = TempDir::new();
    let agent = Agent::start(&dir, &dir.join("nothing-listens"), &[]);
    let mut guest = Client::connect(&agent.socket);
    let reply = guest.request("GET", "/1.0", b"");
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.header("Connection"), Some("close"));
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    let json = reply.json();
    assert_eq!(json["type"], "error");
    assert_eq!(json["error_code"], 503);
    let error = json["error"].as_str().unwrap();
    assert!(
        error.starts_with("the host's guestsock cannot be reached: ")
            && error.contains("No such file or directory"),
        "{error}"
    );
    assert!(guest.is_closed_by_server());
    assert!(
        agent.log().contains("cannot reach the host"),
        "{}",
        agent.log()
    );
}

#[test]
fn past_the_cap_a_caller_is_answered_503_and_a_freed_slot_serves_again() {
    let dir = TempDir::new();
    let host = UnixListener::bind(dir.join("host.sock")).expect("bind");
    let agent = Agent::start(&dir, &dir.join("host.sock"), &["--max-connections", "1"]);
    let held = UnixStream::connect(&agent.socket).expect("connect");
    let (mut held_host, _, _) = accept_relayed(&host);

    let mut refused = Client::connect(&agent.socket);
    let reply = refused.read_reply(false);
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("Retry-After"), Some("1"));
    assert_eq!(
        reply.text(),
        "the agent relays 1 connections already; retry later\n"
    );

    // Both sides of the held connection close: its relay ends, and the
    // slot serves the next caller.
    drop(held);
    let mut byte = [0u8; 1];
    assert_eq!(held_host.read(&mut byte).unwrap(), 0);
    drop(held_host);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut next = UnixStream::connect(&agent.socket).expect("connect");
        next.set_read_timeout(Some(PATIENCE)).unwrap();
        host.set_nonblocking(true).unwrap();
        thread::sleep(Duration::from_millis(50));
        if let Ok((mut conn, _)) = host.accept() {
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut line = Vec::new();
            read_until(&mut conn, &mut line, b"\r\n");
            assert!(line.starts_with(own_preamble().as_bytes()));
            break;
        }
        // Not relayed yet: the old relay had not ended; this one was
        // refused.
        let mut answer = Vec::new();
        let _ = next.read_to_end(&mut answer);
        assert!(
            answer.starts_with(b"HTTP/1.1 503"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
        assert!(Instant::now() < deadline, "the slot was never freed");
    }
}

#[test]
fn a_served_socket_is_refused_to_a_second_agent_and_a_stale_one_replaced() {
    let dir = TempDir::new();
    let host = UnixListener::bind(dir.join("host.sock")).expect("bind");
    let first = Agent::start(&dir, &dir.join("host.sock"), &[]);
    let out = util::run_guestsock(
        &[
            "agent",
            "--socket",
            &first.socket.display().to_string(),
            "--host-unix",
            &dir.join("host.sock").display().to_string(),
        ],
        None,
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "guestsock: {} is served already (another agent?); stop it first\n",
            first.socket.display()
        )
    );
    // Killed, the first leaves its socket behind; the next agent replaces it.
    drop(first);
    assert!(dir.join("lxd/sock").exists(), "the stale socket is left");
    let second = Agent::start(&dir, &dir.join("host.sock"), &[]);
    let _guest = UnixStream::connect(&second.socket).expect("connect");
    let (_, preamble, _) = accept_relayed(&host);
    assert!(preamble.starts_with(&own_preamble()), "{preamble}");
}
