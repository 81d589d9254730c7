//! The server's listeners: each a listening socket that knows its file,
//! the API its connections speak (`Side`) and how their callers are
//! identified (`Identification`), so that the loop, accepting and the
//! handoff treat every listener alike, and a listener that belongs to one
//! instance (issue 25) is one more [`Plan`].
//!
//! Owns binding a listener's socket (after checking what is in the way),
//! adopting one passed by systemd or by a predecessor, removing its file at
//! exit only if it is still this process's, whether its backlog may hold
//! connections, and the listeners' epoll tokens; and the listeners of
//! instances' own (a VM's vsock socket, given to the VMM's uid; a
//! container's socket directory), opened, retargeted and closed as their
//! instances change. It does not accept or admit connections
//! (`admission`), nor speak the systemd or handoff protocols
//! (`activation`); the startup plans which listeners there are, and
//! `durability` which instance listeners there should be.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::*;
use crate::activation::{Handoff, Passed};
use crate::instance::ListenerSpec;
use crate::socket_file::bind_socket;

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
    /// For a listener of an instance's own, what it was opened from (to
    /// open it again if its file goes).
    spec: Option<ListenerSpec>,
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
            spec: None,
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
            spec: None,
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

/// The server's listeners: the planned ones first (keys 0, 1, ... in the
/// order they were planned, which is the order a handoff passes them in),
/// then those of instances' own, added and removed as instances change.
/// Listener `key` has the epoll token `Token(FIRST_LISTENER - key)`.
pub(super) struct Listeners {
    all: Slab<Listener>,
    /// How many of `all` were planned (keys `0..planned`).
    planned: usize,
    /// Keys into `all`, the admin socket's first: accepting serves them in
    /// this order, so that the operator always gets in.
    accept_order: Vec<usize>,
    /// The socket path of each listener of an instance's own, to its key.
    own: HashMap<PathBuf, usize>,
    /// Where the next check of their files starts
    /// ([`Listeners::files_gone`]).
    check_from: usize,
}

/// Receives from a predecessor one socket for each of `plans` (which
/// says how many: the predecessor's listeners, in the same order), and
/// the sockets of instances' own listeners it passes after them, by path.
pub(super) fn receive<const N: usize>(
    handoff: &mut Handoff,
    _plans: &[Plan; N],
) -> Result<(Vec<Passed>, HashMap<PathBuf, OwnedFd>), String> {
    let (received, own) = handoff.receive_sockets::<N>()?;
    Ok((
        received.into_iter().map(Some).collect(),
        own.into_iter().map(|(fd, path)| (path, fd)).collect(),
    ))
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
    /// files now and removes them when it stops for good. `own`: listeners
    /// of instances' own opened already ([`open_own`]), for the keys after
    /// the planned ones, in order: opened first, so that they exist before
    /// the admin socket answers.
    pub(super) fn open(
        plans: impl IntoIterator<Item = Plan>,
        passed: Vec<Passed>,
        handed_over: bool,
        own: Vec<Listener>,
    ) -> Result<Listeners, String> {
        let mut passed = passed.into_iter();
        let mut all = Slab::new();
        for plan in plans {
            all.insert(Listener::bind_or_adopt(passed.next().flatten(), plan)?);
        }
        if handed_over {
            all.iter_mut().for_each(|(_, l)| l.own());
        }
        let planned = all.len();
        let mut paths = HashMap::new();
        for listener in own {
            let path = listener.path.clone();
            let key = all.insert(listener);
            debug_assert!(
                matches!(all[key].identification, Identification::Own { listener, .. } if listener == key)
            );
            paths.insert(path, key);
        }
        let mut listeners = Listeners {
            planned,
            all,
            accept_order: Vec::new(),
            own: paths,
            check_from: 0,
        };
        listeners.order();
        Ok(listeners)
    }

    /// Recomputes the accepting order: admin sockets first, then the
    /// rest by key.
    fn order(&mut self) {
        let mut order: Vec<usize> = self.all.iter().map(|(key, _)| key).collect();
        order.sort_by_key(|&key| (self.all[key].side == Side::Guest, key));
        self.accept_order = order;
    }

    /// Opens a listener of an instance's own at `spec`'s socket,
    /// identifying its callers as instance `id` (registration `serial`),
    /// and registers it with epoll: `adopted`, the socket a predecessor
    /// passed for that path, else a socket bound here ([`open_own`]). Its
    /// backlog may hold connections already.
    pub(super) fn add_own(
        &mut self,
        spec: &ListenerSpec,
        id: InstanceId,
        serial: u64,
        adopted: Option<OwnedFd>,
        registry: &mio::Registry,
    ) -> Result<usize, String> {
        let entry = self.all.vacant_entry();
        let key = entry.key();
        let mut listener = open_own(spec, key, id, serial, adopted)?;
        if let Err(e) = registry.register(
            &mut listener.socket,
            Token(FIRST_LISTENER - key),
            Interest::READABLE,
        ) {
            listener.remove();
            return Err(format!("cannot watch {}: {e}", listener.path.display()));
        }
        self.own.insert(listener.path.clone(), key);
        entry.insert(listener);
        self.order();
        Ok(key)
    }

    /// Closes the listener of an instance's own at `path` and removes its
    /// file (if still this process's); returns its key.
    pub(super) fn remove_own(&mut self, path: &Path, registry: &mio::Registry) -> Option<usize> {
        let key = self.own.remove(path)?;
        let mut listener = self.all.remove(key);
        let _ = registry.deregister(&mut listener.socket);
        listener.remove();
        self.order();
        Some(key)
    }

    /// The listener of an instance's own at `path` now identifies its
    /// callers as instance `id` (registration `serial`), `by` the rule
    /// given: a replaced instance keeps its sockets.
    pub(super) fn retarget_own(&mut self, path: &Path, id: InstanceId, serial: u64) {
        let Some(&key) = self.own.get(path) else {
            return;
        };
        if let Identification::Own {
            id: old_id,
            serial: old_serial,
            ..
        } = &mut self.all[key].identification
        {
            (*old_id, *old_serial) = (id, serial);
        }
    }

    /// Listeners of instances' own whose file is gone or is no longer the
    /// socket this process bound (deleted or replaced by hand), at most
    /// `most` of them looked at, in turns: each with what it was opened
    /// from and the instance it names.
    pub(super) fn files_gone(&mut self, most: usize) -> Vec<(ListenerSpec, InstanceId, u64)> {
        let mut gone = Vec::new();
        // Keys, not a list of them: a turn costs what it looks at.
        let slots = self.all.capacity().max(1);
        for step in 0..most.min(slots) {
            let key = (self.check_from + step) % slots;
            let Some(listener) = self.all.get(key) else {
                continue;
            };
            let (Some(spec), Identification::Own { id, serial, .. }) =
                (&listener.spec, listener.identification)
            else {
                continue;
            };
            let here = fs::symlink_metadata(&listener.path).map(|m| m.ino()).ok();
            if here != Some(listener.ino) {
                gone.push((spec.clone(), id, serial));
            }
        }
        self.check_from = (self.check_from + most.min(slots)) % slots;
        gone
    }

    /// Closes the listener of an instance's own at `path` whose file is no
    /// longer its own, leaving whatever is at the path alone; its accepted
    /// connections go on.
    pub(super) fn drop_own(&mut self, path: &Path, registry: &mio::Registry) {
        if let Some(key) = self.own.remove(path) {
            let mut listener = self.all.remove(key);
            let _ = registry.deregister(&mut listener.socket);
            self.order();
        }
    }

    /// Whether any instance has a listener of its own.
    pub(super) fn has_own(&self) -> bool {
        !self.own.is_empty()
    }

    /// The key of the listener of an instance's own at `path`.
    pub(super) fn own_at(&self, path: &Path) -> Option<usize> {
        self.own.get(path).copied()
    }

    /// Listener `key`.
    pub(super) fn get(&self, key: usize) -> &Listener {
        &self.all[key]
    }

    /// Which listener `token` names, if it names one.
    pub(super) fn index_of(&self, token: Token) -> Option<usize> {
        FIRST_LISTENER
            .checked_sub(token.0)
            .filter(|&key| self.all.contains(key))
    }

    /// Every listener may have connections waiting (accepting resumes).
    pub(super) fn all_waiting(&mut self) {
        self.all.iter_mut().for_each(|(_, l)| l.waiting = true);
    }

    /// Whether any listener may have connections waiting.
    pub(super) fn any_waiting(&self) -> bool {
        self.all.iter().any(|(_, l)| l.waiting)
    }

    /// The listener accepting serves `nth`, if it may have connections
    /// waiting (`None` past the last or for one that has none).
    pub(super) fn waiting_in_turn(&self, nth: usize) -> Option<usize> {
        let key = *self.accept_order.get(nth)?;
        self.all[key].waiting.then_some(key)
    }

    /// How many listeners there are.
    pub(super) fn len(&self) -> usize {
        self.all.len()
    }

    /// Records whether listener `key` may still have connections waiting.
    pub(super) fn set_waiting(&mut self, key: usize, waiting: bool) {
        if let Some(listener) = self.all.get_mut(key) {
            listener.waiting = waiting;
        }
    }

    /// Registers every listener with epoll, under its token.
    pub(super) fn register(&mut self, registry: &mio::Registry) -> io::Result<()> {
        for (key, listener) in self.all.iter_mut() {
            registry.register(
                &mut listener.socket,
                Token(FIRST_LISTENER - key),
                Interest::READABLE,
            )?;
        }
        Ok(())
    }

    /// Stops watching every listener (accepting stops).
    pub(super) fn deregister(&mut self, registry: &mio::Registry) {
        for (_, listener) in self.all.iter_mut() {
            let _ = registry.deregister(&mut listener.socket);
        }
    }

    /// The listening sockets to pass to a successor: the planned ones in
    /// order, then those of instances' own.
    pub(super) fn sockets(&self) -> (Vec<BorrowedFd<'_>>, Vec<BorrowedFd<'_>>) {
        let planned = (0..self.planned).map(|key| self.all[key].socket.as_fd());
        let own = self.own.values().map(|&key| self.all[key].socket.as_fd());
        (planned.collect(), own.collect())
    }

    /// Which listeners' files this process does not own, by key.
    pub(super) fn activated(&self) -> Vec<(usize, bool)> {
        self.all.iter().map(|(key, l)| (key, l.activated)).collect()
    }

    /// The files belong to a successor now: none is removed at exit.
    pub(super) fn hand_files_over(&mut self) {
        self.all.iter_mut().for_each(|(_, l)| l.activated = true);
    }

    /// Takes back what [`Listeners::activated`] said (a successor died).
    pub(super) fn restore_activated(&mut self, activated: &[(usize, bool)]) {
        for &(key, was) in activated {
            if let Some(listener) = self.all.get_mut(key) {
                listener.activated = was;
            }
        }
    }

    /// Removes the files this process still owns.
    pub(super) fn remove(&self) {
        self.all.iter().for_each(|(_, l)| l.remove());
    }
}

/// Opens a listener of an instance's own at `spec`'s socket, to be listener
/// `key`, identifying its callers as instance `id` (registration `serial`):
/// `adopted`, the socket a predecessor passed for that path (this process
/// owns its file now), else a socket bound here (a VM's given to its
/// VMM's uid). Not registered with epoll; its backlog may hold connections.
pub(super) fn open_own(
    spec: &ListenerSpec,
    key: usize,
    id: InstanceId,
    serial: u64,
    adopted: Option<OwnedFd>,
) -> Result<Listener, String> {
    let path = spec.socket_path();
    let (mode, by) = match spec {
        ListenerSpec::Vsock(v) => (0o600, OwnListener::Vsock { vmm_uid: v.vmm_uid }),
        ListenerSpec::SocketDir(_) => (0o666, OwnListener::SocketDir),
    };
    let plan = Plan {
        name: "instance",
        path: path.clone(),
        mode,
        side: Side::Guest,
        identification: Identification::Own {
            listener: key,
            id,
            serial,
            by,
        },
    };
    let mut listener = match adopted {
        Some(fd) => {
            let mut listener = Listener::adopt(fd, path.clone(), plan)?;
            listener.own();
            listener
        }
        None => {
            if let ListenerSpec::SocketDir(d) = spec {
                prepare_socket_dir(&d.dir)?;
            }
            let listener = Listener::bind(plan)?;
            if let ListenerSpec::Vsock(v) = spec {
                // Only the VMM's user (and root) may connect; admission
                // checks its uid again on every connection.
                let owner = Some(nix::unistd::Uid::from_raw(v.vmm_uid));
                if let Err(e) = nix::unistd::chown(&path, owner, None) {
                    listener.remove();
                    return Err(format!(
                        "cannot give {} to uid {}: {e}",
                        path.display(),
                        v.vmm_uid
                    ));
                }
            }
            listener
        }
    };
    listener.waiting = true;
    listener.spec = Some(spec.clone());
    Ok(listener)
}

/// Makes `dir`, a container's own socket directory: created 0755 if
/// missing (with its parents); an existing one must be a directory, not a
/// link, owned by root and not writable by group or others, so that
/// nobody else can replace the socket in it.
fn prepare_socket_dir(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => Err(format!(
            "{shown} is not a directory; a container's socket directory must be one"
        )),
        Ok(meta) if meta.uid() != 0 || meta.mode() & 0o022 != 0 => Err(format!(
            "{shown} must be owned by root and writable by root only (it is uid {}, mode {:o})",
            meta.uid(),
            meta.mode() & 0o7777
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| format!("cannot create {shown}: {e}")),
        Err(e) => Err(format!("cannot inspect {shown}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

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
        let mut listeners = Listeners::open(plans(&dir), Vec::new(), false, Vec::new()).unwrap();
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
        assert_eq!(activated, [(0, false), (1, false)]);
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
        let listeners = Listeners::open(plans(&dir), passed, false, Vec::new()).unwrap();
        assert_eq!(listeners.get(0).path(), elsewhere);
        assert_eq!(listeners.activated(), [(0, true), (1, false)]);
        listeners.remove();
        assert!(elsewhere.exists(), "systemd's socket is never removed");
        assert!(!dir.join("admin.sock").exists());
        // A predecessor's sockets are this process's once handed over.
        let fd = OwnedFd::from(bind_socket(&dir.join("other.sock"), 0o666).unwrap());
        let passed = vec![Some((fd, dir.join("other.sock"))), None];
        let listeners = Listeners::open(plans(&dir), passed, true, Vec::new()).unwrap();
        assert_eq!(listeners.activated(), [(0, false), (1, false)]);
        listeners.remove();
        assert!(!dir.join("other.sock").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
