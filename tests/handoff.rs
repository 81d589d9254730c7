//! Restarts without systemd: SIGHUP starts a new guestsock, hands it the
//! listening sockets over SCM_RIGHTS, and the old one finishes what it has.
//! Clients connecting all the while are all answered, the sockets' inodes
//! never change (containers have them mounted), and state carries over.

mod util;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::json;

#[test]
fn sighup_hands_the_sockets_to_a_new_process_and_drops_nothing() {
    let mut server = util::Server::start_with(
        json!([{"name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid(),
                "config": {"user.foo": "bar"}}]),
        &["--rate-limit", "0"],
    );
    server.guest_ready();
    let inode = std::fs::metadata(&server.socket).unwrap().ino();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let socket = server.socket.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let (mut ok, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let result = std::panic::catch_unwind(|| {
                        let mut c = util::Client::connect(&socket);
                        c.send(b"GET /1.0/config/user.foo HTTP/1.1\r\nHost: lxd\r\nConnection: close\r\n\r\n");
                        c.read_reply(false)
                    });
                    match result {
                        Ok(reply) if reply.status == 200 && reply.text() == "bar" => ok += 1,
                        Ok(reply) => failed.push(format!("{} {}", reply.status, reply.text())),
                        Err(_) => failed.push("connection failed".to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    // A keep-alive client of the old process, mid-conversation.
    let mut old_client = server.connect();
    assert_eq!(
        old_client
            .request("GET", "/1.0/config/user.foo", b"")
            .text(),
        "bar"
    );
    thread::sleep(Duration::from_millis(300));

    let status = server.signal_and_wait(nix::sys::signal::Signal::SIGHUP);
    assert!(
        status.success(),
        "the old process: {status}: {}",
        server.stderr()
    );
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.join().unwrap();
        ok += o;
        failed.extend(f);
    }
    // The new process, found by its state directory on its command line.
    let state = server.state_dir.display().to_string();
    let new_pid = std::process::Command::new(util::tool("pgrep"))
        .args(["-f", &state])
        .output()
        .unwrap();
    let new_pid = String::from_utf8_lossy(&new_pid.stdout).trim().to_string();
    let kill_new = || {
        for pid in new_pid.split_whitespace() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid.parse().unwrap()),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    };
    let checks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_eq!(failed, Vec::<String>::new(), "{ok} answered");
        assert!(ok > 20, "{ok}");
        assert!(!new_pid.is_empty(), "no new process");
        assert_eq!(
            std::fs::metadata(&server.socket).unwrap().ino(),
            inode,
            "the socket was re-created"
        );
        // The new process serves, with the state the old one left.
        assert_eq!(server.get("/1.0").json()["state"], "Ready");
        assert!(
            server.stderr().contains("took over the sockets"),
            "{}",
            server.stderr()
        );
        // The old keep-alive connection was closed, not left hanging.
        assert!(old_client.is_closed_by_server());
    }));
    kill_new();
    thread::sleep(Duration::from_millis(300));
    if let Err(e) = checks {
        std::panic::resume_unwind(e);
    }
}

/// The pids of the guestsock processes serving `state_dir` (found by it on
/// their command line), and a closure that stops them.
fn serving(state_dir: &std::path::Path) -> Vec<i32> {
    let out = std::process::Command::new(util::tool("pgrep"))
        .args(["-f", &state_dir.display().to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect()
}

fn stop_all(pids: &[i32]) {
    for &pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    thread::sleep(Duration::from_millis(300));
}

#[test]
fn changes_made_while_the_successor_reads_the_state_are_not_lost() {
    // Enough instances that the successor takes a while to read them; all
    // the while, the old process goes on serving and acknowledging changes,
    // which the successor must catch up on before it answers.
    let many: Vec<serde_json::Value> = (0..5000)
        .map(|i| {
            json!({"name": format!("i{i}"), "match": {"uid_range": [3_000_000 + i * 10, 10]},
                        "config": {"user.a": "x", "user.b": "y"}})
        })
        .collect();
    let mut server = util::Server::start_with(json!(many), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let admin = server.admin_socket.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let (mut acked, mut failed) = (Vec::new(), Vec::new());
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let (name, value) = (format!("i{w}"), n.to_string());
                    let result = std::panic::catch_unwind(|| {
                        util::Client::connect(&admin).request(
                            "PUT",
                            &format!("/1.0/instances/{name}/config/user.n"),
                            value.as_bytes(),
                        )
                    });
                    match result {
                        Ok(reply) if reply.status == 200 => acked.push(n),
                        Ok(reply) => failed.push(format!("{} {}", reply.status, reply.text())),
                        Err(_) => failed.push("connection failed".into()),
                    }
                }
                (w, acked, failed)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    let status = server.signal_and_wait(nix::sys::signal::Signal::SIGHUP);
    assert!(status.success(), "{status}: {}", server.stderr());
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let results: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let pids = serving(&server.state_dir);
    let checks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for (w, acked, failed) in &results {
            assert_eq!(failed, &Vec::<String>::new(), "writer {w}");
            let last = acked.last().expect("some change acknowledged");
            let served = server.admin_call("GET", &format!("/1.0/instances/i{w}"), b"");
            assert_eq!(
                served.json()["metadata"]["config"]["user.n"],
                last.to_string(),
                "writer {w}'s last acknowledged change"
            );
        }
        let log = server.stderr();
        let caught: usize = log
            .split("caught up on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the successor did not say what it caught up on: {log}"));
        assert!(
            caught > 0,
            "no change fell between the successor's read and its start, so this test showed nothing: {log}"
        );
    }));
    stop_all(&pids);
    if let Err(e) = checks {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_successor_that_cannot_start_leaves_the_old_process_serving() {
    let mut server = util::Server::start_with(
        json!([{"name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid(),
                "config": {"user.foo": "bar"}}]),
        &[],
    );
    // A row the successor cannot decode (written beside the running server,
    // as a failing disk might leave one): it reads the state and gives up.
    let db = rusqlite::Connection::open(server.state_dir.join("state.db")).unwrap();
    db.execute(
        "INSERT INTO instances (name, version, body) VALUES ('zz', 0, '{')",
        [],
    )
    .unwrap();
    drop(db);
    let pid = nix::unistd::Pid::from_raw(server.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = std::time::Instant::now() + util::PATIENCE;
    while !server.stderr().contains("failed before it was ready") {
        assert!(
            std::time::Instant::now() < deadline,
            "the old process never heard: {}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(server.is_running(), "the old process stopped");
    assert_eq!(server.get("/1.0/config/user.foo").text(), "bar");
    assert!(
        server.stderr().contains("corrupt state"),
        "{}",
        server.stderr()
    );
    assert_eq!(serving(&server.state_dir), [server.pid() as i32]);
}

#[test]
fn after_an_upgrade_replaced_the_binary_sighup_starts_the_new_one() {
    // A package upgrade renames a new binary over the old path; the
    // running server's own file is then deleted. SIGHUP must start the new
    // binary at that path, not fail on "PATH (deleted)".
    let dir = util::TempDir::new();
    let binary = dir.join("guestsock");
    std::fs::copy(util::bin(), &binary).unwrap();
    let socket = dir.join("guest/sock");
    let state = dir.join("state");
    let mut old = std::process::Command::new(&binary)
        .args(["serve", "--socket"])
        .arg(&socket)
        .arg("--admin-socket")
        .arg(dir.join("admin.sock"))
        .arg("--state-dir")
        .arg(&state)
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + util::PATIENCE;
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "never served");
        thread::sleep(Duration::from_millis(10));
    }
    let upgrade = dir.join("guestsock.new");
    std::fs::copy(util::bin(), &upgrade).unwrap();
    std::fs::rename(&upgrade, &binary).unwrap();
    let new_inode = std::fs::metadata(&binary).unwrap().ino();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let status = util::wait_with_deadline(&mut old);
    let log = std::fs::read_to_string(dir.join("stderr")).unwrap();
    let pids = serving(&state);
    let checks = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(status.success(), "{status}: {log}");
        assert_eq!(pids.len(), 1, "{log}");
        let exe = std::fs::metadata(format!("/proc/{}/exe", pids[0])).unwrap();
        assert_eq!(exe.ino(), new_inode, "the successor runs the new binary");
        assert_eq!(
            util::Client::connect(&socket)
                .request("GET", "/", b"")
                .status,
            403
        );
    }));
    stop_all(&pids);
    if let Err(e) = checks {
        std::panic::resume_unwind(e);
    }
}
