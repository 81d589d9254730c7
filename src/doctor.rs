//! `guestsock doctor`: looks into a container, through `/proc/<pid>/root`, at
//! the path where the guest socket should be mounted, and says plainly what
//! is wrong with it.
//!
//! Owns the diagnosis, and finding a process to look through for an
//! instance's rule ([`process_of`]); asking the server for the instances is
//! the command line's business.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::limits::MAX_DOCTOR_CGROUP_DIRS;

/// What is at the socket path inside one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The socket guestsock serves, reachable.
    Fine,
    /// Nothing there (not mounted).
    Missing,
    /// A directory: the runtime bind-mounted the socket path before the
    /// socket existed.
    Directory,
    /// A socket, but not the one guestsock serves now (a file mount from
    /// before a restart): its inode and the server's.
    Stale {
        /// The inode seen inside the container.
        inside: u64,
        /// The inode of the server's socket.
        server: u64,
    },
    /// The socket or its directory does not let other users in.
    Permissions(String),
    /// Something else is there.
    NotASocket,
    /// The container cannot be looked into.
    Unreadable(String),
}

impl Finding {
    /// Whether nothing needs fixing.
    pub fn is_fine(&self) -> bool {
        *self == Finding::Fine
    }

    /// A one-line explanation with the fix.
    pub fn explain(&self, path: &str) -> String {
        match self {
            Finding::Fine => format!("{path} is guestsock's socket: fine"),
            Finding::Missing => format!(
                "nothing at {path}: mount the socket's directory there (see docs/mounting.md)"
            ),
            Finding::Directory => format!(
                "{path} is a directory: the socket path was bind-mounted before the socket existed; mount the socket's directory, not the socket file"
            ),
            Finding::Stale { inside, server } => format!(
                "{path} is a stale socket (inode {inside}, the server's is {server}): the socket file was mounted and guestsock has restarted since; mount the directory instead and restart the container"
            ),
            Finding::Permissions(what) => format!("{path}: wrong permissions: {what}"),
            Finding::NotASocket => format!("{path} exists but is not a socket"),
            Finding::Unreadable(why) => format!("cannot look inside: {why}"),
        }
    }
}

/// Diagnoses `path` (absolute, as the container sees it) inside the
/// container of process `pid`, against the server's socket `server_socket`
/// on the host.
pub fn diagnose(pid: i32, path: &str, server_socket: &Path) -> Finding {
    let server = match fs::metadata(server_socket) {
        Ok(meta) => (meta.dev(), meta.ino()),
        Err(e) => {
            return Finding::Unreadable(format!(
                "the server's socket {}: {e}",
                server_socket.display()
            ));
        }
    };
    let root = format!("/proc/{pid}/root");
    if let Err(e) = fs::metadata(&root) {
        return Finding::Unreadable(format!("{root}: {e}"));
    }
    let inside = format!("{root}/{}", path.trim_start_matches('/'));
    let meta = match fs::symlink_metadata(&inside) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Finding::Missing,
        Err(e) => return Finding::Unreadable(format!("{inside}: {e}")),
    };
    if meta.is_dir() {
        return Finding::Directory;
    }
    if !meta.file_type().is_socket() {
        return Finding::NotASocket;
    }
    if (meta.dev(), meta.ino()) != server {
        return Finding::Stale {
            inside: meta.ino(),
            server: server.1,
        };
    }
    // connect() needs write permission on the socket and search permission
    // on every directory above it, for the container's users too.
    if meta.mode() & 0o002 == 0 {
        return Finding::Permissions(format!(
            "the socket's mode is {:04o}; other users cannot connect (guestsock makes it 0666)",
            meta.mode() & 0o7777
        ));
    }
    if let Some(dir) = Path::new(&inside).parent()
        && let Ok(dir_meta) = fs::metadata(dir)
        && dir_meta.mode() & 0o001 == 0
    {
        return Finding::Permissions(format!(
            "its directory's mode is {:04o}; other users cannot reach the socket (use 0755)",
            dir_meta.mode() & 0o7777
        ));
    }
    match UnixStream::connect(&inside) {
        Ok(_) => Finding::Fine,
        Err(e) => Finding::Unreadable(format!("connecting to {inside}: {e}")),
    }
}

/// A process to look through for an instance whose `match` is `rule` (the
/// instance object's JSON), or why there is none, saying what to do.
///
/// A `pid` rule names its process; a `cgroup` rule any process in the
/// group or below it (the container's init is usually alone at the top);
/// a `uid_range` rule names no process of its own.
pub fn process_of(rule: &serde_json::Value) -> Result<i32, String> {
    if let Some(pid) = rule["pid"].as_i64() {
        return i32::try_from(pid).map_err(|_| format!("pid rule {pid} is not a process id"));
    }
    if let Some(path) = rule["cgroup"].as_str() {
        let mount = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|text| crate::identity::cgroup2_root_mount(&text))
            .ok_or(
                "no cgroup v2 hierarchy is mounted here with its root (see /proc/self/mountinfo)",
            )?;
        let dir = mount.join(path.trim_start_matches('/'));
        return first_process(&dir).ok_or_else(|| {
            format!(
                "no process is in cgroup {path} ({}): is the container running? Give --pid PID of one of its processes",
                dir.display()
            )
        });
    }
    Err(
        "its rule is a uid range, which names no process: give --pid PID of one of its processes"
            .into(),
    )
}

/// The first process in the cgroup at `dir` or below, looking at no more
/// than [`MAX_DOCTOR_CGROUP_DIRS`] groups, breadth first.
fn first_process(dir: &Path) -> Option<i32> {
    let mut queue = std::collections::VecDeque::from([dir.to_path_buf()]);
    let mut seen = 0;
    while let Some(dir) = queue.pop_front() {
        seen += 1;
        if seen > MAX_DOCTOR_CGROUP_DIRS {
            return None;
        }
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs"))
            && let Some(pid) = procs.lines().find_map(|l| l.trim().parse().ok())
        {
            return Some(pid);
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        let mut children: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        children.sort();
        queue.extend(children);
    }
    None
}
