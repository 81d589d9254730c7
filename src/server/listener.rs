//! The server's listeners: each a listening socket that knows its file,
//! the API its connections speak (`Side`) and how their callers are
//! identified (`Identification`), so that the loop, accepting and the
//! handoff treat every listener alike, and a listener that belongs to one
//! instance (issue 25) is one more [`Plan`].
//!
//! Owns binding a listener's socket (after checking what is in the way),
//! adopting one passed by systemd or by a predecessor, removing its file at
//! exit only if it is still this process's, whether its backlog may hold
//! connections, and the listeners' epoll tokens. It does not accept or
//! admit connections (`admission`), nor speak the systemd or handoff
//! protocols (`activation`); the startup plans which listeners there are.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::*;
use crate::activation::{Handoff, Passed};

/// What a listener is for: its name in a systemd socket unit
/// (`FileDescriptorName=`), where it is bound and with which mode, the API
/// its connections speak and how their callers are identified.
#[derive(Debug)]
pub(super) struct Plan {
    /// Its `LISTEN_FDNAMES` name.
    pub(super) name: &'static str,
    /// Where it is bound, unless a socket passed for it is bound elsewhere.
    pub(super) path: PathBuf,
    /// The mode of a socket file bound here.
    pub(super) mode: u32,
    /// The API its connections speak; on the admin socket each
    /// connection's authorization is decided at admission.
    pub(super) side: Side,
    /// How its connections' callers are identified.
    pub(super) identification: Identification,
}

/// A listening socket and the file it is bound to, removed on exit only if
/// it is still the one this process created.
pub(super) struct Listener {
    socket: UnixListener,
    path: PathBuf,
    /// The inode of the file this process bound (0: not this process's).
    ino: u64,
    /// Passed by systemd (socket activation), or handed to a successor: it
    /// outlives this process and is never removed by it.
    activated: bool,
    /// The API its connections speak.
    side: Side,
    /// How its connections' callers are identified.
    identification: Identification,
    /// Whether its backlog may hold connections: set by a readiness event
    /// (edge-triggered: it comes once), cleared when `accept` says
    /// `WouldBlock`.
    waiting: bool,
}

impl Listener {
    /// Binds `plan`'s path.
    fn bind(plan: Plan) -> Result<Listener, String> {
        let socket = bind_socket(&plan.path, plan.mode)?;
        let ino = fs::symlink_metadata(&plan.path)
            .map(|m| m.ino())
            .unwrap_or(0);
        Ok(Listener {
            socket,
            path: plan.path,
            ino,
            activated: false,
            side: plan.side,
            identification: plan.identification,
            waiting: false,
        })
    }

    /// A listener passed already bound and listening, at `path`.
    fn adopt(fd: OwnedFd, path: PathBuf, plan: Plan) -> Result<Listener, String> {
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        std_listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot make {} non-blocking: {e}", path.display()))?;
        Ok(Listener {
            socket: UnixListener::from_std(std_listener),
            ino: 0,
            path,
            activated: true,
            side: plan.side,
            identification: plan.identification,
            waiting: false,
        })
    }

    /// Binds `plan`'s path, unless a socket was passed for it.
    fn bind_or_adopt(passed: Passed, plan: Plan) -> Result<Listener, String> {
        match passed {
            Some((fd, passed_path)) => {
                if passed_path != plan.path {
                    log::info(format_args!(
                        "using the socket systemd passed, {}, rather than {}",
                        passed_path.display(),
                        plan.path.display()
                    ));
                }
                Listener::adopt(fd, passed_path, plan)
            }
            None => Listener::bind(plan),
        }
    }

    /// Takes ownership of an adopted socket's file (a handoff, not systemd).
    fn own(&mut self) {
        self.activated = false;
        self.ino = fs::symlink_metadata(&self.path)
            .map(|m| m.ino())
            .unwrap_or(0);
    }

    /// Removes the socket's file if this process still owns it.
    fn remove(&self) {
        if self.activated {
            return;
        }
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }

    /// The path its socket is bound to.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The API its connections speak.
    pub(super) fn side(&self) -> Side {
        self.side
    }

    /// How its connections' callers are identified.
    pub(super) fn identification(&self) -> Identification {
        self.identification
    }

    /// Accepts one connection from its backlog.
    pub(super) fn accept(&self) -> io::Result<mio::net::UnixStream> {
        self.socket.accept().map(|(stream, _)| stream)
    }
}

/// The server's listeners, in the order they were planned (which is the
/// order a handoff passes them in), each with the epoll token
/// `Token(FIRST_LISTENER - index)`.
pub(super) struct Listeners {
    all: Vec<Listener>,
    /// Indices into `all`, the admin socket's first: accepting serves them
    /// in this order, so that the operator always gets in.
    accept_order: Vec<usize>,
}

/// Receives from a predecessor one socket for each of `plans` (which
/// says how many: the predecessor's listeners, in the same order).
pub(super) fn receive<const N: usize>(
    handoff: &mut Handoff,
    _plans: &[Plan; N],
) -> Result<Vec<Passed>, String> {
    let received = handoff.receive_sockets::<N>()?;
    Ok(received.into_iter().map(Some).collect())
}

/// Takes the sockets systemd passed for `plans`, by their names.
pub(super) fn from_systemd(plans: &[Plan]) -> Result<Vec<Passed>, String> {
    let names: Vec<&str> = plans.iter().map(|plan| plan.name).collect();
    activation::listen_fds(&names)
}

impl Listeners {
    /// Binds or adopts each of `plans`, in order, `passed` holding the
    /// socket passed for each, if any; `handed_over`: they were taken over
    /// from a predecessor, not from systemd, so this process owns their
    /// files now and removes them when it stops for good.
    pub(super) fn open(
        plans: impl IntoIterator<Item = Plan>,
        passed: Vec<Passed>,
        handed_over: bool,
    ) -> Result<Listeners, String> {
        let mut passed = passed.into_iter();
        let mut all = Vec::new();
        for plan in plans {
            all.push(Listener::bind_or_adopt(passed.next().flatten(), plan)?);
        }
        if handed_over {
            all.iter_mut().for_each(Listener::own);
        }
        let mut accept_order: Vec<usize> = (0..all.len()).collect();
        accept_order.sort_by_key(|&i| all[i].side == Side::Guest);
        Ok(Listeners { all, accept_order })
    }

    /// Listener `index`.
    pub(super) fn get(&self, index: usize) -> &Listener {
        &self.all[index]
    }

    /// Which listener `token` names, if it names one.
    pub(super) fn index_of(&self, token: Token) -> Option<usize> {
        FIRST_LISTENER
            .checked_sub(token.0)
            .filter(|&index| index < self.all.len())
    }

    /// Every listener may have connections waiting (accepting resumes).
    pub(super) fn all_waiting(&mut self) {
        self.all.iter_mut().for_each(|l| l.waiting = true);
    }

    /// Whether any listener may have connections waiting.
    pub(super) fn any_waiting(&self) -> bool {
        self.all.iter().any(|l| l.waiting)
    }

    /// The listener accepting serves `nth`, if it may have connections
    /// waiting (`None` past the last or for one that has none).
    pub(super) fn waiting_in_turn(&self, nth: usize) -> Option<usize> {
        let index = *self.accept_order.get(nth)?;
        self.all[index].waiting.then_some(index)
    }

    /// How many listeners there are.
    pub(super) fn len(&self) -> usize {
        self.all.len()
    }

    /// Records whether listener `index` may still have connections waiting.
    pub(super) fn set_waiting(&mut self, index: usize, waiting: bool) {
        self.all[index].waiting = waiting;
    }

    /// Registers every listener with epoll, under its token.
    pub(super) fn register(&mut self, registry: &mio::Registry) -> io::Result<()> {
        for (index, listener) in self.all.iter_mut().enumerate() {
            registry.register(
                &mut listener.socket,
                Token(FIRST_LISTENER - index),
                Interest::READABLE,
            )?;
        }
        Ok(())
    }

    /// Stops watching every listener (accepting stops).
    pub(super) fn deregister(&mut self, registry: &mio::Registry) {
        for listener in &mut self.all {
            let _ = registry.deregister(&mut listener.socket);
        }
    }

    /// The listening sockets, in order, to pass to a successor.
    pub(super) fn sockets(&self) -> Vec<BorrowedFd<'_>> {
        self.all.iter().map(|l| l.socket.as_fd()).collect()
    }

    /// Which listeners' files this process does not own, in order.
    pub(super) fn activated(&self) -> Vec<bool> {
        self.all.iter().map(|l| l.activated).collect()
    }

    /// The files belong to a successor now: none is removed at exit.
    pub(super) fn hand_files_over(&mut self) {
        self.all.iter_mut().for_each(|l| l.activated = true);
    }

    /// Takes back what [`Listeners::activated`] said (a successor died).
    pub(super) fn restore_activated(&mut self, activated: &[bool]) {
        for (listener, &was) in self.all.iter_mut().zip(activated) {
            listener.activated = was;
        }
    }

    /// Removes the files this process still owns.
    pub(super) fn remove(&self) {
        self.all.iter().for_each(Listener::remove);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plans(dir: &Path) -> [Plan; 2] {
        [
            Plan {
                name: "guest",
                path: dir.join("guest/sock"),
                mode: 0o666,
                side: Side::Guest,
                identification: Identification::PeerCredentials,
            },
            Plan {
                name: "admin",
                path: dir.join("admin.sock"),
                mode: 0o600,
                side: Side::Admin { authorized: false },
                identification: Identification::PeerCredentials,
            },
        ]
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("guestsock-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn listeners_keep_their_order_tokens_and_files() {
        let dir = temp_dir("listeners");
        let mut listeners = Listeners::open(plans(&dir), Vec::new(), false).unwrap();
        assert_eq!(listeners.len(), 2);
        assert_eq!(listeners.get(0).path(), dir.join("guest/sock"));
        assert_eq!(listeners.get(1).side(), Side::Admin { authorized: false });
        for (path, mode) in [("guest/sock", 0o666), ("admin.sock", 0o600)] {
            let meta = fs::symlink_metadata(dir.join(path)).unwrap();
            assert!(meta.file_type().is_socket(), "{path}");
            assert_eq!(meta.mode() & 0o777, mode, "{path}");
        }
        for (token, index) in [
            (Token(FIRST_LISTENER), Some(0)),
            (Token(FIRST_LISTENER - 1), Some(1)),
            (Token(FIRST_LISTENER - 2), None),
            (Token(FIRST_LISTENER + 1), None),
            (Token(0), None),
        ] {
            assert_eq!(listeners.index_of(token), index, "{token:?}");
        }
        // The admin socket is accepted from first, whatever its place.
        assert!(!listeners.any_waiting());
        assert_eq!(listeners.waiting_in_turn(0), None);
        listeners.all_waiting();
        assert_eq!(listeners.waiting_in_turn(0), Some(1));
        assert_eq!(listeners.waiting_in_turn(1), Some(0));
        assert_eq!(listeners.waiting_in_turn(2), None);
        listeners.set_waiting(1, false);
        assert_eq!(listeners.waiting_in_turn(0), None);
        assert!(listeners.any_waiting());
        // Handed to a successor, the files stay; taken back, they go.
        let activated = listeners.activated();
        assert_eq!(activated, [false, false]);
        listeners.hand_files_over();
        listeners.remove();
        assert!(dir.join("admin.sock").exists());
        listeners.restore_activated(&activated);
        listeners.remove();
        assert!(!dir.join("admin.sock").exists());
        assert!(!dir.join("guest/sock").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_passed_socket_is_adopted_and_never_removed_unless_handed_over() {
        let dir = temp_dir("adopted");
        let elsewhere = dir.join("elsewhere.sock");
        let socket = bind_socket(&elsewhere, 0o666).unwrap();
        let fd = OwnedFd::from(socket);
        let passed = vec![Some((fd, elsewhere.clone())), None];
        let listeners = Listeners::open(plans(&dir), passed, false).unwrap();
        assert_eq!(listeners.get(0).path(), elsewhere);
        assert_eq!(listeners.activated(), [true, false]);
        listeners.remove();
        assert!(elsewhere.exists(), "systemd's socket is never removed");
        assert!(!dir.join("admin.sock").exists());
        // A predecessor's sockets are this process's once handed over.
        let fd = OwnedFd::from(bind_socket(&dir.join("other.sock"), 0o666).unwrap());
        let passed = vec![Some((fd, dir.join("other.sock"))), None];
        let listeners = Listeners::open(plans(&dir), passed, true).unwrap();
        assert_eq!(listeners.activated(), [false, false]);
        listeners.remove();
        assert!(!dir.join("other.sock").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
