//! The event loop: one thread, one mio `Poll`, every connection in a slab
//! keyed by its token.
//!
//! Owns accepting on the guest and admin sockets, their set-up and
//! tear-down, signals, the sweep that removes finished connections, and the
//! bookkeeping that holds an answer until the writer thread (`store`) says
//! its change is durable. What happens on a connection is `conn`'s
//! business; who the peer is, `identity`'s.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
};
use slab::Slab;

use crate::activation;
use crate::api::Change;
use crate::api::admin::{Connections, ServerFacts};
use crate::conn::{
    Buffers, Conn, ConnState, Counted, Ctx, Expired, Listed, Next, Registration, Side,
};
use crate::error::NotServed;
use crate::events::{self, Event};
use crate::identity;
use crate::instance::{InstanceSpec, RuleKinds};
use crate::limits::{
    ACCEPT_RETRY_MS, ACCEPTS_PER_TURN, EVENTS_PER_POLL, FALLBACK_FD_LIMIT, LOG_THROTTLE,
    MAX_ADMIN_CONNECTIONS, READ_CHUNK_BYTES, RESERVED_FDS, SHUTDOWN_GRACE, SILENT_PINGS, Tunables,
};
use crate::log;
use crate::metrics::{Limit, Metrics};
use crate::registry::{Instance, InstanceId, Registry};
use crate::store::{self, Committed, Job, StoredInstance, Writer};
use crate::ws::close_code;

/// The guest socket's listener. Connection tokens are slab keys, counted up
/// from 0, so the fixed tokens sit at the far end of the range.
const GUEST_LISTENER: Token = Token(usize::MAX - 1);
/// The signalfd delivering SIGTERM and SIGINT.
const SIGNALS: Token = Token(usize::MAX - 2);
/// The admin socket's listener.
const ADMIN_LISTENER: Token = Token(usize::MAX - 3);
/// The state writer thread's wake-up: a batch was committed.
const WRITER: Token = Token(usize::MAX - 4);

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
}

/// A listening socket and the file it is bound to, removed on exit only if
/// it is still the one this process created.
struct Listener {
    socket: UnixListener,
    path: PathBuf,
    ino: u64,
    /// Passed by systemd (socket activation): it outlives this process and
    /// is never removed by it.
    activated: bool,
}

impl Listener {
    fn bind(path: PathBuf, mode: u32) -> Result<Listener, String> {
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
    fn adopt(fd: std::os::fd::OwnedFd, path: PathBuf) -> Result<Listener, String> {
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
    fn bind_or_adopt(
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
    fn own(&mut self) {
        self.activated = false;
        self.ino = fs::symlink_metadata(&self.path)
            .map(|m| m.ino())
            .unwrap_or(0);
    }

    fn remove(&self) {
        if self.activated {
            return;
        }
        if fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Which listening sockets may have connections waiting in their backlog
/// (`Waiting`, not `Backlog`: nix names the listen(2) argument that):
/// set by a readiness event (edge-triggered: it comes once), cleared when
/// `accept` says `WouldBlock`.
#[derive(Debug, Default, Clone, Copy)]
struct Waiting {
    guest: bool,
    admin: bool,
}

/// The running server.
struct Server {
    poll: Poll,
    guest: Listener,
    admin: Listener,
    admin_uids: Vec<u32>,
    signals: SignalFd,
    conns: Slab<Conn>,
    registry: Registry,
    facts: ServerFacts,
    /// Set while accepting is paused after running out of file descriptors.
    accept_retry_at: Option<Instant>,
    /// Which listeners may have connections waiting to be accepted.
    backlog: Waiting,
    /// The open-file soft limit, read again every accepting turn.
    fd_limit: usize,
    /// Connections accepted and left open in this accepting turn.
    fresh: Vec<usize>,
    /// Changes made during one pass of the loop.
    changes: Vec<Change>,
    /// Changes sent to the writer and not yet durable, in sequence order:
    /// served once the writer reports them written.
    in_flight: VecDeque<(u64, Change)>,
    writer: Writer,
    committed: Receiver<Committed>,
    /// Connections with an answer held until a sequence number is durable,
    /// in sequence order.
    waiting: Vec<(u64, usize)>,
    /// Connections to drop at the end of this pass.
    finished: Vec<usize>,
    /// Connections to drive again in this pass (a wait was answered).
    ready: Vec<usize>,
    /// Each instance's event subscribers: an event costs work for its own
    /// subscribers only.
    subscribers: HashMap<InstanceId, Vec<usize>>,
    /// The admin event stream's subscribers.
    admin_subscribers: Vec<usize>,
    /// Each instance's guest requests waiting for a change.
    waiters: HashMap<InstanceId, Vec<usize>>,
    /// Wait deadlines, earliest first; stale entries are skipped when due.
    timers: BTreeSet<(Instant, usize)>,
    /// When websocket subscribers are next pinged.
    next_ping: Instant,
    /// The operator's limits, `max_connections` resolved.
    limits: Tunables,
    /// Open connections (both sockets) past which new ones get `503`.
    max_connections: usize,
    /// Open guest connections from callers matching no instance.
    unknown_connections: u32,
    /// When a refused connection was last logged (one line a second at
    /// most, so that an attack cannot flood the log).
    refusal_logged: Option<Instant>,
    /// The counters of `GET /1.0/metrics`.
    metrics: Metrics,
    /// The buffer every connection reads through.
    scratch: Vec<u8>,
    /// cgroup ids proved to name cgroup paths, shared by every connection.
    cgroups: identity::CgroupPaths,
    /// The buffers connections borrow while driven.
    buffers: Buffers,
    /// Open event subscribers (guest and admin), for the metrics.
    subscriber_count: usize,
    /// Set once a stop signal arrived: the time by which to be gone.
    stopping: Option<Instant>,
    /// After SIGHUP: the channel to the new guestsock.
    successor: Option<std::os::unix::net::UnixStream>,
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

    // A successor started by SIGHUP gets the listening sockets first, then
    // waits for its predecessor to release the state directory; meanwhile
    // new connections wait in the listen backlog.
    let (activated, handed_over) = match activation::take_handoff()? {
        Some(mut handoff) => {
            let sockets = handoff.receive_sockets()?;
            handoff.wait_released()?;
            log::info(format_args!(
                "took over the sockets from the previous guestsock"
            ));
            (sockets, true)
        }
        None => (activation::listen_fds()?, false),
    };
    let (state, stored) = store::open(&config.state_dir)?;
    let mut registry = Registry::new(config.host_name);
    for stored in stored {
        let name = stored.instance.name.clone();
        let (_, warning) = registry
            .restore(stored.instance, stored.state, stored.pidns)
            .map_err(|e| {
                format!(
                    "{}: instance {name:?} cannot be restored: {e}",
                    config
                        .state_dir
                        .join("instances")
                        .join(format!("{name}.json"))
                        .display()
                )
            })?;
        if let Some(warning) = warning {
            log::warn(format_args!("{warning}"));
        }
    }
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
    if handed_over {
        // Taken over from a predecessor, not from systemd: this process owns
        // the files now and removes them when it stops for good.
        guest.own();
        admin.own();
    }
    let poll = Poll::new().map_err(|e| format!("cannot create epoll instance: {e}"))?;
    let waker = Arc::new(
        Waker::new(poll.registry(), WRITER).map_err(|e| format!("cannot create a waker: {e}"))?,
    );
    let (writer, committed) = state
        .spawn_writer(Arc::new(move || {
            let _ = waker.wake();
        }))
        .map_err(|e| format!("cannot start the state writer: {e}"))?;
    let facts = ServerFacts {
        version: env!("CARGO_PKG_VERSION"),
        guest_socket: guest.path.display().to_string(),
        admin_socket: admin.path.display().to_string(),
        state_dir: config.state_dir.display().to_string(),
        connections: Connections::default(),
    };
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
        buffers: Buffers::default(),
        subscriber_count: 0,
        stopping: None,
        successor: None,
    };
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
    let result = server.run();
    // Finishing the writer closes the state directory and its lock.
    server.writer.finish();
    match server.successor.as_mut() {
        // The successor writes its own pid once released.
        Some(channel) => activation::release(channel),
        None => pid_file.remove(),
    }
    server.guest.remove();
    server.admin.remove();
    result
}

impl Server {
    fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            let now = Instant::now();
            let wake_at = [
                self.accept_retry_at,
                self.timers.first().map(|&(at, _)| at),
                Some(self.next_ping),
                self.stopping,
            ]
            .into_iter()
            .flatten()
            .min();
            let mut timeout = wake_at.map(|at| at.saturating_duration_since(now));
            if self.backlog_pending() {
                // Connections are left in a backlog: look at the other
                // sources, then accept more, without sleeping.
                timeout = Some(Duration::ZERO);
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("epoll failed: {e}"));
            }
            let now = Instant::now();
            if self.accept_retry_at.is_some_and(|at| at <= now) {
                self.accept_retry_at = None;
                self.backlog = Waiting {
                    guest: true,
                    admin: true,
                };
            }
            for event in events.iter() {
                match event.token() {
                    GUEST_LISTENER => self.backlog.guest = true,
                    ADMIN_LISTENER => self.backlog.admin = true,
                    WRITER => self.take_commits(),
                    SIGNALS => match self.take_signal() {
                        Some(Signal::SIGHUP) => self.hand_over(now),
                        Some(signal) => self.begin_shutdown(signal, now),
                        None => {}
                    },
                    Token(key) => {
                        if let Some(conn) = self.conns.get_mut(key)
                            && (event.is_readable() || event.is_read_closed() || event.is_error())
                        {
                            conn.on_readable(event.is_read_closed() || event.is_error());
                        }
                        self.drive(key);
                    }
                }
            }
            // Accepting comes after the connections already open, the
            // signals and the writer's reports, and takes a bounded number
            // of connections a turn: a flood of connections waits in the
            // backlog instead of keeping the loop from everything else.
            // What this batch of events finished goes first, so that the
            // caps count only connections still open.
            self.sweep();
            self.accept_turn();
            self.fire_timers(now);
            if self.next_ping <= now {
                self.ping_subscribers(now);
            }
            while let Some(key) = self.ready.pop() {
                self.drive(key);
            }
            self.sweep();
            if let Some(deadline) = self.stopping {
                // Connections that finished their last answer go now.
                let done: Vec<usize> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.closable_when_stopping())
                    .map(|(key, _)| key)
                    .collect();
                for key in done {
                    self.remove_conn(key);
                }
                if self.conns.is_empty() || Instant::now() >= deadline {
                    if !self.conns.is_empty() {
                        log::warn(format_args!(
                            "stopping with {} connections still busy after {:?}",
                            self.conns.len(),
                            SHUTDOWN_GRACE
                        ));
                    }
                    return Ok(());
                }
            }
        }
    }

    /// SIGHUP: start a new guestsock, hand it the listening sockets, and
    /// stop like on SIGTERM; the state directory is released to it once
    /// this process has written everything (in `serve`). Connections made
    /// meanwhile wait in the backlog: no connection attempt fails and the
    /// sockets' inodes, which containers have mounted, never change.
    fn hand_over(&mut self, now: Instant) {
        if self.stopping.is_some() {
            return;
        }
        use std::os::fd::AsFd;
        let spawned =
            activation::spawn_successor(self.guest.socket.as_fd(), self.admin.socket.as_fd());
        match spawned {
            Ok(channel) => {
                self.successor = Some(channel);
                // The files belong to the successor now.
                self.guest.activated = true;
                self.admin.activated = true;
                self.begin_shutdown(Signal::SIGHUP, now);
            }
            Err(e) => log::error(format_args!("SIGHUP: {e}; going on serving")),
        }
    }

    /// SIGTERM or SIGINT: stop accepting, end event streams (websockets
    /// with close 1001), answer waiting requests with what is there, and
    /// let answers in flight finish, for at most [`SHUTDOWN_GRACE`].
    fn begin_shutdown(&mut self, signal: Signal, now: Instant) {
        if self.stopping.is_some() {
            return;
        }
        log::info(format_args!(
            "{signal}: stopping ({} connections open)",
            self.conns.len()
        ));
        self.stopping = Some(now + SHUTDOWN_GRACE);
        activation::notify(&format!(
            "STOPPING=1\nSTATUS=stopping: finishing {} connections",
            self.conns.len()
        ));
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut self.guest.socket);
        let _ = registry.deregister(&mut self.admin.socket);
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.going_away();
            if matches!(conn.state(), ConnState::Waiting(_)) {
                conn.recheck_wait(&mut self.registry, true);
            }
            self.ready.push(key);
        }
    }

    /// Takes a finished connection out of the slab and every list.
    fn remove_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.try_remove(key) else {
            return;
        };
        match conn.side {
            Side::Guest => self.facts.connections.guest -= 1,
            Side::Admin { .. } => self.facts.connections.admin -= 1,
        }
        if let Some(at) = conn.timer {
            self.timers.remove(&(at, key));
        }
        match conn.counted {
            Counted::Nothing => {}
            Counted::Unknown => {
                self.unknown_connections = self.unknown_connections.saturating_sub(1)
            }
            Counted::Instance(id, serial) => {
                if let Some(instance) = self.registry.get_mut(id)
                    && instance.serial == serial
                {
                    instance.connections = instance.connections.saturating_sub(1);
                }
            }
        }
        if matches!(conn.listed, Some(Listed::Subscriber(_))) {
            self.subscriber_count = self.subscriber_count.saturating_sub(1);
        }
        match conn.listed {
            Some(Listed::Subscriber(Some(id))) => unlist(self.subscribers.get_mut(&id), key),
            Some(Listed::Subscriber(None)) => unlist(Some(&mut self.admin_subscribers), key),
            Some(Listed::Waiter(id)) => unlist(self.waiters.get_mut(&id), key),
            None => {}
        }
    }

    /// Acts on the connection deadlines that passed: slow requests get
    /// `408`, idle connections close, waits are answered.
    fn fire_timers(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.timer != Some(at) {
                continue;
            }
            conn.timer = None;
            let was_waiting = matches!(conn.state(), ConnState::Waiting(_));
            match conn.expire(now, &self.limits, &mut self.registry) {
                Expired::Nothing => self.ready.push(key),
                Expired::Answered => {
                    if was_waiting && let Some(Listed::Waiter(id)) = conn.listed.take() {
                        unlist(self.waiters.get_mut(&id), key);
                    }
                    if !was_waiting {
                        self.metrics.limit_hit(Limit::Timeout);
                    }
                    self.ready.push(key);
                }
                Expired::Close => self.finished.push(key),
            }
        }
    }

    /// Keeps one timer per connection, no later than its current deadline.
    /// A deadline that moved later (every request moves the idle deadline)
    /// keeps the earlier timer: when it fires, `expire` finds nothing due and
    /// the connection is re-armed at its new deadline. That costs one
    /// spurious wake-up per idle period instead of two tree updates per
    /// request.
    fn set_timer(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let deadline = conn.deadline(&self.limits);
        match (conn.timer, deadline) {
            (Some(old), Some(new)) if old <= new => return,
            (Some(_), None) => return,
            (None, None) => return,
            (Some(old), Some(_)) => {
                self.timers.remove(&(old, key));
            }
            (None, Some(_)) => {}
        }
        conn.timer = deadline;
        if let Some(at) = deadline {
            self.timers.insert((at, key));
        }
    }

    /// Pings every websocket subscriber; drops those silent for three
    /// intervals.
    fn ping_subscribers(&mut self, now: Instant) {
        let interval = self.limits.ping_interval;
        self.next_ping = now + interval;
        let keys: Vec<usize> = self
            .subscribers
            .values()
            .flatten()
            .chain(&self.admin_subscribers)
            .copied()
            .collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(key)
                && !conn.ping(now, interval * SILENT_PINGS)
            {
                self.metrics.ping_timeouts += 1;
                log::info(format_args!(
                    "dropping a websocket subscriber (pid {}) silent for {:?}",
                    conn.peer.pid,
                    interval * SILENT_PINGS
                ));
                self.finished.push(key);
            }
        }
    }

    /// Delivers `events` of instance `id` (named `name`) to its guest
    /// subscribers (guest-visible ones only) and to the admin stream.
    fn publish(&mut self, id: InstanceId, name: &str, events: &[Event]) {
        self.publish_to(Some(id), name, events);
    }

    /// Delivers `events` of the instance named `name`: to the guest
    /// subscribers of `id` (guest-visible events only; none once the
    /// instance is gone) and to the admin stream. The time the whole
    /// fan-out took is kept for the metrics.
    fn publish_to(&mut self, id: Option<InstanceId>, name: &str, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let started = Instant::now();
        self.metrics.events_published += events.len() as u64;
        let timestamp = events::timestamp_now();
        let guests = id
            .and_then(|id| self.subscribers.get(&id))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut frames = 0;
        for event in events {
            let mut send = |keys: &[usize], instance: Option<&str>| {
                let json = event.to_json(&timestamp, instance);
                frames += keys.len();
                deliver(
                    &mut self.conns,
                    keys,
                    event,
                    &json,
                    &mut self.finished,
                    &mut self.metrics,
                    &mut self.refusal_logged,
                );
            };
            if event.guest_visible() && !guests.is_empty() {
                send(guests, None);
            }
            if !self.admin_subscribers.is_empty() {
                send(&self.admin_subscribers, Some(name));
            }
        }
        self.metrics.fanout(frames, started.elapsed().as_secs_f64());
    }

    /// Answers the guest requests of instance `id` waiting for a change
    /// whose answer moved.
    fn recheck_waiters(&mut self, id: InstanceId) {
        let Some(keys) = self.waiters.get_mut(&id) else {
            return;
        };
        let conns = &mut self.conns;
        let registry = &mut self.registry;
        let ready = &mut self.ready;
        keys.retain(|&key| {
            let Some(conn) = conns.get_mut(key) else {
                return false;
            };
            if conn.recheck_wait(registry, false) {
                conn.listed = None;
                ready.push(key);
                false
            } else {
                true
            }
        });
    }

    /// Drives one connection, then makes what it changed durable. Returns
    /// whether the connection stays open.
    fn drive(&mut self, key: usize) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let mut ctx = Ctx {
            registry: &mut self.registry,
            changes: &mut self.changes,
            facts: &self.facts,
            limits: &self.limits,
            metrics: &mut self.metrics,
            subscribers: self.subscriber_count,
            scratch: &mut self.scratch,
            cgroups: &mut self.cgroups,
            buffers: &mut self.buffers,
            stopping: self.stopping.is_some(),
            refusal_logged: &mut self.refusal_logged,
        };
        let open = conn.drive(&mut ctx) == Next::Wait;
        if !open {
            self.finished.push(key);
        }
        if let Some(registration) = conn.take_registration() {
            match registration {
                Registration::Subscribed(subscription) => {
                    self.subscriber_count += 1;
                    conn.listed = Some(Listed::Subscriber(subscription.instance));
                    match subscription.instance {
                        Some(id) => self.subscribers.entry(id).or_default().push(key),
                        None => self.admin_subscribers.push(key),
                    }
                }
                Registration::Waiting(id) => {
                    conn.listed = Some(Listed::Waiter(id));
                    self.waiters.entry(id).or_default().push(key);
                }
            }
        }
        if open {
            self.set_timer(key);
        }
        if self.changes.is_empty() {
            return open;
        }
        let mut seq = None;
        for change in std::mem::take(&mut self.changes) {
            seq = Some(self.apply(change));
        }
        if let (Some(seq), Some(conn)) = (seq, self.conns.get_mut(key)) {
            conn.assign_hold(seq);
            self.waiting.push((seq, key));
        }
        open
    }

    /// Sends one change to the writer; returns the sequence number of its
    /// write. Nothing of it is served or announced until that is durable
    /// ([`Server::commit`]).
    fn apply(&mut self, change: Change) -> u64 {
        let job = match &change {
            Change::Put { staged, .. } => Job::Write {
                name: staged.spec.name.clone(),
                bytes: StoredInstance::encode(&staged.spec, staged.state, staged.pidns),
            },
            Change::Remove { name } => Job::Remove { name: name.clone() },
        };
        let seq = self.writer.submit(job);
        self.in_flight.push_back((seq, change));
        seq
    }

    /// A change is durable: serve it, announce it, and close what it ends.
    fn commit(&mut self, change: Change) {
        match change {
            Change::Put { staged, events } => {
                let id = self.registry.commit(&staged);
                self.publish(id, &staged.spec.name, &events);
                self.recheck_waiters(id);
            }
            Change::Remove { name } => {
                let Some((id, instance)) = self.registry.commit_remove(&name) else {
                    return;
                };
                self.close_guests_of(&instance);
                // Its subscribers and waiters go with it: the id may be
                // reused by the next registration.
                let subs = self.subscribers.remove(&id).unwrap_or_default();
                self.subscriber_count = self.subscriber_count.saturating_sub(subs.len());
                let waits = self.waiters.remove(&id).unwrap_or_default();
                for key in subs.into_iter().chain(waits) {
                    if let Some(conn) = self.conns.get_mut(key) {
                        conn.listed = None;
                        conn.cut_off(close_code::GOING_AWAY);
                    }
                    self.finished.push(key);
                }
                self.publish_to(None, &name, &[Event::InstanceRemoved]);
            }
        }
    }

    /// Queues the current version of instance `id` for writing.
    fn save(&mut self, id: usize) -> Option<u64> {
        let instance = self.registry.get(id)?;
        let bytes = StoredInstance::encode(&instance.spec, instance.state, instance.pidns);
        Some(self.writer.submit(Job::Write {
            name: instance.spec.name.clone(),
            bytes,
        }))
    }

    /// Ends every guest connection the removed instance claimed.
    fn close_guests_of(&mut self, instance: &Instance) {
        for (key, conn) in self.conns.iter() {
            if conn.side == Side::Guest && instance.claims(&conn.peer) {
                self.finished.push(key);
            }
        }
    }

    /// Takes the writer's reports: serves the changes they make durable
    /// and lets their answers go; or, for a failed write, abandons every
    /// change in flight and fails their answers, leaving memory as the disk
    /// is (the orchestrator may retry).
    ///
    /// Answers released here are driven at once: the connection may have
    /// more pipelined requests behind them.
    fn take_commits(&mut self) {
        while let Ok(Committed { seq, epoch, error }) = self.committed.try_recv() {
            if let Some(error) = error {
                // A report of an epoch already abandoned changes nothing.
                if epoch == self.writer.epoch() {
                    self.abandon_in_flight(&error);
                }
                continue;
            }
            while self.in_flight.front().is_some_and(|&(s, _)| s <= seq) {
                if let Some((_, change)) = self.in_flight.pop_front() {
                    self.commit(change);
                }
            }
            let ready = self.waiting.partition_point(|&(s, _)| s <= seq);
            for (s, key) in self.waiting.drain(..ready).collect::<Vec<_>>() {
                if let Some(conn) = self.conns.get_mut(key)
                    && conn.holds(s)
                {
                    conn.release_hold();
                    self.drive(key);
                }
            }
        }
    }

    /// A write failed: every change in flight was built on it or batched
    /// with it, so none of them is made, and their answers say so.
    fn abandon_in_flight(&mut self, error: &str) {
        self.writer.abandon();
        self.registry.abandon_pending();
        self.in_flight.clear();
        for (s, key) in std::mem::take(&mut self.waiting) {
            if let Some(conn) = self.conns.get_mut(key)
                && conn.holds(s)
            {
                conn.fail_hold(error);
                self.drive(key);
            }
        }
    }

    /// Removes the connections marked finished. Only between batches of
    /// events: a key freed and reused within one batch would receive an
    /// event meant for its previous owner.
    fn sweep(&mut self) {
        for key in std::mem::take(&mut self.finished) {
            self.remove_conn(key);
        }
    }

    /// Whether a listener may still have connections to accept now.
    fn backlog_pending(&self) -> bool {
        self.stopping.is_none()
            && self.accept_retry_at.is_none()
            && (self.backlog.guest || self.backlog.admin)
    }

    /// Accepts from each listener with a backlog, at most
    /// [`ACCEPTS_PER_TURN`] connections each; the admin socket first, so
    /// that the operator always gets in.
    fn accept_turn(&mut self) {
        if !self.backlog_pending() {
            return;
        }
        // prlimit(1) may have changed it since the last turn.
        self.fd_limit = open_file_limit();
        self.fresh.clear();
        if self.backlog.admin {
            self.backlog.admin = self.accept_some(Side::Admin { authorized: false });
        }
        if self.backlog.guest {
            self.backlog.guest = self.accept_some(Side::Guest);
        }
    }

    /// Accepts up to [`ACCEPTS_PER_TURN`] connections from one listener;
    /// returns whether more may be waiting.
    fn accept_some(&mut self, side: Side) -> bool {
        for _ in 0..ACCEPTS_PER_TURN {
            if self.accept_retry_at.is_some() {
                return true;
            }
            let listener = match side {
                Side::Guest => &self.guest.socket,
                Side::Admin { .. } => &self.admin.socket,
            };
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(nix::libc::EMFILE | nix::libc::ENFILE)
                    ) =>
                {
                    self.out_of_descriptors();
                    return true;
                }
                // ECONNABORTED and the like concern one connection only.
                Err(_) => continue,
            };
            self.admit_one(stream, side);
        }
        true
    }

    /// The process ran out of file descriptors: accepting pauses for
    /// [`ACCEPT_RETRY_MS`], with one log line a second at most.
    fn out_of_descriptors(&mut self) {
        let open = self.conns.len();
        self.log_throttled(format_args!(
            "out of file descriptors with {open} connections open; pausing accept for {ACCEPT_RETRY_MS} ms"
        ));
        self.accept_retry_at = Some(Instant::now() + Duration::from_millis(ACCEPT_RETRY_MS));
    }

    /// Takes one accepted connection: reads what the peer sent already,
    /// identifies it, admits or refuses it, and answers what it can at once.
    ///
    /// A peer that connected and closed without sending anything (the
    /// connect-and-close flood) costs one `read` and a `close`: there is
    /// nobody to answer, so it is never identified or registered with
    /// epoll. Most clients send their request right after connecting, so
    /// a request is usually answered here, before any epoll registration,
    /// and a connection that closes after its answer is never registered.
    fn admit_one(&mut self, mut stream: mio::net::UnixStream, side: Side) {
        let received = match io::Read::read(&mut stream, &mut self.scratch) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => return,
        };
        let kinds = match side {
            Side::Guest => self.registry.kinds_in_use(),
            Side::Admin { .. } => RuleKinds::empty(),
        };
        let peer = match identity::peer_facts(&stream, kinds, &mut self.cgroups) {
            Ok(peer) => peer,
            Err(e) => {
                log::warn(format_args!(
                    "dropping a connection whose peer cannot be read: {e}"
                ));
                return;
            }
        };
        let side = match side {
            Side::Guest => Side::Guest,
            Side::Admin { .. } => {
                let authorized = peer.uid == 0 || self.admin_uids.contains(&peer.uid);
                if !authorized {
                    log::warn(format_args!(
                        "admin socket: refusing pid {} (uid {}), which is neither root nor an --admin-uid",
                        peer.pid, peer.uid
                    ));
                }
                Side::Admin { authorized }
            }
        };
        let counted = match side {
            Side::Admin { .. } => Counted::Nothing,
            Side::Guest => match self.registry.identify(&peer) {
                Ok(id) => match self.registry.get(id) {
                    Some(instance) => Counted::Instance(id, instance.serial),
                    None => Counted::Unknown,
                },
                Err(refusal) => {
                    self.log_throttled(format_args!("unrecognised caller: {refusal}"));
                    Counted::Unknown
                }
            },
        };
        let mut admitted = self.admit(side, counted);
        if admitted.is_err() && self.reap_fresh() {
            admitted = self.admit(side, counted);
        }
        if let Err((limit, why)) = admitted {
            self.metrics.limit_hit(limit);
            self.refuse(stream, &peer, NotServed::AtCapacity { limit, why });
            return;
        }
        match side {
            Side::Guest => self.facts.connections.guest += 1,
            Side::Admin { .. } => self.facts.connections.admin += 1,
        }
        match counted {
            Counted::Nothing => {}
            Counted::Unknown => self.unknown_connections += 1,
            Counted::Instance(id, _) => {
                if let Some(instance) = self.registry.get_mut(id) {
                    instance.connections += 1;
                }
            }
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let mut conn = Conn::new(stream, peer, side);
        conn.counted = counted;
        conn.received(&self.scratch[..received], received < self.scratch.len());
        entry.insert(conn);
        if !self.drive(key) {
            // Answered and done: it never needed epoll, and it goes now, not
            // in the sweep, so that its slot under the caps is free for the
            // next connection of this turn. No event can name its key (it
            // was never registered), so the key may be reused at once.
            self.finished.retain(|&k| k != key);
            self.remove_conn(key);
            return;
        }
        if let Some(conn) = self.conns.get_mut(key)
            && let Err(e) = self.poll.registry().register(
                conn.stream_mut(),
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            )
        {
            log::warn(format_args!("cannot register a connection with epoll: {e}"));
            self.finished.push(key);
            return;
        }
        self.fresh.push(key);
    }

    /// Looks again at the connections accepted and left open in this turn,
    /// before a cap refuses one more: a client that asks, reads its answer
    /// and closes at once leaves a connection that only the next turn's
    /// events would show closed, and a quick sequential client would
    /// otherwise meet its cap within one turn. Returns whether any closed.
    /// Each connection is looked at once, so this costs at most one `read`
    /// per accepted connection.
    fn reap_fresh(&mut self) -> bool {
        let mut reaped = false;
        for key in std::mem::take(&mut self.fresh) {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            conn.on_readable(false);
            if !self.drive(key) {
                // Registered, but closing it removes it from epoll and from
                // any event list not yet taken: the key is free at once.
                self.finished.retain(|&k| k != key);
                self.remove_conn(key);
                reaped = true;
            }
        }
        reaped
    }

    /// Whether one more connection from `side` fits under the caps; if
    /// not, why. Guests stop at the connection cap, never above the
    /// open-file limit less [`RESERVED_FDS`] (read again every turn, so a
    /// limit lowered under a running server counts at once); admin
    /// connections only at [`MAX_ADMIN_CONNECTIONS`], out of that reserve.
    fn admit(&self, side: Side, counted: Counted) -> Result<(), (Limit, String)> {
        if let Side::Admin { .. } = side {
            if self.facts.connections.admin >= MAX_ADMIN_CONNECTIONS {
                return Err((
                    Limit::Connections,
                    format!(
                        "the admin socket has {MAX_ADMIN_CONNECTIONS} connections open, its limit"
                    ),
                ));
            }
            return Ok(());
        }
        if self.conns.len() >= self.guest_ceiling() {
            return Err((
                Limit::Connections,
                format!(
                    "guestsock has {} connections open, its limit",
                    self.guest_ceiling()
                ),
            ));
        }
        match counted {
            Counted::Nothing => Ok(()),
            Counted::Unknown if self.unknown_connections >= self.limits.max_unknown => Err((
                Limit::Unknown,
                format!(
                    "callers that match no instance have {} connections open, their limit",
                    self.limits.max_unknown
                ),
            )),
            Counted::Unknown => Ok(()),
            Counted::Instance(id, _) => match self.registry.get(id) {
                Some(instance) if instance.connections >= self.limits.max_per_instance => Err((
                    Limit::PerInstance,
                    format!(
                        "instance {:?} has {} connections open, its limit",
                        instance.spec.name, self.limits.max_per_instance
                    ),
                )),
                _ => Ok(()),
            },
        }
    }

    /// Open connections past which guests are refused: the operator's cap,
    /// or the open-file limit less [`RESERVED_FDS`] if that is lower.
    fn guest_ceiling(&self) -> usize {
        self.max_connections
            .min(self.fd_limit.saturating_sub(RESERVED_FDS).max(1))
    }

    /// Logs a refusal, one line a second at most, so that an attack cannot
    /// flood the log.
    fn log_throttled(&mut self, message: std::fmt::Arguments<'_>) {
        log_throttled(&mut self.refusal_logged, message);
    }

    fn refuse(&mut self, stream: mio::net::UnixStream, peer: &identity::PeerFacts, why: NotServed) {
        self.log_throttled(format_args!(
            "refusing a connection from pid {} (uid {}): {why}",
            peer.pid, peer.uid
        ));
        let mut stream = stream;
        let mut out = Vec::new();
        let response = why.response();
        response.write_to(&mut out, false, false, false);
        let _ = std::io::Write::write(&mut stream, &out);
    }

    /// Reads one pending signal, if any.
    fn take_signal(&mut self) -> Option<Signal> {
        match self.signals.read_signal() {
            Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
            _ => None,
        }
    }
}

/// The connection cap: the operator's, but never above the open-file limit
/// less [`RESERVED_FDS`], so that accept never runs out of descriptors for
/// want of a cap.
fn connection_cap(wanted: Option<usize>) -> usize {
    let ceiling = open_file_limit().saturating_sub(RESERVED_FDS).max(1);
    wanted.map_or(ceiling, |w| w.min(ceiling))
}

/// The open-file soft limit now (`prlimit` may change it at any time).
fn open_file_limit() -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX))
        .unwrap_or(FALLBACK_FD_LIMIT)
}

/// Logs `message` unless a line was logged through `last` less than a
/// second ago, so that an attack cannot flood the log.
pub(crate) fn log_throttled(last: &mut Option<Instant>, message: std::fmt::Arguments<'_>) {
    let now = Instant::now();
    if last.is_none_or(|then| now.duration_since(then) >= LOG_THROTTLE) {
        *last = Some(now);
        log::warn(message);
    }
}

/// Takes `key` off a list.
fn unlist(list: Option<&mut Vec<usize>>, key: usize) {
    if let Some(list) = list
        && let Some(at) = list.iter().position(|&k| k == key)
    {
        list.swap_remove(at);
    }
}

/// Queues one event on each of `keys` that wants it; subscribers cut off
/// for being too slow are marked finished.
fn deliver(
    conns: &mut Slab<Conn>,
    keys: &[usize],
    event: &Event,
    json: &[u8],
    finished: &mut Vec<usize>,
    metrics: &mut Metrics,
    logged: &mut Option<Instant>,
) {
    for &key in keys {
        let Some(conn) = conns.get_mut(key) else {
            continue;
        };
        let Some(subscription) = conn.subscription() else {
            continue;
        };
        if !subscription.filter.wants(event) {
            continue;
        }
        metrics.events_delivered += 1;
        if !conn.push_event(json) {
            metrics.slow_consumers_cut += 1;
            log_throttled(
                logged,
                format_args!(
                    "cut off a slow event subscriber (pid {}, uid {}): it stopped reading",
                    conn.peer.pid, conn.peer.uid
                ),
            );
            finished.push(key);
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
