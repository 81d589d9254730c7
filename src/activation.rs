//! Sockets that outlive a guestsock process: systemd socket activation
//! (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, sd_listen_fds(3)),
//! readiness notification (`NOTIFY_SOCKET`, sd_notify(3)), and, without
//! systemd, the SIGHUP handoff of the listening sockets to a successor over
//! SCM_RIGHTS.
//!
//! This is the one module with `unsafe`: adopting a file descriptor that
//! guestsock did not open (the listening sockets systemd passes at 3, 4, ...,
//! or a predecessor passes) needs `OwnedFd::from_raw_fd`, which nix and std
//! only offer unsafely. Each descriptor is checked before it is adopted.
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

/// The environment variable naming the descriptor of the handoff channel
/// a predecessor (`SIGHUP`) passes to its successor.
const HANDOFF_ENV: &str = "GUESTSOCK_HANDOFF_FD";

/// The byte the predecessor sends once it has released the state
/// directory.
const RELEASED: u8 = b'R';

/// The byte the successor sends once it has read the state and is ready
/// to take over: until then its predecessor goes on serving.
pub const LOADED: u8 = b'L';

/// The successor's end of a handoff: the predecessor sends the listening
/// sockets over it, then says when the state directory is free.
#[derive(Debug)]
pub struct Handoff {
    channel: std::os::unix::net::UnixStream,
}

/// The handoff channel a predecessor passed to this process, if any.
pub fn take_handoff() -> Result<Option<Handoff>, String> {
    let Ok(value) = std::env::var(HANDOFF_ENV) else {
        return Ok(None);
    };
    // SAFETY: see `listen_fds`: at start, before any other thread exists.
    unsafe { std::env::remove_var(HANDOFF_ENV) };
    let fd: RawFd = value
        .parse()
        .map_err(|_| format!("{HANDOFF_ENV}={value:?} is not a descriptor"))?;
    // SAFETY: borrowed only to check what it is.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    match getsockopt(&borrowed, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        _ => return Err(format!("{HANDOFF_ENV}={fd} is not a stream socket")),
    }
    // SAFETY: checked above to be an open stream socket; the predecessor
    // created it for this process (without close-on-exec) and nothing else
    // here refers to it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let channel = std::os::unix::net::UnixStream::from(owned);
    let _ = channel.set_read_timeout(Some(crate::limits::HANDOFF_TIMEOUT));
    Ok(Some(Handoff { channel }))
}

impl Handoff {
    /// Receives the guest and admin listening sockets (SCM_RIGHTS).
    pub fn receive_sockets(&mut self) -> Result<Activated, String> {
        use std::io::IoSliceMut;
        use std::os::fd::AsRawFd;

        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        let mut payload = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut payload)];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let msg = recvmsg::<()>(
            self.channel.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| format!("cannot receive the sockets from the old process: {e}"))?;
        let mut fds = Vec::new();
        for cmsg in msg
            .cmsgs()
            .map_err(|e| format!("bad handoff message: {e}"))?
        {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                fds.extend(received);
            }
        }
        let [guest, admin] = fds[..] else {
            return Err(format!(
                "the old process passed {} sockets, not 2",
                fds.len()
            ));
        };
        let adopt = |fd: RawFd| -> Result<(OwnedFd, PathBuf), String> {
            let path = check_listening_unix(fd)?;
            // SAFETY: received just now with SCM_RIGHTS, so this process
            // owns it; checked above to be a listening unix socket.
            Ok((unsafe { OwnedFd::from_raw_fd(fd) }, path))
        };
        Ok(Activated {
            guest: Some(adopt(guest)?),
            admin: Some(adopt(admin)?),
        })
    }

    /// Tells the predecessor that this process has read the state and is
    /// ready to take over.
    pub fn say_loaded(&mut self) -> Result<(), String> {
        use std::io::Write;
        self.channel
            .write_all(&[LOADED])
            .map_err(|e| format!("cannot tell the old process this one is ready: {e}"))
    }

    /// Waits until the predecessor has released the state directory.
    pub fn wait_released(&mut self) -> Result<(), String> {
        use std::io::Read;
        let mut byte = [0u8; 1];
        match self.channel.read(&mut byte) {
            Ok(1) if byte[0] == RELEASED => Ok(()),
            Ok(_) => Err("the old process ended without releasing the state directory".into()),
            Err(e) => Err(format!("waiting for the old process: {e}")),
        }
    }
}

/// Starts a new guestsock with this process's arguments and hands it the
/// listening sockets; returns the channel on which to say, later, that the
/// state directory is released.
pub fn spawn_successor(
    guest: std::os::fd::BorrowedFd<'_>,
    admin: std::os::fd::BorrowedFd<'_>,
) -> Result<std::os::unix::net::UnixStream, String> {
    use std::io::IoSlice;
    use std::os::fd::{AsFd, AsRawFd};

    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    use nix::sys::socket::{
        AddressFamily, ControlMessage, MsgFlags, SockFlag, sendmsg, socketpair,
    };
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::empty(),
    )
    .map_err(|e| format!("cannot create the handoff channel: {e}"))?;
    // Only the successor's end crosses exec.
    fcntl(ours.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("cannot set close-on-exec: {e}"))?;
    let exe = successor_binary()?;
    let child = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(HANDOFF_ENV, theirs.as_raw_fd().to_string())
        .spawn()
        .map_err(|e| format!("cannot start the new guestsock: {e}"))?;
    drop(theirs);
    crate::log::info(format_args!(
        "started the new guestsock, pid {}",
        child.id()
    ));
    let fds = [guest.as_raw_fd(), admin.as_raw_fd()];
    sendmsg::<()>(
        ours.as_raw_fd(),
        &[IoSlice::new(b"guestsock-handoff")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("cannot pass the sockets to the new guestsock: {e}"))?;
    Ok(std::os::unix::net::UnixStream::from(ours))
}

/// The binary a SIGHUP starts: this process's own, or, once a package
/// upgrade has replaced that file (the kernel then names the running one
/// "PATH (deleted)"), the new binary at the same path: that is what a
/// handoff after an upgrade is for.
fn successor_binary() -> Result<PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find guestsock's binary: {e}"))?;
    let replaced = exe
        .to_str()
        .and_then(|path| path.strip_suffix(" (deleted)"))
        .map(PathBuf::from);
    Ok(replaced.unwrap_or(exe))
}

/// Tells the successor the state directory is free.
pub fn release(channel: &mut std::os::unix::net::UnixStream) {
    use std::io::Write;
    if let Err(e) = channel.write_all(&[RELEASED]) {
        crate::log::warn(format_args!("cannot tell the new guestsock to go on: {e}"));
    }
}
