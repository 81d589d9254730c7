//! Shared test harness: the real `guestsock` binary on a temporary socket,
//! a raw HTTP client over unix sockets, and real cgroup v2 groups.
//!
//! Everything here cleans up after itself on drop: servers are killed,
//! temporary directories removed, cgroups emptied and removed.

#![allow(dead_code)]

pub mod agent;
pub mod docs;
pub mod fresh;
pub mod oci;
pub mod rootfs;
pub mod vm;

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long anything in a test may take before it counts as hung.
pub const PATIENCE: Duration = Duration::from_secs(20);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_guestsock")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails the test unless it runs as root: a behaviour that needs root to be
/// exercised is never reported `ok` without having run.
pub fn needs_root(test: &str) {
    assert!(
        is_root(),
        "{test} needs root (it makes real cgroups, setuid children or pid namespaces): \
         run the tests as root, as the README says: sudo ./test.sh"
    );
}

/// Fails the calling test unless it runs as root (see [`needs_root`]).
#[macro_export]
macro_rules! require_root {
    () => {
        util::needs_root(module_path!())
    };
}

/// The Debian package that brings each program the tests run.
const TOOLS: [(&str, &str); 19] = [
    ("curl", "curl"),
    ("setpriv", "util-linux"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
    ("prlimit", "util-linux"),
    ("mount", "mount"),
    ("umount", "mount"),
    ("cc", "gcc"),
    ("pgrep", "procps"),
    ("python3", "python3"),
    ("lxc-start", "lxc"),
    ("lxc-stop", "lxc"),
    ("lxc-attach", "lxc"),
    ("lxc-info", "lxc"),
    ("runc", "runc"),
    ("crun", "crun"),
    ("podman", "podman"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("strip", "binutils"),
];

/// `program`, after checking that it is on `PATH`: a missing one fails the
/// test with the command that installs it, rather than with a bare "No such
/// file or directory".
pub fn tool(program: &str) -> &str {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    let package = TOOLS
        .iter()
        .find(|(p, _)| *p == program)
        .map_or(program, |(_, package)| package);
    assert!(
        on_path,
        "{program} is not on PATH: install it with `apt-get install {package}`, or run ./test.sh, which installs everything the tests need"
    );
    program
}

/// Fails the test, naming the command that installs `what`, unless
/// `probe` (a program and its arguments) succeeds.
pub fn needs_installed(what: &str, install: &str, probe: &[&str]) {
    let found = Command::new(probe[0])
        .args(&probe[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{what} is missing (`{}` failed): install it with `{install}`, or run ./test.sh, which installs everything the tests need",
        probe.join(" ")
    );
}

/// This process's uid.
pub fn my_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// A directory removed with everything in it on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(unique("guestsock-test"));
        fs::create_dir_all(&path).expect("create temp dir");
        // Children that drop privileges must reach the socket inside.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        TempDir { path }
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A running `guestsock serve`, killed on drop.
pub struct Server {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub admin_socket: PathBuf,
    pub state_dir: PathBuf,
    child: Child,
    stderr_path: PathBuf,
}

impl Server {
    /// Starts `guestsock serve` on a fresh socket with `instances` (a JSON
    /// array of section 4 objects) and waits until it accepts connections.
    pub fn start(instances: serde_json::Value) -> Server {
        Server::start_with(instances, &[])
    }

    /// Like [`Server::start`], with extra `serve` flags.
    pub fn start_with(instances: serde_json::Value, extra: &[&str]) -> Server {
        let dir = TempDir::new();
        let file = write_instances(&dir, instances);
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend(["--instances".into(), file.display().to_string()]);
        Server::start_in(dir, &extra)
    }

    /// Like [`Server::start_with`], with `env` set for the server (which
    /// otherwise runs without `RUST_LOG`, whatever the test's own).
    pub fn start_with_env(
        instances: serde_json::Value,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let dir = TempDir::new();
        let file = write_instances(&dir, instances);
        let mut extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        extra.extend(["--instances".into(), file.display().to_string()]);
        Server::start_in_env(dir, &extra, env)
    }

    /// Starts `guestsock serve` with its sockets and state under `dir`
    /// (which may hold state from an earlier server) and `extra` flags.
    pub fn start_in(dir: TempDir, extra: &[String]) -> Server {
        Server::start_in_env(dir, extra, &[])
    }

    fn start_in_env(dir: TempDir, extra: &[String], env: &[(&str, &str)]) -> Server {
        let socket = dir.join("guest/sock");
        let admin_socket = dir.join("admin.sock");
        let state_dir = dir.join("state");
        let stderr_path = dir.join(&unique("stderr"));
        let mut args = vec![
            "serve".to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--admin-socket".into(),
            admin_socket.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
        ];
        args.extend(extra.iter().cloned());
        let child = Command::new(bin())
            .args(&args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn guestsock");
        let mut server = Server {
            dir,
            socket,
            admin_socket,
            state_dir,
            child,
            stderr_path,
        };
        server.wait_ready();
        server
    }

    /// Kills the server with SIGKILL and returns its directory, state and
    /// all, for a restart.
    pub fn kill9(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        TempDir {
            path: std::mem::take(&mut self.dir.path),
        }
    }

    /// Stops the server with SIGTERM and returns its directory.
    pub fn stop_keep(mut self) -> TempDir {
        let status = self.stop();
        assert!(status.success(), "{status}: {}", self.stderr());
        TempDir {
            path: std::mem::take(&mut self.dir.path),
        }
    }

    /// A new connection to the admin socket.
    pub fn admin(&self) -> Client {
        Client::connect(&self.admin_socket)
    }

    /// One admin call on a fresh connection.
    pub fn admin_call(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        self.admin().request(method, path, body)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            // The guest socket is bound before the admin socket: probing the
            // admin one alone leaves no guest connection to count against a cap.
            if UnixStream::connect(&self.admin_socket).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("guestsock exited early ({status}): {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "guestsock never started: {}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A guest of this uid says `PATCH /1.0 {"state":"Ready"}`, which must
    /// succeed.
    pub fn guest_ready(&self) {
        let reply = self
            .connect()
            .request("PATCH", "/1.0", br#"{"state":"Ready"}"#);
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    /// Registers an instance through the admin API, which must succeed.
    pub fn create_instance(&self, spec: &serde_json::Value) {
        let reply = self.admin_call("POST", "/1.0/instances", spec.to_string().as_bytes());
        assert_eq!(reply.status, 200, "{}", reply.text());
    }

    /// What the server wrote to standard error so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Where its standard error goes (it outlives the server).
    pub fn stderr_path(&self) -> PathBuf {
        self.stderr_path.clone()
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A new connection to the guest socket.
    pub fn connect(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// The answer on a fresh connection that the server refuses at accept
    /// (`503` over a cap): read without sending, since the server may have
    /// closed before a request could be written.
    pub fn refused(&self) -> Reply {
        let mut c = self.connect();
        c.read_reply(false)
    }

    /// One request on a fresh connection.
    pub fn get(&self, path: &str) -> Reply {
        self.connect().request("GET", path, b"")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` and waits for the exit.
    pub fn signal_and_wait(
        &mut self,
        signal: nix::sys::signal::Signal,
    ) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, signal);
        wait_with_deadline(&mut self.child)
    }

    /// Waits for the exit (of a process told to stop some other way).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        wait_with_deadline(&mut self.child)
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        wait_with_deadline(&mut self.child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a child, killing it if it takes longer than [`PATIENCE`].
pub fn wait_with_deadline(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child {} did not exit in time", child.id());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `guestsock` with `args` to completion.
pub fn run_guestsock(args: &[&str], cwd: Option<&Path>) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).stdin(Stdio::null());
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn guestsock");
    wait_with_deadline(&mut child);
    child.wait_with_output().expect("output")
}

/// One parsed HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
}

/// A raw HTTP/1.x client on one unix connection.
pub struct Client {
    pub stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let stream =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends one keep-alive HTTP/1.1 request and reads its answer.
    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Reply {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: lxd\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.send(head.as_bytes());
        self.send(body);
        self.read_reply(method == "HEAD")
    }

    /// Reads one response; `head_only` for answers to `HEAD`.
    pub fn read_reply(&mut self, head_only: bool) -> Reply {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head_len) =
                resp.parse(&self.buf).expect("response head parses")
            {
                let status = resp.code.expect("status");
                let headers: Vec<(String, String)> = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let length = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map(|(_, v)| v.parse::<usize>().expect("length"));
                let body_len = if head_only || status == 304 || status == 101 {
                    0
                } else {
                    length.expect("every answer carries Content-Length")
                };
                while self.buf.len() < head_len + body_len {
                    self.fill().expect("body arrives");
                }
                let body = self.buf[head_len..head_len + body_len].to_vec();
                self.buf.drain(..head_len + body_len);
                return Reply {
                    status,
                    headers,
                    body,
                };
            }
            self.fill().expect("head arrives");
        }
    }

    /// Reads whatever comes next into the buffer; an error at EOF.
    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("EOF with {:?} buffered", String::from_utf8_lossy(&self.buf)),
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Whether the server closed the connection (EOF with nothing more).
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        self.buf.is_empty() && matches!(self.stream.read(&mut byte), Ok(0))
    }
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (it is not always
/// /sys/fs/cgroup: hybrid hosts mount it at /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2")
            && let Some(mount) = left.split_whitespace().nth(4)
        {
            return PathBuf::from(mount);
        }
    }
    panic!("no cgroup2 mount in /proc/self/mountinfo");
}

/// A real cgroup v2 group, created under the hierarchy's root (exempt from
/// the no-internal-processes rule) and removed on drop after killing what
/// is left in it.
pub struct Cgroup {
    /// The path as `/proc/PID/cgroup` shows it, e.g. `/guestsock-test-1-2`.
    pub path: String,
    pub dir: PathBuf,
}

impl Cgroup {
    pub fn new() -> Cgroup {
        let name = unique("guestsock-test");
        let dir = cgroup2_mount().join(&name);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Cgroup {
            path: format!("/{name}"),
            dir,
        }
    }

    /// A child group `name` below this one.
    pub fn child(&self, name: &str) -> Cgroup {
        let dir = self.dir.join(name);
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Cgroup {
            path: format!("{}/{name}", self.path),
            dir,
        }
    }

    /// A command that runs `program args` inside this group, as `uid` when
    /// given (through setpriv, a real setuid/setgid child).
    pub fn command(&self, uid: Option<u32>, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.dir.join("cgroup.procs"));
        tool(program);
        if let Some(uid) = uid {
            cmd.args([
                tool("setpriv"),
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ]);
        }
        cmd.arg(program).args(args);
        cmd
    }

    fn kill_all(&self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        let deadline = Instant::now() + PATIENCE;
        while fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs curl against `socket` for `path`, returning (status, body). The
/// child is run by `cmd` (so it can be placed in a cgroup or setuid).
pub fn curl_in(mut cmd: Command) -> (u16, String) {
    let out = cmd.output().expect("run curl");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.parse().expect("status"), body.to_string())
}

/// curl's arguments for one GET over `socket`, printing the body, a newline
/// and the status.
pub fn curl_args(socket: &Path, path: &str) -> Vec<String> {
    vec![
        "-sS".into(),
        "--unix-socket".into(),
        socket.display().to_string(),
        "-w".into(),
        "\n%{http_code}".into(),
        format!("http://lxd{path}"),
    ]
}

impl Cgroup {
    /// `GET path` with curl from a process in this group (as `uid` if
    /// given): (status, body).
    pub fn curl(&self, uid: Option<u32>, socket: &Path, path: &str) -> (u16, String) {
        let args = curl_args(socket, path);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl_in(self.command(uid, tool("curl"), &args))
    }
}

/// `GET path` with curl from a child that setuid/setgid to `uid` (through
/// setpriv), in this process's own cgroup: (status, body).
pub fn curl_as(uid: u32, socket: &Path, path: &str) -> (u16, String) {
    let mut cmd = Command::new(tool("setpriv"));
    cmd.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
        tool("curl"),
    ]);
    cmd.args(curl_args(socket, path));
    curl_in(cmd)
}

/// `serve` arguments with the guest socket at `socket` and the admin socket
/// and state directory under `dir`, so that no test touches the host's
/// defaults.
pub fn serve_args(dir: &Path, socket: &Path) -> Vec<String> {
    vec![
        "serve".into(),
        "--socket".into(),
        socket.display().to_string(),
        "--admin-socket".into(),
        dir.join(unique("admin")).display().to_string(),
        "--state-dir".into(),
        dir.join(unique("state")).display().to_string(),
    ]
}

/// A websocket client (tungstenite) subscribed to `path` on `socket`.
pub fn websocket(socket: &Path, path: &str) -> tungstenite::WebSocket<UnixStream> {
    let stream = UnixStream::connect(socket).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let (ws, response) = tungstenite::client::client(format!("ws://lxd{path}"), stream)
        .unwrap_or_else(|e| panic!("websocket handshake for {path}: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

/// The next text message of a websocket, as JSON (pings are answered by
/// tungstenite itself).
pub fn next_event(ws: &mut tungstenite::WebSocket<UnixStream>) -> serde_json::Value {
    loop {
        match ws.read().expect("read a websocket message") {
            tungstenite::Message::Text(text) => {
                return serde_json::from_str(text.as_str()).expect("event JSON");
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected websocket message {other:?}"),
        }
    }
}

/// Runs `serve` with the guest socket at `socket` (and `instances`, if
/// given), which must refuse to start with a one-line explanation; returns
/// that line.
pub fn serve_fails(socket: &Path, instances: Option<&Path>) -> String {
    let mut args = serve_args(socket.parent().expect("socket in a directory"), socket);
    if let Some(file) = instances {
        args.extend(["--instances".into(), file.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_guestsock(&args, None);
    assert!(!out.status.success(), "serve started anyway");
    let err = String::from_utf8(out.stderr).expect("utf-8");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

/// `serve` with an instances file `{"instances": instances}`, which must be
/// refused before anything starts (no socket is created); returns the
/// explanation.
pub fn serve_refuses_instances(instances: serde_json::Value) -> String {
    let dir = TempDir::new();
    let file = write_instances(&dir, instances);
    let socket = dir.join("guest/sock");
    let err = serve_fails(&socket, Some(&file));
    assert!(!socket.exists(), "nothing starts on a bad file");
    err
}

/// Writes `{"instances": instances}` to `instances.json` in `dir`.
fn write_instances(dir: &TempDir, instances: serde_json::Value) -> PathBuf {
    let file = dir.join("instances.json");
    fs::write(
        &file,
        serde_json::json!({ "instances": instances }).to_string(),
    )
    .expect("write instances");
    file
}

/// A running `guestsock serve --demo` in a directory of its own (the
/// current directory it was started in), killed on drop.
pub struct Demo {
    /// Its current directory; the demo lives in `guestsock-demo/` inside.
    pub cwd: TempDir,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Demo {
    /// Starts `guestsock serve --demo` (plus `extra`) as `uid` (through
    /// setpriv; this process's own when `None`) with `env`, in a fresh
    /// directory owned by that uid, and waits until it serves.
    pub fn start(uid: Option<u32>, env: &[(&str, &str)], extra: &[&str]) -> Demo {
        let cwd = TempDir::new();
        if let Some(uid) = uid {
            nix::unistd::chown(
                &cwd.path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(uid)),
            )
            .expect("chown the demo's directory");
        }
        let stdout_path = std::env::temp_dir().join(unique("guestsock-demo-stdout"));
        let stderr_path = std::env::temp_dir().join(unique("guestsock-demo-stderr"));
        let mut cmd = match uid {
            Some(uid) => {
                let mut cmd = Command::new(tool("setpriv"));
                cmd.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    bin(),
                ]);
                cmd
            }
            None => Command::new(bin()),
        };
        let child = cmd
            .args(["serve", "--demo"])
            .args(extra)
            .current_dir(&cwd.path)
            .env_remove("RUST_LOG")
            .env_remove("SUDO_UID")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn guestsock serve --demo");
        let mut demo = Demo {
            cwd,
            child,
            stdout_path,
            stderr_path,
        };
        let pid_file = demo.cwd.join("guestsock-demo/guestsock.pid");
        let deadline = Instant::now() + PATIENCE;
        while !pid_file.exists() {
            if let Ok(Some(status)) = demo.child.try_wait() {
                panic!("the demo exited early ({status}): {}", demo.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "the demo never started: {}",
                demo.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
        demo
    }

    /// The guest socket.
    pub fn socket(&self) -> PathBuf {
        self.cwd.join("guestsock-demo/guest/sock")
    }

    /// The admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.cwd.join("guestsock-demo/admin.sock")
    }

    /// What it printed on standard output (its greeting).
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// What it printed on standard error (its log).
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.stdout_path);
        let _ = fs::remove_file(&self.stderr_path);
    }
}

/// The durable state of `state_dir` as `guestsock dump` prints it, read
/// without a server (or beside a running one).
pub fn dump(state_dir: &Path) -> serde_json::Value {
    let out = run_guestsock(
        &["dump", "--state-dir", &state_dir.display().to_string()],
        None,
    );
    assert!(
        out.status.success(),
        "guestsock dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dump prints JSON")
}

/// Instance `name` in a [`dump`], if it is there.
pub fn dumped(state_dir: &Path, name: &str) -> Option<serde_json::Value> {
    dump(state_dir)["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["name"] == name)
        .cloned()
}
