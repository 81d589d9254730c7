//! The limits of SECURITY.md attacked on the real server: connection caps
//! (per instance, for strangers, global), slowloris timeouts, the idle
//! timeout, the per-instance rate limit and the websocket ping rule. In
//! every case the others keep being served.

mod util;

use std::io::Read;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

fn me(extra: &[&str]) -> util::Server {
    util::Server::start_with(
        json!([
            {"name": "me", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid(),
             "config": {"user.who": "me"}},
            {"name": "other", "match": {"uid_range": [70000, 1]}, "config": {"user.who": "other"}},
        ]),
        extra,
    )
}

/// Lets the server reap the harness's readiness probes, which count
/// against the caps until it sees them closed.
fn settle() {
    thread::sleep(Duration::from_millis(200));
}

fn read_to_end_within(c: &mut util::Client, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    c.stream.set_read_timeout(Some(limit)).unwrap();
    let mut bytes = Vec::new();
    c.stream
        .read_to_end(&mut bytes)
        .expect("closed within the limit");
    (bytes, start.elapsed())
}

#[test]
fn one_instance_at_its_cap_does_not_starve_another() {
    let server = me(&["--max-per-instance", "5"]);
    settle();
    let mut held: Vec<util::Client> = (0..5).map(|_| server.connect()).collect();
    for c in &mut held {
        assert_eq!(c.request("GET", "/1.0/config/user.who", b"").text(), "me");
    }
    let reply = server.refused();
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(
        reply.text().contains("\"me\" has 5 connections open"),
        "{}",
        reply.text()
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
    // Another container is served at once, all the while (setuid: root).
    require_root!();
    for _ in 0..5 {
        let start = Instant::now();
        let (status, body) = util::curl_as(70000, &server.socket, "/1.0/config/user.who");
        assert_eq!((status, body.as_str()), (200, "other"));
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    // A slot freed is a slot usable.
    drop(held.pop());
    thread::sleep(Duration::from_millis(100));
    assert_eq!(server.get("/1.0/config/user.who").text(), "me");
}

#[test]
fn strangers_and_the_whole_server_have_caps_too() {
    let server = util::Server::start_with(
        json!([{"name": "x", "match": {"uid_range": [4000000, 1]}}]),
        &["--max-unknown", "3"],
    );
    settle();
    let held: Vec<util::Client> = (0..3).map(|_| server.connect()).collect();
    thread::sleep(Duration::from_millis(100));
    let reply = server.refused();
    assert_eq!(reply.status, 503, "{}", server.stderr());
    assert!(
        reply.text().contains("match no instance"),
        "{}",
        reply.text()
    );
    drop(held);

    let server = me(&["--max-connections", "6"]);
    settle();
    let _held: Vec<util::Client> = (0..6).map(|_| server.connect()).collect();
    thread::sleep(Duration::from_millis(100));
    let reply = server.refused();
    assert_eq!(reply.status, 503);
    assert!(
        reply.text().contains("6 connections open, its limit"),
        "{}",
        reply.text()
    );
    assert!(
        server.stderr().contains("refusing a connection"),
        "{}",
        server.stderr()
    );
}

#[test]
fn slowloris_heads_and_bodies_get_408_on_time() {
    let server = me(&["--header-timeout", "1", "--body-timeout", "1"]);
    let mut slow_head = server.connect();
    slow_head.send(b"GET /1.0 HTTP/1.1\r\nHost: lxd\r\nX-Slow: ");
    let mut slow_body = server.connect();
    slow_body.send(b"PATCH /1.0 HTTP/1.1\r\nHost: lxd\r\nContent-Length: 17\r\n\r\n{\"sta");
    let start = Instant::now();
    // Trickling bytes does not reset the clock.
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(100));
        slow_head.send(b"a");
        assert_eq!(server.get("/1.0/config/user.who").text(), "me");
    }
    for c in [&mut slow_head, &mut slow_body] {
        let (bytes, _) = read_to_end_within(c, Duration::from_secs(10));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

#[test]
fn idle_keep_alive_connections_are_closed_but_event_streams_are_not() {
    let server = me(&["--idle-timeout", "1"]);
    let mut idle = server.connect();
    assert_eq!(
        idle.request("GET", "/1.0/config/user.who", b"").text(),
        "me"
    );
    let mut stream = server.connect();
    stream.send(b"GET /1.0/events HTTP/1.1\r\nHost: lxd\r\n\r\n");
    let (bytes, took) = read_to_end_within(&mut idle, Duration::from_secs(10));
    assert!(
        bytes.is_empty() && took < Duration::from_secs(8),
        "{took:?}"
    );
    // The event stream outlives the idle timeout and still delivers.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server
            .admin_call("PUT", "/1.0/instances/me/config/user.x", b"1")
            .status,
        200
    );
    let mut head = [0u8; 512];
    let n = stream.stream.read(&mut head).unwrap();
    let text = String::from_utf8_lossy(&head[..n]).to_string();
    let text = if text.contains("user.x") {
        text
    } else {
        let n2 = stream.stream.read(&mut head).unwrap();
        text + &String::from_utf8_lossy(&head[..n2])
    };
    assert!(text.contains("\"key\":\"user.x\""), "{text}");
}

/// The number of requests the metrics count as refused for the rate.
fn rate_refusals(server: &util::Server) -> usize {
    let text = server.admin_call("GET", "/1.0/metrics", b"").text();
    text.lines()
        .find_map(|l| l.strip_prefix("guestsock_limits_hit_total{limit=\"rate\"} "))
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn over_its_rate_a_fresh_connection_gets_429_and_a_kept_one_waits() {
    let server = me(&["--rate-limit", "5", "--rate-burst", "5"]);
    let mut c = server.connect();
    let statuses: Vec<u16> = (0..5)
        .map(|_| c.request("GET", "/1.0", b"").status)
        .collect();
    assert_eq!(statuses, [200; 5]);
    // The bucket is empty. A connection's first request is identified and
    // refused, with when to come back.
    let mut fresh = server.connect();
    let limited = fresh.request("GET", "/1.0", b"");
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(rate_refusals(&server), 1);
    // A connection answered before is not read until the next token:
    // its request is answered, late, never refused.
    assert_eq!(c.request("GET", "/1.0", b"").status, 200);
    assert_eq!(fresh.request("GET", "/1.0", b"").status, 200);
    assert_eq!(rate_refusals(&server), 1);
}

#[test]
fn a_pipelined_flood_over_its_rate_waits_in_its_socket_and_is_never_refused() {
    // 5 at once, then 50 a second: 45 more pipelined requests take about
    // 0.9 s, answered in order, none of them 429, and the connection is
    // kept (a refused one would be closed at its fourth refusal).
    let server = me(&["--rate-limit", "50", "--rate-burst", "5"]);
    let mut c = server.connect();
    c.request("GET", "/1.0", b"");
    let one = "GET /1.0/config/user.who HTTP/1.1\r\nHost: lxd\r\n\r\n";
    c.send(one.repeat(49).as_bytes());
    for n in 0..49 {
        let reply = c.read_reply(false);
        assert_eq!((n, reply.status, reply.text()), (n, 200, "me".into()));
    }
    assert_eq!(rate_refusals(&server), 0);
    assert!(!c.is_closed_by_server());
}

#[test]
fn a_websocket_peer_that_stops_answering_pings_is_dropped() {
    let server = me(&["--ws-ping-interval", "0.3"]);
    let mut silent = server.connect();
    silent.send(b"GET /1.0/events HTTP/1.1\r\nHost: lxd\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n");
    assert_eq!(silent.read_reply(false).status, 101);
    // tungstenite answers pings as it reads: it stays.
    let mut alive = util::websocket(&server.socket, "/1.0/events");
    let reader = thread::spawn(move || {
        alive
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let start = Instant::now();
        let mut pings = 0;
        while start.elapsed() < Duration::from_secs(2) {
            match alive.read() {
                Ok(tungstenite::Message::Ping(_)) => pings += 1,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("the answering client was dropped: {e}"),
            }
            let _ = alive.flush();
        }
        pings
    });
    let (bytes, took) = read_to_end_within(&mut silent, Duration::from_secs(10));
    // It was pinged (0x89 frames), then dropped after about three intervals.
    assert!(bytes.first() == Some(&0x89), "{bytes:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(reader.join().unwrap() >= 3);
}

/// A process in a fresh cgroup registered as "victim" connects while the
/// server is stopped (SIGSTOP) and exits; its parent, outside the cgroup,
/// keeps the socket and asks once the server runs again. With `reap`, the
/// parent waits for the child first, so at accept the connecting pid is
/// gone (and could be reused); without, the child is a zombie: gone, but
/// still the process its pidfd names. Returns the answer.
fn ask_after_the_connecting_process_exits(reap: bool) -> String {
    let group = util::Cgroup::new();
    let server = util::Server::start(json!([
        {"name": "victim", "match": {"cgroup": group.path}, "config": {"user.secret": "s3cret"}},
    ]));
    let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let script = format!(
        r#"
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
child = os.fork()
if child == 0:
    open({procs:?}, "w").write(str(os.getpid()))
    s.connect({sock:?})
    os._exit(0)
if {reap}:
    os.waitpid(child, 0)
else:
    while open(f"/proc/{{child}}/stat").read().split(")")[-1].split()[0] != "Z":
        time.sleep(0.01)
print("ready", flush=True)
sys.stdin.readline()
s.sendall(b"GET /1.0/config/user.secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.decode())
"#,
        procs = group.dir.join("cgroup.procs").display().to_string(),
        sock = server.socket.display().to_string(),
        reap = if reap { "True" } else { "False" },
    );
    let mut child = std::process::Command::new(util::tool("python3"))
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let mut answer = String::new();
    out.read_to_string(&mut answer).unwrap();
    util::wait_with_deadline(&mut child);
    answer
}

#[test]
fn a_process_that_exits_right_after_connecting_is_never_served_as_its_instance() {
    require_root!();
    let answer = ask_after_the_connecting_process_exits(true);
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(!answer.contains("s3cret"), "{answer}");
    assert!(
        answer.contains("exited") || answer.contains("could not be read"),
        "{answer}"
    );
}

#[test]
fn a_connecting_process_that_is_a_zombie_is_still_itself() {
    require_root!();
    // Its pidfd still names it and the kernel still has its cgroup: no pid
    // is trusted past its life, so the connection is its instance's
    // (SECURITY.md, "SO_PEERCRED describes the process that called
    // connect()").
    let answer = ask_after_the_connecting_process_exits(false);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("s3cret\n"), "{answer}");
}

#[test]
fn a_quick_sequential_client_never_meets_its_cap() {
    // One connection at a time, each asking once (keep-alive), reading its
    // answer and closing: the server may accept the next one before it has
    // seen the last one close, but never counts that against the cap.
    let server = me(&["--max-per-instance", "2", "--rate-limit", "0"]);
    for n in 0..300 {
        let reply = server.get("/1.0");
        assert_eq!(reply.status, 200, "request {n}: {}", reply.text());
    }
    let admin_calls = (0..100)
        .map(|_| server.admin_call("GET", "/1.0", b"").status)
        .filter(|&status| status != 200)
        .count();
    assert_eq!(admin_calls, 0, "admin calls refused");
}
