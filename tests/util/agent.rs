//! A running `guestsock agent` for the tests, its host leg a unix socket
//! standing in for vsock.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{PATIENCE, TempDir, bin, tool, unique};

/// A running `guestsock agent`, killed on drop.
pub struct Agent {
    /// The socket it serves (the guest's `/dev/lxd/sock`).
    pub socket: PathBuf,
    /// The process.
    pub child: Child,
    stderr: PathBuf,
}

impl Agent {
    /// Starts the agent serving `dir/lxd/sock` (the directory made by the
    /// agent), relaying to `host` with `extra` flags, and waits until it
    /// serves.
    pub fn start(dir: &TempDir, host: &Path, extra: &[&str]) -> Agent {
        Agent::start_as(None, &dir.join("lxd/sock"), host, extra)
    }

    /// Starts the agent serving `socket`, as `uid` (a setuid child through
    /// setpriv) if given, and waits until it serves; its log goes beside
    /// the socket's directory.
    pub fn start_as(uid: Option<u32>, socket: &Path, host: &Path, extra: &[&str]) -> Agent {
        let socket = socket.to_path_buf();
        let parent = socket.parent().expect("a socket directory");
        let stderr = parent.with_file_name(unique("agent-stderr"));
        let mut command = match uid {
            Some(uid) => {
                let mut c = Command::new(tool("setpriv"));
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={uid}"),
                    "--clear-groups",
                    bin(),
                ]);
                c
            }
            None => Command::new(bin()),
        };
        let child = command
            .args(["agent", "--socket"])
            .arg(&socket)
            .arg("--host-unix")
            .arg(host)
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn guestsock agent");
        let mut agent = Agent {
            socket,
            child,
            stderr,
        };
        let deadline = Instant::now() + PATIENCE;
        // Logged once the socket is bound, listening and opened to all.
        while !agent.log().contains("agent: serving") {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("the agent exited ({status}): {}", agent.log());
            }
            assert!(Instant::now() < deadline, "no agent: {}", agent.log());
            thread::sleep(Duration::from_millis(10));
        }
        agent
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
