//! The event loop: one thread, one mio `Poll`, every connection in a slab
//! keyed by its token.
//!
//! Owns the loop itself (`run`), driving a connection and acting on what it
//! asks for, signals (stop, hand-over), and the sweep that removes finished
//! connections. The units it is made of, each in its own file:
//!
//! - `startup`: which listeners there are, state directory, writer
//!   thread, `serve`;
//! - `listener`: each listener's socket, file, side and way of identifying
//!   its callers, bound or adopted, and their tokens;
//! - `admission`: accepting, identifying and admitting connections;
//! - `durability`: changes held until the writer says they are on disk;
//! - `fanout`: events to subscribers, pings, waits answered;
//! - `timers`: connection deadlines;
//! - `minting`: identity tokens handed to the signer thread and answered,
//!   and the identity keys' schedule.
//!
//! What happens on a connection is `conn`'s business; what a request means,
//! `dispatch`'s; who the peer is, `identity`'s.

mod admission;
mod durability;
mod fanout;
mod listener;
mod minting;
mod startup;
mod timers;

pub use crate::socket_file::bind_socket;
use listener::Listeners;
use startup::open_file_limit;
pub use startup::{Seed, ServeConfig, serve};

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use mio::net::UnixListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use slab::Slab;

use crate::activation;
use crate::api::Change;
use crate::api::admin::{Connections, ServerFacts};
use crate::api::identity::Mint;
use crate::conn::{Conn, ConnState, Counted, Expired, Listed, Next, Registration};
use crate::error::NotServed;
use crate::events::{self, Event};
use crate::identity;
use crate::instance::{InstanceSpec, RuleKinds};
use crate::issuer::{Issuer, IssuerConfig};
use crate::limits::{
    ACCEPT_RETRY_MS, ACCEPTS_PER_TURN, CGROUP_SWEEP_INTERVAL, CGROUP_SWEEP_PER_TURN,
    EVENTS_PER_POLL, FALLBACK_FD_LIMIT, HANDOFF_LOAD_TIMEOUT, LISTENER_CHECK_INTERVAL,
    LISTENER_CHECKS_PER_TURN, MAX_ADMIN_CONNECTIONS, READ_CHUNK_BYTES, RESERVED_FDS,
    SHUTDOWN_GRACE, SILENT_PINGS, Tunables,
};
use crate::log::{self, log_due, log_throttled};
use crate::metrics::{Limit, Metrics};
use crate::registry::{Instance, InstanceId, Registry};
use crate::request_ctx::{Buffers, Ctx, Identification, OwnListener, Side};
use crate::signer::{Signed, Signer};
use crate::store::{self, Committed, Job, StoredInstance, Writer};
use crate::ws::close_code;

/// The signalfd delivering SIGTERM and SIGINT. Connection tokens are slab
/// keys, counted up from 0, so the fixed tokens sit at the far end of the
/// range.
const SIGNALS: Token = Token(usize::MAX - 2);

/// A helper thread's wake-up: the state writer committed a batch, or the
/// signer signed a token (mio allows one `Waker` per `Poll`; they share it).
const WAKER: Token = Token(usize::MAX - 4);

/// The handoff channel to a successor (SIGHUP), until it serves.
const SUCCESSOR: Token = Token(usize::MAX - 5);

/// The successor's pidfd, readable once it has exited.
const SUCCESSOR_EXIT: Token = Token(usize::MAX - 6);

/// The first listener's token; listener `i` has `FIRST_LISTENER - i`
/// (`listener::Listeners`), counting down towards the connections' keys,
/// which count up from 0.
const FIRST_LISTENER: usize = usize::MAX - 16;

/// The running server.
struct Server {
    poll: Poll,
    /// The listening sockets: the guest and admin sockets.
    listeners: Listeners,
    admin_uids: Vec<u32>,
    signals: SignalFd,
    conns: Slab<Conn>,
    registry: Registry,
    facts: ServerFacts,
    /// Set while accepting is paused after running out of file descriptors.
    accept_retry_at: Option<Instant>,
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
    /// Connections that used up their turn with more to do: driven again
    /// in the next turn, after the others (`limits::REQUESTS_PER_TURN`).
    deferred: Vec<usize>,
    /// Guest connections with readiness this turn, driven after the admin
    /// socket's (reused from turn to turn).
    guest_turn: Vec<usize>,
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
    /// When the cgroup-id cache is next swept for removed cgroups.
    next_cgroup_sweep: Instant,
    /// When the files of instances' own listeners are checked next.
    next_listener_check: Instant,
    /// Listeners of instances' own that could not be opened: the instance's
    /// name and the socket's path, tried again every check.
    listeners_to_retry: Vec<(String, PathBuf)>,
    /// The buffers connections borrow while driven.
    buffers: Buffers,
    /// Open event subscribers (guest and admin), for the metrics.
    subscriber_count: usize,
    /// Set once a stop signal arrived: the time by which to be gone.
    stopping: Option<Instant>,
    /// After SIGHUP: the new guestsock.
    successor: Option<Successor>,
    /// Where the pid file is, written again if a successor dies before it
    /// serves and this process goes on.
    pid_file: PathBuf,
    /// The state directory, taken back in that case.
    state_dir: PathBuf,
    /// What the writer thread calls after each batch (a new writer needs it).
    wake: Arc<dyn Fn() + Send + Sync>,
    /// The identity issuer: settings, keys, the change of keys in flight.
    issuer: Issuer,
    /// The signer thread.
    signer: Signer,
    /// Its tokens.
    signed: Receiver<Signed>,
    /// Where a drive reports the token its connection asked for.
    mints: Vec<Mint>,
    /// Tokens being signed: ticket to the connection waiting for it and
    /// when its request started. At most one per connection.
    minting: HashMap<u64, (usize, Instant)>,
    /// Tokens waiting for a change of keys to be durable, with their
    /// tickets.
    deferred_mints: Vec<(u64, Mint)>,
    /// The last ticket given.
    last_ticket: u64,
}

/// A SIGHUP handoff in progress: the new guestsock has the listening
/// sockets and reads the state while this one goes on serving; it says when
/// it is ready to take over.
#[derive(Debug)]
pub(super) struct Successor {
    /// The handoff channel (non-blocking, registered with epoll).
    pub(super) channel: std::os::unix::net::UnixStream,
    /// Its pid, for messages.
    pid: u32,
    /// Its pidfd (registered with epoll): its death, told apart from a
    /// channel it closed on purpose.
    pidfd: Option<std::os::fd::OwnedFd>,
    /// Until when this process waits for it to say it is ready.
    ready_by: Instant,
    /// How far the handoff is.
    pub(super) phase: Phase,
    /// Which listeners were systemd's, to put back if this process goes on
    /// serving.
    activated: Vec<(usize, bool)>,
}

/// How far a handoff is, from the old process's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// The successor reads the state; this process serves as before.
    Loading,
    /// The successor is ready: this process accepts nothing more and
    /// refuses changes (`503`), and releases the state directory as soon as
    /// the changes in flight are durable. Its open connections finish in
    /// the background, for at most [`SHUTDOWN_GRACE`].
    Releasing,
    /// Released: the successor opens the state directory and starts
    /// listening. If it dies before it says it serves, this process takes
    /// the directory back and goes on serving.
    Released,
    /// The successor serves (or, an earlier release, has let go of the
    /// channel): this process only finishes its connections.
    Serving,
}

impl Phase {
    /// Whether the state directory is the successor's (or about to be).
    pub(super) fn handed_over(self) -> bool {
        self != Phase::Loading
    }
}

/// Whether the process behind a pidfd has exited (it polls readable).
fn exited(pidfd: &std::os::fd::OwnedFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Takes `key` off a list.
fn unlist(list: Option<&mut Vec<usize>>, key: usize) {
    if let Some(list) = list
        && let Some(at) = list.iter().position(|&k| k == key)
    {
        list.swap_remove(at);
    }
}

impl Server {
    pub(super) fn run(&mut self) -> Result<(), String> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            let now = Instant::now();
            let wake_at = [
                self.accept_retry_at,
                self.timers.first().map(|&(at, _)| at),
                Some(self.next_ping),
                self.stopping,
                self.successor
                    .as_ref()
                    .filter(|s| s.phase == Phase::Loading)
                    .map(|s| s.ready_by),
                self.issuer.until_due().map(|wait| now + wait),
                (!self.cgroups.is_empty()).then_some(self.next_cgroup_sweep),
                (self.listeners.has_own() || !self.listeners_to_retry.is_empty())
                    .then_some(self.next_listener_check),
            ]
            .into_iter()
            .flatten()
            .min();
            let mut timeout = wake_at.map(|at| at.saturating_duration_since(now));
            if self.backlog_pending() || !self.deferred.is_empty() {
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
            // Those that used up their last turn go after this turn's
            // events (those that use this one up go to the next).
            let carried = std::mem::take(&mut self.deferred);
            if self.accept_retry_at.is_some_and(|at| at <= now) {
                self.accept_retry_at = None;
                self.listeners.all_waiting();
            }
            for event in events.iter() {
                match event.token() {
                    token if let Some(index) = self.listeners.index_of(token) => {
                        self.listeners.set_waiting(index, true)
                    }
                    WAKER => {
                        self.take_commits();
                        self.take_signed();
                    }
                    SUCCESSOR | SUCCESSOR_EXIT => self.hear_successor(now),
                    SIGNALS => match self.take_signal() {
                        Some(Signal::SIGHUP) => self.hand_over(now),
                        Some(signal) => self.begin_shutdown(signal, now),
                        None => {}
                    },
                    Token(key) => {
                        let Some(conn) = self.conns.get_mut(key) else {
                            continue;
                        };
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            conn.on_readable(event.is_read_closed() || event.is_error());
                        }
                        // The admin socket's connections first: no guest's
                        // traffic delays the host's own calls.
                        match conn.side {
                            Side::Admin { .. } => {
                                self.drive(key);
                            }
                            Side::Guest => self.guest_turn.push(key),
                        }
                    }
                }
            }
            let mut guests = std::mem::take(&mut self.guest_turn);
            for key in guests.drain(..) {
                self.drive(key);
            }
            self.guest_turn = guests;
            for key in carried {
                self.drive(key);
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
            if !self.cgroups.is_empty() && self.next_cgroup_sweep <= now {
                self.cgroups.sweep(CGROUP_SWEEP_PER_TURN);
                self.next_cgroup_sweep = now + CGROUP_SWEEP_INTERVAL;
            }
            if (self.listeners.has_own() || !self.listeners_to_retry.is_empty())
                && self.next_listener_check <= now
            {
                self.reopen_gone_listeners();
                self.next_listener_check = now + LISTENER_CHECK_INTERVAL;
            }
            if self
                .successor
                .as_ref()
                .is_some_and(|s| s.phase == Phase::Loading && s.ready_by <= now)
            {
                log::warn(format_args!(
                    "SIGHUP: the new guestsock did not say it was ready within {:?} (a release older than this one says nothing); handing over anyway",
                    HANDOFF_LOAD_TIMEOUT
                ));
                self.successor_ready(now);
            }
            self.keys_due();
            if self.next_ping <= now {
                self.ping_subscribers(now);
            }
            while let Some(key) = self.ready.pop() {
                self.drive(key);
            }
            self.sweep();
            self.release_when_durable();
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
                // A successor between release and serving may still die
                // and leave this process to take the directory back.
                let settled = self
                    .successor
                    .as_ref()
                    .is_none_or(|s| s.phase == Phase::Serving || s.phase == Phase::Loading);
                if (self.conns.is_empty() && settled) || Instant::now() >= deadline {
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

    /// SIGHUP: start a new guestsock and hand it the listening sockets, and
    /// go on serving while it reads the state. Once it says it is ready,
    /// stop accepting at once, refuse changes, and release the state
    /// directory to it as soon as the changes in flight are durable
    /// ([`Server::release_when_durable`]); the connections still open here
    /// finish in the background and never hold the successor up.
    /// Connections made meanwhile wait in the backlog for the successor (a
    /// few milliseconds): no connection attempt fails, and the sockets'
    /// inodes, which containers have mounted, never change.
    pub(super) fn hand_over(&mut self, now: Instant) {
        if self.stopping.is_some() || self.successor.is_some() {
            log::info(format_args!("SIGHUP: a handoff is already under way"));
            return;
        }
        let (planned, own) = self.listeners.sockets();
        let spawned =
            activation::spawn_successor(&planned, &own).and_then(|(channel, pid, pidfd)| {
                channel
                    .set_nonblocking(true)
                    .map_err(|e| format!("cannot set up the handoff channel: {e}"))?;
                let registry = self.poll.registry();
                registry
                    .register(
                        &mut SourceFd(&channel.as_raw_fd()),
                        SUCCESSOR,
                        Interest::READABLE,
                    )
                    .map_err(|e| format!("cannot register the handoff channel: {e}"))?;
                if let Some(pidfd) = &pidfd {
                    registry
                        .register(
                            &mut SourceFd(&pidfd.as_raw_fd()),
                            SUCCESSOR_EXIT,
                            Interest::READABLE,
                        )
                        .map_err(|e| format!("cannot register the successor's pidfd: {e}"))?;
                }
                Ok((channel, pid, pidfd))
            });
        match spawned {
            Ok((channel, pid, pidfd)) => {
                self.successor = Some(Successor {
                    channel,
                    pid,
                    pidfd,
                    ready_by: now + HANDOFF_LOAD_TIMEOUT,
                    phase: Phase::Loading,
                    activated: self.listeners.activated(),
                });
            }
            Err(e) => log::error(format_args!("SIGHUP: {e}; going on serving")),
        }
    }

    /// The successor said something, went away, or died.
    fn hear_successor(&mut self, now: Instant) {
        use std::io::Read;
        let closed = loop {
            let Some(successor) = self.successor.as_mut() else {
                return;
            };
            let mut byte = [0u8; 1];
            match successor.channel.read(&mut byte) {
                Ok(1) if byte[0] == activation::LOADED && successor.phase == Phase::Loading => {
                    self.successor_ready(now);
                }
                Ok(1) if byte[0] == activation::SERVING => {
                    successor.phase = Phase::Serving;
                    log::info(format_args!(
                        "SIGHUP: the new guestsock (pid {}) serves",
                        successor.pid
                    ));
                    self.forget_successor_fds();
                    return;
                }
                Ok(1) => break Some("it said something unexpected".to_string()),
                Ok(_) => break Some("it exited".to_string()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e.to_string()),
            }
        };
        let Some(successor) = self.successor.as_mut() else {
            return;
        };
        let died = successor.pidfd.as_ref().is_some_and(exited);
        match successor.phase {
            Phase::Loading if closed.is_some() || died => {
                self.forget_successor_fds();
                self.successor = None;
                let why = closed.unwrap_or_else(|| "it died".into());
                log::error(format_args!(
                    "SIGHUP: the new guestsock failed before it was ready ({why}; its own log says why); going on serving"
                ));
            }
            Phase::Releasing | Phase::Released if died => self.resume(now),
            Phase::Released if closed.is_some() && successor.pidfd.is_none() => {
                // No pidfd to tell a death by: a closed channel is taken
                // for a successor (of an earlier release) that serves.
                successor.phase = Phase::Serving;
                self.forget_successor_fds();
            }
            _ => {}
        }
    }

    /// Stops watching the successor's channel and pidfd.
    fn forget_successor_fds(&mut self) {
        let Some(successor) = self.successor.as_mut() else {
            return;
        };
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut SourceFd(&successor.channel.as_raw_fd()));
        if let Some(pidfd) = successor.pidfd.take() {
            let _ = registry.deregister(&mut SourceFd(&pidfd.as_raw_fd()));
        }
    }

    /// The successor has the state loaded: stop accepting and refuse
    /// changes now; the state directory is released once what is in flight
    /// is durable.
    fn successor_ready(&mut self, now: Instant) {
        let Some(successor) = self.successor.as_mut() else {
            return;
        };
        successor.phase = Phase::Releasing;
        // The files belong to the successor now.
        self.listeners.hand_files_over();
        self.begin_shutdown(Signal::SIGHUP, now);
        self.release_when_durable();
    }

    /// Releases the state directory to a ready successor once no change is
    /// in flight: the writer thread, idle by then, is stopped (closing the
    /// database and its lock) and the successor is told.
    pub(super) fn release_when_durable(&mut self) {
        let Some(successor) = self.successor.as_mut() else {
            return;
        };
        if successor.phase != Phase::Releasing
            || !self.in_flight.is_empty()
            || !self.waiting.is_empty()
        {
            return;
        }
        self.writer.finish();
        activation::release(&mut successor.channel);
        successor.phase = Phase::Released;
        log::info(format_args!(
            "SIGHUP: released the state directory to the new guestsock (pid {}); {} connection(s) finish here",
            successor.pid,
            self.conns.len()
        ));
    }

    /// The successor died during the handoff before it served: take the
    /// state directory back if it was released, and serve again.
    fn resume(&mut self, now: Instant) {
        let Some(successor) = self.successor.take() else {
            return;
        };
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut SourceFd(&successor.channel.as_raw_fd()));
        if let Some(pidfd) = &successor.pidfd {
            let _ = registry.deregister(&mut SourceFd(&pidfd.as_raw_fd()));
        }
        if successor.phase == Phase::Released {
            // What this process acknowledged is in the directory, and the
            // successor served nothing: the registry here is up to date.
            let reopened =
                store::open(&self.state_dir, None, &mut |_| Ok(())).and_then(|(state, _)| {
                    state
                        .spawn_writer(Arc::clone(&self.wake))
                        .map_err(|e| format!("cannot start the state writer: {e}"))
                });
            match reopened {
                Ok((writer, committed)) => {
                    self.writer = writer;
                    self.committed = committed;
                }
                Err(e) => {
                    log::error(format_args!(
                        "SIGHUP: the new guestsock (pid {}) died, and the state directory cannot be taken back: {e}; stopping",
                        successor.pid
                    ));
                    return;
                }
            }
        }
        self.listeners.restore_activated(&successor.activated);
        if let Err(e) = self.listeners.register(self.poll.registry()) {
            log::error(format_args!("cannot listen again: {e}; stopping"));
            return;
        }
        self.stopping = None;
        self.listeners.all_waiting();
        if let Err(e) = crate::pidfile::PidFile::write(&self.pid_file) {
            log::warn(format_args!("{e}"));
        }
        self.next_ping = now + self.limits.ping_interval;
        log::error(format_args!(
            "SIGHUP: the new guestsock (pid {}) died during the handoff; this one goes on serving",
            successor.pid
        ));
        activation::notify("READY=1\nSTATUS=serving (a handoff failed)");
    }

    /// SIGTERM or SIGINT: stop accepting, end event streams (websockets
    /// with close 1001), answer waiting requests with what is there, and
    /// let answers in flight finish, for at most [`SHUTDOWN_GRACE`].
    pub(super) fn begin_shutdown(&mut self, signal: Signal, now: Instant) {
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
        self.listeners.deregister(self.poll.registry());
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
    pub(super) fn remove_conn(&mut self, key: usize) {
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

    /// Drives one connection, then makes what it changed durable. Returns
    /// whether the connection stays open.
    pub(super) fn drive(&mut self, key: usize) -> bool {
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
            handing_over: self
                .successor
                .as_ref()
                .is_some_and(|s| s.phase.handed_over()),
            refusal_logged: &mut self.refusal_logged,
            issuer: &mut self.issuer,
            mints: &mut self.mints,
        };
        let next = conn.drive(&mut ctx);
        let open = next != Next::Close;
        if !open {
            self.finished.push(key);
        }
        if next == Next::Yield {
            self.deferred.push(key);
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
        if let Some(mint) = self.mints.pop() {
            self.last_ticket += 1;
            let ticket = self.last_ticket;
            if let Some(conn) = self.conns.get_mut(key) {
                conn.assign_mint(ticket);
            }
            self.minting.insert(ticket, (key, mint.started));
            self.submit_mint(ticket, mint);
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

    /// Removes the connections marked finished. Only between batches of
    /// events: a key freed and reused within one batch would receive an
    /// event meant for its previous owner.
    pub(super) fn sweep(&mut self) {
        for key in std::mem::take(&mut self.finished) {
            self.remove_conn(key);
        }
    }

    /// Reads one pending signal, if any.
    pub(super) fn take_signal(&mut self) -> Option<Signal> {
        match self.signals.read_signal() {
            Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
            _ => None,
        }
    }
}
