//! Start-up: planning the listeners (the guest socket and the admin
//! socket) and opening them through `listener` (bound here, passed by
//! systemd, or handed over by a predecessor), loading the state directory,
//! starting the writer thread. The only place that knows which listeners
//! there are.

use std::os::fd::OwnedFd;

use super::*;
use listener::Plan;

/// Where the guest socket is among the planned listeners (and so in a
/// handoff's message).
const GUEST: usize = 0;

/// Where the admin socket is among them.
const ADMIN: usize = 1;

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
    let plans = [
        Plan {
            name: "guest",
            path: config.socket,
            mode: 0o666,
            side: Side::Guest,
            identification: Identification::PeerCredentials,
        },
        Plan {
            name: "admin",
            path: config.admin_socket,
            mode: 0o600,
            side: Side::Admin { authorized: false },
            identification: Identification::PeerCredentials,
        },
    ];
    let mut registry = Registry::new(config.host_name);
    let db = config.state_dir.join(store::DB_FILE);
    let mut handoff = activation::take_handoff()?;
    let mut own_passed = HashMap::new();
    let sockets = match handoff.as_mut().map(|h| (listener::receive(h, &plans), h)) {
        Some((Ok((sockets, own)), _)) => {
            own_passed = own;
            Some(sockets)
        }
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
    let (passed, since) = match (sockets, handoff.as_mut()) {
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
        _ => (listener::from_systemd(&plans)?, None),
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

    let (own, failed_listeners) = open_own_listeners(&registry, plans.len(), own_passed);
    let listeners = Listeners::open(plans, passed, handed_over, own)?;
    let (guest_path, admin_path) = (
        listeners.get(GUEST).path().to_owned(),
        listeners.get(ADMIN).path().to_owned(),
    );
    // The socket's owner (this process's user) passes its mode already.
    let owner = nix::unistd::geteuid().as_raw();
    let granted: Vec<u32> = config
        .admin_uids
        .iter()
        .copied()
        .filter(|&uid| uid != owner)
        .collect();
    crate::acl::grant_admin_uids(&admin_path, &granted)?;
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
        guest_socket: guest_path.display().to_string(),
        admin_socket: admin_path.display().to_string(),
        state_dir: config.state_dir.display().to_string(),
        connections: Connections::default(),
    };
    let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        let _ = waker.wake();
    });
    let mut server = Server {
        poll,
        listeners,
        admin_uids: config.admin_uids,
        signals,
        conns: Slab::new(),
        registry,
        facts,
        accept_retry_at: None,
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
        next_listener_check: Instant::now() + LISTENER_CHECK_INTERVAL,
        listeners_to_retry: failed_listeners,
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
    server
        .listeners
        .register(registry)
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
        guest_path.display(),
        admin_path.display(),
    ));
    activation::notify(&format!(
        "READY=1\nSTATUS=serving {} instances on {}",
        server.registry.len(),
        guest_path.display()
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
    server.listeners.remove();
    result
}

/// Opens the listeners of every registered instance's own, to be listeners
/// `first`, `first + 1`, ...: adopting the socket a predecessor passed for a
/// path (`passed`), binding the others. One that cannot be opened is
/// logged and returned (instance name, path) to be tried again every
/// second, and the server starts all the same.
#[allow(clippy::type_complexity)]
fn open_own_listeners(
    registry: &Registry,
    first: usize,
    mut passed: HashMap<PathBuf, OwnedFd>,
) -> (Vec<listener::Listener>, Vec<(String, PathBuf)>) {
    let mut opened = Vec::new();
    let mut failed = Vec::new();
    for (id, instance) in registry.iter() {
        for spec in &instance.spec.listeners {
            let adopted = passed.remove(&spec.socket_path());
            let key = first + opened.len();
            match listener::open_own(spec, key, id, instance.serial, adopted) {
                Ok(listener) => opened.push(listener),
                Err(e) => {
                    log::error(format_args!(
                        "instance {:?}: cannot open its listener: {e}; trying again every second",
                        instance.spec.name
                    ));
                    failed.push((instance.spec.name.clone(), spec.socket_path()));
                }
            }
        }
    }
    // A socket the predecessor passed for an instance that is gone now
    // (removed while this process read the state): its file goes too.
    for (path, _) in passed {
        let _ = fs::remove_file(&path);
    }
    (opened, failed)
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
