//! `guestsock doctor`: looks into a container, through `/proc/<pid>/root`, at
//! the path where the guest socket should be mounted, and says plainly what
//! is wrong with it.
//!
//! Owns the diagnosis only; finding the containers to look at (instances
//! registered by `pid`, or `--pid`) is the command line's business.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

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
