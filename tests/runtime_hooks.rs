//! `guestsock hook oci` and `guestsock hook lxc` as runtimes run them, with
//! the runtime's part played by the test: a real process in a real cgroup
//! (or a real pid namespace) as the container's init, the hook run as a
//! command with what the runtime would give it, and the guest's answers
//! read with curl from inside. The real runtimes (runc, crun, podman, LXC,
//! Docker) are in the runtime_*.rs tests; this file covers the hook's rules
//! on their own, fast.

mod util;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Runs `guestsock hook ARGS` against `server` with `input` on standard
/// input and `env` set, as a runtime does.
fn hook(admin: &Path, args: &[&str], input: &str, env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(util::bin())
        .arg("hook")
        .args(args)
        .env("GUESTSOCK_ADMIN", admin)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn guestsock hook");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write the state");
    child.wait_with_output().expect("hook output")
}

/// `guestsock hook oci FLAGS` as a runtime runs it when it creates
/// container `id`, whose init is `init`.
fn create(admin: &Path, flags: &[&str], id: &str, init: &Init, annotations: Value) -> Output {
    let mut args = vec!["oci"];
    args.extend_from_slice(flags);
    hook(
        admin,
        &args,
        &state(id, "creating", init.pid(), annotations),
        &[],
    )
}

/// An OCI state for container `id` whose init is `pid`.
fn state(id: &str, status: &str, pid: u32, annotations: Value) -> String {
    json!({"ociVersion": "1.0.2", "id": id, "status": status, "pid": pid,
           "bundle": "/nonexistent", "annotations": annotations})
    .to_string()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "the hook failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "a hook prints nothing on success");
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "the hook succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A container's init: a sleep in a cgroup of its own, killed on drop.
struct Init {
    cgroup: util::Cgroup,
    child: Child,
}

impl Init {
    fn start() -> Init {
        let cgroup = util::Cgroup::new();
        let child = cgroup
            .command(None, "sleep", &["300"])
            .spawn()
            .expect("spawn the init");
        let init = Init { cgroup, child };
        // The child writes itself into the group before it execs sleep.
        let deadline = Instant::now() + util::PATIENCE;
        while !std::fs::read_to_string(format!("/proc/{}/cgroup", init.pid()))
            .unwrap_or_default()
            .contains(&init.cgroup.path)
        {
            assert!(
                Instant::now() < deadline,
                "the init never joined its cgroup"
            );
            thread::sleep(Duration::from_millis(5));
        }
        init
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn instances(server: &util::Server) -> Vec<Value> {
    let reply = server.admin_call("GET", "/1.0/instances?recursion=1", b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["metadata"].as_array().expect("a list").clone()
}

#[test]
fn an_oci_container_is_registered_at_create_and_removed_at_poststop() {
    require_root!();
    let server = util::Server::start(json!([]));
    let admin = &server.admin_socket;
    let one = Init::start();
    let two = Init::start();
    for (id, init, value) in [("one", &one, "first"), ("two", &two, "second")] {
        ok(&hook(
            admin,
            &["oci"],
            &state(
                id,
                "creating",
                init.pid(),
                json!({"io.guestsock.config.user.foo": value,
                       "io.guestsock.device.eth0.type": "nic",
                       "org.example.other": "not guestsock's"}),
            ),
            &[],
        ));
    }
    // Each reads its own, from its own cgroup.
    assert_eq!(
        one.cgroup
            .curl(None, &server.socket, "/1.0/config/user.foo"),
        (200, "first".into())
    );
    assert_eq!(
        two.cgroup
            .curl(None, &server.socket, "/1.0/config/user.foo"),
        (200, "second".into())
    );
    assert_eq!(
        one.cgroup.curl(None, &server.socket, "/1.0/devices"),
        (200, "{\"eth0\":{\"type\":\"nic\"}}\n".into())
    );
    // The owner key is the host's: the guest never sees it.
    let (status, keys) = one.cgroup.curl(None, &server.socket, "/1.0/config");
    assert_eq!(
        (status, keys.trim_end()),
        (200, r#"["/1.0/config/user.foo"]"#)
    );
    let one_spec = server.admin_call("GET", "/1.0/instances/one", b"").json()["metadata"].clone();
    assert_eq!(one_spec["match"], json!({"cgroup": one.cgroup.path}));
    assert_eq!(one_spec["root_uid"], 0);
    assert_eq!(one_spec["config"]["guestsock.container"], "oci:one");

    // poststop: no pid any more; the instance goes, the other stays.
    ok(&hook(
        admin,
        &["oci"],
        r#"{"id":"one","status":"stopped"}"#,
        &[],
    ));
    let left = instances(&server);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["name"], "two");
    assert_eq!(
        one.cgroup
            .curl(None, &server.socket, "/1.0/config/user.foo")
            .0,
        403
    );
    // A second poststop (or one for a container never registered) is fine.
    ok(&hook(
        admin,
        &["oci", "--stage", "poststop"],
        r#"{"id":"one","status":"stopped"}"#,
        &[],
    ));
}

#[test]
fn a_rerun_replaces_its_own_instance_and_resets_ready() {
    require_root!();
    let server = util::Server::start(json!([]));
    let admin = &server.admin_socket;
    let first = Init::start();
    ok(&create(
        admin,
        &[],
        "web_1",
        &first,
        json!({"io.guestsock.config.user.run": "1"}),
    ));
    let name = instances(&server)[0]["name"].as_str().unwrap().to_owned();
    assert!(
        name.starts_with("web-1-") && name.len() == "web-1-".len() + 8,
        "{name}"
    );
    let ready = first
        .cgroup
        .command(
            None,
            "curl",
            &[
                "-sS",
                "-X",
                "PATCH",
                "--unix-socket",
                &server.socket.display().to_string(),
                "-d",
                r#"{"state":"Ready"}"#,
                "http://lxd/1.0",
            ],
        )
        .status()
        .expect("curl");
    assert!(ready.success());
    assert_eq!(instances(&server)[0]["state"], "Ready");
    // The container restarts: a new init, the same id.
    drop(first);
    let second = Init::start();
    ok(&hook(
        admin,
        &["oci", "--stage", "createRuntime"],
        &state(
            "web_1",
            "stopped",
            second.pid(),
            json!({"io.guestsock.config.user.run": "2"}),
        ),
        &[],
    ));
    let all = instances(&server);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["name"], name.as_str());
    assert_eq!(all[0]["state"], "Started", "a restarted guest is not Ready");
    assert_eq!(
        second
            .cgroup
            .curl(None, &server.socket, "/1.0/config/user.run"),
        (200, "2".into())
    );
}

#[test]
fn a_name_owned_by_another_container_or_the_operator_is_never_taken() {
    require_root!();
    let server = util::Server::start(json!([
        {"name": "by-hand", "match": {"uid_range": [3000000, 65536]}}
    ]));
    let admin = &server.admin_socket;
    let one = Init::start();
    let two = Init::start();
    ok(&create(
        admin,
        &[],
        "one",
        &one,
        json!({"io.guestsock.name": "web"}),
    ));
    let err = failed(&create(
        admin,
        &[],
        "two",
        &two,
        json!({"io.guestsock.name": "web"}),
    ));
    assert!(
        err.contains(r#"instance "web" belongs to container oci:one"#),
        "{err}"
    );
    let err = failed(&create(
        admin,
        &[],
        "two",
        &two,
        json!({"io.guestsock.name": "by-hand"}),
    ));
    assert!(err.contains("registered by hand"), "{err}");
    // Its poststop leaves the other container's instance alone.
    ok(&hook(
        admin,
        &["oci"],
        &json!({"id": "two", "status": "stopped", "annotations": {"io.guestsock.name": "web"}})
            .to_string(),
        &[],
    ));
    assert_eq!(
        one.cgroup.curl(None, &server.socket, "/1.0").0,
        200,
        "web is still the first container's"
    );
    // --optional: the reason is printed, the container starts unregistered.
    let out = create(
        admin,
        &["--optional"],
        "two",
        &two,
        json!({"io.guestsock.name": "web"}),
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--optional"));
    assert_eq!(instances(&server).len(), 2);
    // A typo in a label is an error, not silently ignored.
    let err = failed(&create(
        admin,
        &[],
        "two",
        &two,
        json!({"io.guestsock.confg.user.x": "1"}),
    ));
    assert!(err.contains("label io.guestsock.confg.user.x"), "{err}");
}

#[test]
fn without_a_server_the_container_does_not_start_unless_optional() {
    let dir = util::TempDir::new();
    let admin = dir.join("admin.sock");
    let input = state("c1", "creating", std::process::id(), json!({}));
    let err = failed(&hook(&admin, &["oci"], &input, &[]));
    assert!(
        err.contains("cannot connect") && err.contains("is `guestsock serve` running?"),
        "{err}"
    );
    let out = hook(&admin, &["oci", "--optional"], &input, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = failed(&hook(&admin, &["oci"], "not a state", &[]));
    assert!(err.contains("not an OCI container state"), "{err}");
}

#[test]
fn a_container_in_the_hosts_cgroup_is_matched_by_its_pid_namespace() {
    require_root!();
    // Runtimes on cgroup v1 hosts leave the container's cgroup v2 path at
    // the host's: the hook falls back to the container's pid namespace.
    let server = util::Server::start(json!([]));
    let unshare = Command::new(util::tool("unshare"))
        .args(["--pid", "--fork", "--kill-child", "sleep", "300"])
        .spawn()
        .expect("unshare");
    struct Reap(Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let unshare = Reap(unshare);
    let children = format!("/proc/{0}/task/{0}/children", unshare.0.id());
    let deadline = Instant::now() + util::PATIENCE;
    let init: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&children)
            .unwrap_or_default()
            .split_whitespace()
            .next()
        {
            break pid.parse().expect("pid");
        }
        assert!(Instant::now() < deadline, "unshare never forked");
        thread::sleep(Duration::from_millis(5));
    };
    ok(&hook(
        &server.admin_socket,
        &["oci"],
        &state(
            "ns",
            "creating",
            init,
            json!({"io.guestsock.config.user.who": "ns"}),
        ),
        &[],
    ));
    let spec = &instances(&server)[0];
    assert_eq!(spec["match"], json!({"pid": init}));
    let mut curl = Command::new(util::tool("nsenter"));
    curl.args([
        "--target",
        &init.to_string(),
        "--pid",
        "--",
        util::tool("curl"),
    ]);
    curl.args(util::curl_args(&server.socket, "/1.0/config/user.who"));
    assert_eq!(util::curl_in(curl), (200, "ns".into()));
    // The host's processes are not the container's.
    assert_eq!(server.get("/1.0").status, 403);
}

#[test]
fn an_lxc_container_is_registered_at_start_host_and_removed_at_post_stop() {
    require_root!();
    let server = util::Server::start(json!([]));
    let admin = &server.admin_socket;
    let init = Init::start();
    // LXC's container directory: its config, and the labels file beside it.
    let dir = util::TempDir::new();
    std::fs::write(dir.join("config"), "lxc.uts.name = c1\n").unwrap();
    std::fs::write(
        dir.join("guestsock.labels"),
        "# c1's keys\nio.guestsock.config.user.foo = from-file\nio.guestsock.config.user.bar = from-file\n",
    )
    .unwrap();
    let config = dir.join("config").display().to_string();
    let pid = init.pid().to_string();
    let env = [
        ("LXC_NAME", "c1"),
        ("LXC_PID", pid.as_str()),
        ("LXC_HOOK_TYPE", "start-host"),
        ("LXC_CONFIG_FILE", config.as_str()),
    ];
    ok(&hook(
        admin,
        &[
            "lxc",
            "--label",
            "io.guestsock.config.user.bar=from-line",
            "c1",
            "lxc",
            "start-host",
        ],
        "",
        &env,
    ));
    assert_eq!(
        init.cgroup
            .curl(None, &server.socket, "/1.0/config/user.foo"),
        (200, "from-file".into())
    );
    assert_eq!(
        init.cgroup
            .curl(None, &server.socket, "/1.0/config/user.bar"),
        (200, "from-line".into())
    );
    assert_eq!(
        instances(&server)[0]["config"]["guestsock.container"],
        format!("lxc:{}", dir.path.display()).as_str()
    );
    // post-stop: LXC gives the type as the third argument too.
    ok(&hook(
        admin,
        &["lxc", "c1", "lxc", "post-stop"],
        "",
        &[("LXC_NAME", "c1"), ("LXC_CONFIG_FILE", config.as_str())],
    ));
    assert!(instances(&server).is_empty());
    let err = failed(&hook(
        admin,
        &["lxc", "c1", "lxc", "start-host"],
        "",
        &[("LXC_NAME", "c1")],
    ));
    assert!(err.contains("LXC_PID"), "{err}");
}

#[test]
fn an_lxc_instance_is_found_by_its_owner_and_two_lxcpaths_never_share_one() {
    require_root!();
    let server = util::Server::start(json!([]));
    let admin = &server.admin_socket;
    let (one, two) = (Init::start(), Init::start());
    let (lxcpath_a, lxcpath_b) = (util::TempDir::new(), util::TempDir::new());
    let start = |lxcpath: &util::TempDir, init: &Init, extra: &[&str]| {
        let config = lxcpath.join("same/config").display().to_string();
        let pid = init.pid().to_string();
        let mut args = vec!["lxc"];
        args.extend_from_slice(extra);
        args.extend(["same", "lxc", "start-host"]);
        hook(
            admin,
            &args,
            "",
            &[
                ("LXC_NAME", "same"),
                ("LXC_PID", &pid),
                ("LXC_CONFIG_FILE", &config),
            ],
        )
    };
    let stop = |lxcpath: &util::TempDir| {
        let config = lxcpath.join("same/config").display().to_string();
        hook(
            admin,
            &["lxc", "same", "lxc", "post-stop"],
            "",
            &[("LXC_NAME", "same"), ("LXC_CONFIG_FILE", &config)],
        )
    };
    // Named on the start-host line only: post-stop, which has no label,
    // still finds it by its owner.
    ok(&start(
        &lxcpath_a,
        &one,
        &["--label", "io.guestsock.name=custom"],
    ));
    assert_eq!(instances(&server)[0]["name"], "custom");
    ok(&stop(&lxcpath_a));
    assert!(
        instances(&server).is_empty(),
        "left registered after its stop"
    );
    // Two containers of one name in two lxcpaths are two containers: the
    // second does not take the first one's instance.
    ok(&start(&lxcpath_a, &one, &[]));
    let err = failed(&start(&lxcpath_b, &two, &[]));
    assert!(err.contains("belongs to container lxc:"), "{err}");
    assert_eq!(
        one.cgroup.curl(None, &server.socket, "/1.0").0,
        200,
        "the first container lost its instance"
    );
    // The second's stop leaves the first's instance alone.
    ok(&stop(&lxcpath_b));
    assert_eq!(instances(&server).len(), 1);
    ok(&start(
        &lxcpath_b,
        &two,
        &["--label", "io.guestsock.name=same-b"],
    ));
    assert_eq!(instances(&server).len(), 2);
}
