//! The event loop: one thread, one mio `Poll`, every connection in a slab
//! keyed by its token.
//!
//! Owns accepting, the listening socket's set-up and tear-down, signals, and
//! the sweep that removes finished connections. What happens on a connection
//! is `conn`'s business; who the peer is, `identity`'s.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
};
use slab::Slab;

use crate::api::guest::GuestChange;
use crate::conn::{Conn, Next};
use crate::identity;
use crate::limits::{ACCEPT_RETRY_MS, EVENTS_PER_POLL};
use crate::log;
use crate::registry::Registry;

/// The guest socket's listener. Connection tokens are slab keys, counted up
/// from 0, so the fixed tokens sit at the far end of the range.
const GUEST_LISTENER: Token = Token(usize::MAX - 1);
/// The signalfd delivering SIGTERM and SIGINT.
const SIGNALS: Token = Token(usize::MAX - 2);

/// Everything `serve` needs, resolved from the command line.
#[derive(Debug)]
pub struct ServeConfig {
    /// Where the guest socket is created.
    pub socket: PathBuf,
    /// The instances to serve.
    pub registry: Registry,
}

/// The running server.
struct Server {
    poll: Poll,
    guest: UnixListener,
    /// The guest socket's path and inode, to remove it on exit only if it is
    /// still ours.
    socket_path: PathBuf,
    socket_ino: u64,
    signals: SignalFd,
    conns: Slab<Conn>,
    registry: Registry,
    /// Set while accepting is paused after running out of file descriptors.
    accept_retry_at: Option<Instant>,
    /// Guest-made changes gathered during one pass of the loop.
    changes: Vec<GuestChange>,
}

/// Runs the server until SIGTERM or SIGINT.
pub fn serve(config: ServeConfig) -> Result<(), String> {
    raise_fd_limit();
    // Blocked before any socket exists, so a signal can only arrive through
    // the signalfd, inside the loop.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("cannot create a signalfd: {e}"))?;

    let guest = bind_socket(&config.socket, 0o666)?;
    let socket_ino = fs::symlink_metadata(&config.socket)
        .map(|m| m.ino())
        .unwrap_or(0);
    let poll = Poll::new().map_err(|e| format!("cannot create epoll instance: {e}"))?;
    let mut server = Server {
        poll,
        guest,
        socket_path: config.socket,
        socket_ino,
        signals,
        conns: Slab::new(),
        registry: config.registry,
        accept_retry_at: None,
        changes: Vec::new(),
    };
    let registry = server.poll.registry();
    registry
        .register(&mut server.guest, GUEST_LISTENER, Interest::READABLE)
        .and_then(|()| {
            registry.register(
                &mut SourceFd(&server.signals.as_raw_fd()),
                SIGNALS,
                Interest::READABLE,
            )
        })
        .map_err(|e| format!("cannot register with epoll: {e}"))?;
    log::info(format_args!(
        "serving {} instance(s) on {}",
        server.registry.len(),
        server.socket_path.display()
    ));
    let result = server.run();
    server.remove_socket();
    result
}

impl Server {
    fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        let mut finished = Vec::new();
        loop {
            let timeout = self
                .accept_retry_at
                .map(|at| at.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("epoll failed: {e}"));
            }
            if self.accept_retry_at.is_some_and(|at| at <= Instant::now()) {
                self.accept_retry_at = None;
                self.accept();
            }
            for event in events.iter() {
                match event.token() {
                    GUEST_LISTENER => self.accept(),
                    SIGNALS => {
                        if let Some(signal) = self.take_signal() {
                            log::info(format_args!("{signal}: stopping"));
                            return Ok(());
                        }
                    }
                    Token(key) => {
                        let Some(conn) = self.conns.get_mut(key) else {
                            continue;
                        };
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            conn.on_readable();
                        }
                        if conn.drive(&mut self.registry, &mut self.changes) == Next::Close {
                            finished.push(key);
                        }
                    }
                }
            }
            // Removed after the batch, so a key freed and reused within one
            // batch never receives an event meant for its previous owner.
            for key in finished.drain(..) {
                if self.conns.contains(key) {
                    self.conns.remove(key);
                }
            }
            self.changes.clear();
        }
    }

    /// Accepts until the backlog is empty (edge-triggered: nothing would
    /// wake us for connections left behind).
    fn accept(&mut self) {
        if self.accept_retry_at.is_some() {
            return;
        }
        loop {
            let stream = match self.guest.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(nix::libc::EMFILE | nix::libc::ENFILE)
                    ) =>
                {
                    log::warn(format_args!(
                        "out of file descriptors with {} connections open; pausing accept for {ACCEPT_RETRY_MS} ms",
                        self.conns.len()
                    ));
                    self.accept_retry_at =
                        Some(Instant::now() + Duration::from_millis(ACCEPT_RETRY_MS));
                    return;
                }
                // ECONNABORTED and the like concern one connection only.
                Err(_) => continue,
            };
            let peer = match identity::peer_facts(&stream, self.registry.kinds_in_use()) {
                Ok(peer) => peer,
                Err(e) => {
                    log::warn(format_args!(
                        "dropping a connection whose peer cannot be read: {e}"
                    ));
                    continue;
                }
            };
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            let conn = entry.insert(Conn::new(stream, peer));
            if let Err(e) = self.poll.registry().register(
                conn.stream_mut(),
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn(format_args!("cannot register a connection with epoll: {e}"));
                self.conns.remove(key);
            }
        }
    }

    /// Reads one pending signal, if any.
    fn take_signal(&mut self) -> Option<Signal> {
        match self.signals.read_signal() {
            Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
            _ => None,
        }
    }

    /// Removes the guest socket file if it is still the one this process
    /// created (another server may have replaced it).
    fn remove_socket(&self) {
        if fs::symlink_metadata(&self.socket_path).is_ok_and(|m| m.ino() == self.socket_ino) {
            let _ = fs::remove_file(&self.socket_path);
        }
    }
}

/// Raises the open-file soft limit to the hard limit: every connection is a
/// file descriptor, and the default soft limit (often 1024) would cap a host
/// of thousands of containers.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err()
    {
        log::warn(format_args!(
            "cannot raise the open-file limit from {soft} to {hard}"
        ));
    }
}

/// Creates a listening unix socket at `path` with `mode`, after checking
/// that nothing that matters is in the way: a directory there is the
/// bind-mount-before-socket mistake, a regular file or a link is someone
/// else's, a socket a live server answers on is another guestsock. A socket
/// nobody listens on is stale and replaced.
pub fn bind_socket(path: &Path, mode: u32) -> Result<UnixListener, String> {
    let shown = path.display();
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(format!(
                "{shown} is a directory, not a socket: a container runtime probably bind-mounted the socket path before guestsock created it. Remove it (rmdir {shown}) and mount the socket's directory, never the socket file"
            ));
        }
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(format!(
                        "another server is already answering on {shown}; stop it first or choose another path"
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    fs::remove_file(path)
                        .map_err(|e| format!("cannot remove the stale socket {shown}: {e}"))?;
                }
                Err(e) => return Err(format!("cannot tell whether {shown} is in use: {e}")),
            }
        }
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(format!(
                "{shown} is a symbolic link; refusing to follow it. Remove it or choose another path"
            ));
        }
        Ok(_) => {
            return Err(format!(
                "{shown} exists and is not a socket; remove it or choose another path"
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
        }
        Err(e) => return Err(format!("cannot inspect {shown}: {e}")),
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
