//! `guestsock doctor` finds each broken mount case, built with real mounts
//! in private mount namespaces: missing, a directory, a stale socket file
//! mount from before a restart, wrong permissions; and says fine when the
//! directory is mounted. Needs root; fails, saying so, otherwise.

mod util;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use serde_json::json;

/// A process in its own mount namespace, set up by `script`, killed on drop.
struct Container {
    child: Child,
}

impl Container {
    fn new(script: &str) -> Container {
        let mut child = Command::new(util::tool("unshare"))
            .args([
                "-m",
                "--propagation",
                "private",
                "--pid",
                "--fork",
                "--kill-child",
                "sh",
                "-c",
            ])
            .arg(format!("set -e; {script}; echo ready; exec sleep 300"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "set-up failed: {script}");
        Container { child }
    }

    /// The container's init: the shell (then sleep) inside the new pid
    /// namespace, as the host sees it.
    fn pid(&self) -> u32 {
        let children = format!("/proc/{0}/task/{0}/children", self.child.id());
        std::fs::read_to_string(children)
            .unwrap()
            .split_whitespace()
            .next()
            .expect("unshare forked")
            .parse()
            .unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn doctor(args: &[&str]) -> (bool, String) {
    let out = util::run_guestsock(&[&["doctor"], args].concat(), None);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn finds_each_broken_mount() {
    require_root!();
    util::tool("mount");
    let server = util::Server::start(json!([]));
    let sock_dir = server.socket.parent().unwrap().display().to_string();
    let sock = server.socket.display().to_string();
    let base = util::TempDir::new();
    let x = |name: &str| {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir.display().to_string()
    };
    let (fine, missing, directory, stale, perms) = (
        x("fine"),
        x("missing"),
        x("directory"),
        x("stale"),
        x("perms"),
    );
    let fine_c = Container::new(&format!(
        "mount -t tmpfs none {fine} && mkdir {fine}/lxd && mount --bind -o ro {sock_dir} {fine}/lxd"
    ));
    let missing_c = Container::new(&format!("mount -t tmpfs none {missing}"));
    let directory_c = Container::new(&format!(
        "mount -t tmpfs none {directory} && mkdir -p {directory}/lxd/sock"
    ));
    let stale_c = Container::new(&format!(
        "mount -t tmpfs none {stale} && mkdir {stale}/lxd && touch {stale}/lxd/sock && mount --bind {sock} {stale}/lxd/sock"
    ));

    // Before the restart, the file mount still works.
    let check = |c: &Container, dir: &str, sock: &str| {
        let pid = c.pid().to_string();
        let path = format!("{dir}/lxd/sock");
        doctor(&["--pid", &pid, "--path", &path, "--socket", sock])
    };
    let (ok, text) = check(&stale_c, &stale, &sock);
    assert!(ok, "{text}");

    // Restart: a new socket inode at the same path.
    let dir = server.stop_keep();
    let server = util::Server::start_in(dir, &[]);
    let sock = server.socket.display().to_string();
    // A file mount made now is fine but for its directory's mode.
    let perms_c = Container::new(&format!(
        "mount -t tmpfs -o mode=0700 none {perms} && mkdir -m 0700 {perms}/lxd && touch {perms}/lxd/sock && mount --bind {sock} {perms}/lxd/sock"
    ));

    let (ok, text) = check(&fine_c, &fine, &sock);
    assert!(ok && text.contains("fine"), "{text}");
    let (ok, text) = check(&missing_c, &missing, &sock);
    assert!(!ok && text.contains("nothing at"), "{text}");
    let (ok, text) = check(&directory_c, &directory, &sock);
    assert!(!ok && text.contains("is a directory"), "{text}");
    let (ok, text) = check(&stale_c, &stale, &sock);
    assert!(!ok && text.contains("stale socket"), "{text}");
    let (ok, text) = check(&perms_c, &perms, &sock);
    assert!(
        !ok && text.contains("wrong permissions") && text.contains("0700"),
        "{text}"
    );

    // Instances registered by pid are found through the admin socket.
    for (name, c) in [("good", &fine_c), ("bad", &directory_c)] {
        let body = json!({"name": name, "match": {"pid": c.pid()}});
        server.create_instance(&body);
    }
    let admin = server.admin_socket.display().to_string();
    let (ok, text) = doctor(&[
        "good",
        "--admin",
        &admin,
        "--path",
        &format!("{fine}/lxd/sock"),
    ]);
    assert!(
        ok && text.starts_with("good: ") && text.contains("fine"),
        "{text}"
    );
    let (ok, text) = doctor(&["--admin", &admin, "--path", &format!("{fine}/lxd/sock")]);
    assert!(
        !ok && text.contains("good: ") && text.contains("bad: "),
        "{text}"
    );
}

#[test]
fn checks_an_instance_matched_by_cgroup_by_its_name() {
    require_root!();
    util::tool("mount");
    let server = util::Server::start(json!([]));
    let sock_dir = server.socket.parent().unwrap().display().to_string();
    let base = util::TempDir::new();
    let root = base.join("c");
    std::fs::create_dir_all(&root).unwrap();
    let root = root.display().to_string();
    // A container as a hook registers it: its init in a cgroup of its own,
    // the instance matching that cgroup; and one whose group is empty.
    let group = util::Cgroup::new();
    let empty = util::Cgroup::new();
    let _c = Container::new(&format!(
        "echo $$ > {}/cgroup.procs && mount -t tmpfs none {root} && mkdir {root}/lxd && mount --bind -o ro {sock_dir} {root}/lxd",
        group.dir.display()
    ));
    server.create_instance(&json!({"name": "c1", "match": {"cgroup": group.path}}));
    server.create_instance(&json!({"name": "gone", "match": {"cgroup": empty.path}}));
    server.create_instance(&json!({"name": "u", "match": {"uid_range": [70000, 10]}}));
    let admin = server.admin_socket.display().to_string();
    let path = format!("{root}/lxd/sock");
    let (ok, text) = doctor(&["c1", "--admin", &admin, "--path", &path]);
    assert!(ok, "{text}");
    assert!(
        text.starts_with(&format!("c1: {path} is guestsock's socket: fine")),
        "{text}"
    );
    // Asked for by name, an instance with nothing to look through says why.
    let (ok, text) = doctor(&["gone", "--admin", &admin, "--path", &path]);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("gone: no process is in cgroup {}", empty.path))
            && text.contains("is the container running?"),
        "{text}"
    );
    let (ok, text) = doctor(&["u", "--admin", &admin]);
    assert!(!ok && text.contains("u: its rule is a uid range"), "{text}");
    let (ok, text) = doctor(&["nope", "--admin", &admin]);
    assert!(
        !ok && text.contains("no instance is named \"nope\""),
        "{text}"
    );
    // Unnamed, every instance with a process is checked, the others passed
    // over (and the server itself, started here without the unit's
    // priority, is told so).
    let (ok, text) = doctor(&["--admin", &admin, "--path", &path]);
    assert!(
        !ok && text.contains("lacks the priority the unit ships"),
        "{text}"
    );
    assert!(
        text.contains(&format!("c1: {path} is guestsock's socket: fine")) && !text.contains("gone"),
        "{text}"
    );
}
