//! Every command in README.md's `sh` blocks is run, as written, so that none
//! goes stale: the demo's against a real `serve --demo` started by an
//! ordinary user; the host's against a real `guestsock serve` on its default
//! paths, inside a private mount namespace with fresh `/run` and `/var/lib`;
//! the container's from a process in the container's cgroup, as its root
//! uid, with `/dev/lxd/sock` standing for the guest socket that a container
//! has mounted there. The install and test commands are run by `.ci/run`
//! (checked here); the systemd commands need systemd as PID 1, which this
//! machine has not, and are checked against `dist/` instead.
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

/// The ordinary user who tries the demo.
const PERSON: u32 = 4242;
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

/// A directory on `PATH` holding the binary under test as `guestsock`,
/// readable by every uid.
fn bin_dir(dir: &util::TempDir) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(util::bin(), bin.join("guestsock")).unwrap();
    bin
}

fn path_with(bin: &Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs `script` with sh, as `uid` (setpriv) when given, in `cwd`.
fn sh_as(uid: Option<u32>, cwd: &Path, bin: &Path, script: &str) -> Command {
    let mut cmd = match uid {
        Some(uid) => {
            let mut cmd = Command::new(util::tool("setpriv"));
            cmd.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "sh",
            ]);
            cmd
        }
        None => Command::new("sh"),
    };
    cmd.args(["-c", script])
        .current_dir(cwd)
        .env("PATH", path_with(bin))
        .env_remove("GUESTSOCK_ADMIN")
        .env_remove("GUESTSOCK_SOCKET")
        .env_remove("SUDO_UID")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
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

fn demo_commands(readme: &mut Readme) {
    let dir = util::TempDir::new();
    let bin = bin_dir(&dir);
    let cwd = dir.join("home");
    std::fs::create_dir(&cwd).unwrap();
    nix::unistd::chown(
        &cwd,
        Some(nix::unistd::Uid::from_raw(PERSON)),
        Some(nix::unistd::Gid::from_raw(PERSON)),
    )
    .unwrap();
    let serve = readme.take("guestsock serve --demo");
    let mut command = sh_as(Some(PERSON), &cwd, &bin, &serve);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let mut demo = Running::spawn(command);
    wait_for(
        &cwd.join("guestsock-demo/guestsock.pid"),
        &mut demo.0,
        "the demo",
    );
    let socket = "curl --unix-socket ./guestsock-demo/guest/sock";
    let mut call = |start: &str| {
        let command = readme.take(start);
        run_ok(sh_as(Some(PERSON), &cwd, &bin, &command), &command)
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

/// The README's cgroup for c1, made for real and removed after.
struct NamedCgroup(PathBuf);

impl NamedCgroup {
    fn new(path: &str) -> NamedCgroup {
        let dir = util::cgroup2_mount().join(path.trim_start_matches('/'));
        std::fs::create_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot make cgroup {} for the README's c1 (a real container of that name?): {e}",
                dir.display()
            )
        });
        NamedCgroup(dir)
    }
}

impl Drop for NamedCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let deadline = Instant::now() + util::PATIENCE;
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The host's and the container's commands, on the default paths of a
/// private mount namespace.
fn host_and_container_commands(readme: &mut Readme) {
    let dir = util::TempDir::new();
    let bin = bin_dir(&dir);
    let cwd = dir.join("host");
    std::fs::create_dir(&cwd).unwrap();
    std::fs::write(
        cwd.join("user-data.yaml"),
        "#cloud-config\nruncmd: [echo hi]\n",
    )
    .unwrap();
    let group = NamedCgroup::new("/lxc.payload.c1");

    // A namespace whose /run and /var/lib are fresh, held by a shell that
    // runs the README's serve line.
    let serve = readme.take("guestsock serve ");
    let log = dir.join("serve.log");
    let mut command = Command::new(util::tool("unshare"));
    command
        .args(["-m", "--propagation", "private", "sh", "-c"])
        // The shell stays, holding the namespace, across the restart.
        .arg(format!(
            "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib || exit 1\n{serve} &\nexec sleep 600"
        ))
        .current_dir(&cwd)
        .env("PATH", path_with(&bin))
        .env_remove("RUST_LOG")
        .env_remove("SUDO_UID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut ns = Running::spawn(command);
    let ns_pid = ns.0.id().to_string();
    // Runs `script` in that namespace (as `uid` in c1's cgroup when given).
    let in_ns = |script: &str, container: bool| -> Command {
        let mut cmd = Command::new(util::tool("nsenter"));
        // Entering a mount namespace leaves the caller at its root: -w
        // keeps the working directory (the README's user-data.yaml).
        cmd.args(["-t", &ns_pid, "-m"])
            .arg(format!("--wd={}", cwd.display()))
            .args(["--", "sh", "-c"]);
        if container {
            let script = script.replace("/dev/lxd/sock", "/run/guestsock/guest/sock");
            cmd.arg(format!(
                "echo $$ > {}/cgroup.procs && exec setpriv --reuid={C1_ROOT} --regid={C1_ROOT} --clear-groups sh -c \"$0\"",
                group.0.display()
            ))
            .arg(script);
        } else {
            cmd.arg(script);
        }
        cmd.current_dir(&cwd)
            .env("PATH", path_with(&bin))
            .env_remove("GUESTSOCK_ADMIN")
            .stdin(Stdio::null());
        cmd
    };
    let deadline = Instant::now() + util::PATIENCE;
    while !run_ok(in_ns("ls /run/guestsock/ 2>/dev/null || true", false), "ls")
        .contains("guestsock.pid")
    {
        if let Ok(Some(status)) = ns.0.try_wait() {
            panic!(
                "guestsock serve exited: {status}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "guestsock serve never started");
        thread::sleep(Duration::from_millis(20));
    }
    let host = |readme: &mut Readme, start: &str| {
        let command = readme.take(start);
        run_ok(in_ns(&command, false), &command)
    };
    host(readme, "echo '{\"name\": \"c1\"");
    host(readme, "guestsock config set c1 user.foo bar");
    host(
        readme,
        "guestsock config set c1 cloud-init.user-data - < user-data.yaml",
    );
    host(readme, "guestsock device add c1 eth0 ");
    assert!(host(readme, "guestsock instance list").contains("c1"));
    assert!(host(readme, "guestsock config show c1").contains("user.foo"));
    host(readme, "guestsock state c1 Started");

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
    assert!(host(readme, "guestsock identity jwks").contains("ES256"));
    assert!(host(readme, "guestsock identity rotate").contains("rotated"));

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
    host(readme, "kill -HUP $(cat /run/guestsock/guestsock.pid)");
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

    host(readme, "guestsock instance remove c1");
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
    for exact in [
        "cargo install --path .",
        "cargo install --path . --root /usr/local",
    ] {
        let command = readme.take(exact);
        assert!(
            ci_lines.contains(&command.as_str()),
            ".ci/run does not run the README's {command:?}"
        );
    }
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
    host_and_container_commands(&mut readme);
    systemd_commands(&mut readme);
    readme.assert_all_run();
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
