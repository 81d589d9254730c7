//! LXC (Debian's `lxc`, LXC 5) registers its containers with guestsock by
//! itself: real containers started with `lxc-start` from a busybox-static
//! root filesystem, each in its own pid namespace and cgroup
//! (`/lxc.payload.<name>`), with `guestsock hook lxc` as their
//! `lxc.hook.start-host` and `lxc.hook.post-stop` hooks and the socket's
//! directory at `/dev/lxd`, all from `dist/lxc/guestsock.conf` itself (its
//! paths pointed at a test server, so the shipped file is what is tested).
//! Inside, `/bin/guestsock query` reads the container's own keys from
//! `/dev/lxd/sock`, as a script in the container would.
//!
//! Every container lives in a private lxcpath (`lxc-start -P`) in a
//! temporary directory, with a name unique to the test, so that nothing
//! touches `/var/lib/lxc` and tests run side by side. The cgroup, though, is
//! the host's: LXC names it after the container alone (`lxc.payload.<name>`,
//! or `<name>-1` when that one is taken), so names must be unique host-wide.
//!
//! What LXC 5 gives a hook here (checked with a hook that logs everything):
//! its own arguments from the config line, then `NAME lxc start-host` (or
//! `post-stop`) unless `lxc.hook.version = 1`, which gives no arguments and
//! sets `LXC_HOOK_TYPE` and `LXC_HOOK_SECTION` instead; in both,
//! `LXC_NAME`, `LXC_PID` (the container's init, already in its final cgroup
//! and namespaces at start-host, and still the dead init's at post-stop),
//! `LXC_CONFIG_FILE`, and `lxc-start`'s own environment (so
//! `GUESTSOCK_ADMIN` reaches it). The hook line is run by `/bin/sh -c`,
//! so `--label` values are quoted as in a shell. The hook's standard output
//! and error both go to LXC's log, at DEBUG only ("Script exec ... produced
//! output: ..."). post-stop also runs after a start that a start-host hook
//! failed, and `lxc-stop` returns only once post-stop has run.
//! `lxc-attach` runs its command in the container's namespaces and in a
//! child group of its cgroup (`/lxc.payload.<name>/.lxc`), which the
//! instance's cgroup rule covers.

mod util;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use util::rootfs::Rootfs;
use util::{Server, TempDir, tool, unique};

/// The include file as shipped; the test points its paths at its own server
/// and binary, and fails if they are no longer there to point.
const INCLUDE: &str = include_str!("../dist/lxc/guestsock.conf");

/// The socket directory the include mounts, as shipped.
const SHIPPED_SOCKET_DIR: &str = "/run/guestsock/guest";

/// The binary the include's hooks run, as shipped.
const SHIPPED_BINARY: &str = "/usr/local/bin/guestsock";

/// The key every test container reads.
const KEY: &str = "user.foo";

/// The host-only config key naming the container that owns an instance.
const OWNER_KEY: &str = "guestsock.container";

/// A test's guestsock server, root filesystem and private lxcpath, and the
/// include file pointed at them.
struct Lxc {
    /// The admin socket the hooks talk to (`GUESTSOCK_ADMIN` for lxc-start).
    admin: PathBuf,
    /// The server, when it runs (taken down by [`Lxc::server_down`]).
    server: Option<Server>,
    /// Where a stopped server's files stay.
    _server_dir: Option<TempDir>,
    rootfs: Rootfs,
    /// The private lxcpath: one directory per container, with its config,
    /// its labels file and its log.
    lxcpath: TempDir,
    /// The include file, with the test's paths.
    include: PathBuf,
}

impl Lxc {
    /// Checks the prerequisites (root, LXC, busybox-static), then starts a
    /// server with no instances and writes the include for it.
    fn new() -> Lxc {
        util::needs_root("runtime_lxc");
        for program in ["lxc-start", "lxc-stop", "lxc-attach", "lxc-info"] {
            tool(program);
        }
        let server = Server::start(serde_json::json!([]));
        let rootfs = Rootfs::busybox();
        let lxcpath = TempDir::new();
        let socket_dir = server.socket.parent().expect("socket dir").to_path_buf();
        let include = lxcpath.join("guestsock.conf");
        for shipped in [SHIPPED_SOCKET_DIR, SHIPPED_BINARY] {
            assert!(
                INCLUDE.contains(shipped),
                "dist/lxc/guestsock.conf no longer names {shipped}: update this test with it"
            );
        }
        let text = INCLUDE
            .replace(SHIPPED_SOCKET_DIR, &socket_dir.display().to_string())
            .replace(SHIPPED_BINARY, util::bin());
        fs::write(&include, text).expect("write the include");
        Lxc {
            admin: server.admin_socket.clone(),
            server: Some(server),
            _server_dir: None,
            rootfs,
            lxcpath,
            include,
        }
    }

    /// The running server.
    fn server(&self) -> &Server {
        self.server.as_ref().expect("the server runs")
    }

    /// Kills the server; its sockets stay behind, stale, as after a crash.
    fn server_down(&mut self) {
        let server = self.server.take().expect("the server runs");
        self._server_dir = Some(server.kill9());
    }

    /// A container (not started) whose config is the base, the include,
    /// then `extra` lines, which can override the include's.
    fn container(&self, extra: &str) -> Container<'_> {
        let name = unique("lxc");
        let dir = self.lxcpath.join(&name);
        fs::create_dir(&dir).expect("container dir");
        let config = format!(
            "lxc.uts.name = {name}\n\
             lxc.rootfs.path = dir:{rootfs}\n\
             lxc.net.0.type = empty\n\
             lxc.console.path = none\n\
             lxc.mount.auto = proc:mixed sys:ro\n\
             lxc.init.cmd = /bin/sleep 86400\n\
             lxc.include = {include}\n\
             {extra}\n",
            rootfs = self.rootfs.path().display(),
            include = self.include.display(),
        );
        fs::write(dir.join("config"), config).expect("write config");
        Container {
            lxc: self,
            log: dir.join("lxc.log"),
            dir,
            name,
        }
    }

    /// Every registered instance, as admin objects.
    fn instances(&self) -> Vec<Value> {
        let reply = self
            .server()
            .admin_call("GET", "/1.0/instances?recursion=1", b"");
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.json()["metadata"]
            .as_array()
            .expect("a list of instances")
            .clone()
    }
}

/// One LXC container of a test, stopped (and its cgroups cleaned up) on
/// drop.
struct Container<'a> {
    lxc: &'a Lxc,
    /// The LXC name, unique to the test process.
    name: String,
    /// Its directory in the lxcpath (config, labels file, log).
    dir: PathBuf,
    /// LXC's log of every start, at DEBUG (where a hook's output goes).
    log: PathBuf,
}

impl Container<'_> {
    /// Writes `guestsock.labels` beside the config: the hook reads it by
    /// default.
    fn labels_file(&self, text: &str) {
        fs::write(self.dir.join("guestsock.labels"), text).expect("write labels");
    }

    /// `lxc-start` as an operator runs it, with the hooks pointed at the
    /// test's admin socket and LXC's log kept at DEBUG; `wrap` runs it
    /// through another program first (`unshare ...`), `extra` adds flags
    /// (`-F` to stay in the foreground with the container's output).
    fn lxc_start(&self, wrap: &[&str], extra: &[&str]) -> Output {
        let lxcpath = self.lxc.lxcpath.path.display().to_string();
        let log = self.log.display().to_string();
        let mut args: Vec<&str> = wrap.to_vec();
        args.extend([
            tool("lxc-start"),
            "-P",
            &lxcpath,
            "-n",
            &self.name,
            "-o",
            &log,
            "-l",
            "DEBUG",
        ]);
        args.extend(extra);
        let mut child = Command::new(args[0])
            .args(&args[1..])
            .env("GUESTSOCK_ADMIN", &self.lxc.admin)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run lxc-start");
        util::wait_with_deadline(&mut child);
        child.wait_with_output().expect("lxc-start's output")
    }

    /// Starts it, which must succeed.
    fn start(&self) {
        let out = self.lxc_start(&[], &[]);
        assert!(
            out.status.success(),
            "lxc-start failed: {}",
            self.failure(&out)
        );
    }

    /// Why an LXC command failed: its standard error and LXC's log.
    fn failure(&self, out: &Output) -> String {
        format!(
            "{}\n{}\n--- LXC's log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// Runs an LXC tool on this container with `args` after `-P -n`.
    fn lxc_tool(&self, program: &str, args: &[&str]) -> Output {
        Command::new(tool(program))
            .arg("-P")
            .arg(&self.lxc.lxcpath.path)
            .args(["-n", &self.name])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"))
    }

    /// Stops it with SIGKILL to its init (busybox's sleep, pid 1 with no
    /// handler, ignores LXC's polite SIGPWR); `lxc-stop` returns once the
    /// post-stop hook has run.
    fn stop(&self) {
        let out = self.lxc_tool("lxc-stop", &["-k"]);
        assert!(
            out.status.success(),
            "lxc-stop failed: {}",
            self.failure(&out)
        );
    }

    /// The host pid of its init (`lxc-info -p`).
    fn init_pid(&self) -> i32 {
        let out = self.lxc_tool("lxc-info", &["-p", "-H"]);
        assert!(
            out.status.success(),
            "lxc-info failed: {}",
            self.failure(&out)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("lxc-info -p: {:?}", out.stdout))
    }

    /// Its state as `lxc-info -s` says it (`RUNNING`, `STOPPED`).
    fn state(&self) -> String {
        let out = self.lxc_tool("lxc-info", &["-s", "-H"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `guestsock query PATH` inside the container (its root, in its
    /// namespaces and cgroup, through its /dev/lxd/sock): (succeeded,
    /// standard output, standard error).
    fn query(&self, path: &str) -> (bool, String, String) {
        let out = self.lxc_tool(
            "lxc-attach",
            &["--clear-env", "--", "/bin/guestsock", "query", path],
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The value of `key` read inside, which must be readable.
    fn read(&self, key: &str) -> String {
        let (ok, out, err) = self.query(&format!("/1.0/config/{key}"));
        assert!(ok, "{}: query {key} failed: {err}", self.name);
        out
    }

    /// The init's cgroup v2 path, from the host's side.
    fn cgroup(&self) -> String {
        let pid = self.init_pid();
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup of init");
        text.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a cgroup v2 line")
            .to_string()
    }

    /// The instances this container owns (by the owner key).
    fn owned(&self) -> Vec<Value> {
        let owner = format!("lxc:{}", self.dir.display());
        self.lxc
            .instances()
            .into_iter()
            .filter(|i| i["config"][OWNER_KEY] == owner.as_str())
            .collect()
    }

    /// Its one instance, which must be registered exactly once, under its
    /// own name, matching its init's cgroup.
    fn instance(&self) -> Value {
        let owned = self.owned();
        assert_eq!(owned.len(), 1, "{}: one instance: {owned:#?}", self.name);
        let instance = owned[0].clone();
        assert_eq!(instance["name"], self.name.as_str());
        let cgroup = self.cgroup();
        assert_ne!(cgroup, "/", "the container has a cgroup of its own");
        assert_eq!(instance["match"], serde_json::json!({ "cgroup": cgroup }));
        instance
    }

    /// The log lines in which LXC shows what a hook printed.
    fn hook_output(&self) -> String {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("produced output:"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.lxc_tool("lxc-stop", &["-k"]);
        // A failed start, or a lost monitor, leaves LXC's groups behind (in
        // the v1 hierarchies too); take this container's out of every
        // hierarchy once what was in them has gone.
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut left = Vec::new();
        for line in info.lines() {
            let Some((left_part, right)) = line.split_once(" - ") else {
                continue;
            };
            if !matches!(right.split_whitespace().next(), Some("cgroup" | "cgroup2")) {
                continue;
            }
            let Some(mount) = left_part.split_whitespace().nth(4) else {
                continue;
            };
            for kind in ["monitor", "payload"] {
                for suffix in ["", "-1"] {
                    let dir = Path::new(mount).join(format!("lxc.{kind}.{}{suffix}", self.name));
                    if dir.exists() {
                        left.push(dir);
                    }
                }
            }
        }
        let deadline = std::time::Instant::now() + util::PATIENCE;
        left.retain(|dir| fs::remove_dir(dir).is_err());
        while !left.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            left.retain(|dir| fs::remove_dir(dir).is_err() && dir.exists());
        }
    }
}

/// A value with spaces, `=` and a `$` that a shell must not expand, unique
/// to `who`.
fn value_for(who: &str) -> String {
    format!("hello {who}: a=b $HOME")
}

#[test]
fn a_label_on_the_hook_line_is_read_inside_and_nothing_else() {
    let lxc = Lxc::new();
    let value = "on the hook line: a=b $HOME";
    // The include's start-host hook, replaced (an empty value clears the
    // list) by one with the label, quoted as for /bin/sh.
    let c = lxc.container(&format!(
        "lxc.hook.start-host =\n\
         lxc.hook.start-host = {} hook lxc --label 'io.guestsock.config.{KEY}={value}'",
        util::bin()
    ));
    c.start();
    assert_eq!(c.read(KEY), value);
    let instance = c.instance();
    assert_eq!(instance["root_uid"], 0, "a privileged container's root");
    // The owner key is the host's: the guest sees its own key only.
    let (ok, listed, err) = c.query("/1.0/config");
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&listed).expect("JSON list");
    assert_eq!(listed, serde_json::json!([format!("/1.0/config/{KEY}")]));
    c.stop();
    assert_eq!(c.owned(), Vec::<Value>::new(), "removed at post-stop");
}

#[test]
fn the_labels_file_beside_the_config_gives_keys_and_devices() {
    let lxc = Lxc::new();
    let c = lxc.container("");
    let value = value_for(&c.name);
    c.labels_file(&format!(
        "# keys of this container\n\
         io.guestsock.config.{KEY}={value}\n\
         io.guestsock.config.cloud-init.user-data=#cloud-config\n\
         io.guestsock.device.eth0.type=nic\n"
    ));
    c.start();
    assert_eq!(c.read(KEY), value);
    assert_eq!(c.read("cloud-init.user-data"), "#cloud-config");
    let (ok, devices, err) = c.query("/1.0/devices");
    assert!(ok, "{err}");
    let devices: Value = serde_json::from_str(&devices).expect("devices JSON");
    assert_eq!(devices, serde_json::json!({"eth0": {"type": "nic"}}));
    c.instance();
    c.stop();
    assert_eq!(c.owned(), Vec::<Value>::new());
}

#[test]
fn a_name_label_in_the_labels_file_names_the_instance_until_it_stops() {
    let lxc = Lxc::new();
    let c = lxc.container("");
    let chosen = unique("chosen");
    c.labels_file(&format!(
        "io.guestsock.name={chosen}\nio.guestsock.config.{KEY}=named\n"
    ));
    c.start();
    assert_eq!(c.read(KEY), "named");
    let owned = c.owned();
    assert_eq!(owned.len(), 1, "{owned:#?}");
    assert_eq!(owned[0]["name"], chosen.as_str());
    assert_eq!(owned[0]["match"]["cgroup"], c.cgroup().as_str());
    // post-stop reads the same file, so it finds the instance by that name.
    c.stop();
    assert_eq!(lxc.instances(), Vec::<Value>::new());
}

#[test]
fn two_containers_side_by_side_each_read_their_own() {
    let lxc = Lxc::new();
    let a = lxc.container("");
    // The other speaks LXC's newer hook protocol: no arguments, the hook
    // type in LXC_HOOK_TYPE.
    let b = lxc.container("lxc.hook.version = 1");
    a.labels_file(&format!(
        "io.guestsock.config.{KEY}={}\n",
        value_for(&a.name)
    ));
    b.labels_file(&format!(
        "io.guestsock.config.{KEY}={}\n",
        value_for(&b.name)
    ));
    a.start();
    b.start();
    assert_ne!(a.cgroup(), b.cgroup());
    for _ in 0..3 {
        assert_eq!(a.read(KEY), value_for(&a.name));
        assert_eq!(b.read(KEY), value_for(&b.name));
    }
    a.instance();
    b.instance();
    // One gone, the other is still itself.
    a.stop();
    assert_eq!(a.owned(), Vec::<Value>::new());
    assert_eq!(b.read(KEY), value_for(&b.name));
    b.instance();
    b.stop();
    assert_eq!(b.owned(), Vec::<Value>::new());
    assert_eq!(lxc.instances(), Vec::<Value>::new(), "nothing left behind");
}

#[test]
fn the_containers_init_reads_its_key_and_the_instance_goes_with_it() {
    let lxc = Lxc::new();
    // Its init (pid 1 in its own pid namespace, in the container's own
    // cgroup) reads its key and exits, which stops the container; in the
    // foreground, lxc-start prints what it printed and returns once
    // post-stop has run.
    let c = lxc.container(&format!(
        "lxc.init.cmd = /bin/guestsock query /1.0/config/{KEY}"
    ));
    let value = value_for(&c.name);
    c.labels_file(&format!("io.guestsock.config.{KEY}={value}\n"));
    let out = c.lxc_start(&[], &["-F"]);
    assert!(out.status.success(), "lxc-start -F: {}", c.failure(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), value);
    assert_eq!(c.owned(), Vec::<Value>::new());
    assert!(
        c.hook_output().is_empty(),
        "the hooks print nothing on success: {}",
        c.hook_output()
    );
}

#[test]
fn a_restart_replaces_the_instance_never_duplicates_it() {
    let lxc = Lxc::new();
    // An init that reboots on SIGINT, LXC's reboot signal (`sleep` as init
    // ignores it); `sleep & wait` lets the trap run at once.
    let init = lxc.rootfs.path().join("reboot-on-int");
    fs::write(
        &init,
        "#!/bin/sh\ntrap 'reboot -f' INT\nwhile :; do sleep 1 & wait; done\n",
    )
    .expect("write init");
    fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod init");
    let c = lxc.container("lxc.init.cmd = /reboot-on-int");
    c.labels_file(&format!("io.guestsock.config.{KEY}=first\n"));
    c.start();
    assert_eq!(c.read(KEY), "first");
    let first_pid = c.init_pid();
    c.stop();

    // Stopped and started again, with new labels: the new ones, once.
    c.labels_file(&format!("io.guestsock.config.{KEY}=second\n"));
    c.start();
    assert_ne!(c.init_pid(), first_pid);
    assert_eq!(c.read(KEY), "second");
    c.instance();

    // A reboot (`lxc-stop -r`: SIGINT to init, which reboots) runs post-stop
    // then start-host again in the same monitor.
    let before = c.init_pid();
    c.labels_file(&format!("io.guestsock.config.{KEY}=third\n"));
    let out = c.lxc_tool("lxc-stop", &["-r", "-t", "20"]);
    assert!(out.status.success(), "lxc-stop -r: {}", c.failure(&out));
    let deadline = std::time::Instant::now() + util::PATIENCE;
    while c.state() != "RUNNING" || c.init_pid() == before {
        assert!(std::time::Instant::now() < deadline, "never rebooted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(c.read(KEY), "third");
    c.instance();
    c.stop();
    assert_eq!(c.owned(), Vec::<Value>::new());
}

#[test]
fn a_start_after_a_lost_monitor_replaces_what_it_left() {
    let lxc = Lxc::new();
    let c = lxc.container("");
    c.labels_file(&format!("io.guestsock.config.{KEY}=first\n"));
    c.start();
    let first_cgroup = c.cgroup();
    // The monitor is killed: its container dies with it (LXC has the init
    // killed when its parent dies), but no post-stop runs, so its instance
    // and its (empty) cgroup are left behind.
    let monitor = parent_of(c.init_pid());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the monitor");
    let deadline = std::time::Instant::now() + util::PATIENCE;
    while c.state() != "STOPPED" {
        assert!(std::time::Instant::now() < deadline, "LXC still sees it");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stale = c.owned();
    assert_eq!(stale.len(), 1, "nothing could remove it: {stale:#?}");
    assert_eq!(stale[0]["match"]["cgroup"], first_cgroup.as_str());

    // Started again, LXC finds its old cgroup still there and takes the
    // next name (`-1`); the hook replaces the stale instance with this one.
    c.labels_file(&format!("io.guestsock.config.{KEY}=second\n"));
    c.start();
    assert_ne!(c.cgroup(), first_cgroup);
    let instance = c.instance();
    assert_eq!(instance["config"][KEY], "second");
    assert_eq!(c.read(KEY), "second");
    c.stop();
    assert_eq!(c.owned(), Vec::<Value>::new());
}

#[test]
fn with_the_server_down_the_start_fails_saying_why_unless_optional() {
    let mut lxc = Lxc::new();
    lxc.server_down();
    let admin = lxc.admin.display().to_string();

    let c = lxc.container("");
    let out = c.lxc_start(&[], &[]);
    assert!(!out.status.success(), "started without guestsock");
    assert_eq!(c.state(), "STOPPED");
    // LXC shows a hook's output in its log, at DEBUG: the hook's one line
    // must say what failed and what to do.
    let said = c.hook_output();
    assert!(
        said.contains(&admin) && said.contains("guestsock serve"),
        "the hook's message names the admin socket and the server: {said:?}\n{}",
        c.failure(&out)
    );

    let optional = lxc.container(&format!(
        "lxc.hook.start-host =\n\
         lxc.hook.start-host = {} hook lxc --optional",
        util::bin()
    ));
    optional.start();
    assert_eq!(optional.state(), "RUNNING");
    assert!(
        optional.hook_output().contains(&admin),
        "--optional still prints why: {:?}",
        optional.hook_output()
    );
    optional.stop();
}

#[test]
fn an_unprivileged_containers_root_is_served() {
    let lxc = Lxc::new();
    // Root as an operator sets it up for unprivileged containers: a
    // subordinate range in /etc/subuid and /etc/subgid (newuidmap insists),
    // here only in a private mount namespace that lxc-start and its monitor
    // run in.
    let first: u32 = 3_000_000 + (std::process::id() % 1000) * 65_536;
    let c = lxc.container(&format!(
        "lxc.idmap = u 0 {first} 65536\nlxc.idmap = g 0 {first} 65536"
    ));
    c.labels_file(&format!(
        "io.guestsock.config.{KEY}={}\n",
        value_for(&c.name)
    ));
    let ids = c.dir.join("subids");
    fs::write(&ids, format!("root:{first}:65536\n")).expect("subids");
    let script = "for f in subuid subgid; do \
                  [ ! -e /etc/$f ] || mount --bind \"$0\" /etc/$f || exit 1; done; exec \"$@\"";
    let ids = ids.display().to_string();
    let out = c.lxc_start(
        &[
            tool("unshare"),
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            &ids,
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "lxc-start failed: {}",
        c.failure(&out)
    );
    assert_eq!(c.read(KEY), value_for(&c.name));
    let instance = c.instance();
    assert_eq!(instance["root_uid"], first, "root_uid from the uid map");
    c.stop();
    assert_eq!(c.owned(), Vec::<Value>::new());
}

/// The parent pid of `pid` (LXC's monitor, for a container's init).
fn parent_of(pid: i32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = stat.rsplit_once(')').expect("stat format").1;
    after_name
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("ppid")
}
