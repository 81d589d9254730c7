//! The OCI runtimes of the real-runtime tests (runc, crun and podman), set
//! up as an operator sets them up once per host. runc and crun: from the
//! config fragment in `dist/` with its paths turned into the test's own.
//! podman: exactly as docs/mounting.md says, its install block and its
//! host-settings block run as written in a root shell on a fresh host (a
//! private mount namespace, `util::fresh`) whose `/etc/containers`,
//! `/usr/share/containers` and `/usr/local/bin` are private copies and
//! whose `/run` is empty but for this test's guestsock sockets at their
//! default paths; podman then reads its configuration and hooks from the
//! default places, with no `--hooks-dir` and no `CONTAINERS_CONF`. So the
//! shipped files and the documented commands are the ones under test and
//! cannot rot.
//!
//! Every piece of runtime state lives in temporary directories of the test
//! (runc/crun `--root`, podman `--root`/`--runroot`, its `tmp_dir` and file
//! locks in the private `/run`), so nothing touches the host's defaults and
//! tests run side by side. Each container gets its own pid namespace and
//! its own cgroup below a parent named for the test.
//!
//! Facts of this project's machine kind handled here: cgroups are hybrid
//! (v1 controllers, cgroup2 at `/sys/fs/cgroup/unified`). runc uses both
//! and puts each container in its own cgroup2 group. crun refuses hybrid
//! mode outright ("cgroups in hybrid mode not supported, drop all
//! controllers from cgroupv2": the cgroup2 root lists `hugetlb`, which no
//! v1 hierarchy takes), so it runs in a private mount namespace with the
//! cgroup2 mount unmounted (it then sees a v1-only host) from a cgroup2
//! group of its own, which its containers share: the hook registers those
//! by pid namespace. podman needs `runtime = "runc"` (its default, crun,
//! fails as above), the cgroupfs manager (no systemd) and `nofile`/`nproc`
//! ulimits (it raises them past the hard limit otherwise, which fails
//! without CAP_SYS_RESOURCE): docs/mounting.md's host-settings block.
//!
//! Cleans up on drop: containers are deleted by force, cgroups removed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::docs::Doc;
use super::fresh::{FreshHost, Layer};
use super::rootfs::Rootfs;
use super::{Cgroup, PATIENCE, Server, TempDir, bin, cgroup2_mount, tool, unique};

/// The paths the files in `dist/` are written for, which the tests replace
/// with their own.
const DIST_BINARY: &str = "/usr/local/bin/guestsock";
const DIST_ADMIN: &str = "/run/guestsock/admin.sock";
const DIST_GUEST_DIR: &str = "/run/guestsock/guest";
/// The file crun writes its hooks' standard error to (it drops it
/// otherwise, showing only "error executing hook"; runc ignores it).
const DIST_HOOK_LOG: &str = "/var/log/guestsock-hooks.log";

/// Where docs/mounting.md installs podman's hook.
const PODMAN_HOOK: &str = "/etc/containers/oci/hooks.d/guestsock.json";

/// The test's own podman settings, beside the documented ones: events and
/// locks in files of the private `/run` (podman's default shared-memory
/// locks would be shared with every other podman on the machine).
const PODMAN_ISOLATION: &str = "[engine]\nevents_logger = \"file\"\nlock_type = \"file\"\n";

/// The key every container reads at its first command.
pub const KEY: &str = "user.foo";

/// The container's init: its first command reads [`KEY`] through
/// `/dev/lxd/sock` and prints one line `rc=<status> value=<answer>`, then it
/// stays up for the test's `exec`s.
const INIT: &str = "v=$(/bin/guestsock query /1.0/config/user.foo 2>&1); \
                    echo \"rc=$? value=$v\"; exec sleep 1000000";

/// One of the OCI runtimes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// runc, from an OCI bundle.
    Runc,
    /// crun, from an OCI bundle, hidden from the cgroup2 mount.
    Crun,
    /// podman, from the root filesystem (`--rootfs`), with runc below it.
    Podman,
}

impl Kind {
    /// The program, checked to be on `PATH` (a missing one fails the test
    /// naming its Debian package).
    pub fn program(self) -> &'static str {
        match self {
            Kind::Runc => tool("runc"),
            Kind::Crun => tool("crun"),
            Kind::Podman => tool("podman"),
        }
    }
}

/// What one runtime command did.
#[derive(Debug)]
pub struct Ran {
    /// Whether it exited 0.
    pub ok: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Ran {
    fn from(out: Output) -> Ran {
        Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with `what` and the output unless the command succeeded.
    pub fn expect_ok(self, what: &str) -> Ran {
        assert!(
            self.ok,
            "{what} failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// One container a test asks for.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The OCI container id (runc, crun) or the container's name (podman,
    /// whose ids it makes itself).
    pub id: String,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// The host uid of its root, in a user namespace of its own; `None`:
    /// no user namespace (root is host uid 0).
    pub userns: Option<u32>,
}

impl Spec {
    /// A container with a unique id and no annotations.
    pub fn new(prefix: &str) -> Spec {
        Spec {
            id: unique(prefix),
            annotations: BTreeMap::new(),
            userns: None,
        }
    }

    /// Adds the annotation `key=value`.
    pub fn annotate(mut self, key: &str, value: &str) -> Spec {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// Adds `io.guestsock.config.<key>=value`.
    pub fn config(self, key: &str, value: &str) -> Spec {
        self.annotate(&format!("io.guestsock.config.{key}"), value)
    }

    /// Runs it in a user namespace whose root is host uid `first` (65536 ids).
    pub fn userns(mut self, first: u32) -> Spec {
        self.userns = Some(first);
        self
    }
}

/// The guestsock side a [`Host`]'s hook talks to.
pub struct Guestsock {
    /// The admin socket the hook is given.
    pub admin: PathBuf,
    /// The directory holding the guest socket, mounted at `/dev/lxd`.
    pub guest_dir: PathBuf,
}

impl Guestsock {
    /// The sockets of a running server.
    pub fn of(server: &Server) -> Guestsock {
        Guestsock {
            admin: server.admin_socket.clone(),
            guest_dir: server
                .socket
                .parent()
                .expect("the guest socket is in a directory")
                .to_path_buf(),
        }
    }

    /// A guestsock that is down, as after a crash: under `dir`, an admin
    /// socket file that nobody listens on (connecting is refused) and an
    /// empty guest socket directory, as `dist/guestsock.tmpfiles.conf`
    /// leaves it at boot.
    pub fn down(dir: &TempDir) -> Guestsock {
        let admin = dir.join(&format!("{}.sock", unique("admin")));
        drop(UnixListener::bind(&admin).expect("bind a socket to leave behind"));
        let guest_dir = dir.join("guest");
        fs::create_dir_all(&guest_dir).expect("guest dir");
        Guestsock { admin, guest_dir }
    }
}

/// One runtime configured for one test, with the guestsock hook installed
/// from `dist/`, and the containers it started (removed on drop).
pub struct Host {
    /// Which runtime.
    pub kind: Kind,
    /// Runtime state, bundles, hooks and configuration.
    dir: TempDir,
    /// The containers' root filesystem (shared, read-only for runc/crun).
    pub rootfs: Rootfs,
    /// The hook's admin socket and the mounted guest socket directory.
    guestsock: Guestsock,
    /// Whether the hook is given `--optional`.
    optional: bool,
    /// The name of the parent cgroup of every container (in every
    /// hierarchy, v1 and v2).
    cgroup_parent: String,
    /// Containers started, for the cleanup.
    started: Mutex<Vec<String>>,
    /// crun: each container's own cgroup2 group, from which every crun
    /// command for it runs. Declared before `crun_parent`, which must go
    /// after its children.
    crun_groups: Mutex<BTreeMap<String, Cgroup>>,
    /// crun: the cgroup2 parent of those groups.
    crun_parent: Option<Cgroup>,
    /// podman: the fresh host it runs on, with the documented files
    /// installed.
    podman_host: Option<FreshHost>,
}

impl Host {
    /// `kind` with the hook from `dist/` talking to `guestsock`'s admin
    /// socket (with `--optional` when `optional`), and the socket's
    /// directory mounted into every container.
    pub fn new(kind: Kind, guestsock: Guestsock, optional: bool) -> Host {
        kind.program();
        let dir = TempDir::new();
        let rootfs = Rootfs::busybox();
        let podman_host = (kind == Kind::Podman).then(|| podman_host(&guestsock, optional));
        let host = Host {
            kind,
            dir,
            rootfs,
            guestsock,
            optional,
            cgroup_parent: unique("guestsock-oci"),
            started: Mutex::new(Vec::new()),
            crun_groups: Mutex::new(BTreeMap::new()),
            crun_parent: (kind == Kind::Crun).then(Cgroup::new),
            podman_host,
        };
        if kind == Kind::Podman {
            // podman mounts a file over this one; in a user namespace it
            // cannot create it in the root-owned /run.
            fs::write(host.rootfs.path().join("run/.containerenv"), "")
                .expect("write /run/.containerenv");
        }
        host
    }

    /// A `dist/` file with its paths replaced by this host's, failing if
    /// one of them is no longer in it (the test would silently stop
    /// covering the shipped file).
    fn dist(&self, rel: &str, paths: &[&str]) -> String {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist").join(rel);
        let mut text =
            fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        for &path in paths {
            let ours = match path {
                DIST_BINARY => bin().to_string(),
                DIST_ADMIN => self.guestsock.admin.display().to_string(),
                DIST_GUEST_DIR => self.guestsock.guest_dir.display().to_string(),
                DIST_HOOK_LOG => self.hook_log_path().display().to_string(),
                other => panic!("no substitute for {other}"),
            };
            assert!(
                text.contains(path),
                "{} no longer names {path}: update the test with it",
                file.display()
            );
            text = text.replace(path, &ours);
        }
        text
    }

    /// A runtime command with this host's state directories.
    fn command(&self, id: &str) -> Command {
        match self.kind {
            Kind::Runc => {
                let mut cmd = Command::new(Kind::Runc.program());
                cmd.arg("--root").arg(self.dir.join("runc"));
                cmd
            }
            Kind::Crun => {
                // From the container's own cgroup2 group, in a mount
                // namespace where cgroup2 is unmounted (see the module doc).
                let group = self.crun_group(id);
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg("echo $$ > \"$0\" && exec \"$@\"")
                    .arg(group.join("cgroup.procs"))
                    .args([tool("unshare"), "-m", "--propagation", "private", "--"])
                    .args(["sh", "-c", "umount \"$0\" && exec \"$@\""])
                    .arg(cgroup2_mount())
                    .arg(Kind::Crun.program())
                    .arg("--root")
                    .arg(self.dir.join("crun"));
                cmd
            }
            Kind::Podman => {
                // Storage of the test's own; configuration and hooks from
                // the fresh host's default places.
                let fresh = self.podman_host.as_ref().expect("podman's host");
                let mut cmd = fresh.command(&FreshHost::repo());
                cmd.arg(Kind::Podman.program())
                    .arg("--root")
                    .arg(self.dir.join("podman-root"))
                    .arg("--runroot")
                    .arg(self.dir.join("podman-run"))
                    .args(["--storage-driver", "vfs"]);
                cmd
            }
        }
    }

    /// crun: the directory of `id`'s own cgroup2 group, made on first use.
    fn crun_group(&self, id: &str) -> PathBuf {
        let parent = self.crun_parent.as_ref().expect("crun has a parent group");
        let mut groups = self.crun_groups.lock().expect("lock");
        groups
            .entry(id.to_string())
            .or_insert_with(|| parent.child(id))
            .dir
            .clone()
    }

    /// Runs the runtime with `args` for container `id`, to completion.
    pub fn run(&self, id: &str, args: &[&str]) -> Ran {
        Ran::from(
            self.command(id)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("run the runtime"),
        )
    }

    /// Creates and starts a container (podman: `run -d`) whose init is
    /// [`INIT`]. Err: the runtime's output when it refused.
    pub fn start(&self, spec: &Spec) -> Result<(), Ran> {
        self.started.lock().expect("lock").push(spec.id.clone());
        match self.kind {
            Kind::Runc | Kind::Crun => self.start_bundle(spec),
            Kind::Podman => self.start_podman(spec),
        }
    }

    /// runc/crun: writes the bundle, `create`s with the container's output
    /// in a file, then `start`s.
    fn start_bundle(&self, spec: &Spec) -> Result<(), Ran> {
        let bundle = self.dir.join(&format!("bundle-{}", spec.id));
        fs::create_dir_all(&bundle).expect("bundle dir");
        fs::write(
            bundle.join("config.json"),
            serde_json::to_string_pretty(&self.bundle_config(spec)).expect("JSON"),
        )
        .expect("write config.json");
        // The container inherits create's standard output and error: files,
        // never pipes (reading a pipe to its end would wait for the
        // container to exit).
        let out = self.output_path(&spec.id);
        let err = self.dir.join(&format!("{}.err", spec.id));
        // A container started again under the same id writes afresh.
        let _ = fs::remove_file(&out);
        let _ = fs::remove_file(&err);
        let status = self
            .command(&spec.id)
            .arg("create")
            .arg("--bundle")
            .arg(&bundle)
            .arg(&spec.id)
            .stdin(Stdio::null())
            .stdout(append(&out))
            .stderr(append(&err))
            .status()
            .expect("run create");
        if !status.success() {
            return Err(Ran {
                ok: false,
                stdout: fs::read_to_string(&out).unwrap_or_default(),
                stderr: fs::read_to_string(&err).unwrap_or_default(),
            });
        }
        let started = self.run(&spec.id, &["start", &spec.id]);
        if started.ok { Ok(()) } else { Err(started) }
    }

    /// The OCI configuration of a bundle: a minimal container of its own
    /// (pid, mount, ipc, uts and network namespaces; a user namespace when
    /// asked; a cgroup below this host's parent) merged with
    /// `dist/oci-hooks-fragment.json` as its doc says: its `mounts` appended,
    /// its `hooks` appended stage by stage.
    fn bundle_config(&self, spec: &Spec) -> Value {
        let fragment: Value = serde_json::from_str(&self.dist(
            "oci-hooks-fragment.json",
            &[DIST_BINARY, DIST_ADMIN, DIST_GUEST_DIR, DIST_HOOK_LOG],
        ))
        .expect("dist/oci-hooks-fragment.json is JSON");
        let mut namespaces = vec![
            json!({"type": "pid"}),
            json!({"type": "mount"}),
            json!({"type": "ipc"}),
            json!({"type": "uts"}),
            json!({"type": "network"}),
        ];
        let capabilities = json!(["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]);
        let mut config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": ["/bin/sh", "-c", INIT],
                "env": ["PATH=/bin"],
                "cwd": "/",
                "capabilities": {
                    "bounding": capabilities,
                    "effective": capabilities,
                    "permitted": capabilities,
                },
                "noNewPrivileges": true
            },
            "root": {"path": self.rootfs.path(), "readonly": true},
            "hostname": "guest",
            "annotations": spec.annotations,
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
            ],
            "linux": {
                "cgroupsPath": format!("/{}/{}", self.cgroup_parent, spec.id),
            },
        });
        if let Some(first) = spec.userns {
            namespaces.push(json!({"type": "user"}));
            let map = json!([{"containerID": 0, "hostID": first, "size": 65536}]);
            config["linux"]["uidMappings"] = map.clone();
            config["linux"]["gidMappings"] = map;
        }
        config["linux"]["namespaces"] = Value::Array(namespaces);
        // The container's own annotations win over the fragment's.
        for (key, value) in fragment["annotations"]
            .as_object()
            .expect("the fragment's annotations")
        {
            if !spec.annotations.contains_key(key) {
                config["annotations"][key] = value.clone();
            }
        }
        let mounts = config["mounts"].as_array_mut().expect("mounts");
        mounts.extend(
            fragment["mounts"]
                .as_array()
                .expect("the fragment's mounts")
                .iter()
                .cloned(),
        );
        let mut hooks = fragment["hooks"].clone();
        for (_stage, list) in hooks.as_object_mut().expect("the fragment's hooks") {
            for hook in list.as_array_mut().expect("a stage's hooks") {
                if self.optional {
                    hook["args"]
                        .as_array_mut()
                        .expect("hook args")
                        .push("--optional".into());
                }
            }
        }
        config["hooks"] = hooks;
        config
    }

    /// podman: `run -d` from the root filesystem.
    fn start_podman(&self, spec: &Spec) -> Result<(), Ran> {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            "--name".into(),
            spec.id.clone(),
            "--network".into(),
            "none".into(),
            "--log-driver".into(),
            "k8s-file".into(),
            "--cgroup-parent".into(),
            format!("/{}", self.cgroup_parent),
        ];
        for (key, value) in &spec.annotations {
            // podman reads --annotation as comma-separated values (CSV):
            // quoted, a value keeps its commas and quotes.
            let csv = format!("{key}={value}").replace('"', "\"\"");
            args.extend(["--annotation".into(), format!("\"{csv}\"")]);
        }
        if let Some(first) = spec.userns {
            args.extend([
                "--uidmap".into(),
                format!("0:{first}:65536"),
                "--gidmap".into(),
                format!("0:{first}:65536"),
            ]);
        }
        args.extend([
            "--rootfs".into(),
            self.rootfs.path().display().to_string(),
            "/bin/sh".into(),
            "-c".into(),
            INIT.into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ran = self.run(&spec.id, &args);
        if ran.ok { Ok(()) } else { Err(ran) }
    }

    /// crun: the file its hooks' standard error goes to.
    fn hook_log_path(&self) -> PathBuf {
        self.dir.join("hooks.log")
    }

    /// What the runtime said when it refused to start a container, with
    /// what the hooks wrote where the runtime keeps it apart (crun).
    /// runc logs the hook's error as a quoted Go string: `\"` for `"`.
    pub fn refusal(&self, ran: &Ran) -> String {
        let log = fs::read_to_string(self.hook_log_path()).unwrap_or_default();
        format!("{}{}{log}", ran.stdout, ran.stderr).replace("\\\"", "\"")
    }

    /// runc/crun: the file the container's standard output goes to.
    fn output_path(&self, id: &str) -> PathBuf {
        self.dir.join(&format!("{id}.out"))
    }

    /// What the container's init printed so far.
    pub fn output(&self, id: &str) -> String {
        match self.kind {
            Kind::Runc | Kind::Crun => fs::read_to_string(self.output_path(id)).unwrap_or_default(),
            Kind::Podman => self.run(id, &["logs", id]).stdout,
        }
    }

    /// The line the container's first command printed: (its exit status,
    /// what it read), waiting for it.
    pub fn first_read(&self, id: &str) -> (i32, String) {
        let line = eventually(&format!("container {id}'s first line"), || {
            self.output(id)
                .lines()
                .find(|l| l.starts_with("rc="))
                .map(str::to_string)
        });
        let (rc, value) = line
            .strip_prefix("rc=")
            .and_then(|rest| rest.split_once(" value="))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        (rc.parse().expect("status"), value.to_string())
    }

    /// `guestsock query PATH` run inside container `id` (`exec`).
    pub fn query(&self, id: &str, path: &str) -> Ran {
        self.run(id, &["exec", id, "/bin/guestsock", "query", path])
    }

    /// The OCI id the runtime gives container `id` (podman makes its own).
    pub fn oci_id(&self, id: &str) -> String {
        match self.kind {
            Kind::Runc | Kind::Crun => id.to_string(),
            Kind::Podman => self
                .run(id, &["inspect", "--format", "{{.Id}}", id])
                .expect_ok("podman inspect")
                .stdout
                .trim()
                .to_string(),
        }
    }

    /// The host pid of container `id`'s init.
    pub fn pid(&self, id: &str) -> i32 {
        match self.kind {
            Kind::Runc | Kind::Crun => self.state(id)["pid"].as_i64().expect("state.pid") as i32,
            Kind::Podman => self
                .run(id, &["inspect", "--format", "{{.State.Pid}}", id])
                .expect_ok("podman inspect")
                .stdout
                .trim()
                .parse()
                .expect("a pid"),
        }
    }

    /// runc/crun: `state ID` as JSON.
    fn state(&self, id: &str) -> Value {
        let ran = self.run(id, &["state", id]).expect_ok("state");
        serde_json::from_str(&ran.stdout).expect("state is JSON")
    }

    /// Whether the runtime still knows container `id`.
    pub fn exists(&self, id: &str) -> bool {
        match self.kind {
            Kind::Runc | Kind::Crun => self.run(id, &["state", id]).ok,
            Kind::Podman => self.run(id, &["container", "exists", id]).ok,
        }
    }

    /// Stops container `id` (SIGKILL: a shell as pid 1 ignores SIGTERM) and
    /// waits until the runtime says it stopped; podman: `stop` (its
    /// cleanup runs the poststop hook).
    pub fn stop(&self, id: &str) {
        match self.kind {
            Kind::Runc | Kind::Crun => {
                self.run(id, &["kill", id, "KILL"]).expect_ok("kill");
                eventually(&format!("{id} stopped"), || {
                    (self.state(id)["status"] == "stopped").then_some(())
                });
            }
            Kind::Podman => {
                self.run(id, &["stop", "--time", "0", id])
                    .expect_ok("podman stop");
            }
        }
    }

    /// Deletes stopped container `id` (runc/crun run the poststop hook here).
    pub fn delete(&self, id: &str) -> Ran {
        match self.kind {
            Kind::Runc | Kind::Crun => self.run(id, &["delete", id]),
            Kind::Podman => self.run(id, &["rm", id]),
        }
    }

    /// runc/crun: kills container `id` and throws the runtime's record of it
    /// away without `delete`, as a host reboot does with the runtime's
    /// state on tmpfs: the poststop hook never runs and guestsock keeps the
    /// instance.
    pub fn lose(&self, id: &str) {
        assert!(self.kind != Kind::Podman, "podman keeps its own records");
        self.stop(id);
        let state = self
            .dir
            .join(if self.kind == Kind::Runc {
                "runc"
            } else {
                "crun"
            })
            .join(id);
        fs::remove_dir_all(&state).unwrap_or_else(|e| panic!("rm {}: {e}", state.display()));
        assert!(!self.exists(id), "{id} forgotten");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let started = std::mem::take(&mut *self.started.lock().unwrap_or_else(|e| e.into_inner()));
        for id in started {
            let _ = match self.kind {
                Kind::Runc | Kind::Crun => self.run(&id, &["delete", "--force", &id]),
                Kind::Podman => self.run(&id, &["rm", "--force", "--time", "0", &id]),
            };
        }
        // crun's groups: killed and removed before their parent.
        self.crun_groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        remove_cgroup_everywhere(&self.cgroup_parent);
    }
}

/// `path` opened for appending (created if missing): what the container
/// and the runtime write there never overwrites the other.
fn append(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Removes `/<name>` (empty groups, deepest first) from every cgroup
/// hierarchy, v1 and v2, as listed in /proc/self/mountinfo.
fn remove_cgroup_everywhere(name: &str) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !matches!(right.split_whitespace().next(), Some("cgroup" | "cgroup2")) {
            continue;
        }
        if let Some(mount) = left.split_whitespace().nth(4) {
            remove_groups(&Path::new(mount).join(name));
        }
    }
}

/// rmdir `dir` after its child groups; a group still in use stays.
fn remove_groups(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_groups(&entry.path());
        }
    }
    let deadline = Instant::now() + PATIENCE;
    while fs::remove_dir(dir).is_err() && Instant::now() < deadline && dir.exists() {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `probe` until it gives a value, failing after [`PATIENCE`] with
/// `what`.
pub fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Every instance the server has, as objects.
pub fn instances(server: &Server) -> Vec<Value> {
    let reply = server.admin_call("GET", "/1.0/instances?recursion=1", b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["metadata"]
        .as_array()
        .expect("a list of instances")
        .clone()
}

/// The instances owned by OCI container `oci_id` (host-only config key
/// `guestsock.container` = `oci:<id>`).
pub fn owned_by(server: &Server, oci_id: &str) -> Vec<Value> {
    let owner = format!("oci:{oci_id}");
    instances(server)
        .into_iter()
        .filter(|i| i["config"]["guestsock.container"] == owner.as_str())
        .collect()
}

/// The one instance owned by `oci_id`, failing unless there is exactly one.
pub fn the_instance(server: &Server, oci_id: &str) -> Value {
    let mut owned = owned_by(server, oci_id);
    assert_eq!(
        owned.len(),
        1,
        "exactly one instance owned by oci:{oci_id}: {owned:#?}\nall: {:#?}",
        instances(server)
    );
    owned.remove(0)
}

/// The cgroup v2 path of process `pid` (its `0::` line).
pub fn cgroup_of(pid: i32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/PID/cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a 0:: line")
        .to_string()
}

// The behaviours every OCI runtime must show, one function each; every
// runtime's test file runs them all with its own `Kind`.

/// A runtime started against a fresh server: (server, host).
fn serving(kind: Kind) -> (Server, Host) {
    super::needs_root("the OCI runtime tests");
    let server = Server::start(json!([]));
    let host = Host::new(kind, Guestsock::of(&server), false);
    (server, host)
}

/// Starts `spec`, which must succeed.
fn start_ok(host: &Host, spec: &Spec) {
    if let Err(ran) = host.start(spec) {
        panic!(
            "{:?} did not start {}:\nstdout: {}\nstderr: {}",
            host.kind, spec.id, ran.stdout, ran.stderr
        );
    }
}

/// `guestsock query PATH` inside container `id`, which must succeed: what
/// it printed.
fn read(host: &Host, id: &str, path: &str) -> String {
    host.query(id, path)
        .expect_ok(&format!("guestsock query {path} in {id}"))
        .stdout
}

/// A container annotated `io.guestsock.config.user.foo=<value>` reads
/// exactly that value through `/dev/lxd/sock` at its first command and
/// afterwards; its instance matches its own cgroup (crun: its pid
/// namespace), its root is host uid 0, the owner key is hidden from it,
/// and the host itself is not served as the container.
pub fn reads_its_own_annotation(kind: Kind) {
    let (server, host) = serving(kind);
    let value = "first value: with spaces, = and ✓";
    let spec = Spec::new("own").config(KEY, value);
    start_ok(&host, &spec);
    assert_eq!(host.first_read(&spec.id), (0, value.to_string()));
    assert_eq!(read(&host, &spec.id, "/1.0/config/user.foo"), value);
    let keys = read(&host, &spec.id, "/1.0/config");
    assert!(
        keys.contains("user.foo") && !keys.contains("guestsock.container"),
        "the guest sees its user keys and never the owner key: {keys}"
    );

    let oci_id = host.oci_id(&spec.id);
    let instance = the_instance(&server, &oci_id);
    assert_eq!(instance["config"][KEY], value);
    assert_eq!(instance["root_uid"], 0);
    let pid = host.pid(&spec.id);
    let expected = match kind {
        Kind::Runc => json!({"cgroup": format!("/{}/{}", host.cgroup_parent, spec.id)}),
        Kind::Podman => json!({"cgroup": format!("/{}/libpod-{oci_id}", host.cgroup_parent)}),
        // crun leaves its containers in its own cgroup2 group (v1 only here).
        Kind::Crun => json!({"pid": pid}),
    };
    assert_eq!(instance["match"], expected, "{instance:#}");
    if kind != Kind::Crun {
        assert_eq!(expected["cgroup"], cgroup_of(pid), "the init's own cgroup");
    }
    let host_side = server.get("/1.0/config/user.foo");
    assert_ne!(
        host_side.status,
        200,
        "a host process is not the container: {}",
        host_side.text()
    );
}

/// Two containers running at once each read their own value of the same
/// key, never the other's; a key only the first has is 404 for the second;
/// a third that claims the first's instance name does not start, and the
/// first keeps its instance.
pub fn two_containers_read_their_own(kind: Kind) {
    let (server, host) = serving(kind);
    let a = Spec::new("a")
        .config(KEY, "value of a")
        .config("user.only-a", "secret of a");
    let b = Spec::new("b").config(KEY, "value of b");
    start_ok(&host, &a);
    start_ok(&host, &b);
    assert_eq!(host.first_read(&a.id), (0, "value of a".to_string()));
    assert_eq!(host.first_read(&b.id), (0, "value of b".to_string()));
    for _ in 0..3 {
        assert_eq!(read(&host, &a.id, "/1.0/config/user.foo"), "value of a");
        assert_eq!(read(&host, &b.id, "/1.0/config/user.foo"), "value of b");
        assert_eq!(read(&host, &a.id, "/1.0/config/user.only-a"), "secret of a");
        let other = host.query(&b.id, "/1.0/config/user.only-a");
        assert!(
            !other.ok && other.stderr.contains("404") && !other.stdout.contains("secret"),
            "b asks for a's key: {other:?}"
        );
    }
    let a_instance = the_instance(&server, &host.oci_id(&a.id));
    let b_instance = the_instance(&server, &host.oci_id(&b.id));
    assert_ne!(a_instance["name"], b_instance["name"]);
    assert_ne!(a_instance["match"], b_instance["match"]);

    let a_name = a_instance["name"].as_str().expect("a name").to_string();
    let thief = Spec::new("thief")
        .annotate("io.guestsock.name", &a_name)
        .config(KEY, "stolen");
    let refused = host
        .start(&thief)
        .expect_err("a container that claims another's instance must not start");
    let said = host.refusal(&refused);
    assert!(
        said.contains(&a_name) && said.contains("belongs to container"),
        "the runtime shows the hook's reason: {said}"
    );
    assert!(
        !host.output(&thief.id).contains("rc="),
        "its command never ran: {}",
        host.output(&thief.id)
    );
    assert_eq!(the_instance(&server, &host.oci_id(&a.id)), a_instance);
    assert_eq!(read(&host, &a.id, "/1.0/config/user.foo"), "value of a");
    assert_eq!(instances(&server).len(), 2, "{:#?}", instances(&server));
}

/// Once a container stopped and was deleted, its instance is gone from the
/// admin API (and the other container's stays).
pub fn gone_after_stop_and_delete(kind: Kind) {
    let (server, host) = serving(kind);
    let gone = Spec::new("gone").config(KEY, "soon gone");
    let stays = Spec::new("stays").config(KEY, "stays");
    start_ok(&host, &gone);
    start_ok(&host, &stays);
    assert_eq!(host.first_read(&gone.id).0, 0);
    let oci_id = host.oci_id(&gone.id);
    let name = the_instance(&server, &oci_id)["name"]
        .as_str()
        .expect("a name")
        .to_string();
    host.stop(&gone.id);
    host.delete(&gone.id).expect_ok("delete");
    assert!(!host.exists(&gone.id));
    // podman's poststop runs in its cleanup, which conmon may start after
    // `rm` returned; runc and crun run it inside `delete`.
    eventually(&format!("instance {name} removed"), || {
        owned_by(&server, &oci_id).is_empty().then_some(())
    });
    let reply = server.admin_call("GET", &format!("/1.0/instances/{name}"), b"");
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert_eq!(read(&host, &stays.id, "/1.0/config/user.foo"), "stays");
    assert_eq!(instances(&server).len(), 1);
}

/// The same container started again replaces its instance, never adds a
/// second: runc and crun re-run the same id after a normal delete and after
/// their record of it was lost (a reboot: poststop never ran); podman
/// restarts it, then re-runs its name with the same `io.guestsock.name`.
pub fn same_container_again_replaces(kind: Kind) {
    let (server, host) = serving(kind);
    let id = unique("again");
    let run = |value: &str| {
        let mut spec = Spec::new("unused").config(KEY, value);
        spec.id = id.clone();
        if kind == Kind::Podman {
            spec = spec.annotate("io.guestsock.name", &id);
        }
        start_ok(&host, &spec);
        assert_eq!(host.first_read(&id), (0, value.to_string()));
        let instance = the_instance(&server, &host.oci_id(&id));
        assert_eq!(instance["config"][KEY], value);
        assert_eq!(instances(&server).len(), 1, "{:#?}", instances(&server));
        instance
    };
    match kind {
        Kind::Runc | Kind::Crun => {
            run("one");
            host.stop(&id);
            host.delete(&id).expect_ok("delete");
            assert!(owned_by(&server, &id).is_empty());
            let second = run("two");
            host.lose(&id);
            assert_eq!(
                the_instance(&server, &id)["config"][KEY],
                "two",
                "a lost container's instance stays until it is seen again"
            );
            let third = run("three");
            assert_eq!(third["name"], second["name"]);
            if kind == Kind::Crun {
                assert_ne!(third["match"], second["match"], "a new init, a new pid");
            }
        }
        Kind::Podman => {
            let first = run("one");
            let oci_id = host.oci_id(&id);
            host.run(&id, &["restart", "--time", "0", &id])
                .expect_ok("podman restart");
            eventually("the restarted container's first line", || {
                (host.output(&id).matches("rc=0 value=one").count() == 2).then_some(())
            });
            assert_eq!(read(&host, &id, "/1.0/config/user.foo"), "one");
            assert_eq!(the_instance(&server, &oci_id), first);
            assert_eq!(instances(&server).len(), 1);
            host.run(&id, &["rm", "--force", "--time", "0", &id])
                .expect_ok("podman rm");
            eventually("the removed container's instance gone", || {
                owned_by(&server, &oci_id).is_empty().then_some(())
            });
            let second = run("two");
            assert_ne!(host.oci_id(&id), oci_id, "a new container");
            assert_eq!(second["name"], first["name"]);
        }
    }
}

/// With guestsock down, the container does not start and the runtime shows
/// the hook's one-line reason; with `--optional` it starts unregistered
/// (its query fails: nothing answers) and is deleted cleanly.
pub fn server_down_fails_unless_optional(kind: Kind) {
    super::needs_root("the OCI runtime tests");
    let down = TempDir::new();
    let strict = Host::new(kind, Guestsock::down(&down), false);
    let spec = Spec::new("down").config(KEY, "unserved");
    let refused = strict
        .start(&spec)
        .expect_err("a container guestsock cannot register must not start");
    let said = strict.refusal(&refused);
    let mut reason = hook_reason(&strict.guestsock.admin, &strict.oci_id(&spec.id), &spec);
    if kind == Kind::Podman {
        // Its hook names the admin socket at the default path, where the
        // fresh host has this one.
        reason = reason.replace(&strict.guestsock.admin.display().to_string(), DIST_ADMIN);
    }
    assert!(
        said.contains(&reason),
        "the runtime shows the hook's reason {reason:?}: {said}"
    );
    assert!(!strict.output(&spec.id).contains("rc="), "it never ran");

    let optional = Host::new(kind, Guestsock::down(&down), true);
    let spec = Spec::new("optional").config(KEY, "unserved");
    start_ok(&optional, &spec);
    let (rc, said) = optional.first_read(&spec.id);
    assert!(rc != 0, "nothing serves it: {said}");
    optional.stop(&spec.id);
    optional
        .delete(&spec.id)
        .expect_ok("delete with an --optional poststop");
    assert!(!optional.exists(&spec.id));
}

/// What `guestsock hook oci` itself says, run by hand for container
/// `oci_id` (annotated as `spec`) against `admin`: the line the runtime
/// must pass on.
fn hook_reason(admin: &Path, oci_id: &str, spec: &Spec) -> String {
    use std::io::Write;
    let state = json!({
        "ociVersion": "1.0.2",
        "id": oci_id,
        "status": "creating",
        "pid": std::process::id(),
        "annotations": spec.annotations,
    });
    let mut child = Command::new(bin())
        .args(["hook", "oci", "--stage", "createRuntime", "--admin"])
        .arg(admin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the hook");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(state.to_string().as_bytes())
        .expect("write the state");
    let out = child.wait_with_output().expect("the hook's output");
    assert!(
        !out.status.success(),
        "the hook fails with nothing to talk to"
    );
    let reason = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(reason.lines().count(), 1, "one line: {reason}");
    assert!(
        reason.contains("guestsock serve"),
        "says what to do: {reason}"
    );
    reason
}

/// In a user namespace, the instance's `root_uid` is the host uid of the
/// container's root (from its uid map), and that root is served.
pub fn root_uid_from_user_namespace(kind: Kind) {
    let (server, host) = serving(kind);
    let first = 300_000;
    let spec = Spec::new("userns").config(KEY, "mapped").userns(first);
    start_ok(&host, &spec);
    assert_eq!(host.first_read(&spec.id), (0, "mapped".to_string()));
    let instance = the_instance(&server, &host.oci_id(&spec.id));
    assert_eq!(instance["root_uid"], first, "{instance:#}");
}

/// The fresh host podman runs on: `guestsock`'s sockets at their default
/// paths in an empty `/run`, private copies of `/etc/containers` and
/// `/usr/share/containers`, and docs/mounting.md's install and
/// host-settings blocks run there as written, from the repository (the
/// install names `dist/` files). With `optional`, `--optional` is added to
/// the installed hook's `args`, as the doc says.
fn podman_host(guestsock: &Guestsock, optional: bool) -> FreshHost {
    let sockets = format!(
        "mkdir -p /run/guestsock/guest && touch /run/guestsock/admin.sock && \
         mount --bind {} /run/guestsock/guest && mount --bind {} /run/guestsock/admin.sock",
        guestsock.guest_dir.display(),
        guestsock.admin.display()
    );
    let fresh = FreshHost::new(&[
        Layer::Empty("/run"),
        Layer::Line(sockets),
        Layer::Copy("/etc/containers"),
        Layer::Copy("/usr/share/containers"),
    ]);
    let mut doc = Doc::load("docs/mounting.md");
    for start in [
        "install -D -m 0644 dist/containers.conf.d/guestsock.conf",
        "cat > /etc/containers/containers.conf.d/host.conf",
    ] {
        let block = doc.take(start);
        run_root(&fresh, &block, None);
    }
    run_root(
        &fresh,
        "cat > /etc/containers/containers.conf.d/zz-test-isolation.conf",
        Some(PODMAN_ISOLATION),
    );
    if optional {
        let hook = run_root(&fresh, &format!("cat {PODMAN_HOOK}"), None);
        let mut hook: Value = serde_json::from_str(&hook).expect("the installed hook is JSON");
        hook["hook"]["args"]
            .as_array_mut()
            .expect("hook.args")
            .push("--optional".into());
        run_root(
            &fresh,
            &format!("cat > {PODMAN_HOOK}"),
            Some(&hook.to_string()),
        );
    }
    fresh
}

/// `script` in a root shell on `fresh`, in the repository, with `input` on
/// its standard input; it must succeed. Its standard output.
fn run_root(fresh: &FreshHost, script: &str, input: Option<&str>) -> String {
    use std::io::Write;
    let mut cmd = fresh.sh(script, &FreshHost::repo());
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run sh on the fresh host");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(input.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("sh's output");
    assert!(
        out.status.success(),
        "{script}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
