//! Start-up: resolving the sockets (bound here, passed by systemd, or handed
//! over by a predecessor), loading the state directory, starting the writer
//! thread, and the checks that refuse to start on a wrong path.

use super::*;

/// An instance to register at start unless the state directory has one of
/// that name already (the `--instances` file, the demo).
#[derive(Debug)]
pub struct Seed {
    /// Where it comes from, for messages: `FILE: instances[3] ("c1")`.
    pub origin: String,
    /// The description.
    pub spec: InstanceSpec,
}

/// Everything `serve` needs, resolved from the command line.
#[derive(Debug)]
pub struct ServeConfig {
    /// Where the guest socket is created.
    pub socket: PathBuf,
    /// Where the admin socket is created.
    pub admin_socket: PathBuf,
    /// Uids besides 0 that may use the admin socket.
    pub admin_uids: Vec<u32>,
    /// Where state is kept.
    pub state_dir: PathBuf,
    /// The default `location` of instances.
    pub host_name: String,
    /// Instances to register unless the state directory has them already.
    pub seeds: Vec<Seed>,
    /// The operator's limits.
    pub limits: Tunables,
    /// Where this server writes its pid once serving.
    pub pid_file: PathBuf,
    /// The identity issuer's settings (`--identity-*`).
    pub identity: IssuerConfig,
}

/// A listening socket and the file it is bound to, removed on exit only if
/// it is still the one this process created.
pub(super) struct Listener {
    pub(super) socket: UnixListener,
    pub(super) path: PathBuf,
    pub(super) ino: u64,
    /// Passed by systemd (socket activation): it outlives this process and
    /// is never removed by it.
    pub(super) activated: bool,
}

impl Listener {
    pub(super) fn bind(path: PathBuf, mode: u32) -> Result<Listener, String> {
        let socket = bind_socket(&path, mode)?;
        let ino = fs::symlink_metadata(&path).map(|m| m.ino()).unwrap_or(0);
        Ok(Listener {
            socket,
            path,
            ino,
            activated: false,
        })
    }

    /// A listener systemd passed (already bound and listening).
    pub(super) fn adopt(fd: std::os::fd::OwnedFd, path: PathBuf) -> Result<Listener, String> {
        let std_listener = std::os::unix::net::UnixListener::from(fd);
        std_listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot make {} non-blocking: {e}", path.display()))?;
        Ok(Listener {
            socket: UnixListener::from_std(std_listener),
            ino: 0,
            path,
            activated: true,
        })
    }

    /// Binds `path`, unless systemd passed a socket for this role.
    pub(super) fn bind_or_adopt(
        passed: Option<(std::os::fd::OwnedFd, PathBuf)>,
        path: PathBuf,
        mode: u32,
    ) -> Result<Listener, String> {
        match passed {
            Some((fd, passed_path)) => {
                if passed_path != path {
                    log::info(format_args!(
                        "using the socket systemd passed, {}, rather than {}",
                        passed_path.display(),
                        path.display()
                    ));
                }
                Listener::adopt(fd, passed_path)
            }
            None => Listener::bind(path, mode),
        }
    }

    /// Takes ownership of an adopted socket's file (a handoff, not systemd).
    pub(super) fn own(&mut self) {
        self.activated = false;
        self.ino = fs::symlink_metadata(&self.path)
            .map(|m| m.ino())
            .unwrap_or(0);
    }

    pub(super) fn remove(&self) {
        if self.activated {
            return;
        }
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Runs the server until SIGTERM or SIGINT.
pub fn serve(config: ServeConfig) -> Result<(), String> {
    raise_fd_limit();
    // Blocked before any socket exists, so a signal can only arrive through
    // the signalfd, inside the loop.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGHUP);
    mask.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("cannot create a signalfd: {e}"))?;

    // A successor started by SIGHUP gets the listening sockets first and
    // reads the state while its predecessor goes on serving; it says when it
    // is ready, waits for the predecessor to release the state directory
    // (once its last changes are durable, not once its guests are done),
    // then catches up on the changes made meanwhile. New connections wait in
    // the listen backlog only for that last step. A predecessor that dies
    // at any moment of this releases the directory by dying: its pidfd
    // says so, and this process carries on.
    let mut registry = Registry::new(config.host_name);
    let db = config.state_dir.join(store::DB_FILE);
    let mut handoff = activation::take_handoff()?;
    let sockets = match handoff.as_mut().map(|h| (h.receive_sockets(), h)) {
        Some((Ok(sockets), _)) => Some(sockets),
        Some((Err(e), h)) if h.predecessor_died() => {
            log::warn(format_args!(
                "{e}: the old guestsock (pid {}) died before it passed the sockets; starting as a first start does",
                h.predecessor_pid
            ));
            handoff = None;
            None
        }
        Some((Err(e), _)) => return Err(e),
        None => None,
    };
    let (activated, since) = match (sockets, handoff.as_mut()) {
        (Some(sockets), Some(handoff)) => {
            let since = store::snapshot(&config.state_dir, &mut |stored| {
                restore(&mut registry, stored, &db)
            })?
            // The previous release's layout: only read once released.
            .map(|loaded| loaded.version);
            handoff.say_loaded();
            match handoff.wait_released()? {
                activation::Released::Said => log::info(format_args!(
                    "took over the sockets from the previous guestsock"
                )),
                activation::Released::Died => log::warn(format_args!(
                    "the old guestsock (pid {}) died during the handoff; this one has its sockets and takes over its state directory",
                    handoff.predecessor_pid
                )),
            }
            (sockets, since)
        }
        _ => (activation::listen_fds()?, None),
    };
    let handed_over = handoff.is_some();
    let mut changed = 0;
    let (state, loaded) = store::open(&config.state_dir, since, &mut |stored| {
        // After a snapshot, a changed instance replaces the version read.
        if since.is_some() {
            registry.remove(&stored.instance.name);
            changed += 1;
        }
        restore(&mut registry, stored, &db)
    })?;
    if since.is_some() {
        for name in &loaded.removed {
            registry.remove(name);
        }
        log::info(format_args!(
            "caught up on {} change(s) made while this process read the state",
            changed + loaded.removed.len()
        ));
    }
    let keys_path = state.keys_path();
    let (issuer, made) = Issuer::open(
        config.identity,
        state.read_keys()?.as_deref(),
        &keys_path,
        crate::issuer::unix_now(),
    )?;
    let restored: std::collections::HashSet<String> =
        registry.iter().map(|(_, i)| i.spec.name.clone()).collect();
    let mut seeded = Vec::new();
    for seed in config.seeds {
        if restored.contains(&seed.spec.name) {
            log::info(format_args!(
                "{}: the state directory already has this instance; keeping its version",
                seed.origin
            ));
            continue;
        }
        let id = registry
            .insert(seed.spec)
            .map_err(|e| format!("{}: {e}", seed.origin))?;
        seeded.push(id);
    }

    let mut guest = Listener::bind_or_adopt(activated.guest, config.socket, 0o666)?;
    let mut admin = Listener::bind_or_adopt(activated.admin, config.admin_socket, 0o600)?;
    // The socket's owner (this process's user) passes its mode already.
    let owner = nix::unistd::geteuid().as_raw();
    let granted: Vec<u32> = config
        .admin_uids
        .iter()
        .copied()
        .filter(|&uid| uid != owner)
        .collect();
    crate::acl::grant_admin_uids(&admin.path, &granted)?;
    if handed_over {
        // Taken over from a predecessor, not from systemd: this process owns
        // the files now and removes them when it stops for good.
        guest.own();
        admin.own();
    }
    if let Some(bytes) = made {
        // A key made now (the first start) is on disk before it can sign
        // anything; made in memory above, written only once nothing else
        // can refuse the start.
        state.write_keys(&bytes)?;
        log::info(format_args!(
            "made identity key {} in {}",
            issuer.ring().signing().key.kid,
            keys_path.display()
        ));
    }
    let poll = Poll::new().map_err(|e| format!("cannot create epoll instance: {e}"))?;
    let waker = Arc::new(
        Waker::new(poll.registry(), WAKER).map_err(|e| format!("cannot create a waker: {e}"))?,
    );
    let signer_waker = Arc::clone(&waker);
    let writer_waker = Arc::clone(&waker);
    let (writer, committed) = state
        .spawn_writer(Arc::new(move || {
            let _ = writer_waker.wake();
        }))
        .map_err(|e| format!("cannot start the state writer: {e}"))?;
    let (signer, signed) = Signer::spawn(Arc::new(move || {
        let _ = signer_waker.wake();
    }))
    .map_err(|e| format!("cannot start the signer: {e}"))?;
    let facts = ServerFacts {
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        guest_socket: guest.path.display().to_string(),
        admin_socket: admin.path.display().to_string(),
        state_dir: config.state_dir.display().to_string(),
        connections: Connections::default(),
    };
    let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        let _ = waker.wake();
    });
    let mut server = Server {
        poll,
        guest,
        admin,
        admin_uids: config.admin_uids,
        signals,
        conns: Slab::new(),
        registry,
        facts,
        accept_retry_at: None,
        backlog: Waiting::default(),
        fd_limit: open_file_limit(),
        fresh: Vec::new(),
        changes: Vec::new(),
        in_flight: VecDeque::new(),
        writer,
        committed,
        deferred: Vec::new(),
        guest_turn: Vec::new(),
        waiting: Vec::new(),
        finished: Vec::new(),
        ready: Vec::new(),
        subscribers: HashMap::new(),
        admin_subscribers: Vec::new(),
        waiters: HashMap::new(),
        timers: BTreeSet::new(),
        next_ping: Instant::now() + config.limits.ping_interval,
        max_connections: connection_cap(config.limits.max_connections),
        limits: config.limits,
        unknown_connections: 0,
        refusal_logged: None,
        metrics: Metrics::default(),
        scratch: vec![0; READ_CHUNK_BYTES],
        cgroups: identity::CgroupPaths::new(),
        next_cgroup_sweep: Instant::now(),
        buffers: Buffers::default(),
        subscriber_count: 0,
        stopping: None,
        successor: None,
        pid_file: config.pid_file.clone(),
        state_dir: config.state_dir.clone(),
        wake,
        issuer,
        signer,
        signed,
        mints: Vec::new(),
        minting: HashMap::new(),
        deferred_mints: Vec::new(),
        last_ticket: 0,
    };
    server.write_jwks_file();
    for id in seeded {
        server.save(id);
    }
    let registry = server.poll.registry();
    registry
        .register(&mut server.guest.socket, GUEST_LISTENER, Interest::READABLE)
        .and_then(|()| {
            registry.register(&mut server.admin.socket, ADMIN_LISTENER, Interest::READABLE)
        })
        .and_then(|()| {
            registry.register(
                &mut SourceFd(&server.signals.as_raw_fd()),
                SIGNALS,
                Interest::READABLE,
            )
        })
        .map_err(|e| format!("cannot register with epoll: {e}"))?;
    // Written once serving (a successor's after its predecessor let go),
    // so the file never names a server that failed to start.
    let pid_file = crate::pidfile::PidFile::write(&config.pid_file)?;
    log::info(format_args!(
        "serving {} instance(s) ({} from {}) on {}; admin socket {}",
        server.registry.len(),
        restored.len(),
        server.facts.state_dir,
        server.guest.path.display(),
        server.admin.path.display(),
    ));
    activation::notify(&format!(
        "READY=1\nSTATUS=serving {} instances on {}",
        server.registry.len(),
        server.guest.path.display()
    ));
    if let Some(handoff) = handoff {
        // The predecessor no longer takes the directory back.
        handoff.say_serving();
    }
    let result = server.run();
    server.signer.finish();
    // Finishing the writer closes the state directory and its lock.
    server.writer.finish();
    match server.successor.as_mut() {
        // Released already, and the successor writes its own pid.
        Some(successor) if successor.phase != Phase::Releasing && successor.phase.handed_over() => {
        }
        // Ready, but a write was still in flight at the deadline: it is
        // done now.
        Some(successor) if successor.phase == Phase::Releasing => {
            activation::release(&mut successor.channel)
        }
        // Stopped (SIGTERM) before the successor was ready: it is told to
        // give up; the files are still this process's.
        Some(successor) => {
            activation::abort(&mut successor.channel);
            pid_file.remove();
        }
        None => pid_file.remove(),
    }
    server.guest.remove();
    server.admin.remove();
    result
}

/// Registers an instance read from the state directory (`db`, named in
/// errors).
fn restore(
    registry: &mut Registry,
    stored: store::StoredInstance,
    db: &Path,
) -> Result<(), String> {
    let name = stored.instance.name.clone();
    let (_, warning) = registry
        .restore(stored.instance, stored.state, stored.pidns)
        .map_err(|e| {
            format!(
                "{}: instance {name:?} cannot be restored: {e}",
                db.display()
            )
        })?;
    if let Some(warning) = warning {
        log::warn(format_args!("{warning}"));
    }
    Ok(())
}

/// The connection cap: the operator's, but never above the open-file limit
/// less [`RESERVED_FDS`], so that accept never runs out of descriptors for
/// want of a cap.
pub(super) fn connection_cap(wanted: Option<usize>) -> usize {
    let ceiling = open_file_limit().saturating_sub(RESERVED_FDS).max(1);
    wanted.map_or(ceiling, |w| w.min(ceiling))
}

/// The open-file soft limit now (`prlimit` may change it at any time).
pub(super) fn open_file_limit() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
        .unwrap_or(FALLBACK_FD_LIMIT)
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
