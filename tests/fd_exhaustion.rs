//! Out of file descriptors: when guests take every connection the server's
//! open-file limit allows (the limit lowered under it with `prlimit`), the
//! operator still gets in on the admin socket and the state writer still
//! persists, on descriptors guests cannot take; and when the process truly
//! has none left, it says so in the log at most once a second, and the
//! clients that queued meanwhile are served once descriptors are free
//! (SECURITY.md).

mod util;

use std::fs;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

/// Sets the server's open-file limit (soft, with the hard limit at
/// `hard`) with util-linux's `prlimit`, as an operator would. (The hard
/// limit is never raised again: this machine's root may lack
/// CAP_SYS_RESOURCE.)
fn prlimit(pid: u32, files: usize, hard: usize) {
    let status = Command::new(util::tool("prlimit"))
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={files}:{hard}"),
        ])
        .status()
        .expect("prlimit");
    assert!(status.success(), "prlimit failed");
}

fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// Opens `n` guest connections, each asking `GET /1.0` and kept open;
/// returns the open ones and how many were refused with `503`.
fn guests(server: &util::Server, n: usize) -> (Vec<util::Client>, usize) {
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..n {
        let mut c = server.connect();
        // A connection refused at accept is answered before it sends.
        let _ = std::io::Write::write_all(&mut c.stream, b"GET /1.0 HTTP/1.1\r\nHost: lxd\r\n\r\n");
        let reply = c.read_reply(false);
        match reply.status {
            200 => open.push(c),
            503 => refused += 1,
            other => panic!("{other}: {}", reply.text()),
        }
    }
    (open, refused)
}

/// The number of "out of file descriptors" lines in the log.
fn exhaustion_lines(server: &util::Server) -> usize {
    server
        .stderr()
        .lines()
        .filter(|l| l.contains("out of file descriptors"))
        .count()
}

fn admin_works(server: &util::Server, value: &str) {
    let started = Instant::now();
    let reply = server.admin_call("GET", "/1.0", b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = server.admin_call("PUT", "/1.0/instances/c1/config/user.v", value.as_bytes());
    assert_eq!(
        reply.status,
        200,
        "the writer could not persist: {}",
        reply.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the admin socket took {:?}",
        started.elapsed()
    );
    assert_eq!(stored_value(server), value);
}

/// `user.v` of instance `c1` as the state directory holds it: what an
/// acknowledged write made durable.
fn stored_value(server: &util::Server) -> String {
    let stored = util::dumped(&server.state_dir, "c1").expect("c1 is stored");
    stored["config"]["user.v"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn guests_cannot_take_the_operators_descriptors() {
    require_root!();
    let server = util::Server::start_with(
        json!([{"name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "guest_access": "any"}]),
        &["--max-per-instance", "100000", "--rate-limit", "0"],
    );
    let pid = server.pid();
    // Room for the server's own descriptors and 100 more.
    let limit = open_fds(pid) + 100;
    prlimit(pid, limit, limit);

    // Guests get what the limit leaves after the reserve, then a clear 503.
    let (held, refused) = guests(&server, 150);
    assert!(
        refused > 0,
        "no guest was refused at {} connections",
        held.len()
    );
    assert!(held.len() >= 30, "only {} guests got in", held.len());
    assert!(open_fds(pid) < limit, "the reserve was used by guests");
    admin_works(&server, "one");

    assert_eq!(
        exhaustion_lines(&server),
        0,
        "guests alone never exhaust it"
    );

    // Now the limit drops below what guests already hold: the kernel has
    // no descriptor to give at all (it refuses any number at or above the
    // limit). Accepting pauses and says so, at most once a second.
    // (Once the admin connections above are closed on the server's side.)
    thread::sleep(Duration::from_millis(300));
    prlimit(pid, lowest_free_fd(pid), limit);
    let started = Instant::now();
    let mut waiting = Vec::new();
    for _ in 0..20 {
        // These wait in the backlog: there is no descriptor to accept them.
        waiting.push(std::os::unix::net::UnixStream::connect(&server.socket).expect("connect"));
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(1000));
    let lines = exhaustion_lines(&server);
    let seconds = started.elapsed().as_secs_f64();
    assert!(lines >= 1, "exhaustion never logged: {}", server.stderr());
    assert!(
        lines as f64 <= seconds + 1.0,
        "{lines} lines in {seconds:.1} s: {}",
        server.stderr()
    );

    // With room again, the connections that waited are answered, and the
    // operator and the writer work as before.
    drop(held);
    thread::sleep(Duration::from_millis(300));
    prlimit(pid, limit, limit);
    let mut answered = 0;
    for mut stream in waiting {
        use std::io::{Read, Write};
        stream
            .set_read_timeout(Some(util::PATIENCE))
            .expect("timeout");
        // One accepted through a descriptor freed meanwhile was refused
        // with 503 at once (the ceiling had dropped): it may be closed.
        let _ = stream.write_all(
            b"GET /1.0/config/user.v HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n",
        );
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("reply");
        if reply.starts_with("HTTP/1.1 503") {
            continue;
        }
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("one"), "{reply}");
        answered += 1;
    }
    assert!(answered > 0, "no waiting connection was answered");
    admin_works(&server, "two");
}

/// The lowest descriptor number the process does not use.
fn lowest_free_fd(pid: u32) -> usize {
    let used: std::collections::BTreeSet<usize> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).expect("a free number")
}

/// Clients that connected while the server had no descriptor at all wait
/// in the listen backlog; once descriptors are free they are all served,
/// with no new connection to wake the server: an edge-triggered listener
/// gives no new edge for connections already queued, so the server must
/// look again by itself.
#[test]
fn the_backlog_is_served_once_descriptors_are_free() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    const QUEUED: usize = 50;

    require_root!();
    // Websocket pings off for longer than the test (the loop's periodic
    // wake-up): nothing but the server's own retry may wake it.
    let server = util::Server::start_with(
        json!([{"name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "guest_access": "any"}]),
        &[
            "--max-per-instance",
            "100000",
            "--rate-limit",
            "0",
            "--ws-ping-interval",
            "3600",
        ],
    );
    let pid = server.pid();
    // Room, once freed, for every queued client above the reserve.
    let limit = open_fds(pid) + QUEUED + 200;
    prlimit(pid, limit, limit);
    // No descriptor left at all: accept(2) fails with EMFILE.
    prlimit(pid, lowest_free_fd(pid), limit);

    let mut queued = Vec::new();
    for _ in 0..QUEUED {
        let mut stream = UnixStream::connect(&server.socket).expect("connect");
        stream
            .write_all(b"GET /1.0 HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n")
            .expect("a request fits in the socket buffer");
        queued.push(stream);
    }
    // The server tried to accept them and could not.
    let deadline = Instant::now() + util::PATIENCE;
    while exhaustion_lines(&server) == 0 {
        assert!(Instant::now() < deadline, "exhaustion never logged");
        thread::sleep(Duration::from_millis(50));
    }
    // Let it go round its loop a while longer with none of them accepted:
    // no answer yet, since there was no descriptor to read a request with.
    thread::sleep(Duration::from_millis(500));
    for stream in &mut queued {
        stream.set_nonblocking(true).expect("nonblocking");
        let mut byte = [0u8; 1];
        let got = stream.read(&mut byte);
        assert!(
            got.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
            "a client was answered with no descriptor to accept it: {got:?}"
        );
        stream.set_nonblocking(false).expect("blocking");
    }

    // Descriptors are free again; nobody connects. Every queued client is
    // answered (the deadline only catches a hang).
    prlimit(pid, limit, limit);
    for (i, stream) in queued.iter_mut().enumerate() {
        stream
            .set_read_timeout(Some(util::PATIENCE))
            .expect("timeout");
        let mut reply = String::new();
        let read = stream.read_to_string(&mut reply);
        assert!(
            read.is_ok() && reply.starts_with("HTTP/1.1 200"),
            "queued client {i} of {QUEUED} was not served ({read:?}): {reply:?}\n{}",
            server.stderr()
        );
    }
}
