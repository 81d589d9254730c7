//! Sockets that outlive a guestsock process: systemd socket activation
//! (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, sd_listen_fds(3)),
//! readiness notification (`NOTIFY_SOCKET`, sd_notify(3)), and, without
//! systemd, the SIGHUP handoff of the listening sockets to a successor over
//! SCM_RIGHTS. It passes sockets in the order of the caller's listeners and
//! knows no roles: which listener a socket is for is the plan's
//! (`server::listener`), by its systemd name or its place.
//!
//! The handoff's protocol, on one stream socket: the predecessor passes the
//! sockets (the planned listeners' in one message whose text, `guestsock-
//! handoff N`, says how many sockets of instances' own listeners follow, in
//! messages of at most [`HANDOFF_BATCH`]); the successor says `L` once it
//! has read the state; the
//! predecessor says `R` once it has released the state directory (or `A`
//! if it was told to stop first); the successor says `S` once it serves.
//! Each watches the other's death through a pidfd: a predecessor that dies
//! has released the directory (its lock dies with it), and a successor that
//! dies before `S` leaves the predecessor serving.
//!
//! One of the two modules with `unsafe`: adopting a file descriptor that
//! guestsock did not open (the listening sockets systemd passes at 3, 4, ...,
//! or a predecessor passes) needs `OwnedFd::from_raw_fd`, which nix and std
//! only offer unsafely, and so does `pidfd_open`, which nix does not wrap.
//! Each descriptor is checked before it is adopted.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;

use nix::sys::socket::{SockType, UnixAddr, getsockname, getsockopt, sockopt};

/// The text of every handoff message that passes sockets.
const HANDOFF_TEXT: &str = "guestsock-handoff";

/// Sockets passed in one handoff message at most: the kernel takes up to
/// 253 descriptors per SCM_RIGHTS message (`SCM_MAX_FD`).
pub const HANDOFF_BATCH: usize = 250;

/// The first descriptor systemd passes (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: RawFd = 3;

/// A listening socket passed to this process for one of its listeners (by
/// systemd or by a predecessor), and the path it is bound to; `None` where
/// none was passed.
pub type Passed = Option<(OwnedFd, PathBuf)>;

/// Takes the sockets systemd passed, if it passed any to this process: one
/// place per listener of `names`, in that order.
///
/// Names come from `LISTEN_FDNAMES` (`FileDescriptorName=guest` /
/// `admin` in the .socket unit); a socket without one of `names` takes the
/// listener at its own position (the first socket the first listener's).
/// The variables are removed so that children do not inherit them.
pub fn listen_fds(names: &[&str]) -> Result<Vec<Passed>, String> {
    let mut passed: Vec<Passed> = names.iter().map(|_| None).collect();
    let Ok(pid) = std::env::var("LISTEN_PID") else {
        return Ok(passed);
    };
    let count = std::env::var("LISTEN_FDS").unwrap_or_default();
    let fd_names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    // SAFETY: not unsafe in itself; edition 2024 marks env mutation unsafe
    // because another thread could read the environment concurrently. This
    // runs at start, before the writer thread or any other exists.
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if pid.parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(passed);
    }
    let count: RawFd = count
        .parse()
        .map_err(|_| format!("LISTEN_FDS={count:?} is not a number"))?;
    let fd_names: Vec<&str> = fd_names.split(':').collect();
    for i in 0..count {
        let fd = LISTEN_FDS_START + i;
        let path = check_listening_unix(fd)?;
        // SAFETY: `fd` was checked just above to be an open, listening unix
        // stream socket; systemd passed it to this process for it to own,
        // and nothing else in guestsock refers to this number.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let named = fd_names
            .get(i as usize)
            .and_then(|name| names.iter().position(|n| n == name));
        let slot = match named {
            Some(at) => at,
            None if (i as usize) < names.len() => i as usize,
            None => {
                return Err(format!(
                    "LISTEN_FDS passes socket {fd}, which is neither {}",
                    names.join(" nor ")
                ));
            }
        };
        if passed[slot].is_some() {
            return Err(format!("systemd passed two {} sockets", names[slot]));
        }
        passed[slot] = Some((owned, path));
    }
    Ok(passed)
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

/// The environment variable naming the predecessor's pid: by the time the
/// successor looks, the predecessor may have died and the successor been
/// given another parent.
const HANDOFF_PID_ENV: &str = "GUESTSOCK_HANDOFF_PID";

/// The byte the predecessor sends once it has released the state
/// directory.
const RELEASED: u8 = b'R';

/// The byte the predecessor sends when it was told to stop (SIGTERM) before
/// the successor was ready: the successor gives up rather than take over.
const ABORTED: u8 = b'A';

/// The byte the successor sends once it has read the state and is ready
/// to take over: until then its predecessor goes on serving.
pub const LOADED: u8 = b'L';

/// The byte the successor sends once it serves: until then its predecessor
/// takes the state directory back if the successor dies.
pub const SERVING: u8 = b'S';

/// How the predecessor let go of the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// It said so, after its last write.
    Said,
    /// It died (its pidfd says so): its lock on the state directory went
    /// with it, and what it acknowledged is on disk.
    Died,
}

/// The successor's end of a handoff: the predecessor sends the listening
/// sockets over it, then says when the state directory is free. A pidfd of
/// the predecessor (this process's parent) tells its death from a handoff
/// it ended on purpose.
#[derive(Debug)]
pub struct Handoff {
    channel: std::os::unix::net::UnixStream,
    /// Whether the predecessor lives, as far as this process can tell.
    predecessor: Predecessor,
    /// The predecessor's pid, for messages.
    pub predecessor_pid: i32,
}

/// What a successor knows of its predecessor's life.
#[derive(Debug)]
enum Predecessor {
    /// Its pidfd, readable once it has exited.
    Watched(OwnedFd),
    /// It had died already when this process looked.
    Dead,
    /// No pidfd (an old kernel, or a predecessor of an earlier release that
    /// passed no pid): a closed channel is a failure, as before pidfds.
    Unknown,
}

/// The handoff channel a predecessor passed to this process, if any.
pub fn take_handoff() -> Result<Option<Handoff>, String> {
    let Ok(value) = std::env::var(HANDOFF_ENV) else {
        return Ok(None);
    };
    let predecessor_pid = std::env::var(HANDOFF_PID_ENV)
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok());
    // SAFETY: see `listen_fds`: at start, before any other thread exists.
    unsafe {
        std::env::remove_var(HANDOFF_ENV);
        std::env::remove_var(HANDOFF_PID_ENV);
    }
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
    // The predecessor started this process: it is the parent, until it
    // dies (an orphan is given another parent before its parent's pid can
    // be reused). So a pidfd opened while the parent is still that pid
    // names the predecessor, and another parent means it is dead.
    let predecessor = match predecessor_pid {
        None => Predecessor::Unknown,
        Some(pid) if nix::unistd::getppid().as_raw() != pid => Predecessor::Dead,
        Some(pid) => match pidfd_open(pid) {
            Ok(_) if nix::unistd::getppid().as_raw() != pid => Predecessor::Dead,
            Ok(pidfd) => Predecessor::Watched(pidfd),
            Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => Predecessor::Dead,
            Err(e) => {
                crate::log::warn(format_args!(
                    "cannot watch the old guestsock (pid {pid}) through a pidfd ({e}): if it dies during the handoff, this one gives up"
                ));
                Predecessor::Unknown
            }
        },
    };
    Ok(Some(Handoff {
        channel,
        predecessor,
        predecessor_pid: predecessor_pid.unwrap_or(0),
    }))
}

impl Handoff {
    /// Receives the predecessor's `N` planned listening sockets
    /// (SCM_RIGHTS), in the order it passed them (its listeners' order,
    /// which is this process's too), then the sockets of instances' own
    /// listeners it said would follow, each with the path it is bound to.
    #[allow(clippy::type_complexity)]
    pub fn receive_sockets<const N: usize>(
        &mut self,
    ) -> Result<(Vec<(OwnedFd, PathBuf)>, Vec<(OwnedFd, PathBuf)>), String> {
        let (text, planned) = self.receive_batch(N)?;
        if planned.len() != N {
            return Err(format!(
                "the old process passed {} sockets, not {N}",
                planned.len()
            ));
        }
        // An older guestsock says no number: it has no others to pass.
        let more: usize = match text.strip_prefix(HANDOFF_TEXT).map(str::trim) {
            Some("") => 0,
            Some(n) => n
                .parse()
                .map_err(|_| format!("bad handoff message {text:?}"))?,
            None => return Err(format!("bad handoff message {text:?}")),
        };
        // Not reserved up front: the count is a message, not a promise.
        let mut own = Vec::new();
        while own.len() < more {
            let (_, batch) = self.receive_batch(HANDOFF_BATCH)?;
            if batch.is_empty() || own.len() + batch.len() > more {
                return Err(format!(
                    "the old process passed {} of its instances' sockets, not {more}",
                    own.len() + batch.len()
                ));
            }
            own.extend(batch);
        }
        Ok((planned, own))
    }

    /// Receives one handoff message of at most `most` sockets: its text and
    /// the sockets, each checked to be a listening unix socket and adopted
    /// with the path it is bound to.
    fn receive_batch(&mut self, most: usize) -> Result<(String, Vec<(OwnedFd, PathBuf)>), String> {
        use std::io::IoSliceMut;
        use std::os::fd::AsRawFd;

        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        let mut payload = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut payload)];
        let mut space = vec![0u8; nix::sys::socket::cmsg_space::<RawFd>() * most.max(1)];
        let msg = recvmsg::<()>(
            self.channel.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| format!("cannot receive the sockets from the old process: {e}"))?;
        let read = msg.bytes;
        let mut fds = Vec::new();
        for cmsg in msg
            .cmsgs()
            .map_err(|e| format!("bad handoff message: {e}"))?
        {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                fds.extend(received);
            }
        }
        // SAFETY: received just now with SCM_RIGHTS, so this process owns
        // them; each is checked before it is used as a listener.
        let owned: Vec<OwnedFd> = fds
            .into_iter()
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        let text = String::from_utf8_lossy(&payload[..read]).into_owned();
        let mut adopted = Vec::with_capacity(owned.len());
        for fd in owned {
            let path = check_listening_unix(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
            adopted.push((fd, path));
        }
        Ok((text, adopted))
    }

    /// Tells the predecessor that this process has read the state and is
    /// ready to take over. A predecessor that died meanwhile is no error:
    /// [`Handoff::wait_released`] finds out.
    pub fn say_loaded(&mut self) {
        use std::io::Write;
        if let Err(e) = self.channel.write_all(&[LOADED]) {
            crate::log::info(format_args!(
                "cannot tell the old process this one is ready ({e}); waiting for it to let go"
            ));
        }
    }

    /// Waits until the predecessor has released the state directory, by
    /// saying so or by dying. Fails if it was stopped (SIGTERM) before
    /// this process was ready, or ended the handoff and lives on, or says
    /// nothing for [`crate::limits::HANDOFF_TIMEOUT`].
    pub fn wait_released(&mut self) -> Result<Released, String> {
        use std::io::Read;
        let mut byte = [0u8; 1];
        // The byte, if any was sent, is read before the end of the
        // channel: it was written before the predecessor closed it.
        match self.channel.read(&mut byte) {
            Ok(1) if byte[0] == RELEASED => Ok(Released::Said),
            Ok(1) if byte[0] == ABORTED => Err(
                "the old process was told to stop during the handoff; this one stops too".into(),
            ),
            Ok(1) => Err("the old process said something unexpected".into()),
            Ok(_) => self.died("it closed the handoff channel"),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ) =>
            {
                self.died(&e.to_string())
            }
            Err(e) => Err(format!("waiting for the old process: {e}")),
        }
    }

    /// Whether the predecessor has died, waiting a little for its exit to
    /// complete: its channel closes before it is a zombie.
    pub fn predecessor_died(&self) -> bool {
        let pidfd = match &self.predecessor {
            Predecessor::Watched(pidfd) => pidfd,
            Predecessor::Dead => return true,
            Predecessor::Unknown => return false,
        };
        use std::os::fd::AsFd;

        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let wait =
            PollTimeout::try_from(crate::limits::HANDOFF_EXIT_WAIT).unwrap_or(PollTimeout::MAX);
        matches!(poll(&mut fds, wait), Ok(n) if n > 0)
    }

    fn died(&self, how: &str) -> Result<Released, String> {
        if self.predecessor_died() {
            Ok(Released::Died)
        } else {
            Err(format!(
                "the old process ended the handoff without releasing the state directory ({how})"
            ))
        }
    }

    /// Tells the predecessor that this process serves: it no longer takes
    /// the state directory back. It may have stopped listening already.
    pub fn say_serving(mut self) {
        use std::io::Write;
        let _ = self.channel.write_all(&[SERVING]);
    }
}

/// A pidfd for process `pid` (pidfd_open(2), Linux 5.3): it names that
/// process and no other, and polls readable once the process has exited.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; no memory is passed.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this new descriptor, owned by no one
    // else in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts a new guestsock with this process's arguments and hands it the
/// `listening` sockets, in their order; returns the channel on which to
/// say, later, that the state directory is released, the new process's
/// pid, and its pidfd (`None` if the kernel gives none), which says when it
/// dies.
pub fn spawn_successor(
    listening: &[std::os::fd::BorrowedFd<'_>],
    own: &[std::os::fd::BorrowedFd<'_>],
) -> Result<(std::os::unix::net::UnixStream, u32, Option<OwnedFd>), String> {
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
        .env(HANDOFF_PID_ENV, std::process::id().to_string())
        .spawn()
        .map_err(|e| format!("cannot start the new guestsock: {e}"))?;
    drop(theirs);
    let pid = child.id();
    crate::log::info(format_args!("started the new guestsock, pid {pid}"));
    // The child is not waited for until this process exits, so its pid
    // cannot be reused before the pidfd is opened.
    let pidfd = i32::try_from(pid).ok().and_then(|p| pidfd_open(p).ok());
    let send = |text: &[u8], fds: &[RawFd]| {
        sendmsg::<()>(
            ours.as_raw_fd(),
            &[IoSlice::new(text)],
            &[ControlMessage::ScmRights(fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| format!("cannot pass the sockets to the new guestsock: {e}"))
    };
    let fds: Vec<RawFd> = listening.iter().map(|fd| fd.as_raw_fd()).collect();
    send(format!("{HANDOFF_TEXT} {}", own.len()).as_bytes(), &fds)?;
    let own: Vec<RawFd> = own.iter().map(|fd| fd.as_raw_fd()).collect();
    for batch in own.chunks(HANDOFF_BATCH) {
        send(HANDOFF_TEXT.as_bytes(), batch)?;
    }
    Ok((std::os::unix::net::UnixStream::from(ours), pid, pidfd))
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

/// Tells a successor that is not ready yet to give up: this process was
/// told to stop. Without it the successor would take this one's exit for a
/// death and take over.
pub fn abort(channel: &mut std::os::unix::net::UnixStream) {
    use std::io::Write;
    let _ = channel.write_all(&[ABORTED]);
}
