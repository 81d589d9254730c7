//! systemd integration, by hand: socket activation (`LISTEN_FDS`,
//! `LISTEN_PID`, `LISTEN_FDNAMES`, sd_listen_fds(3)) and readiness
//! notification (`NOTIFY_SOCKET`, sd_notify(3)).
//!
//! This is the one module with `unsafe`: adopting a file descriptor that
//! guestsock did not open (the listening sockets systemd passes at 3, 4, ...)
//! needs `OwnedFd::from_raw_fd`, which nix and std only offer unsafely. Each
//! descriptor is checked before it is adopted.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;

use nix::sys::socket::{SockType, UnixAddr, getsockname, getsockopt, sockopt};

/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: RawFd = 3;

/// Listening sockets passed by systemd, by role.
#[derive(Debug, Default)]
pub struct Activated {
    /// The guest socket, and the path it is bound to.
    pub guest: Option<(OwnedFd, PathBuf)>,
    /// The admin socket, and the path it is bound to.
    pub admin: Option<(OwnedFd, PathBuf)>,
}

/// Takes the sockets systemd passed, if it passed any to this process.
///
/// Names come from `LISTEN_FDNAMES` (`FileDescriptorName=guest` /
/// `admin` in the .socket unit); without names the first socket is the
/// guest's and the second the admin's. The variables are removed so that
/// children do not inherit them.
pub fn listen_fds() -> Result<Activated, String> {
    let mut activated = Activated::default();
    let Ok(pid) = std::env::var("LISTEN_PID") else {
        return Ok(activated);
    };
    let count = std::env::var("LISTEN_FDS").unwrap_or_default();
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    // SAFETY: not unsafe in itself; edition 2024 marks env mutation unsafe
    // because another thread could read the environment concurrently. This
    // runs at start, before the writer thread or any other exists.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(activated);
    }
    let count: RawFd = count
        .parse()
        .map_err(|_| format!("LISTEN_FDS={count:?} is not a number"))?;
    let names: Vec<&str> = names.split(':').collect();
    for i in 0..count {
        let fd = LISTEN_FDS_START + i;
        let path = check_listening_unix(fd)?;
        // SAFETY: `fd` was checked just above to be an open, listening unix
        // stream socket; systemd passed it to this process for it to own,
        // and nothing else in guestsock refers to this number.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let role = match names.get(i as usize).copied() {
            Some("guest") => "guest",
            Some("admin") => "admin",
            _ if i == 0 => "guest",
            _ if i == 1 => "admin",
            _ => {
                return Err(format!(
                    "LISTEN_FDS passes socket {fd}, which is neither guest nor admin"
                ));
            }
        };
        let slot = if role == "guest" {
            &mut activated.guest
        } else {
            &mut activated.admin
        };
        if slot.is_some() {
            return Err(format!("systemd passed two {role} sockets"));
        }
        *slot = Some((owned, path));
    }
    Ok(activated)
}

/// Checks that `fd` is a listening unix stream socket; returns its path.
fn check_listening_unix(fd: RawFd) -> Result<PathBuf, String> {
    // SAFETY: borrowed only for these checks; a closed descriptor makes
    // them fail, which is reported.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let kind = getsockopt(&borrowed, sockopt::SockType)
        .map_err(|e| format!("LISTEN_FDS descriptor {fd} is not a socket: {e}"))?;
    let listening = getsockopt(&borrowed, sockopt::AcceptConn).unwrap_or(false);
    let addr: UnixAddr = getsockname(fd)
        .map_err(|e| format!("LISTEN_FDS descriptor {fd} is not a unix socket: {e}"))?;
    match (kind, listening, addr.path()) {
        (SockType::Stream, true, Some(path)) => Ok(path.to_path_buf()),
        _ => Err(format!(
            "LISTEN_FDS descriptor {fd} is not a listening unix stream socket with a path (ListenStream=/path in the .socket unit)"
        )),
    }
}

/// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=...`) to systemd if it
/// asked for notifications (`NOTIFY_SOCKET`); does nothing otherwise.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = target.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &target)
    };
    if let Err(e) = sent {
        crate::log::warn(format_args!("cannot notify systemd: {e}"));
    }
}
