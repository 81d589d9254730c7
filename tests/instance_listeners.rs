//! Listeners of an instance's own (issue 25): a VM's hybrid-vsock socket
//! `<uds>_<port>`, served through the real `guestsock agent` (a unix
//! socket standing in for the vsock leg), and a container's own socket
//! directory. Identity by listener: the VM's callers are named by the
//! agent's preamble, and only the VMM's user may connect (a setuid child is
//! refused, even once the socket's mode is opened by hand); a container's
//! own socket refuses another instance's process. The sockets are created
//! when the instance is, kept across a SIGHUP handoff (same inode) and a
//! restart, replaced when stale, refused when another server answers on
//! them, and removed with the instance; a second instance cannot claim one.

mod util;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use util::agent::Agent;
use util::{Client, PATIENCE, Reply, Server, TempDir, tool, unique};

/// A VM instance whose VMM listens on `uds` and runs as `vmm_uid`.
fn vm(name: &str, uds: &Path, vmm_uid: u32, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "name": name,
        "type": "virtual-machine",
        "config": {"user.who": name, "cloud-init.user-data": "#cloud-config\n"},
        "listeners": [{"vsock": {"uds": uds, "vmm_uid": vmm_uid}}],
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    spec
}

/// `<uds>_1024`, where the guest's connections to port 1024 arrive.
fn port_1024(uds: &Path) -> PathBuf {
    PathBuf::from(format!("{}_1024", uds.display()))
}

/// One request on a fresh connection to a VM's listener, after the
/// agent's preamble for in-guest `uid`.
fn as_guest(socket: &Path, uid: u32, method: &str, path: &str, body: &[u8]) -> Reply {
    let mut c = Client::connect(socket);
    c.send(format!("GUESTSOCK-AGENT 1 uid={uid} gid={uid} pid=77\r\n").as_bytes());
    c.request(method, path, body)
}

/// curl through `socket`: (status, body).
fn curl(socket: &Path, method: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let mut cmd = Command::new(tool("curl"));
    cmd.args(["-sS", "-X", method, "--unix-socket"])
        .arg(socket)
        .args(["-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("http://lxd{path}"));
    util::curl_in(cmd)
}

fn is_socket(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[test]
fn a_vm_is_served_through_its_vsock_listener_and_the_real_agent() {
    require_root!();
    let dir = TempDir::new();
    let uds = dir.join("vm1/v.sock");
    fs::create_dir_all(dir.join("vm1")).unwrap();
    let me = util::my_uid();
    let server = Server::start(json!([vm("vm1", &uds, me, json!({}))]));
    let socket = port_1024(&uds);
    let meta = fs::symlink_metadata(&socket).expect("the VM's listener exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600, "only the VMM's user");
    assert_eq!(meta.uid(), me);

    // The agent, as it runs inside the guest, relays to the VM's listener.
    let agent_dir = TempDir::new();
    let agent = Agent::start(&agent_dir, &socket, &[]);
    let (status, body) = curl(&agent.socket, "GET", "/1.0", &[]);
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["instance_type"], "virtual-machine", "{info}");
    assert_eq!(info["state"], "Started", "{info}");
    assert_eq!(
        curl(&agent.socket, "GET", "/1.0/config/user.who", &[]),
        (200, "vm1".to_string())
    );
    let (status, body) = curl(&agent.socket, "GET", "/1.0/meta-data", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("instance-id: vm1"), "{body}");

    // An event reaches the guest; Ready reaches the host.
    let mut ws = util::websocket(&agent.socket, "/1.0/events");
    let reply = server.admin_call("PUT", "/1.0/instances/vm1/config/user.who", b"changed");
    assert_eq!(reply.status, 200, "{}", reply.text());
    let event = util::next_event(&mut ws);
    assert_eq!(event["metadata"]["key"], "user.who", "{event}");
    let (status, body) = curl(
        &agent.socket,
        "PATCH",
        "/1.0",
        &["-d", r#"{"state":"Ready"}"#],
    );
    assert_eq!(status, 200, "{body}");
    let shown = server.admin_call("GET", "/1.0/instances/vm1", b"").json();
    assert_eq!(shown["metadata"]["state"], "Ready", "{shown}");
    // No `match` for a VM: the listener is its identity.
    assert!(shown["metadata"].get("match").is_none(), "{shown}");

    // A token names the VM.
    let (status, token) = curl(
        &agent.socket,
        "GET",
        "/1.0/identity/token?audience=https://vault.example",
        &["-H", "Guestsock-Identity: true"],
    );
    assert_eq!(status, 200, "{token}");
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value =
        serde_json::from_slice(&base64_url(payload).unwrap_or_else(|| panic!("payload {payload}")))
            .unwrap();
    assert_eq!(claims["guestsock"]["instance"], "vm1", "{claims}");
    assert_eq!(claims["guestsock"]["type"], "virtual-machine", "{claims}");
    assert_eq!(claims["guestsock"]["uid"], 0, "{claims}");
    drop(server);
}

/// Decodes unpadded base64url.
fn base64_url(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for b in text.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[test]
fn only_the_vmms_user_may_speak_for_the_vm() {
    require_root!();
    let dir = TempDir::new();
    fs::create_dir_all(dir.join("vm1")).unwrap();
    // The directory must let uid 1000 through to the socket.
    fs::set_permissions(dir.join("vm1"), fs::Permissions::from_mode(0o755)).unwrap();
    let uds = dir.join("vm1/v.sock");
    let server = Server::start(json!([vm("vm1", &uds, 1000, json!({}))]));
    let socket = port_1024(&uds);
    assert_eq!(fs::symlink_metadata(&socket).unwrap().uid(), 1000);

    // The real agent, run by a setuid child standing in for the VMM's
    // process, connects (with its preamble) and relays curl's request.
    let as_uid = |uid: u32| -> (u16, String) {
        let home = dir.join(&unique("agent"));
        fs::create_dir(&home).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o777)).unwrap();
        let agent = Agent::start_as(Some(uid), &home.join("lxd/sock"), &socket, &[]);
        curl(&agent.socket, "GET", "/1.0/config/user.who", &[])
    };
    assert_eq!(as_uid(1000), (200, "vm1".to_string()));
    // Anyone else is kept out by the socket's mode (the agent cannot
    // connect: 503 with why)...
    let (status, body) = as_uid(1001);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Permission denied"), "{body}");
    // ... and, if the mode is opened by hand, by the server.
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    let (status, body) = as_uid(1001);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("may not use this socket"), "{body}");
    assert!(
        server.stderr().contains("only the VMM's user may connect"),
        "{}",
        server.stderr()
    );
    // Root is not the VMM either.
    let reply = as_guest(&socket, 0, "GET", "/1.0", b"");
    assert_eq!(reply.status, 403, "{}", reply.text());
    let metrics = server.admin_call("GET", "/1.0/metrics", b"").text();
    assert!(
        metrics.contains("guestsock_identity_failures_total{reason=\"wrong_listener\"} 2"),
        "{metrics}"
    );
}

#[test]
fn the_preamble_comes_first_and_names_the_in_guest_caller() {
    require_root!();
    let dir = TempDir::new();
    fs::create_dir_all(dir.join("a")).unwrap();
    fs::create_dir_all(dir.join("b")).unwrap();
    let me = util::my_uid();
    let (a, b) = (dir.join("a/v.sock"), dir.join("b/v.sock"));
    let _server = Server::start(json!([
        vm("root-only", &a, me, json!({})),
        vm("any", &b, me, json!({"guest_access": "any"})),
    ]));
    let (a, b) = (port_1024(&a), port_1024(&b));
    // guest_access root: the in-guest uid the preamble names decides.
    assert_eq!(
        as_guest(&a, 0, "GET", "/1.0/config/user.who", b"").text(),
        "root-only"
    );
    assert_eq!(
        as_guest(&a, 1000, "GET", "/1.0/config/user.who", b"").status,
        401
    );
    assert_eq!(
        as_guest(&b, 1000, "GET", "/1.0/config/user.who", b"").text(),
        "any"
    );
    // A keep-alive connection: the preamble once, then many requests.
    let mut c = Client::connect(&a);
    c.send(b"GUESTSOCK-AGENT 1 uid=0 gid=0 pid=9\r\n");
    for _ in 0..3 {
        assert_eq!(
            c.request("GET", "/1.0/config/user.who", b"").text(),
            "root-only"
        );
    }
    // Without the preamble: 400, and closed.
    let mut c = Client::connect(&a);
    let reply = c.request("GET", "/1.0", b"");
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(reply.text().contains("preamble"), "{}", reply.text());
    assert!(c.is_closed_by_server());
    // Too long a line: 400 as soon as the bound is passed.
    let mut c = Client::connect(&a);
    c.send(&[b'1'; 200]);
    let reply = c.read_reply(false);
    assert_eq!(reply.status, 400, "{}", reply.text());
    // The VMM gone mid-connection (half a preamble, half a request, then
    // nothing): nothing is left behind, and the next connection is served.
    for half in [
        &b"GUESTSOCK-AGENT 1 ui"[..],
        b"GUESTSOCK-AGENT 1 uid=0 gid=0 pid=1\r\nGET /1.0 HT",
    ] {
        let mut c = Client::connect(&a);
        c.send(half);
        drop(c);
    }
    assert_eq!(
        as_guest(&a, 0, "GET", "/1.0/config/user.who", b"").text(),
        "root-only"
    );
    // A VM's listener never serves another instance: each is its own.
    assert_eq!(
        as_guest(&b, 0, "GET", "/1.0/config/user.who", b"").text(),
        "any"
    );
}

#[test]
fn vm_listeners_are_made_kept_and_removed_with_their_instances() {
    require_root!();
    let dir = TempDir::new();
    fs::create_dir_all(dir.join("vm")).unwrap();
    let me = util::my_uid();
    let uds = dir.join("vm/v.sock");
    let socket = port_1024(&uds);
    // A stale socket left by a killed process is replaced.
    drop(UnixListener::bind(&socket).unwrap());
    assert!(is_socket(&socket));
    let mut server = Server::start(json!([]));
    server.create_instance(&vm("vm1", &uds, me, json!({})));
    assert_eq!(
        as_guest(&socket, 0, "GET", "/1.0/config/user.who", b"").text(),
        "vm1"
    );
    let inode = fs::metadata(&socket).unwrap().ino();

    // A second instance cannot claim the same socket: 409.
    let reply = server.admin_call(
        "POST",
        "/1.0/instances",
        vm("vm2", &uds, me, json!({})).to_string().as_bytes(),
    );
    assert_eq!(reply.status, 409, "{}", reply.text());
    assert!(
        reply.text().contains("instance \\\"vm1\\\"'s already"),
        "{}",
        reply.text()
    );
    // A socket another server answers on is refused, and nothing is made.
    let live = dir.join("vm/live.sock");
    let holder = UnixListener::bind(port_1024(&live)).unwrap();
    let reply = server.admin_call(
        "POST",
        "/1.0/instances",
        vm("vm3", &live, me, json!({})).to_string().as_bytes(),
    );
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(
        reply.text().contains("another server is already answering"),
        "{}",
        reply.text()
    );
    drop(holder);
    // The VMM's directory must exist (the listener must be there before the
    // guest connects, so a typo is refused, not created).
    let reply = server.admin_call(
        "POST",
        "/1.0/instances",
        vm("vm4", &dir.join("nowhere/v.sock"), me, json!({}))
            .to_string()
            .as_bytes(),
    );
    assert_eq!(reply.status, 400, "{}", reply.text());

    // SIGHUP: the successor adopts the socket, same inode, and serves it.
    let status = server.signal_and_wait(nix::sys::signal::Signal::SIGHUP);
    assert!(status.success(), "{status}: {}", server.stderr());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply =
            std::panic::catch_unwind(|| as_guest(&socket, 0, "GET", "/1.0/config/user.who", b""));
        if let Ok(reply) = reply
            && reply.status == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "{}", server.stderr());
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        fs::metadata(&socket).unwrap().ino(),
        inode,
        "the same socket"
    );
    let successor = successor_pid(&server.state_dir);
    // Removing the instance closes and removes its listener.
    let mut open = Client::connect(&socket);
    open.send(b"GUESTSOCK-AGENT 1 uid=0 gid=0 pid=9\r\n");
    assert_eq!(
        open.request("GET", "/1.0/config/user.who", b"").text(),
        "vm1"
    );
    let reply = server.admin_call("DELETE", "/1.0/instances/vm1", b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        !socket.exists(),
        "the listener's file goes with the instance"
    );
    assert!(open.is_closed_by_server());
    // Registered again, then a restart (SIGTERM, start): made again.
    server.create_instance(&vm("vm1", &uds, me, json!({})));
    assert!(is_socket(&socket));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(successor),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + PATIENCE;
    while socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the listener outlived its server"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let dir_kept = server.kill9();
    let restarted = Server::start_in(dir_kept, &[]);
    assert_eq!(
        as_guest(&socket, 0, "GET", "/1.0/config/user.who", b"").text(),
        "vm1"
    );
    drop(restarted);
}

/// The pid of the guestsock serving `state_dir` now (a SIGHUP successor).
fn successor_pid(state_dir: &Path) -> i32 {
    let out = Command::new(tool("pgrep"))
        .args(["-f", &state_dir.display().to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a successor")
}

#[test]
fn a_containers_own_socket_serves_it_alone() {
    require_root!();
    let dir = TempDir::new();
    let (mine, other, stranger) = (
        util::Cgroup::new(),
        util::Cgroup::new(),
        util::Cgroup::new(),
    );
    let own = dir.join("c1-dev-lxd");
    let server = Server::start(json!([
        {"name": "c1", "match": {"cgroup": mine.path}, "config": {"user.who": "c1"},
         "listeners": [{"socket_dir": {"dir": own}}]},
        {"name": "c2", "match": {"cgroup": other.path}, "config": {"user.who": "c2"}},
    ]));
    let socket = own.join("sock");
    let meta = fs::symlink_metadata(&socket).expect("the container's socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o666);
    assert_eq!(fs::metadata(&own).unwrap().mode() & 0o777, 0o755);
    assert_eq!(
        mine.curl(None, &socket, "/1.0/config/user.who"),
        (200, "c1".into())
    );
    // Another instance's process is refused on it, even though it is a
    // registered instance; so is a process of no instance.
    let (status, body) = other.curl(None, &socket, "/1.0/config/user.who");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("may not use this socket"), "{body}");
    let (status, _) = stranger.curl(None, &socket, "/1.0/config/user.who");
    assert_eq!(status, 403);
    // The shared socket is unchanged: both served there.
    assert_eq!(
        mine.curl(None, &server.socket, "/1.0/config/user.who"),
        (200, "c1".into())
    );
    assert_eq!(
        other.curl(None, &server.socket, "/1.0/config/user.who"),
        (200, "c2".into())
    );
    // A socket directory without a rule is refused: its callers' peer
    // credentials are the proof.
    let reply = server.admin_call(
        "POST",
        "/1.0/instances",
        json!({"name": "c3", "listeners": [{"socket_dir": {"dir": dir.join("c3")}}]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(reply.status, 400, "{}", reply.text());
}

#[test]
fn instance_add_declares_listeners_on_the_command_line() {
    require_root!();
    let dir = TempDir::new();
    fs::create_dir_all(dir.join("vm")).unwrap();
    let server = Server::start(json!([]));
    let file = dir.join("vm1.json");
    fs::write(
        &file,
        json!({"name": "vm1", "type": "virtual-machine"}).to_string(),
    )
    .unwrap();
    let uds = dir.join("vm/v.sock");
    let (file, admin, uds_arg) = (
        file.display().to_string(),
        server.admin_socket.display().to_string(),
        uds.display().to_string(),
    );
    // `instance add FILE --admin ADMIN --vsock-uds UDS` and `more`.
    let add = |more: &[&str]| {
        let mut args = vec![
            "instance",
            "add",
            &file,
            "--admin",
            &admin,
            "--vsock-uds",
            &uds_arg,
        ];
        args.extend_from_slice(more);
        util::run_guestsock(&args, None)
    };
    let me = util::my_uid().to_string();
    let out = add(&["--vsock-port", "5000", "--vmm-uid", &me]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let socket = PathBuf::from(format!("{}_5000", uds.display()));
    assert!(is_socket(&socket));
    assert_eq!(as_guest(&socket, 0, "GET", "/1.0", b"").status, 200);
    // --vsock-uds without --vmm-uid is refused by the command line.
    let out = add(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--vmm-uid"));
}

#[test]
fn a_vm_listener_deleted_by_hand_is_bound_again() {
    require_root!();
    let dir = TempDir::new();
    fs::create_dir_all(dir.join("vm")).unwrap();
    let uds = dir.join("vm/v.sock");
    let socket = port_1024(&uds);
    let server = Server::start(json!([vm("vm1", &uds, util::my_uid(), json!({}))]));
    // A connection open before the file goes keeps being served.
    let mut open = Client::connect(&socket);
    open.send(b"GUESTSOCK-AGENT 1 uid=0 gid=0 pid=9\r\n");
    assert_eq!(
        open.request("GET", "/1.0/config/user.who", b"").text(),
        "vm1"
    );
    let before = fs::metadata(&socket).unwrap().ino();
    fs::remove_file(&socket).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !is_socket(&socket) {
        assert!(
            Instant::now() < deadline,
            "never bound again: {}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_ne!(fs::metadata(&socket).unwrap().ino(), before);
    let meta = fs::symlink_metadata(&socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, util::my_uid()));
    assert_eq!(
        as_guest(&socket, 0, "GET", "/1.0/config/user.who", b"").text(),
        "vm1"
    );
    assert_eq!(
        open.request("GET", "/1.0/config/user.who", b"").text(),
        "vm1"
    );
    assert!(
        server
            .stderr()
            .contains("is no longer the socket guestsock listens on"),
        "{}",
        server.stderr()
    );
    // A file put in its place by hand is left alone, and said so.
    fs::remove_file(&socket).unwrap();
    fs::write(&socket, "not a socket").unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !server.stderr().contains("exists and is not a socket") {
        assert!(Instant::now() < deadline, "{}", server.stderr());
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fs::read_to_string(&socket).unwrap(), "not a socket");
}

#[test]
fn a_listener_that_cannot_be_opened_at_start_is_tried_again() {
    require_root!();
    let dir = TempDir::new();
    fs::create_dir_all(dir.join("vm")).unwrap();
    let uds = dir.join("vm/v.sock");
    let socket = port_1024(&uds);
    // Something else is in the way when the server starts: it starts all
    // the same, says so, and takes the path once it is free.
    fs::write(&socket, "in the way").unwrap();
    let server = Server::start(json!([vm("vm1", &uds, util::my_uid(), json!({}))]));
    assert!(
        server.stderr().contains("trying again every second"),
        "{}",
        server.stderr()
    );
    fs::remove_file(&socket).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !is_socket(&socket) {
        assert!(
            Instant::now() < deadline,
            "never opened: {}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        as_guest(&socket, 0, "GET", "/1.0/config/user.who", b"").text(),
        "vm1"
    );
}

#[test]
fn a_replacement_keeps_an_unchanged_listener_and_remakes_a_changed_one() {
    require_root!();
    let dir = TempDir::new();
    fs::create_dir_all(dir.join("vm")).unwrap();
    fs::set_permissions(dir.join("vm"), fs::Permissions::from_mode(0o755)).unwrap();
    let uds = dir.join("vm/v.sock");
    let socket = port_1024(&uds);
    let me = util::my_uid();
    let server = Server::start(json!([vm("vm1", &uds, me, json!({}))]));
    let inode = fs::metadata(&socket).unwrap().ino();
    let mut open = Client::connect(&socket);
    open.send(b"GUESTSOCK-AGENT 1 uid=0 gid=0 pid=9\r\n");
    assert_eq!(
        open.request("GET", "/1.0/config/user.who", b"").text(),
        "vm1"
    );
    // A config change (a replacement with the same listener): the same
    // socket, and its connections go on.
    let reply = server.admin_call("PUT", "/1.0/instances/vm1/config/user.who", b"again");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(fs::metadata(&socket).unwrap().ino(), inode);
    assert_eq!(
        open.request("GET", "/1.0/config/user.who", b"").text(),
        "again"
    );
    // Another VMM uid: what was accepted under the old rule is let go, and
    // the socket is the new VMM's.
    let spec = vm("vm1", &uds, 1000, json!({}));
    let reply = server.admin_call("PUT", "/1.0/instances/vm1", spec.to_string().as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(open.is_closed_by_server());
    let meta = fs::symlink_metadata(&socket).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (1000, 0o600));
    assert_eq!(
        as_guest(&socket, 0, "GET", "/1.0", b"").status,
        403,
        "root is not the VMM now"
    );
}
