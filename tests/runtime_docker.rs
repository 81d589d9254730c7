//! `guestsock watch docker` with the real Docker engine: Debian's dockerd
//! (docker.io), started by the test on sockets and directories of its own
//! (`--iptables=false --bridge=none --storage-driver=vfs`, no systemd), an
//! image made with `docker import` from a busybox-static root filesystem
//! (no registry), the real `guestsock serve` and the real watcher between
//! them. Each container reads its own `user.*` label with `/bin/guestsock
//! query` from `/dev/lxd/sock` inside, as a user's script would.
//!
//! Every test starts its own engine and removes it (containers and all)
//! when done; they take turns, since each engine is a few hundred MB of
//! memory and a second of start-up on a shared machine.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use util::rootfs::Rootfs;

/// Debian's Docker client, the same version as its dockerd (20.10).
/// `/usr/local/bin/docker`, where present on this machine, is an unrelated
/// newer client and is not used.
const DOCKER: &str = "/usr/bin/docker";

/// How long a restarted engine may take to serve again: it waits for the
/// shims of the containers it lost before it listens (10 s here).
const ENGINE_PATIENCE: Duration = Duration::from_secs(60);

/// One engine at a time (see the header).
static TURN: Mutex<()> = Mutex::new(());

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Fails the test, naming the package, unless Debian's dockerd and docker
/// client are installed.
fn needs_docker() {
    util::needs_installed(
        "dockerd (Debian's docker.io)",
        "apt-get install docker.io",
        &["dockerd", "--version"],
    );
    assert!(
        Path::new(DOCKER).is_file(),
        "{DOCKER} is missing: install it with `apt-get install docker.io`, or run ./test.sh, \
         which installs everything the tests need"
    );
}

/// A dockerd of the test's own: its socket, data, exec root and pid file in
/// a temporary directory. On drop every container is removed, the engine
/// stopped and what it mounted unmounted.
struct Dockerd {
    dir: util::TempDir,
    child: Option<Child>,
    /// How many times it was started (its log files are numbered).
    starts: usize,
}

impl Dockerd {
    fn start() -> Dockerd {
        let mut dockerd = Dockerd {
            dir: util::TempDir::new(),
            child: None,
            starts: 0,
        };
        dockerd.spawn();
        dockerd
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// Starts dockerd on the same directories (again) and waits until it
    /// answers.
    fn spawn(&mut self) {
        self.starts += 1;
        let log = fs::File::create(self.log_path()).expect("dockerd log");
        let child = Command::new("dockerd")
            .args([
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=vfs",
            ])
            .arg(format!("--data-root={}", self.dir.join("data").display()))
            .arg(format!("--exec-root={}", self.dir.join("exec").display()))
            .arg(format!(
                "--pidfile={}",
                self.dir.join("dockerd.pid").display()
            ))
            // Its own containerd namespace too, in case a system containerd
            // is found and shared.
            .arg(format!(
                "--containerd-namespace={}",
                util::unique("guestsock")
            ))
            .arg(format!("--host=unix://{}", self.socket().display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + ENGINE_PATIENCE;
        loop {
            if self
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .status
                .success()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("dockerd exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "dockerd never answered: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(&format!("dockerd-{}.log", self.starts))
    }

    fn log(&self) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Kills dockerd with SIGKILL, as a crash would: its containerd dies
    /// with it (parent-death signal), the containers' shims live on.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The orphaned containerd is the sandbox's pid 1's to reap, and
        // this one does not: a zombie's pid still passes dockerd's
        // "containerd is still running" check (kill 0) on its next start,
        // which then waits for a socket nobody serves. A real init reaps
        // it at once; do what that leaves behind: no live pid in the file.
        let pid_file = self.dir.join("exec/containerd/containerd.pid");
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok())
        {
            let deadline = Instant::now() + util::PATIENCE;
            while is_alive(pid) {
                assert!(
                    Instant::now() < deadline,
                    "containerd {pid} outlived its dockerd"
                );
                thread::sleep(Duration::from_millis(20));
            }
            let _ = fs::remove_file(pid_file);
        }
    }

    /// `docker ARGS` against this engine.
    fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .arg("--host")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    /// `docker ARGS`, which must succeed: its standard output, trimmed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The image `name`, imported from `rootfs`.
    fn import(&self, rootfs: &Rootfs, name: &str) {
        let tarball = self.dir.join("rootfs.tar");
        let tar = Command::new(util::tool("tar"))
            .arg("-C")
            .arg(rootfs.path())
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .expect("tar");
        assert!(tar.success(), "tar of the root filesystem failed");
        self.ok(&["import", &tarball.display().to_string(), name]);
        let _ = fs::remove_file(tarball);
    }

    /// A fact of a container, with `docker inspect -f`.
    fn inspect(&self, container: &str, format: &str) -> String {
        self.ok(&["inspect", "--format", format, container])
    }

    fn pid(&self, container: &str) -> i32 {
        self.inspect(container, "{{.State.Pid}}")
            .parse()
            .expect("a pid")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
        }
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + ENGINE_PATIENCE;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.kill_leftovers();
        // What a killed engine left mounted (its data root, bound onto
        // itself, and network namespaces), deepest first.
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<&str> = info
            .lines()
            .filter_map(|line| line.split_whitespace().nth(4))
            .filter(|mount| Path::new(mount).starts_with(&self.dir.path))
            .collect();
        mounts.sort_by_key(|mount| std::cmp::Reverse(mount.len()));
        for mount in mounts {
            let _ = Command::new("umount").args(["-l", mount]).status();
        }
    }
}

impl Dockerd {
    /// Kills what an engine that could not be stopped left running: the
    /// processes of its containers (found by their ids in their cgroup
    /// paths) and its shims (found by its directory in their arguments).
    fn kill_leftovers(&self) {
        let ids: Vec<String> = fs::read_dir(self.dir.join("data/containers"))
            .map(|dir| {
                dir.filter_map(|entry| entry.ok())
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .filter(|id| id.len() == 64)
                    .collect()
            })
            .unwrap_or_default();
        let ours = self.dir.path.display().to_string();
        let Ok(processes) = fs::read_dir("/proc") else {
            return;
        };
        for entry in processes.filter_map(|entry| entry.ok()) {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cgroup = fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if ids.iter().any(|id| cgroup.contains(id.as_str()))
                || (cmdline.contains("containerd-shim") && cmdline.contains(&ours))
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Whether `pid` is a process that has not exited (a zombie has).
fn is_alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command's closing parenthesis.
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace()
                .next()
                .map(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// A running `guestsock watch docker`, killed on drop.
struct Watcher {
    child: Child,
    log: PathBuf,
}

impl Watcher {
    fn start(admin: &Path, docker_socket: &Path, log: PathBuf) -> Watcher {
        let child = Command::new(util::bin())
            .args(["watch", "docker", "--admin"])
            .arg(admin)
            .arg("--docker-socket")
            .arg(docker_socket)
            .env_remove("RUST_LOG")
            .env_remove("DOCKER_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("watcher log"))
            .spawn()
            .expect("spawn guestsock watch docker");
        Watcher { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `what` is in the log `count` times, failing with the
    /// log.
    fn wait_log(&mut self, what: &str, count: usize, patience: Duration) {
        let deadline = Instant::now() + patience;
        while self.log().matches(what).count() < count {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the watcher exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the watcher never logged {what:?} {count} times: {}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// guestsock, an engine with the busybox image, and the watcher between
/// them.
/// Fields drop in order: the watcher, the engine with its containers, then
/// guestsock, the root filesystem, and last the turn.
struct Host {
    watcher: Option<Watcher>,
    docker: Dockerd,
    /// `None` only while a test has it stopped.
    server: Option<util::Server>,
    /// The guest socket's directory, mounted at /dev/lxd.
    socket_dir: String,
    image: String,
    _rootfs: Rootfs,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Host {
    fn start() -> Host {
        require_root!();
        needs_docker();
        let turn = take_turn();
        let server = util::Server::start(json!([]));
        let rootfs = Rootfs::busybox();
        let docker = Dockerd::start();
        let image = format!("{}:1", util::unique("guestsock-busybox"));
        docker.import(&rootfs, &image);
        let socket_dir = server
            .socket
            .parent()
            .expect("the socket's directory")
            .display()
            .to_string();
        let mut host = Host {
            watcher: None,
            docker,
            socket_dir,
            server: Some(server),
            image,
            _rootfs: rootfs,
            _turn: turn,
        };
        host.start_watcher();
        host
    }

    fn server(&self) -> &util::Server {
        self.server.as_ref().expect("guestsock runs")
    }

    /// Kills guestsock (SIGKILL), keeping its directory, sockets' paths and
    /// state for [`Host::restart_server`].
    fn kill_server(&mut self) -> util::TempDir {
        self.server.take().expect("guestsock runs").kill9()
    }

    /// Starts guestsock again in `dir`, as it was.
    fn restart_server(&mut self, dir: util::TempDir) {
        let instances = dir.join("instances.json").display().to_string();
        self.server = Some(util::Server::start_in(
            dir,
            &["--instances".into(), instances],
        ));
    }

    /// Starts the watcher and waits until it has reconciled.
    fn start_watcher(&mut self) {
        let server = self.server();
        let log = server.dir.join(&util::unique("watch.log"));
        let mut watcher = Watcher::start(&server.admin_socket, &self.docker.socket(), log);
        watcher.wait_log("connected to the Docker engine", 1, util::PATIENCE);
        self.watcher = Some(watcher);
    }

    fn watcher(&mut self) -> &mut Watcher {
        self.watcher.as_mut().expect("a watcher runs")
    }

    /// `docker run -d` of a container named `name` that sleeps, with the
    /// socket's directory at /dev/lxd (read-only, as docs/mounting.md has
    /// it), no network, `labels` and `extra`
    /// options; returns its full id.
    fn run(&self, name: &str, labels: &[(&str, &str)], extra: &[&str]) -> String {
        let mount = format!("{}:/dev/lxd:ro", self.socket_dir);
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            "-v",
            &mount,
        ];
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for label in &labels {
            args.extend(["--label", label.as_str()]);
        }
        args.extend(extra);
        args.extend([self.image.as_str(), "/bin/sleep", "100000"]);
        self.docker.ok(&args)
    }

    /// `/bin/guestsock query PATH` inside a running container, as its root:
    /// (succeeded, standard output, standard error).
    fn query(&self, container: &str, path: &str) -> (bool, String, String) {
        let out = self
            .docker
            .docker(&["exec", container, "/bin/guestsock", "query", path]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The value of `key` as the container reads it; the read must succeed.
    fn read_key(&self, container: &str, key: &str) -> String {
        let (ok, stdout, stderr) = self.query(container, &format!("/1.0/config/{key}"));
        assert!(ok, "{container} could not read {key}: {stderr}");
        stdout
    }

    /// The instance `name` as the admin API shows it, if registered.
    fn instance(&self, name: &str) -> Option<Value> {
        let reply = self
            .server()
            .admin_call("GET", &format!("/1.0/instances/{name}"), b"");
        match reply.status {
            200 => Some(reply.json()["metadata"].clone()),
            404 => None,
            status => panic!("GET instance {name}: {status} {}", reply.text()),
        }
    }

    /// Waits until the instance `name` is registered for the container's
    /// current pid (its match rule proves it), and returns it.
    fn wait_registered(&self, name: &str) -> Value {
        let deadline = Instant::now() + util::PATIENCE;
        loop {
            if let Some(instance) = self.instance(name) {
                return instance;
            }
            assert!(
                Instant::now() < deadline,
                "instance {name} was never registered: {}",
                self.watcher.as_ref().map(Watcher::log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the instance `name` is gone.
    fn wait_removed(&self, name: &str) {
        let deadline = Instant::now() + util::PATIENCE;
        while self.instance(name).is_some() {
            assert!(
                Instant::now() < deadline,
                "instance {name} was never removed: {}",
                self.watcher.as_ref().map(Watcher::log).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every instance the watcher registered for container `id`.
    fn owned_by(&self, id: &str) -> Vec<String> {
        let reply = self
            .server()
            .admin_call("GET", "/1.0/instances?recursion=1", b"");
        assert_eq!(reply.status, 200, "{}", reply.text());
        let owner = format!("docker:{id}");
        reply.json()["metadata"]
            .as_array()
            .expect("a list")
            .iter()
            .filter(|i| i["config"]["guestsock.container"] == owner.as_str())
            .map(|i| i["name"].as_str().expect("a name").to_owned())
            .collect()
    }

    /// The watcher's log lines about container `id` that contain `what`.
    fn log_lines(&mut self, id: &str, what: &str) -> usize {
        let short = &id[..12];
        self.watcher()
            .log()
            .lines()
            .filter(|line| line.contains(short) && line.contains(what))
            .count()
    }
}

/// The `0::` path of a process, as the host sees it.
fn cgroup_of(pid: i32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read the cgroup");
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_owned()
}

#[test]
fn each_container_reads_its_own_label_and_never_anothers() {
    let host = Host::start();
    let first = util::unique("first");
    let second = util::unique("second");
    let first_id = host.run(&first, &[("io.guestsock.config.user.foo", "one 1")], &[]);
    let instance = host.wait_registered(&first);
    assert_eq!(host.read_key(&first, "user.foo"), "one 1");

    // Docker gives each container its own cgroup v2 path on this hybrid
    // host (/docker/<id> in the unified hierarchy), so it is matched by it.
    let pid = host.docker.pid(&first);
    let cgroup = cgroup_of(pid);
    assert!(
        cgroup != "/" && cgroup.contains(&first_id),
        "the container's cgroup is {cgroup}"
    );
    assert_eq!(instance["match"], json!({"cgroup": cgroup}), "{instance}");
    assert_eq!(instance["root_uid"], 0, "{instance}");
    assert_eq!(
        instance["config"]["guestsock.container"],
        format!("docker:{first_id}")
    );

    // A second one beside it, both running: each reads its own.
    let second_id = host.run(
        &second,
        &[
            ("io.guestsock.config.user.foo", "two"),
            ("io.guestsock.config.user.only-second", "2"),
            ("io.guestsock.device.eth0.type", "nic"),
        ],
        &[],
    );
    host.wait_registered(&second);
    assert_eq!(host.read_key(&second, "user.foo"), "two");
    assert_eq!(host.read_key(&first, "user.foo"), "one 1");
    assert_eq!(host.read_key(&second, "user.only-second"), "2");
    let (ok, _, stderr) = host.query(&first, "/1.0/config/user.only-second");
    assert!(!ok && stderr.contains("404"), "{stderr}");
    let (ok, listing, stderr) = host.query(&first, "/1.0/config");
    assert!(ok, "{stderr}");
    assert!(!listing.contains("only-second"), "{listing}");
    let (ok, meta, stderr) = host.query(&second, "/1.0/meta-data");
    assert!(ok, "{stderr}");
    assert!(
        meta.contains(&format!("local-hostname: {second}\n")),
        "{meta}"
    );
    let (ok, devices, stderr) = host.query(&second, "/1.0/devices");
    assert!(ok, "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&devices).expect("JSON"),
        json!({"eth0": {"type": "nic"}})
    );
    assert_eq!(host.owned_by(&first_id), vec![first.clone()]);
    assert_eq!(host.owned_by(&second_id), vec![second.clone()]);
    // The host-only owner key is never shown to the guest.
    let (ok, _, stderr) = host.query(&first, "/1.0/config/guestsock.container");
    assert!(!ok && stderr.contains("403"), "{stderr}");
}

#[test]
fn a_stopped_container_is_removed_and_a_restarted_one_registered_again() {
    let mut host = Host::start();
    let gone = util::unique("gone");
    let stays = util::unique("stays");
    let gone_id = host.run(&gone, &[("io.guestsock.config.user.foo", "gone")], &[]);
    let stays_id = host.run(&stays, &[("io.guestsock.config.user.foo", "stays")], &[]);
    host.wait_registered(&gone);
    host.wait_registered(&stays);

    host.docker.ok(&["stop", "--time", "0", &gone]);
    host.wait_removed(&gone);
    assert!(host.owned_by(&gone_id).is_empty());
    assert_eq!(host.read_key(&stays, "user.foo"), "stays");
    // Removing the stopped container leaves nothing to do.
    host.docker.ok(&["rm", &gone]);

    // A restart: a new init, registered again, once.
    let old_pid = host.docker.pid(&stays);
    assert_eq!(host.log_lines(&stays_id, "registered as instance"), 1);
    host.docker.ok(&["restart", "--time", "0", &stays]);
    let new_pid = host.docker.pid(&stays);
    assert_ne!(old_pid, new_pid);
    host.watcher().wait_log(
        &format!("pid {new_pid}): registered as instance {stays}"),
        1,
        util::PATIENCE,
    );
    host.wait_registered(&stays);
    assert_eq!(host.read_key(&stays, "user.foo"), "stays");
    assert_eq!(host.owned_by(&stays_id), vec![stays.clone()]);
    assert_eq!(
        host.log_lines(&stays_id, "registered as instance"),
        2,
        "{}",
        host.watcher().log()
    );

    // A container removed outright (`docker rm -f`): its instance goes too.
    host.docker.ok(&["rm", "-f", &stays]);
    host.wait_removed(&stays);
}

#[test]
fn a_restarted_watcher_registers_what_started_and_removes_what_stopped() {
    let mut host = Host::start();
    let stopped = util::unique("stopped");
    let started = util::unique("started");
    let stopped_id = host.run(&stopped, &[("io.guestsock.config.user.foo", "a")], &[]);
    host.wait_registered(&stopped);

    // The watcher dies; meanwhile one container starts and another stops.
    drop(host.watcher.take());
    let started_id = host.run(&started, &[("io.guestsock.config.user.foo", "b")], &[]);
    host.docker.ok(&["stop", "--time", "0", &stopped]);
    assert!(host.instance(&started).is_none());
    assert!(host.instance(&stopped).is_some());

    host.start_watcher();
    host.wait_registered(&started);
    assert_eq!(host.read_key(&started, "user.foo"), "b");
    host.wait_removed(&stopped);
    assert!(host.owned_by(&stopped_id).is_empty());
    assert_eq!(host.owned_by(&started_id), vec![started.clone()]);
    let log = host.watcher().log();
    assert!(
        log.contains(
            "1 running containers, 1 registered, 0 not registered, 1 stale instances removed"
        ),
        "{log}"
    );
}

#[test]
fn a_lost_engine_is_followed_again_when_it_comes_back() {
    let mut host = Host::start();
    // One the engine restarts after its own restart, one it does not.
    let always = util::unique("always");
    let once = util::unique("once");
    let always_id = host.run(
        &always,
        &[("io.guestsock.config.user.foo", "always")],
        &["--restart", "always"],
    );
    let once_id = host.run(&once, &[("io.guestsock.config.user.foo", "once")], &[]);
    host.wait_registered(&always);
    host.wait_registered(&once);
    let old_pid = host.docker.pid(&always);

    host.docker.kill9();
    host.watcher()
        .wait_log("cannot follow the Docker engine", 1, util::PATIENCE);
    // Without --live-restore the engine kills what ran when it comes back,
    // then starts what has a restart policy.
    host.docker.spawn();
    host.watcher()
        .wait_log("connected to the Docker engine", 2, ENGINE_PATIENCE);

    let deadline = Instant::now() + util::PATIENCE;
    while host.docker.inspect(&always, "{{.State.Running}}") != "true" {
        assert!(Instant::now() < deadline, "{always} was not restarted");
        thread::sleep(Duration::from_millis(100));
    }
    assert_ne!(host.docker.pid(&always), old_pid);
    assert_eq!(host.docker.inspect(&once, "{{.State.Running}}"), "false");
    host.wait_removed(&once);
    assert!(host.owned_by(&once_id).is_empty());
    host.wait_registered(&always);
    assert_eq!(host.read_key(&always, "user.foo"), "always");
    assert_eq!(host.owned_by(&always_id), vec![always.clone()]);

    // And events are followed again.
    let later = util::unique("later");
    host.run(&later, &[("io.guestsock.config.user.foo", "later")], &[]);
    host.wait_registered(&later);
    assert_eq!(host.read_key(&later, "user.foo"), "later");
}

#[test]
fn a_container_that_cannot_be_registered_is_logged_and_the_rest_go_on() {
    let mut host = Host::start();
    let bad = util::unique("bad");
    let good = util::unique("good");
    let bad_id = host.run(&bad, &[("io.guestsock.confg.user.foo", "typo")], &[]);
    host.run(&good, &[("io.guestsock.config.user.foo", "good")], &[]);
    host.wait_registered(&good);
    assert_eq!(host.read_key(&good, "user.foo"), "good");
    host.watcher()
        .wait_log("label io.guestsock.confg.user.foo", 1, util::PATIENCE);
    assert!(host.instance(&bad).is_none());
    let (ok, _, stderr) = host.query(&bad, "/1.0/config/user.foo");
    assert!(!ok && stderr.contains("403"), "{stderr}");
    let line = host
        .watcher()
        .log()
        .lines()
        .find(|line| line.contains(&bad_id[..12]))
        .map(str::to_owned)
        .expect("a line about the container");
    assert!(
        line.contains(&bad) && line.contains("not registered"),
        "{line}"
    );
}

#[test]
fn a_container_started_while_guestsock_is_down_is_registered_when_it_is_back() {
    let mut host = Host::start();
    let before = util::unique("before");
    let during = util::unique("during");
    host.run(&before, &[("io.guestsock.config.user.foo", "before")], &[]);
    host.wait_registered(&before);

    let dir = host.kill_server();
    let during_id = host.run(&during, &[("io.guestsock.config.user.foo", "during")], &[]);
    // The watcher cannot register it, and says it will catch up.
    host.watcher()
        .wait_log("cannot follow the Docker engine", 1, util::PATIENCE);
    let log = host.watcher().log();
    assert!(log.contains("is `guestsock serve` running?"), "{log}");
    assert_eq!(host.log_lines(&during_id, "not registered"), 0, "{log}");

    host.restart_server(dir);
    host.wait_registered(&during);
    assert_eq!(host.read_key(&during, "user.foo"), "during");
    // The one registered before is still served from guestsock's state.
    assert_eq!(host.read_key(&before, "user.foo"), "before");
}

#[test]
fn a_renamed_container_is_registered_under_its_new_name() {
    let host = Host::start();
    let old = util::unique("old");
    let new = util::unique("new");
    let labelled = util::unique("labelled");
    let id = host.run(&old, &[("io.guestsock.config.user.foo", "mine")], &[]);
    host.run(
        &labelled,
        &[
            ("io.guestsock.config.user.foo", "fixed"),
            ("io.guestsock.name", "fixed-name"),
        ],
        &[],
    );
    host.wait_registered(&old);
    host.wait_registered("fixed-name");

    host.docker.ok(&["rename", &old, &new]);
    host.wait_registered(&new);
    host.wait_removed(&old);
    assert_eq!(host.owned_by(&id), vec![new.clone()]);
    let (ok, meta, stderr) = host.query(&new, "/1.0/meta-data");
    assert!(ok, "{stderr}");
    assert!(meta.contains(&format!("local-hostname: {new}\n")), "{meta}");
    assert_eq!(host.read_key(&new, "user.foo"), "mine");

    // A name given by label does not follow the container's.
    let renamed = util::unique("renamed");
    host.docker.ok(&["rename", &labelled, &renamed]);
    // Events are handled in order: once a later container is registered,
    // the rename has been handled.
    let later = util::unique("later");
    host.run(&later, &[], &[]);
    host.wait_registered(&later);
    assert_eq!(host.read_key(&renamed, "user.foo"), "fixed");
    assert!(host.instance("fixed-name").is_some());
}

#[test]
fn an_instance_registered_before_start_as_the_container_is_taken_over() {
    let mut host = Host::start();
    let early = util::unique("early");
    let mount = format!("{}:/dev/lxd:ro", host.socket_dir);
    // Its first command reads the key once, with no retry: it must be there.
    let id = host.docker.ok(&[
        "create",
        "--name",
        &early,
        "--network",
        "none",
        "-v",
        &mount,
        "--label",
        "io.guestsock.config.user.foo=early",
        &host.image,
        "/bin/sh",
        "-c",
        "/bin/guestsock query /1.0/config/user.foo > /tmp/first && exec /bin/sleep 100000",
    ]);
    host.server().create_instance(&json!({
        "name": early,
        "match": {"cgroup": format!("/docker/{id}")},
        "config": {"guestsock.container": format!("docker:{id}"), "user.foo": "early"},
    }));
    host.docker.ok(&["start", &early]);
    host.watcher().wait_log(
        &format!("registered as instance {early}"),
        1,
        util::PATIENCE,
    );
    let first = host.docker.ok(&["exec", &early, "/bin/cat", "/tmp/first"]);
    assert_eq!(first, "early");
    assert_eq!(host.owned_by(&id), vec![early.clone()]);
    host.docker.ok(&["stop", "--time", "0", &early]);
    host.wait_removed(&early);
}
