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
