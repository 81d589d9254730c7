//! Callers told apart by pid namespace: an instance registered with the pid
//! of a container's init serves every process of that pid namespace, and no
//! other (docs/protocol.md section 4 `pid`). Needs root to unshare; fails,
//! loudly, otherwise.

mod util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

/// A process in a new pid namespace, killed on drop.
struct Namespace {
    unshare: std::process::Child,
    /// Host pid of the namespace's init (the sleep).
    init: i32,
}

impl Namespace {
    fn new() -> Namespace {
        let unshare = Command::new(util::tool("unshare"))
            .args(["--pid", "--fork", "--kill-child", "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        // Owned from here, so that Drop reaps it whatever happens.
        let mut ns = Namespace { unshare, init: 0 };
        let children = format!("/proc/{0}/task/{0}/children", ns.unshare.id());
        let deadline = Instant::now() + util::PATIENCE;
        while ns.init == 0 {
            let text = std::fs::read_to_string(&children).unwrap_or_default();
            match text.split_whitespace().next() {
                Some(pid) => ns.init = pid.parse().expect("pid"),
                None => {
                    assert!(Instant::now() < deadline, "unshare never forked");
                    thread::sleep(Duration::from_millis(5));
                }
            }
        }
        ns
    }

    /// curl from a new process inside the namespace.
    fn curl(&self, socket: &std::path::Path, path: &str) -> (u16, String) {
        let mut cmd = Command::new(util::tool("nsenter"));
        cmd.args([
            "--target",
            &self.init.to_string(),
            "--pid",
            "--",
            util::tool("curl"),
        ]);
        cmd.args(util::curl_args(socket, path));
        util::curl_in(cmd)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

#[test]
fn processes_of_a_pid_namespace_get_its_instance() {
    require_root!();
    let ns1 = Namespace::new();
    let ns2 = Namespace::new();
    let server = util::Server::start(json!([
        {"name": "one", "match": {"pid": ns1.init}, "config": {"user.who": "one"}},
        {"name": "two", "match": {"pid": ns2.init}, "config": {"user.who": "two"}},
    ]));
    assert_eq!(
        ns1.curl(&server.socket, "/1.0/config/user.who"),
        (200, "one".into())
    );
    assert_eq!(
        ns2.curl(&server.socket, "/1.0/config/user.who"),
        (200, "two".into())
    );
    // The host's own pid namespace belongs to neither.
    assert_eq!(server.get("/1.0").status, 403);
}

#[test]
fn a_pid_in_the_servers_own_namespace_is_refused() {
    // Registering the host's init would hand every host process to one
    // instance.
    let err = util::serve_refuses_instances(json!([{"name": "host", "match": {"pid": 1}}]));
    assert!(
        err.contains("instances[0]") && err.contains("namespace"),
        "{err}"
    );
}

#[test]
fn a_pid_rule_survives_a_restart_only_while_its_namespace_lives() {
    require_root!();
    let ns = Namespace::new();
    let server = util::Server::start(json!([]));
    let body = json!({"name": "one", "match": {"pid": ns.init}, "config": {"user.who": "one"}});
    let reply = server.admin_call("POST", "/1.0/instances", body.to_string().as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    let dir = server.stop_keep();
    let server = util::Server::start_in(dir, &[]);
    assert_eq!(
        ns.curl(&server.socket, "/1.0/config/user.who"),
        (200, "one".into())
    );

    // The namespace dies with its init; its inode may be reused by another
    // namespace, so after a restart the rule must match no one.
    let socket = server.socket.clone();
    let other = Namespace::new();
    let init = format!("/proc/{}", ns.init);
    drop(ns);
    let deadline = Instant::now() + util::PATIENCE;
    while Path::new(&init).exists() {
        assert!(Instant::now() < deadline, "the namespace's init lingers");
        thread::sleep(Duration::from_millis(5));
    }
    let dir = server.stop_keep();
    let server = util::Server::start_in(dir, &[]);
    assert!(
        server.stderr().contains("matches no caller"),
        "{}",
        server.stderr()
    );
    assert_eq!(other.curl(&socket, "/1.0/config/user.who").0, 403);
    let listed = server.admin_call("GET", "/1.0/instances", b"").json();
    assert_eq!(
        listed["metadata"],
        json!(["/1.0/instances/one"]),
        "still registered"
    );
}

/// The nsfs inode number of `pid`'s pid namespace.
fn namespace_inode(pid: i32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .expect("pid namespace")
        .ino()
}

#[test]
fn a_pid_rule_ends_with_its_namespace_even_when_the_number_is_reused() {
    require_root!();
    // A container that stopped without being unregistered (its runtime
    // crashed before its stop hook) leaves a pid rule behind. The kernel
    // gives the dead namespace's inode number to a later namespace: that
    // namespace belongs to whoever registers it, never to the stale rule.
    let server = util::Server::start(json!([]));
    let stale = Namespace::new();
    let number = namespace_inode(stale.init);
    let body =
        json!({"name": "stale", "match": {"pid": stale.init}, "config": {"user.who": "stale"}});
    let reply = server.admin_call("POST", "/1.0/instances", body.to_string().as_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    let init = format!("/proc/{}", stale.init);
    drop(stale);
    let deadline = Instant::now() + util::PATIENCE;
    while Path::new(&init).exists() {
        assert!(Instant::now() < deadline, "the namespace's init lingers");
        thread::sleep(Duration::from_millis(5));
    }
    // New namespaces until one gets the number (the kernel hands out the
    // lowest free one, so this takes one or two tries).
    let mut reused = None;
    for _ in 0..200 {
        let ns = Namespace::new();
        if namespace_inode(ns.init) == number {
            reused = Some(ns);
            break;
        }
    }
    let reused = reused.expect("the kernel never reused the namespace's inode number");
    assert_eq!(
        reused.curl(&server.socket, "/1.0/config/user.who").0,
        403,
        "a stale rule claimed a new namespace"
    );
    let body =
        json!({"name": "fresh", "match": {"pid": reused.init}, "config": {"user.who": "fresh"}});
    let reply = server.admin_call("POST", "/1.0/instances", body.to_string().as_bytes());
    assert_eq!(
        reply.status,
        200,
        "a stale rule blocks its number: {}",
        reply.text()
    );
    assert_eq!(
        reused.curl(&server.socket, "/1.0/config/user.who"),
        (200, "fresh".into())
    );
    // Removing the stale instance leaves the new one's namespace alone.
    assert_eq!(
        server
            .admin_call("DELETE", "/1.0/instances/stale", b"")
            .status,
        200
    );
    assert_eq!(
        reused.curl(&server.socket, "/1.0/config/user.who"),
        (200, "fresh".into())
    );
}
