//! `guestsock serve` starting and stopping: refusals with a one-line fix for
//! every bad socket path, stale sockets replaced, bad instance files named
//! with their position, the demo, the open-file limit, SIGTERM.

mod util;

use std::fs;
use std::os::unix::net::UnixListener;

use serde_json::json;

#[test]
fn refuses_a_directory_where_the_socket_goes() {
    let dir = util::TempDir::new();
    let socket = dir.join("guest/sock");
    fs::create_dir_all(&socket).unwrap();
    let err = util::serve_fails(&socket, None);
    assert!(
        err.contains("is a directory") && err.contains("rmdir"),
        "{err}"
    );
    assert!(socket.is_dir(), "left alone");
}

#[test]
fn refuses_a_regular_file_or_a_symlink() {
    let dir = util::TempDir::new();
    let file = dir.join("sock");
    fs::write(&file, "precious").unwrap();
    let err = util::serve_fails(&file, None);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious");

    let link = dir.join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let err = util::serve_fails(&link, None);
    assert!(err.contains("symbolic link"), "{err}");
}

#[test]
fn refuses_a_socket_a_live_server_answers_on() {
    let dir = util::TempDir::new();
    let socket = dir.join("sock");
    let _live = UnixListener::bind(&socket).unwrap();
    let err = util::serve_fails(&socket, None);
    assert!(err.contains("already answering"), "{err}");
}

#[test]
fn replaces_a_stale_socket_and_removes_its_own_on_exit() {
    let dir = util::TempDir::new();
    let socket = dir.join("guest/sock");
    fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists(), "a stale socket is left behind");

    let dir2 = util::TempDir::new();
    let file = dir2.join("instances.json");
    fs::write(&file, json!({"instances": [{"name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid()}]}).to_string()).unwrap();
    let mut child = std::process::Command::new(util::bin())
        .args(util::serve_args(&dir2.path, &socket))
        .args(["--instances", file.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + util::PATIENCE;
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        util::Client::connect(&socket)
            .request("GET", "/", b"")
            .status,
        200
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o666
    );
    assert_eq!(
        fs::metadata(socket.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = util::wait_with_deadline(&mut child);
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "removed on exit");
}

#[test]
fn bad_instance_files_name_the_file_position_and_reason() {
    let dir = util::TempDir::new();
    let socket = dir.join("sock");
    let file = dir.join("instances.json");
    let cases = [
        ("{\"instances\": [\n  {\"name\": \"c1\",}\n]}", "line 2"),
        (
            "{\"instances\": [{\"name\": \"c1\", \"match\": {\"pid\": 5}, \"colour\": 1}]}",
            "unknown field `colour`",
        ),
        (
            "{\"instances\": [{\"name\": \"C_1\", \"match\": {\"pid\": 5}}]}",
            "instances[0] (\"C_1\"): name",
        ),
        (
            "{\"instances\": [{\"name\": \"c1\", \"match\": {\"cgroup\": \"/\"}}]}",
            "instances[0] (\"c1\"): match",
        ),
        (
            "{\"instances\": [{\"name\": \"c1\", \"match\": {\"cgroup\": \"/a\"}}, {\"name\": \"c1\", \"match\": {\"cgroup\": \"/b\"}}]}",
            "instances[1] (\"c1\")",
        ),
        (
            "{\"instances\": [{\"name\": \"c1\", \"match\": {\"cgroup\": \"/a\"}}, {\"name\": \"c2\", \"match\": {\"cgroup\": \"/a\"}}]}",
            "instances[1] (\"c2\")",
        ),
        (
            "{\"instances\": [{\"name\": \"c1\", \"match\": {\"cgroup\": \"/a\"}, \"config\": {\"user.x\": 1}}]}",
            "line 1",
        ),
        (
            "{\"instances\": [{\"name\": \"c1\", \"match\": {\"cgroup\": \"/a\"}, \"config\": {\"bad key\": \"v\"}}]}",
            "bad key",
        ),
    ];
    for (text, needle) in cases {
        fs::write(&file, text).unwrap();
        let err = util::serve_fails(&socket, Some(&file));
        assert!(err.contains(file.to_str().unwrap()), "{err}");
        assert!(err.contains(needle), "{text}: {err} lacks {needle}");
        assert!(!socket.exists());
    }
    let err = util::serve_fails(&socket, Some(&dir.join("missing.json")));
    assert!(
        err.contains("missing.json") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn raises_the_open_file_soft_limit_to_the_hard_limit() {
    let dir = util::TempDir::new();
    let socket = dir.join("sock");
    // Start from a low soft limit, so that the test can fail.
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 256 && exec \"$0\" \"$@\"")
        .arg(util::bin())
        .args(util::serve_args(&dir.path, &socket))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + util::PATIENCE;
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let limits = fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_ne!(fields[3], "256", "{line}");
    assert_eq!(fields[3], fields[4], "{line}");
}

#[test]
fn query_prints_the_body_and_fails_on_errors() {
    let server = util::Server::start(
        json!([{"name": "c1", "match": {"uid_range": [util::my_uid(), 1]}, "root_uid": util::my_uid(), "config": {"user.foo": "bar"}}]),
    );
    let sock = server.socket.to_str().unwrap();
    let out = util::run_guestsock(&["query", "--socket", sock, "/1.0/config/user.foo"], None);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"bar");
    let out = util::run_guestsock(&["query", "--socket", sock, "/1.0/config/user.nope"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
}

#[test]
fn a_damaged_state_stops_the_start_and_names_it() {
    let server = util::Server::start(json!([{"name": "c1", "match": {"uid_range": [1000, 1]}}]));
    let dir = server.stop_keep();
    let file = dir.join("state/state.db");
    let mut bytes = fs::read(&file).unwrap();
    assert!(bytes.len() > 4096, "{} bytes", bytes.len());
    // Every page after the header page overwritten, as a failing disk or a
    // careless copy can leave it (no guestsock write can).
    for byte in &mut bytes[4096..] {
        *byte = 0xa5;
    }
    fs::write(&file, &bytes).unwrap();
    let mut args = vec!["serve".to_string()];
    for (flag, rel) in [
        ("--socket", "guest/sock"),
        ("--admin-socket", "admin.sock"),
        ("--state-dir", "state"),
    ] {
        args.extend([flag.to_string(), dir.join(rel).display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = util::run_guestsock(&args, None);
    assert!(!out.status.success(), "started on a damaged state");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(file.to_str().unwrap()) && err.contains("damaged state"),
        "{err}"
    );
}

#[test]
fn a_state_directory_of_the_previous_release_is_moved_in_whole() {
    // The previous release kept one pretty-printed file per instance,
    // exactly like this (guest state included).
    let dir = util::TempDir::new();
    let legacy = dir.join("state/instances");
    fs::create_dir_all(&legacy).unwrap();
    let me = util::my_uid();
    let files = [
        (
            "me",
            json!({"version": 1, "instance": {"name": "me", "type": "container", "location": "old-host",
                   "cloud_init_id": "me", "match": {"uid_range": [me, 1]}, "root_uid": me,
                   "guest_access": "root", "config": {"user.a": "1"}, "devices": {}},
                   "state": "Ready"}),
        ),
        (
            "c2",
            json!({"version": 1, "instance": {"name": "c2", "type": "container", "location": "old-host",
                   "cloud_init_id": "c2", "match": {"cgroup": "/x/y"}, "root_uid": 0,
                   "guest_access": "root", "config": {},
                   "devices": {"eth0": {"type": "nic"}}}, "state": "Started"}),
        ),
    ];
    for (name, doc) in &files {
        let mut text = serde_json::to_vec_pretty(doc).unwrap();
        text.push(b'\n');
        fs::write(legacy.join(format!("{name}.json")), text).unwrap();
    }
    // An unfinished write of that release: never acknowledged, dropped.
    fs::write(legacy.join("c3.json.tmp"), "{\"version\":1,").unwrap();
    let server = util::Server::start_in(dir, &[]);
    assert!(
        server.stderr().contains("moved 2 instance(s)"),
        "{}",
        server.stderr()
    );
    assert!(!server.state_dir.join("instances").exists());
    let guest = server.get("/1.0").json();
    assert_eq!(
        (guest["state"].as_str(), guest["location"].as_str()),
        (Some("Ready"), Some("old-host"))
    );
    assert_eq!(server.get("/1.0/config/user.a").text(), "1");
    let dumped = util::dump(&server.state_dir);
    assert_eq!(dumped["guest_states"], json!({"me": "Ready"}));
    for (name, doc) in &files {
        let stored = util::dumped(&server.state_dir, name).expect("moved");
        assert_eq!(&stored, &doc["instance"], "{name}");
    }
    // And it stays moved across a restart.
    let dir = server.stop_keep();
    let server = util::Server::start_in(dir, &[]);
    assert_eq!(server.get("/1.0").json()["state"], "Ready");
}
