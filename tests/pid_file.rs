//! `serve` writes its pid beside the admin socket (or at `--pid-file`), so
//! that the README's restart, `kill -HUP $(cat .../guestsock.pid)`, reaches
//! exactly that server: its successor rewrites the file, a server beside it
//! is untouched, and a final stop removes the file.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

/// The pid in `file`, once it is there and, with `not`, differs from it.
fn pid_in(file: &Path, not: Option<u32>) -> u32 {
    let deadline = Instant::now() + util::PATIENCE;
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.strip_suffix('\n').and_then(|t| t.parse::<u32>().ok()))
            .filter(|&pid| Some(pid) != not)
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} never named a new server",
            file.display()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by whoever adopted it) is gone too.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

/// Stops a server that is no child of ours (a successor) when dropped.
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

/// Runs a README-style shell line.
fn sh(line: &str) {
    let status = Command::new("sh").args(["-c", line]).status().unwrap();
    assert!(status.success(), "{line}: {status}");
}

#[test]
fn kill_hup_through_the_pid_file_restarts_exactly_this_server() {
    let mut server = util::Server::start(json!([{
        "name": "c1",
        "match": {"uid_range": [util::my_uid(), 1]},
        "root_uid": util::my_uid(),
        "config": {"user.foo": "bar"},
    }]));
    let file: PathBuf = server.admin_socket.with_file_name("guestsock.pid");
    assert_eq!(pid_in(&file, None), server.pid());
    let mut beside = util::Server::start(json!([]));
    let beside_file = beside.admin_socket.with_file_name("guestsock.pid");
    assert_eq!(pid_in(&beside_file, None), beside.pid());

    sh(&format!("kill -HUP $(cat {})", file.display()));
    let old = server.wait();
    assert!(old.success(), "the old process: {old}: {}", server.stderr());
    let new = Successor(pid_in(&file, Some(server.pid())));
    assert!(alive(new.0), "the successor {} runs", new.0);
    assert_eq!(server.get("/1.0/config/user.foo").text(), "bar");
    assert!(
        beside.is_running(),
        "the server beside it was not restarted"
    );
    assert_eq!(pid_in(&beside_file, None), beside.pid());

    // The successor can be restarted the same way, and stopped for good.
    sh(&format!("kill -HUP $(cat {})", file.display()));
    let newer = Successor(pid_in(&file, Some(new.0)));
    assert_eq!(server.get("/1.0/config/user.foo").text(), "bar");
    sh(&format!("kill -TERM $(cat {})", file.display()));
    let deadline = Instant::now() + util::PATIENCE;
    while alive(newer.0) {
        assert!(Instant::now() < deadline, "{} did not stop", newer.0);
        thread::sleep(Duration::from_millis(10));
    }
    assert!(!file.exists(), "a final stop removes the pid file");
    assert!(!alive(new.0));
}

#[test]
fn pid_file_flag_and_removal_at_stop() {
    let dir = util::TempDir::new();
    let file = dir.join("run/my.pid");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let mut server = util::Server::start_with(json!([]), &["--pid-file", file.to_str().unwrap()]);
    assert_eq!(pid_in(&file, None), server.pid());
    assert!(!server.admin_socket.with_file_name("guestsock.pid").exists());
    assert!(server.stop().success());
    assert!(!file.exists());
    // A pid file that cannot be written stops the start, saying where.
    let out = util::run_guestsock(
        &[
            "serve",
            "--socket",
            dir.join("g/sock").to_str().unwrap(),
            "--admin-socket",
            dir.join("admin.sock").to_str().unwrap(),
            "--state-dir",
            dir.join("state").to_str().unwrap(),
            "--pid-file",
            dir.join("missing/x.pid").to_str().unwrap(),
        ],
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot write the pid file") && err.contains("--pid-file"),
        "{err}"
    );
}
