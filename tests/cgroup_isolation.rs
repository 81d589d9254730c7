//! Callers told apart by their real cgroup v2 group: each process gets its own
//! instance's answers and never another's (PROTOCOL.md sections 1 and 4).
//! Needs root to create cgroups; fails, saying so, otherwise.

mod util;

use serde_json::json;

#[test]
fn each_cgroup_sees_only_its_own_instance() {
    require_root!();
    const N: usize = 8;
    let groups: Vec<util::Cgroup> = (0..N).map(|_| util::Cgroup::new()).collect();
    let instances: Vec<_> = groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            json!({
                "name": format!("c{i}"),
                "match": {"cgroup": g.path},
                "config": {"user.who": format!("c{i}"), (format!("user.only-c{i}")): "x"},
                "devices": {format!("dev{i}"): {"type": "nic"}},
            })
        })
        .collect();
    let server = util::Server::start(json!(instances));
    for round in 0..2 {
        for (i, g) in groups.iter().enumerate() {
            let (status, body) = g.curl(None, &server.socket, "/1.0/config/user.who");
            assert_eq!(
                (status, body.as_str()),
                (200, format!("c{i}").as_str()),
                "round {round}"
            );

            let (_, list) = g.curl(None, &server.socket, "/1.0/config");
            let list: Vec<String> = serde_json::from_str(&list).unwrap();
            assert_eq!(
                list,
                vec![
                    format!("/1.0/config/user.only-c{i}"),
                    "/1.0/config/user.who".to_string()
                ]
            );

            let (_, meta) = g.curl(None, &server.socket, "/1.0/meta-data");
            assert!(meta.contains(&format!("local-hostname: c{i}\n")), "{meta}");

            // Another instance's key is simply not there.
            let other = (i + 1) % N;
            let (status, _) = g.curl(
                None,
                &server.socket,
                &format!("/1.0/config/user.only-c{other}"),
            );
            assert_eq!(status, 404);
        }
    }
}

#[test]
fn longest_cgroup_prefix_wins_component_wise() {
    require_root!();
    let parent = util::Cgroup::new();
    let child = parent.child("inner");
    let child2 = parent.child("inner2");
    let server = util::Server::start(json!([
        {"name": "outer", "match": {"cgroup": parent.path}, "config": {"user.who": "outer"}},
        {"name": "inner", "match": {"cgroup": child.path}, "config": {"user.who": "inner"}},
    ]));
    let who = |g: &util::Cgroup| g.curl(None, &server.socket, "/1.0/config/user.who");
    assert_eq!(who(&child).1, "inner");
    // `/x/inner2` is beneath `/x`, not beneath `/x/inner`.
    assert_eq!(who(&child2).1, "outer");
    assert_eq!(who(&parent).1, "outer");
}

#[test]
fn a_process_outside_every_instance_is_forbidden() {
    require_root!();
    let known = util::Cgroup::new();
    let stranger = util::Cgroup::new();
    let server = util::Server::start(json!([
        {"name": "c1", "match": {"cgroup": known.path}, "config": {"user.who": "c1"}},
    ]));
    let (status, body) = stranger.curl(None, &server.socket, "/1.0/config/user.who");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("pid ") && body.contains("uid 0"), "{body}");
    // This test process (in the root cgroup) is a stranger too.
    assert_eq!(server.get("/1.0").status, 403);
}

#[test]
fn non_root_uid_in_a_cgroup_instance_is_unauthorized() {
    require_root!();
    let g = util::Cgroup::new();
    let server = util::Server::start(json!([
        {"name": "c1", "match": {"cgroup": g.path}, "root_uid": 0, "config": {"user.who": "c1"}},
    ]));
    let (status, body) = g.curl(Some(1000), &server.socket, "/1.0/config/user.who");
    assert_eq!(
        (status, body.as_str()),
        (401, "Access denied for non-root user\n")
    );
    assert_eq!(g.curl(None, &server.socket, "/1.0/config/user.who").1, "c1");
}

#[test]
fn cgroup_and_uid_rules_that_disagree_are_refused_as_ambiguous() {
    require_root!();
    let g = util::Cgroup::new();
    let server = util::Server::start(json!([
        {"name": "by-cgroup", "match": {"cgroup": g.path}, "guest_access": "any"},
        {"name": "by-uid", "match": {"uid_range": [4242, 1]}, "guest_access": "any"},
    ]));
    let (status, body) = g.curl(Some(4242), &server.socket, "/1.0");
    assert_eq!(status, 403, "{body}");
    // The guest learns nothing about other instances, not even their names;
    // the host's log has the whole reason.
    assert!(body.contains("matches more than one instance"), "{body}");
    assert!(
        !body.contains("by-cgroup") && !body.contains("by-uid"),
        "{body}"
    );
    let log = server.stderr();
    assert!(
        log.contains("\"by-cgroup\"") && log.contains("\"by-uid\""),
        "{log}"
    );
    // Each rule alone still works.
    assert_eq!(g.curl(Some(4243), &server.socket, "/1.0").0, 200);
}

#[test]
fn moving_within_its_own_subtree_keeps_a_process_its_own_instance() {
    require_root!();
    let mine = util::Cgroup::new();
    let inner = mine.child("workload");
    let neighbour = util::Cgroup::new();
    let server = util::Server::start(json!([
        {"name": "mine", "match": {"cgroup": mine.path}, "config": {"user.who": "mine"}},
        {"name": "neighbour", "match": {"cgroup": neighbour.path}, "config": {"user.who": "neighbour"}},
    ]));
    // A process that starts in its container's top cgroup and moves itself
    // deeper (as systemd inside a container does) is still its container,
    // whatever it calls itself: identity never looks at a process's name.
    let script = format!(
        "echo $$ > {top}/cgroup.procs && echo $$ > {inner}/cgroup.procs && exec -a neighbour curl -sS --unix-socket {sock} http://lxd/1.0/config/user.who",
        top = mine.dir.display(),
        inner = inner.dir.display(),
        sock = server.socket.display()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "mine");
}

#[test]
fn every_connection_is_identified_by_the_cgroup_it_comes_from_now() {
    require_root!();
    let a = util::Cgroup::new();
    let b = util::Cgroup::new();
    let unregistered = util::Cgroup::new();
    let server = util::Server::start(json!([
        {"name": "a", "match": {"cgroup": a.path}, "config": {"user.who": "a"}},
        {"name": "b", "match": {"cgroup": b.path}, "config": {"user.who": "b"}},
    ]));
    // One shell moves itself back and forth, so that later connections
    // come from cgroups guestsock has already seen (answered from what it
    // learned) and one from a cgroup it has not.
    let ask = format!(
        "curl -sS --unix-socket {} -o /dev/null -w '%{{http_code}}' http://lxd/1.0/config/user.who; curl -sS --unix-socket {} http://lxd/1.0/config/user.who; echo",
        server.socket.display(),
        server.socket.display()
    );
    let mut script = String::new();
    for group in [&a, &b, &a, &unregistered, &b, &a] {
        script += &format!("echo $$ > {}/cgroup.procs && {ask}\n", group.dir.display());
    }
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output()
        .unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(lines[0], "200a");
    assert_eq!(lines[1], "200b");
    assert_eq!(lines[2], "200a");
    assert!(lines[3].starts_with("403"), "{lines:?}");
    assert_eq!(lines[4], "200b");
    assert_eq!(lines[5], "200a");
}

#[test]
fn a_cgroup_seen_before_follows_the_registry() {
    require_root!();
    let group = util::Cgroup::new();
    let server = util::Server::start(json!([
        {"name": "first", "match": {"cgroup": group.path}, "config": {"user.who": "first"}},
    ]));
    assert_eq!(
        group.curl(None, &server.socket, "/1.0/config/user.who"),
        (200, "first".to_owned())
    );
    // The same cgroup, now given to another instance: what guestsock learned
    // about the cgroup must not keep it the first instance's.
    assert_eq!(
        server
            .admin_call("DELETE", "/1.0/instances/first", b"")
            .status,
        200
    );
    assert_eq!(
        group.curl(None, &server.socket, "/1.0/config/user.who").0,
        403
    );
    let second = json!({"name": "second", "match": {"cgroup": group.path}, "config": {"user.who": "second"}});
    server.create_instance(&second);
    assert_eq!(
        group.curl(None, &server.socket, "/1.0/config/user.who"),
        (200, "second".to_owned())
    );
    // A cgroup removed and made again at the same path is a new cgroup (a new
    // id); it is still identified by its path.
    let dir = group.dir.clone();
    std::fs::remove_dir(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    assert_eq!(
        group.curl(None, &server.socket, "/1.0/config/user.who"),
        (200, "second".to_owned())
    );
}

/// A guest holding one connection open: each line on its standard input
/// sends `GET /1.0/config/user.who` on that same connection and prints
/// `status body`.
const KEEP_ALIVE_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rb")
for _ in sys.stdin:
    s.sendall(b"GET /1.0/config/user.who HTTP/1.1\r\nHost: lxd\r\n\r\n")
    status = f.readline().split()[1].decode()
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    print(status, f.read(length).decode().strip(), flush=True)
"#;

/// A [`KEEP_ALIVE_CLIENT`] started in a cgroup, stopped on drop.
struct KeepAliveGuest {
    child: std::process::Child,
    to: Option<std::process::ChildStdin>,
    from: std::io::BufReader<std::process::ChildStdout>,
}

impl KeepAliveGuest {
    fn start(group: &util::Cgroup, socket: &std::path::Path) -> KeepAliveGuest {
        let mut child = group
            .command(
                None,
                util::tool("python3"),
                &["-c", KEEP_ALIVE_CLIENT, &socket.display().to_string()],
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let to = child.stdin.take();
        let from = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        KeepAliveGuest { child, to, from }
    }

    /// One more request on the same connection: `status body`.
    fn ask(&mut self) -> String {
        use std::io::{BufRead, Write};
        writeln!(self.to.as_mut().expect("stdin")).expect("ask");
        let mut line = String::new();
        self.from.read_line(&mut line).expect("answer");
        line.trim().to_owned()
    }
}

impl Drop for KeepAliveGuest {
    fn drop(&mut self) {
        self.to.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_connection_keeps_the_identity_taken_at_accept_when_a_new_rule_kind_arrives() {
    require_root!();
    let (a, b) = (util::Cgroup::new(), util::Cgroup::new());
    let server = util::Server::start(json!([
        {"name": "a", "match": {"cgroup": a.path}, "config": {"user.who": "a"}},
        {"name": "b", "match": {"cgroup": b.path}, "config": {"user.who": "b"}},
    ]));
    let mut guest = KeepAliveGuest::start(&a, &server.socket);
    assert_eq!(guest.ask(), "200 a");
    // Moved to b after connecting: the connection is still a's.
    let pid = guest.child.id().to_string();
    std::fs::write(b.dir.join("cgroup.procs"), &pid).expect("move to b");
    assert_eq!(guest.ask(), "200 a");
    // The first pid rule makes the server gather the pid namespace of
    // connections opened before it; what it knew already stays as it was.
    let ns = std::process::Command::new(util::tool("unshare"))
        .args(["--pid", "--fork", "--kill-child", "sleep", "300"])
        .spawn()
        .expect("unshare");
    let init = {
        let children = format!("/proc/{0}/task/{0}/children", ns.id());
        let deadline = std::time::Instant::now() + util::PATIENCE;
        loop {
            let text = std::fs::read_to_string(&children).unwrap_or_default();
            if let Some(pid) = text.split_whitespace().next() {
                break pid.to_owned();
            }
            assert!(std::time::Instant::now() < deadline, "unshare never forked");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    server.create_instance(&json!({"name": "p", "match": {"pid": init.parse::<i32>().unwrap()}}));
    assert_eq!(guest.ask(), "200 a");
    assert_eq!(guest.ask(), "200 a");
    // A new connection from the same process is b's.
    assert_eq!(b.curl(None, &server.socket, "/1.0/config/user.who").1, "b");
    drop(guest);
    let mut ns = ns;
    let _ = ns.kill();
    let _ = ns.wait();
}

#[test]
fn a_connection_follows_registry_changes_that_concern_it() {
    // A connection remembers which instance its caller is while the
    // registry is unchanged; a change must make it look again.
    require_root!();
    let g = util::Cgroup::new();
    let server = util::Server::start(json!([
        {"name": "by-uid", "match": {"uid_range": [0, 1]}, "guest_access": "any",
         "config": {"user.who": "by-uid"}},
    ]));
    let mut guest = KeepAliveGuest::start(&g, &server.socket);
    assert_eq!(guest.ask(), "200 by-uid");
    assert_eq!(guest.ask(), "200 by-uid");
    // A cgroup rule now claims it too: ambiguous, refused on this very
    // connection.
    server.create_instance(&json!({"name": "by-cgroup", "match": {"cgroup": g.path},
                                   "config": {"user.who": "by-cgroup"}}));
    let refused = guest.ask();
    assert!(
        refused.starts_with("403 ") && refused.contains("more than one instance"),
        "{refused}"
    );
    // That rule moves elsewhere (a replacement; a removal would close the
    // connections it claimed): the uid rule alone serves it again.
    let moved = json!({"name": "by-cgroup", "match": {"cgroup": "/elsewhere"}});
    let reply = server.admin_call(
        "PUT",
        "/1.0/instances/by-cgroup",
        moved.to_string().as_bytes(),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(guest.ask(), "200 by-uid");
}
