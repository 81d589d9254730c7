//! A fresh host made of a private mount namespace, as a root shell on it
//! sees it: the binary under test at `/usr/local/bin/guestsock` (where the
//! README installs it), chosen directories empty (tmpfs) or writable
//! copies of the real ones (an overlay whose changes vanish with the
//! namespace). A documented command such as
//! `install -D ... /etc/containers/...` then runs as written, and the real
//! runtimes read what it installed, while the real host is never touched.
//!
//! A holder shell keeps the namespace; every command enters it with
//! `nsenter`. Dropping the host kills the holder, and with it the
//! namespace.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;

use super::{PATIENCE, TempDir, bin, tool};

/// A root shell's `PATH` on Debian: no `~/.cargo/bin`, so every
/// `guestsock` a doc runs is `/usr/local/bin/guestsock`.
pub const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One step of laying out the fresh host, in order.
pub enum Layer<'a> {
    /// An empty tmpfs over the directory.
    Empty(&'a str),
    /// A writable copy of the directory: an overlay on the real one.
    Copy(&'a str),
    /// A shell line run as root in the namespace (after the layers before
    /// it).
    Line(String),
}

/// The namespace and its holder.
pub struct FreshHost {
    holder: Child,
    /// The holder's pid, for `nsenter`.
    pub pid: u32,
    /// Temporary files of the host (overlay layers), outside the
    /// namespace's changes.
    pub dir: TempDir,
}

impl FreshHost {
    /// `/usr/local/bin` always gets the binary under test; `layers` lay
    /// out the rest.
    pub fn new(layers: &[Layer]) -> FreshHost {
        let dir = TempDir::new();
        let mut script = String::from("set -e\n");
        let mut all: Vec<&Layer> = layers.iter().collect();
        let usr_local_bin = Layer::Copy("/usr/local/bin");
        all.push(&usr_local_bin);
        for (n, layer) in all.iter().enumerate() {
            match layer {
                Layer::Empty(path) => {
                    script.push_str(&format!("mount -t tmpfs -o mode=0755 tmpfs {path}\n"))
                }
                Layer::Copy(path) => {
                    let up = dir.join(&format!("layer{n}/up"));
                    let work = dir.join(&format!("layer{n}/work"));
                    std::fs::create_dir_all(&up).expect("overlay upper");
                    std::fs::create_dir_all(&work).expect("overlay work");
                    script.push_str(&format!(
                        "mount -t overlay overlay -o lowerdir={path},upperdir={},workdir={} {path}\n",
                        up.display(),
                        work.display()
                    ));
                }
                Layer::Line(line) => {
                    script.push_str(line);
                    script.push('\n');
                }
            }
        }
        // Ready is told on standard output: a layer may hide every path.
        script.push_str(&format!(
            "cp {} /usr/local/bin/guestsock\necho ready\nexec sleep 1800\n",
            bin()
        ));
        let log = dir.join("set-up.log");
        let mut holder = Command::new(tool("unshare"))
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .env_clear()
            .env("PATH", ROOT_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("set-up log"))
            .spawn()
            .expect("spawn unshare");
        // The set-up is a few mounts: a hang shows as no line by then.
        let stdout = holder.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(PATIENCE).unwrap_or_default();
        if line != "ready\n" {
            let _ = holder.kill();
            let status = holder.wait();
            panic!(
                "the fresh host's set-up failed: {status:?}: {}\n{script}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let pid = holder.id();
        FreshHost { holder, pid, dir }
    }

    /// `script` in a root shell on this host (sh, root's `PATH` and
    /// `HOME`), in `cwd`.
    pub fn sh(&self, script: &str, cwd: &Path) -> Command {
        let mut cmd = self.command(cwd);
        cmd.args(["sh", "-c", script]);
        cmd
    }

    /// A program run on this host (add it and its arguments), in `cwd`.
    pub fn command(&self, cwd: &Path) -> Command {
        let mut cmd = Command::new(tool("nsenter"));
        // Entering a mount namespace leaves the caller at its root: --wd
        // keeps the working directory.
        cmd.args(["-t", &self.pid.to_string(), "-m"])
            .arg(format!("--wd={}", cwd.display()))
            .arg("--")
            .env_clear()
            .env("PATH", ROOT_PATH)
            .env("HOME", "/root")
            .stdin(Stdio::null());
        cmd
    }

    /// The repository, the working directory of a doc's commands that
    /// name `dist/` files.
    pub fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }
}

impl Drop for FreshHost {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
