//! Socket files: creating a listening unix socket at a path after checking
//! what is in the way (a stale socket is replaced, anything else refused),
//! and the same checks alone, to refuse a listener before it is promised.
//!
//! Owns those checks and their messages. It does not know which sockets a
//! server has (`server::listener`) nor who may use them.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;

use mio::net::UnixListener;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
};

/// What is at a socket's path.
enum InTheWay {
    /// Nothing: the path is free.
    Nothing,
    /// A socket nobody listens on, left by a process that died.
    Stale,
}

/// Looks at what is at `path`: nothing or a stale socket is no obstacle;
/// a directory (the bind-mount-before-socket mistake), a regular file, a
/// link (someone else's) or a socket a live server answers on (another
/// server) is, and the error says which and what to do.
fn in_the_way(path: &Path) -> Result<InTheWay, String> {
    let shown = path.display();
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(format!(
            "{shown} is a directory, not a socket: a container runtime probably bind-mounted the socket path before guestsock created it. Remove it (rmdir {shown}) and mount the socket's directory, never the socket file"
        )),
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => Err(format!(
                    "another server is already answering on {shown}; stop it first or choose another path"
                )),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(InTheWay::Stale),
                Err(e) => Err(format!("cannot tell whether {shown} is in use: {e}")),
            }
        }
        Ok(meta) if meta.file_type().is_symlink() => Err(format!(
            "{shown} is a symbolic link; refusing to follow it. Remove it or choose another path"
        )),
        Ok(_) => Err(format!(
            "{shown} exists and is not a socket; remove it or choose another path"
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(InTheWay::Nothing),
        Err(e) => Err(format!("cannot inspect {shown}: {e}")),
    }
}

/// Whether a socket could be created at `path` now, changing nothing: what
/// [`bind_socket`] would refuse, refused here first. With
/// `parent_must_exist`, a missing directory is refused too (rather than
/// created).
pub fn probe_socket_path(path: &Path, parent_must_exist: bool) -> Result<(), String> {
    if parent_must_exist
        && let Some(dir) = path.parent()
        && !dir.is_dir()
    {
        return Err(format!(
            "{} does not exist or is not a directory",
            dir.display()
        ));
    }
    in_the_way(path).map(|_| ())
}

/// Creates a listening unix socket at `path` with `mode`, after checking
/// that nothing that matters is in the way: a directory there is the
/// bind-mount-before-socket mistake, a regular file or a link is someone
/// else's, a socket a live server answers on is another guestsock. A socket
/// nobody listens on is stale and replaced.
pub fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, String> {
    let shown = path.display();
    match in_the_way(path)? {
        InTheWay::Stale => fs::remove_file(path)
            .map_err(|e| format!("cannot remove the stale socket {shown}: {e}"))?,
        InTheWay::Nothing => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
        }
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("cannot create a socket: {e}"))?;
    let addr = UnixAddr::new(path).map_err(|e| format!("bad socket path {shown}: {e}"))?;
    bind(fd.as_raw_fd(), &addr).map_err(|e| format!("cannot bind {shown}: {e}"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the mode of {shown}: {e}"))?;
    listen(&fd, Backlog::MAXCONN).map_err(|e| format!("cannot listen on {shown}: {e}"))?;
    Ok(UnixListener::from_std(
        std::os::unix::net::UnixListener::from(fd),
    ))
}
