//! Every command in README.md's `sh` blocks is run, as written, in a root
//! shell (root's `PATH`, no `~/.cargo/bin`), so that none goes stale. Each
//! runs on a fresh host made of private namespaces: the binary under test at
//! `/usr/local/bin/guestsock`, where the README installs it; empty `/run`
//! and `/var/lib`; the cgroup hierarchy rooted at a group of this run's own
//! (a cgroup namespace), laid out as on a hybrid host (cgroup2 at
//! `/sys/fs/cgroup/unified`) and, for the host's commands a second time, as
//! on a cgroup2-only one. The demo's commands run against a real `serve
//! --demo`; the host's against a real `guestsock serve` on its default
//! paths; the container's from a process in the README's own cgroup,
//! `/lxc.payload.c1`, as its root uid, with `/dev/lxd/sock` standing for
//! the guest socket that a container has mounted there. The install and
//! test commands are run by `.ci/run` (checked here); the systemd commands
//! need systemd as PID 1, which this machine has not, and are checked
//! against `dist/` instead.
//!
//! Each step takes its command out of the README by its text: a command
//! changed in the README fails the step that runs it, and a command added
//! to the README and run by no step fails the test.

mod util;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// c1's root, as the README registers it.
const C1_ROOT: u32 = 1_000_000;

/// README.md's shell commands (continuation lines joined), by block.
struct Readme {
    commands: Vec<(usize, String, bool)>,
}

impl Readme {
    fn load() -> Readme {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let mut commands = Vec::new();
        let (mut block, mut in_sh, mut pending) = (0, false, String::new());
        for line in text.lines() {
            if !in_sh {
                if line == "```sh" {
                    in_sh = true;
                    block += 1;
                }
                continue;
            }
            if line == "```" {
                in_sh = false;
                continue;
            }
            let trimmed = line.trim();
            if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
                continue;
            }
            pending.push_str(line);
            if pending.ends_with('\\') {
                // sh reads backslash-newline as a continuation, as a reader does.
                pending.push('\n');
                continue;
            }
            commands.push((block, std::mem::take(&mut pending), false));
        }
        Readme { commands }
    }

    /// The next command not yet run that is `start`, or else starts with
    /// it; every candidate must be the same text (a command may appear
    /// twice).
    fn take(&mut self, start: &str) -> String {
        let exact = self.commands.iter().any(|(_, c, t)| !t && c == start);
        let candidates: Vec<usize> = (0..self.commands.len())
            .filter(|&i| {
                let (_, c, taken) = &self.commands[i];
                !taken
                    && if exact {
                        c == start
                    } else {
                        c.starts_with(start)
                    }
            })
            .collect();
        let Some(&first) = candidates.first() else {
            panic!("README.md has no (other) command starting with {start:?}");
        };
        let command = self.commands[first].1.clone();
        assert!(
            candidates.iter().all(|&i| self.commands[i].1 == command),
            "README.md has several commands starting with {start:?}"
        );
        self.commands[first].2 = true;
        command
    }

    /// The whole block holding the command that starts with `start`, as one
    /// script.
    fn take_block(&mut self, start: &str) -> String {
        let block = self
            .commands
            .iter()
            .find(|(_, c, _)| c.starts_with(start))
            .unwrap_or_else(|| panic!("README.md has no command starting with {start:?}"))
            .0;
        let mut script = String::new();
        for (b, command, taken) in &mut self.commands {
            if *b == block {
                assert!(!*taken);
                *taken = true;
                script.push_str(command);
                script.push('\n');
            }
        }
        script
    }

    fn assert_all_run(&self) {
        let left: Vec<&str> = self
            .commands
            .iter()
            .filter(|(_, _, taken)| !taken)
            .map(|(_, c, _)| c.as_str())
            .collect();
        assert!(
            left.is_empty(),
            "README.md commands that no step of tests/readme.rs runs: {left:#?}"
        );
    }
}

/// A root shell's `PATH` on Debian: no `~/.cargo/bin`, so every
/// `guestsock` the README runs is the one it installs,
/// `/usr/local/bin/guestsock`.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How the cgroup hierarchies are mounted on the host a step stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// cgroup v2 alone, at `/sys/fs/cgroup`.
    Unified,
    /// cgroup v2 at `/sys/fs/cgroup/unified` in a tmpfs, where v1
    /// controllers sit beside it (Debian's hybrid layout, this project's
    /// own machines).
    Hybrid,
}

impl Shape {
    /// Where the host's cgroup2 hierarchy is mounted.
    fn mount(self) -> &'static str {
        match self {
            Shape::Unified => "/sys/fs/cgroup",
            Shape::Hybrid => "/sys/fs/cgroup/unified",
        }
    }

    /// The shell lines that lay the hierarchy out so, inside a cgroup
    /// namespace (so that its root is this run's own group).
    fn set_up(self) -> &'static str {
        match self {
            Shape::Unified => {
                "umount -R -l /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup"
            }
            Shape::Hybrid => {
                "umount -R -l /sys/fs/cgroup && mount -t tmpfs -o mode=0755 tmpfs /sys/fs/cgroup && mkdir /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified"
            }
        }
    }
}

/// A fresh host in private namespaces, as a root shell on it sees it:
/// `/usr/local/bin/guestsock` is the binary under test (an overlay on the
/// real directory), `/run` and `/var/lib` are empty, and the cgroup2
/// hierarchy, in `shape`, is rooted at a group of this run's own, so that
/// the README's `/lxc.payload.c1` is this run's and no real container's.
/// A shell holds the namespaces and runs `serve` (if given) inside them.
struct Host {
    _holder: Running,
    pid: String,
    shape: Shape,
    log: PathBuf,
    cwd: PathBuf,
    // Dropped after the holder has been killed: the groups empty by then.
    _c1: util::Cgroup,
    _base: util::Cgroup,
    _dir: util::TempDir,
}

impl Host {
    fn new(shape: Shape, serve: Option<&str>) -> Host {
        let dir = util::TempDir::new();
        let cwd = dir.join("root");
        std::fs::create_dir(&cwd).unwrap();
        let base = util::Cgroup::new();
        let c1 = base.child("lxc.payload.c1");
        let layer = dir.join("usr-local-bin");
        for sub in ["up", "work"] {
            std::fs::create_dir_all(layer.join(sub)).unwrap();
        }
        let fresh = match serve {
            Some(_) => "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib",
            None => "true",
        };
        let script = format!(
            "{set_up} && {fresh} && \
             mount -t overlay overlay -o lowerdir=/usr/local/bin,upperdir={layer}/up,workdir={layer}/work /usr/local/bin && \
             cp {bin} /usr/local/bin/guestsock && touch {ready} || exit 1\n{serve} &\nexec sleep 600",
            set_up = shape.set_up(),
            layer = layer.display(),
            bin = util::bin(),
            ready = dir.join("ready").display(),
            serve = serve.unwrap_or("true"),
        );
        let log = dir.join("serve.log");
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec unshare -m -C --propagation private sh -c \"$1\"")
            .arg(base.dir.join("cgroup.procs"))
            .arg(script)
            .current_dir(&cwd)
            .env_clear()
            .env("PATH", ROOT_PATH)
            .env("HOME", "/root")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut holder = Running::spawn(command);
        // unshare execs sh, which runs the set-up: ready once the binary
        // is in place (the host's own may be there before).
        let pid = holder.0.id().to_string();
        let deadline = Instant::now() + util::PATIENCE;
        loop {
            if dir.join("ready").exists() {
                break;
            }
            if let Ok(Some(status)) = holder.0.try_wait() {
                panic!(
                    "the host's set-up failed: {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "the host was never set up");
            thread::sleep(Duration::from_millis(20));
        }
        Host {
            _holder: holder,
            pid,
            shape,
            log,
            cwd,
            _c1: c1,
            _base: base,
            _dir: dir,
        }
    }

    /// `script` in a root shell on this host, in its working directory;
    /// with `container`, as c1's root in c1's cgroup, with `/dev/lxd/sock`
    /// standing for the guest socket a container has mounted there.
    fn sh(&self, script: &str, container: bool) -> Command {
        let mut cmd = Command::new(util::tool("nsenter"));
        // Entering a mount namespace leaves the caller at its root: --wd
        // keeps the working directory (the README's user-data.yaml).
        cmd.args(["-t", &self.pid, "-m"])
            .arg(format!("--wd={}", self.cwd.display()))
            .args(["--", "sh", "-c"]);
        if container {
            let script = script.replace("/dev/lxd/sock", "/run/guestsock/guest/sock");
            cmd.arg(format!(
                "echo $$ > {}/lxc.payload.c1/cgroup.procs && exec setpriv --reuid={C1_ROOT} --regid={C1_ROOT} --clear-groups sh -c \"$0\"",
                self.shape.mount()
            ))
            .arg(script);
        } else {
            cmd.arg(script);
        }
        cmd.current_dir(&self.cwd)
            .env_clear()
            .env("PATH", ROOT_PATH)
            .env("HOME", "/root")
            .stdin(Stdio::null());
        cmd
    }

    fn serve_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs `command` to completion; it must succeed. Returns its output.
fn run_ok(mut command: Command, what: &str) -> String {
    let out: Output = command.output().expect("run sh");
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(path: &Path, child: &mut Child, what: &str) {
    let deadline = Instant::now() + util::PATIENCE;
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} never wrote {}",
            path.display()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A child in a process group of its own, which is killed whole on drop
/// (servers it started, a successor after SIGHUP included).
struct Running(Child);

impl Running {
    fn spawn(mut command: Command) -> Running {
        use std::os::unix::process::CommandExt;
        Running(command.process_group(0).spawn().expect("spawn"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.0.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// The "Try it" block, in a root shell, as pasted: the demo started in
/// one shell, the calls made from another.
fn demo_commands(readme: &mut Readme) {
    let host = Host::new(Shape::Hybrid, None);
    let serve = readme.take("guestsock serve --demo");
    let mut command = host.sh(&serve, false);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let mut demo = Running::spawn(command);
    wait_for(
        &host.cwd.join("guestsock-demo/guestsock.pid"),
        &mut demo.0,
        "the demo",
    );
    let socket = "curl --unix-socket ./guestsock-demo/guest/sock";
    let mut call = |start: &str| {
        let command = readme.take(start);
        run_ok(host.sh(&command, false), &command)
    };
    let info: serde_json::Value =
        serde_json::from_str(&call(&format!("{socket} http://lxd/1.0"))).unwrap_or_default();
    assert_eq!(info["api_version"], "1.0", "{info}");
    assert!(call(&format!("{socket} http://lxd/1.0/config")).contains("user.greeting"));
    assert_eq!(
        call(&format!("{socket} http://lxd/1.0/config/user.greeting")),
        "hello from guestsock"
    );
    assert!(call(&format!("{socket} http://lxd/1.0/meta-data")).starts_with("instance-id: demo\n"));
    assert!(call(&format!("{socket} http://lxd/1.0/devices")).contains("\"eth0\""));
    assert_eq!(call(&format!("{socket} -X PATCH")), "");
    let query = "guestsock query --socket ./guestsock-demo/guest/sock /1.0/config/user.greeting";
    assert_eq!(call(query), "hello from guestsock");
    call("GUESTSOCK_ADMIN=./guestsock-demo/admin.sock guestsock config set demo user.greeting hi");
    assert_eq!(call(query), "hi");
}

/// The host's and the container's commands, on the default paths of a
/// fresh host of `shape`.
fn host_and_container_commands(readme: &mut Readme, shape: Shape) {
    let serve = readme.take("guestsock serve ");
    let host = Host::new(shape, Some(&serve));
    std::fs::write(
        host.cwd.join("user-data.yaml"),
        "#cloud-config\nruncmd: [echo hi]\n",
    )
    .unwrap();
    let in_ns = |script: &str, container: bool| host.sh(script, container);
    let deadline = Instant::now() + util::PATIENCE;
    while !run_ok(in_ns("ls /run/guestsock/ 2>/dev/null || true", false), "ls")
        .contains("guestsock.pid")
    {
        assert!(
            Instant::now() < deadline,
            "guestsock serve never started: {}",
            host.serve_log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    let run = |readme: &mut Readme, start: &str| {
        let command = readme.take(start);
        run_ok(in_ns(&command, false), &command)
    };
    run(readme, "echo '{\"name\": \"c1\"");
    run(readme, "guestsock config set c1 user.foo bar");
    run(
        readme,
        "guestsock config set c1 cloud-init.user-data - < user-data.yaml",
    );
    run(readme, "guestsock device add c1 eth0 ");
    assert!(run(readme, "guestsock instance list").contains("c1"));
    assert!(run(readme, "guestsock config show c1").contains("user.foo"));
    run(readme, "guestsock state c1 Started");

    let command = readme.take("curl --unix-socket /dev/lxd/sock http://lxd/1.0/config/user.foo");
    assert_eq!(run_ok(in_ns(&command, true), &command), "bar");

    // An identity token, asked for in the container, verified on the host.
    let command = readme.take("curl -s --unix-socket /dev/lxd/sock -H 'Guestsock-Identity: true'");
    let token = run_ok(in_ns(&command, true), &command);
    assert!(token.starts_with("eyJ"), "{token}");
    let command = readme.take("guestsock identity verify \"$TOKEN\"");
    let mut verify = in_ns(&command, false);
    verify.env("TOKEN", &token);
    let claims = run_ok(verify, &command);
    assert!(claims.contains("\"instance\": \"c1\""), "{claims}");
    assert!(claims.contains("\"uid\": 1000000"), "{claims}");
    assert!(run(readme, "guestsock identity jwks").contains("ES256"));
    assert!(run(readme, "guestsock identity rotate").contains("rotated"));

    // The event stream: the host changes user.foo while the guest listens.
    let command = readme.take("curl -N --unix-socket /dev/lxd/sock");
    let mut listener = in_ns(&command, true);
    listener.stdout(Stdio::piped());
    let mut events = Running::spawn(listener);
    thread::sleep(Duration::from_millis(500));
    run_ok(
        in_ns("guestsock config set c1 user.foo baz", false),
        "set baz",
    );
    let mut line = String::new();
    BufReader::new(events.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).expect("an event line");
    assert_eq!(
        event["metadata"],
        serde_json::json!({"key": "user.foo", "old_value": "bar", "value": "baz"})
    );
    drop(events);

    // Waiting for a change without a websocket.
    let script = readme.take_block("tag=$(curl -si --unix-socket /dev/lxd/sock");
    let waiter = in_ns(&script, true).stdout(Stdio::piped()).spawn().unwrap();
    thread::sleep(Duration::from_millis(700));
    run_ok(
        in_ns("guestsock config set c1 user.foo qux", false),
        "set qux",
    );
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "qux");

    // The restart: a new process serves, with the same state.
    let before = run_ok(in_ns("cat /run/guestsock/guestsock.pid", false), "cat");
    run(readme, "kill -HUP $(cat /run/guestsock/guestsock.pid)");
    let deadline = Instant::now() + util::PATIENCE;
    loop {
        let now = run_ok(
            in_ns(
                "cat /run/guestsock/guestsock.pid 2>/dev/null || true",
                false,
            ),
            "cat",
        );
        if !now.is_empty() && now != before {
            break;
        }
        assert!(Instant::now() < deadline, "no new server after SIGHUP");
        thread::sleep(Duration::from_millis(20));
    }
    let command = "curl -s --unix-socket /dev/lxd/sock http://lxd/1.0/config/user.foo";
    assert_eq!(run_ok(in_ns(command, true), command), "qux");

    run(readme, "guestsock instance remove c1");
    let out = in_ns(command, true).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is not part of any registered instance"),
        "{out:?}"
    );
    // Stop the (new) server for good; the namespace goes with its shell.
    run_ok(
        in_ns("kill -TERM $(cat /run/guestsock/guestsock.pid)", false),
        "stop",
    );
}

/// The install and test lines are run by .ci/run, literally.
fn ci_commands(readme: &mut Readme) {
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    let ci_lines: Vec<&str> = ci.lines().map(str::trim).collect();
    // "Try it" installs the binary where every doc and dist/ file runs it,
    // and "Operating it" says the same; .ci/run runs the line as written.
    for _ in 0..2 {
        let command = readme.take("cargo install --path . --root /usr/local");
        assert!(
            ci_lines.contains(&command.as_str()),
            ".ci/run does not run the README's {command:?}"
        );
    }
    assert!(
        !ci_lines.contains(&"cargo install --path ."),
        "one install location: .ci/run installs only to /usr/local"
    );
    // It runs the line by name, and fails if README's marker names another.
    let command = readme.take("./test.sh");
    assert!(
        ci_lines.contains(&command.as_str())
            && ci.contains("awk '/<!-- test-command -->/")
            && ci.contains(&format!("if [ \"$test_command\" != \"{command}\" ]; then")),
        ".ci/run does not run the README's test command {command:?}"
    );
}

/// The systemd lines need systemd as PID 1; what they name is checked.
fn systemd_commands(readme: &mut Readme) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for start in [
        "cp dist/guestsock.socket",
        "cp dist/guestsock.tmpfiles.conf",
    ] {
        let command = readme.take(start);
        for word in command
            .split_whitespace()
            .filter(|w| w.starts_with("dist/"))
        {
            assert!(root.join(word).is_file(), "{command}: {word} is missing");
        }
    }
    let command = readme.take("systemd-tmpfiles --create");
    assert!(command.contains("systemctl enable --now guestsock.socket"));
    let service = std::fs::read_to_string(root.join("dist/guestsock.service")).unwrap();
    assert!(
        service.contains("ExecStart=/usr/local/bin/guestsock serve"),
        "the unit runs the binary `cargo install --path . --root /usr/local` puts in place"
    );
}

#[test]
fn every_readme_command_runs() {
    require_root!(); // setuid users, a cgroup and a mount namespace
    let mut readme = Readme::load();
    ci_commands(&mut readme);
    demo_commands(&mut readme);
    host_and_container_commands(&mut readme, Shape::Hybrid);
    systemd_commands(&mut readme);
    readme.assert_all_run();
    // The host's and container's commands again, on a host with cgroup v2
    // alone.
    let mut again = Readme::load();
    again.take("guestsock serve --demo");
    host_and_container_commands(&mut again, Shape::Unified);
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation
/// other than `-` and `_` dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn every_link_resolves_inside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in [
        "README.md",
        "docs/protocol.md",
        "docs/mounting.md",
        "docs/priority.md",
        "docs/vms.md",
    ] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let base = root.join(doc).parent().unwrap().to_path_buf();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').expect("a closed link");
            let target = &rest[..end];
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                root.join(doc)
            } else {
                base.join(file)
            };
            let path = path
                .canonicalize()
                .unwrap_or_else(|e| panic!("{doc}: link {target:?}: {e}"));
            assert!(
                path.starts_with(root.canonicalize().unwrap()),
                "{doc}: link {target:?} leaves the repository"
            );
            if !fragment.is_empty() {
                let linked = std::fs::read_to_string(&path).unwrap();
                assert!(
                    linked
                        .lines()
                        .filter_map(|l| l.strip_prefix('#'))
                        .map(|h| anchor(h.trim_start_matches('#')))
                        .any(|a| a == fragment),
                    "{doc}: link {target:?}: no such heading"
                );
            }
        }
    }
}
