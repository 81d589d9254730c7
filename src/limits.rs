//! Every bound guestsock enforces, in one place.
//!
//! Each constant says its value and why; each default of a `serve` flag is
//! written once, here, and `--help` shows it from [`Tunables::default`].
//! Bounds a guest can push against are checked before anything is allocated
//! for the input that would cross them.

use std::time::Duration;

/// Largest request head (request line plus headers), in bytes: 8 KiB.
///
/// Guest requests are a request line and a handful of short headers; 8 KiB is
/// what nginx and micro-http allow too, and a head past it is answered `431`.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Most header fields in one request: 64. More is answered `431`.
///
/// httparse parses into a fixed array of this size, so it also bounds the
/// stack used per parse.
pub const MAX_HEADERS: usize = 64;

/// Largest request body on the guest socket, in bytes: 16 KiB.
///
/// The only guest body is `PATCH /1.0`'s `{"state":"Ready"}`; anything near
/// this size is not a real client. A larger declared length is answered `413`
/// before a byte of it is read.
pub const MAX_GUEST_BODY_BYTES: usize = 16 * 1024;

/// Largest config value or device field, in bytes: 1 MiB.
///
/// Big enough for any cloud-init user-data in practice, small enough that one
/// instance cannot make every answer about it enormous.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// Bytes asked of the kernel per `read` on a connection: 4 KiB.
///
/// A whole guest request fits in one read; a connection's input buffer is
/// released again as soon as it holds no partial request.
pub const READ_CHUNK_BYTES: usize = 4 * 1024;

/// Output queued on one connection before guestsock stops answering its
/// pipelined requests until the peer reads: 256 KiB.
///
/// This is what keeps a client that pipelines without reading from making
/// the server's memory grow: past it, its further requests wait in the
/// kernel's socket buffer, not in ours. One response may exceed it (a large
/// config value), but no second one is queued behind it.
pub const MAX_PENDING_OUTPUT_BYTES: usize = 256 * 1024;

/// What the cgroup ids remembered with the paths they name
/// (`identity::CgroupPaths`) may cost at most, counted as each path's bytes
/// plus [`CGROUP_ENTRY_OVERHEAD_BYTES`]: 8 MiB.
///
/// Each id is learned on the first connection from a cgroup and spares later
/// ones a `/proc` read. A guest can create cgroups (a container with a
/// delegated subtree, without end), so the cache is bounded by what it
/// costs: about 40,000 entries of 40-byte paths, many times the live cgroups
/// of a dense host. Past it the oldest entry goes first.
pub const MAX_CGROUP_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// The part of [`MAX_CGROUP_CACHE_BYTES`] the cgroups of one container may
/// take: an eighth (1 MiB, about 5,000 entries).
///
/// A container is a share of the cache: the cgroup path up to its first
/// component that is not a systemd slice (`/lxc.payload.c1`,
/// `/system.slice/docker-ID.scope`). One that creates cgroups without end
/// fills its own share and no more; its further cgroups are read from
/// `/proc` at each connection, as every cgroup was before the cache.
pub const CGROUP_CACHE_SHARE_DIVISOR: usize = 8;

/// What one cached cgroup id costs beyond its path's bytes, as counted
/// against [`MAX_CGROUP_CACHE_BYTES`]: 160 bytes.
///
/// The map's slot (48 bytes: id, path, share, cost) twice over for the
/// spare capacity a hash table keeps, the sweep queue's slot (8, twice), the
/// shared path's reference counts and allocator header (32); rounded up, so
/// that the count bounds the real cost, which `benches/cgroup_cache.py`
/// measures from the server's RSS (BENCHMARKS.md).
pub const CGROUP_ENTRY_OVERHEAD_BYTES: usize = 160;

/// How many cached cgroup ids are checked against cgroupfs (still there,
/// with the same id) each [`CGROUP_SWEEP_INTERVAL`]: 4,096.
///
/// One `stat` each, a few milliseconds at most on the loop; a full cache is
/// swept in about 15 s, and the memory of removed cgroups given back.
pub const CGROUP_SWEEP_PER_TURN: usize = 4096;

/// How often the cgroup-id cache is swept for removed cgroups, while it
/// holds anything: 1 s.
pub const CGROUP_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Longest instance name: 63 bytes of `a-z`, `0-9` and `-` (docs/protocol.md
/// section 4).
///
/// A name is a DNS label (RFC 1035 2.3.4: "labels 63 octets or less"), as
/// LXD requires: it is the guest's `local-hostname`.
pub const MAX_INSTANCE_NAME_BYTES: usize = 63;

/// Longest config key, device name or device field name: 255 bytes of
/// printable ASCII (docs/protocol.md section 4).
///
/// A key is a path segment (`/1.0/config/<key>`) and a line of
/// `GET /1.0/config`; 255 is a file name's limit on Linux (`NAME_MAX`), far
/// above any key LXD or cloud-init uses.
pub const MAX_KEY_BYTES: usize = 255;

/// Longest `location` or `cloud_init_id` of an instance: 255 bytes.
///
/// Both are shown to the guest on every `GET /1.0` or meta-data read; a
/// location is a host name, and RFC 1035 2.3.4 bounds a name to 255 octets.
pub const MAX_LABEL_BYTES: usize = 255;

/// Longest cgroup path in a match rule: 4096 bytes, Linux's `PATH_MAX`, the
/// longest path a process can name.
pub const MAX_CGROUP_PATH_BYTES: usize = 4096;

/// Largest `/proc/<pid>/cgroup` read when a caller is identified: 4 KiB,
/// read into the stack on every accepted connection that needs it.
///
/// On a cgroup v2 host it is the one line `0::<path>`; a longer file is
/// refused as unreadable rather than read in pieces.
pub const MAX_CGROUP_FILE_BYTES: usize = 4096;

/// Largest `--instances` file read at start: 256 MiB.
///
/// 4096 instances with generous config fit many times over; a larger file is
/// refused rather than read into memory.
pub const MAX_INSTANCES_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// Readiness events taken from epoll per wake-up: 1024.
pub const EVENTS_PER_POLL: usize = 1024;

/// Connections accepted from one listening socket per turn of the event
/// loop: 64 (HAProxy's `tune.maxaccept`; nginx takes one per wake-up).
///
/// Between two batches the loop serves the connections already open, the
/// signals, the timers and the other socket. Accepting until the backlog
/// is empty instead lets one process that only connects and closes, as
/// fast as it can, stall everything else for as long as it keeps going.
pub const ACCEPTS_PER_TURN: usize = 64;

/// Requests one connection has answered per turn of the event loop: 8.
///
/// A client may pipeline as many requests as its socket buffer holds (a
/// flooder: 200 deep, again and again); answered all at once, one
/// connection's pipeline would delay every other connection's first
/// request by its whole length. After this many the connection goes to the
/// back of the turn and is driven again in the next one, after everyone
/// else that had something to do (RFC 9112 section 9.3.2 lets a server
/// answer pipelined requests at its own pace, in order).
pub const REQUESTS_PER_TURN: usize = 8;

/// Refusals (`403` for a caller of no instance, `429` over the rate) one
/// keep-alive connection is given before it is closed: 4.
///
/// Answering a flood of refused requests costs the server as much as
/// serving them; a real client that is refused stops asking, or asks once
/// more after a while on a new connection. Closing after a few makes a
/// refused flooder pay for a new connection (accepted a bounded number per
/// turn) for every few answers.
pub const REFUSALS_PER_CONNECTION: u8 = 4;

/// How long the accept loop waits before retrying after the process ran out
/// of file descriptors (`EMFILE`/`ENFILE`): 100 ms.
///
/// Connections wait in the listen backlog meanwhile instead of spinning the
/// loop on an error that only a closed connection can clear.
pub const ACCEPT_RETRY_MS: u64 = 100;

/// Least time between two log lines about refused callers or exhausted
/// descriptors: 1 s.
///
/// Every such line is caused by a peer, and a peer can cause them as fast
/// as it can connect; the README promises one line a second at most.
pub const LOG_THROTTLE: Duration = Duration::from_secs(1);

/// Largest request body on the admin socket, in bytes: 64 MiB.
///
/// Admin bodies are instance objects, whose config values may each be up to
/// [`MAX_VALUE_BYTES`], or a batch of up to [`MAX_BATCH_INSTANCES`] of them
/// (a host's boot registration: 65,536 instances with a few small keys
/// are about 12 MiB). Only root (or an `--admin-uid`) can send one, and
/// what one admin request can make the server buffer stays bounded. A
/// larger declared length is answered `413` before it is read.
pub const MAX_ADMIN_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Most instances in one batch registration (`POST /1.0/instances` with
/// `{"instances": [...]}`): 65,536, a dense host's whole boot.
///
/// A batch is checked and staged in one turn of the event loop; the bound
/// keeps that turn's length (measured in BENCHMARKS.md) bounded too.
pub const MAX_BATCH_INSTANCES: usize = 65_536;

/// Largest data message a websocket client may send, in bytes: 64 KiB.
///
/// Subscribers have nothing to tell guestsock; what they send is read and
/// discarded as it arrives (never buffered), and a message past this is
/// answered with close code 1009.
pub const MAX_WS_MESSAGE_BYTES: u64 = 64 * 1024;

/// Events queued for one subscriber that does not read, in bytes: 256 KiB.
///
/// On top of the kernel's socket buffer, and not counting the event being
/// read now: a subscriber is cut off (websocket close 1008, or closed in
/// stream mode) when the events waiting behind that one would pass it, so
/// one that stops reading never makes the server's memory grow, while one
/// event larger than this (a 1 MiB config value) still reaches a reader.
pub const MAX_SUBSCRIBER_QUEUE_BYTES: usize = 256 * 1024;

/// The most bytes a subscriber's framing adds to one event: 10, a server
/// websocket frame's longest header (RFC 6455 5.2: 2 bytes, plus 8 for a
/// 64-bit length, no mask); a stream adds one newline.
pub const MAX_EVENT_FRAMING_BYTES: usize = 10;

/// Ping intervals a websocket subscriber may stay silent before it is
/// dropped: 3 (docs/protocol.md section 5).
///
/// A live client answers each ping within an interval; three missed in a
/// row (30 s at [`DEFAULT_PING_INTERVAL`]) mean the peer is gone or stuck,
/// and its connection would otherwise be held for ever, since subscribers
/// have no idle timeout.
pub const SILENT_PINGS: u32 = 3;

/// Most capacity a server buffer keeps when a connection gives it back:
/// 64 KiB.
///
/// Connections borrow the server's buffers while they are driven, so that
/// an idle one holds none; one large answer (a 1 MiB config value) must not
/// keep a large buffer for good.
pub const SPARE_BUFFER_BYTES: usize = 64 * 1024;

/// The longest `timeout_sec` of a change wait (`?wait_for_change=true`,
/// docs/protocol.md section 6): 300 s. A longer one is answered `400`.
///
/// A waiting request keeps its connection, which counts against its
/// instance's connection cap: the bound keeps one request from parking a
/// connection for ever. A client that wants to wait longer asks again.
pub const MAX_WAIT_SECS: u64 = 300;

/// The `timeout_sec` of a change wait that names none: 60 s.
///
/// A client that did not choose gets an answer, changed or not, once a
/// minute: often enough to notice a server that went away.
pub const DEFAULT_WAIT_SECS: u64 = 60;

/// How long a stopping server lets answers in flight finish: 5 s.
///
/// On SIGTERM, SIGINT or SIGHUP the server stops accepting, ends event
/// streams and answers waiting requests at once; what is left are answers
/// being written and changes waiting for their fsync. A client that does
/// not read its answer is not waited for past this (the README promises at
/// most 5 s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a guestsock started by SIGHUP waits for its predecessor, first
/// for the listening sockets, then for the state directory: 60 s.
///
/// The predecessor lets go of the directory as soon as the changes it
/// acknowledged or is writing are on disk (it never waits for its guests);
/// a minute leaves a slow disk plenty of room, and a predecessor that hangs
/// makes the successor fail with an error instead of waiting for ever.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a guestsock in a handoff waits, once the other process closed
/// the handoff channel, for its pidfd to say it exited: 5 s.
///
/// A process closes its descriptors on its way out and is a zombie a moment
/// later; a process that closed the channel and lives on ended the handoff
/// on purpose, and this bounds how long that takes to tell.
pub const HANDOFF_EXIT_WAIT: Duration = Duration::from_secs(5);

/// How long a server that got SIGHUP goes on serving while its successor
/// reads the state, before it hands over without hearing that the
/// successor is ready: 10 s.
///
/// Reading 65,536 instances takes a fraction of a second; a successor from
/// a release before this one never says it is ready, and is handed the
/// sockets after this long rather than never.
pub const HANDOFF_LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a command-line client waits for the server, each way, before
/// giving up: 60 s.
///
/// An admin change is answered once it is on disk; a minute covers a slow
/// fsync many times over, and a server that does not answer is reported
/// instead of hanging the command.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Header fields a client reads in an answer (the command line's from
/// guestsock, the Docker watcher's from the engine): 32.
///
/// guestsock sends fewer than ten, the engine about as many; an answer with
/// more is not one of theirs and is refused as not HTTP. httparse parses
/// into an array of this size on the stack.
pub const MAX_REPLY_HEADERS: usize = 32;

/// Largest answer head the command-line client reads from guestsock, in
/// bytes: 16 KiB.
///
/// guestsock's heads are a status line and a handful of short headers
/// (under 300 bytes); a head past this is not guestsock's, and the call
/// fails instead of buffering it.
pub const MAX_REPLY_HEAD_BYTES: usize = 16 * 1024;

/// Longest chunk-size line (with its extensions), and longest trailer
/// section, of a chunked answer any client reads, in bytes: 4 KiB.
///
/// guestsock and the Docker engine send a bare hexadecimal size and no
/// trailers; the bound keeps a line that never ends from being buffered.
pub const MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;

/// Largest value of a timeout flag of `serve`, in seconds: 86,400 (a day).
///
/// A longer timeout is a mistake of units rather than a tuning, and the
/// bound keeps the conversion to a `Duration` far from overflow.
pub const MAX_FLAG_SECS: u64 = 86_400;

/// The open-file limit assumed if `getrlimit` cannot tell: 1024, the usual
/// soft limit, so that the connection caps derived from it stay low rather
/// than unbounded.
pub const FALLBACK_FD_LIMIT: usize = 1024;

/// `--max-per-instance`'s default: 32 open guest connections per instance.
///
/// A guest needs a few (cloud-init, an agent, an event subscriber); 32
/// leaves room for many agents while one container cannot take the slots
/// of the others.
pub const DEFAULT_MAX_PER_INSTANCE: u32 = 32;

/// `--max-unknown`'s default: 64 open guest connections from callers that
/// match no instance, all together.
///
/// Such callers can only ever be told `403`; a few at a time is plenty for
/// that, and more are answered `503` instead of taking slots that instances
/// need.
pub const DEFAULT_MAX_UNKNOWN: u32 = 64;

/// `--header-timeout`'s default: 5 s from a request's first byte to the end
/// of its head.
///
/// A real client writes its head at once; a slowloris that trickles it
/// holds a connection for 5 s at most.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// `--body-timeout`'s default: 10 s from the end of the head to the end of
/// the body.
///
/// Bodies are small (a guest's state, an admin object of at most
/// [`MAX_ADMIN_BODY_BYTES`]) and sent right behind their head.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// `--idle-timeout`'s default: 60 s of a keep-alive connection with no
/// request under way, or of an answer the peer does not read.
///
/// Enough to keep a connection for a client that asks again soon, without
/// holding descriptors for clients that left.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `--rate-limit`'s default: 100 guest requests a second per instance.
///
/// Far above what cloud-init or an agent asks; a guest that loops on the
/// socket is slowed to it (its kept connections are not read until the
/// next token) or told `429` (a connection's first request) instead of
/// taking a growing share of the one event loop.
pub const DEFAULT_RATE_PER_SEC: u32 = 100;

/// `--rate-burst`'s default: a bucket of 200 requests, so that a guest
/// starting up can ask for everything at once.
pub const DEFAULT_RATE_BURST: u32 = 200;

/// `--ws-ping-interval`'s default: a ping every 10 s to each websocket
/// subscriber.
///
/// A vanished peer is found within [`SILENT_PINGS`] intervals; a ping is
/// one small frame per subscriber.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);

/// The limits an operator tunes with `serve` flags. Each field's default is
/// the `DEFAULT_` constant named in its doc.
///
/// Every one of them bounds what one guest can take from the others: a
/// container can reach the guest socket, so every container is a possible
/// attacker (SECURITY.md).
#[derive(Debug, Clone, PartialEq)]
pub struct Tunables {
    /// `--max-connections`: open connections on both sockets together.
    /// Default: the open-file limit minus [`RESERVED_FDS`], so that accepting
    /// never fails for want of a descriptor; a smaller value is honoured,
    /// a larger one lowered to that. Past it, a new connection is answered
    /// `503` and closed.
    pub max_connections: Option<usize>,
    /// `--max-per-instance`: open guest connections of one instance
    /// ([`DEFAULT_MAX_PER_INSTANCE`]). Past it, `503`.
    pub max_per_instance: u32,
    /// `--max-unknown`: open guest connections from callers that match no
    /// instance, all together ([`DEFAULT_MAX_UNKNOWN`]). Past it, `503`.
    pub max_unknown: u32,
    /// `--header-timeout`: from a request's first byte to the end of its
    /// head ([`DEFAULT_HEADER_TIMEOUT`]). Past it, `408` and close.
    pub header_timeout: Duration,
    /// `--body-timeout`: from the end of the head to the end of the body
    /// ([`DEFAULT_BODY_TIMEOUT`]). Past it, `408` and close.
    pub body_timeout: Duration,
    /// `--idle-timeout`: a keep-alive connection with no request under way,
    /// or an answer the peer does not read ([`DEFAULT_IDLE_TIMEOUT`]).
    /// Event streams and websockets are exempt (websockets have the ping
    /// rule instead).
    pub idle_timeout: Duration,
    /// `--rate-limit`: guest requests per second per instance, refilling a
    /// token bucket of `rate_burst` ([`DEFAULT_RATE_PER_SEC`]). Past it, a
    /// connection's first request is `429` with `Retry-After`, and a kept
    /// connection waits unread for the next token. 0 turns it off
    /// (benchmarks).
    pub rate_per_sec: u32,
    /// `--rate-burst`: the bucket's size ([`DEFAULT_RATE_BURST`]).
    pub rate_burst: u32,
    /// `--ws-ping-interval`: how often websocket subscribers are pinged
    /// ([`DEFAULT_PING_INTERVAL`]). One silent for [`SILENT_PINGS`]
    /// intervals is dropped.
    pub ping_interval: Duration,
}

/// File descriptors kept free of guest connections for everything else the
/// server opens (the state writer's files, the epoll and signal
/// descriptors, a peer's pidfd, admin connections): 64. Guests past the
/// open-file limit less this get `503`; the limit is read again on every
/// accepting turn, so a limit lowered under a running server (`prlimit`)
/// is honoured at once. The kernel refuses a descriptor *number* at or
/// above the limit, and while fewer descriptors than the limit are open
/// some number below it is free, so the writer and the operator always
/// find one.
pub const RESERVED_FDS: usize = 64;

/// Admin connections that may be open past the connection ceiling, out of
/// [`RESERVED_FDS`]: 16. Below the ceiling the admin socket takes slots like
/// anyone (an orchestrator may open many at once); past it, these keep the
/// operator able to get in when guests hold every slot, and the rest of the
/// reserve stays for the writer.
pub const MAX_ADMIN_CONNECTIONS: usize = 16;

impl Default for Tunables {
    fn default() -> Tunables {
        Tunables {
            max_connections: None,
            max_per_instance: DEFAULT_MAX_PER_INSTANCE,
            max_unknown: DEFAULT_MAX_UNKNOWN,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            rate_per_sec: DEFAULT_RATE_PER_SEC,
            rate_burst: DEFAULT_RATE_BURST,
            ping_interval: DEFAULT_PING_INTERVAL,
        }
    }
}

/// Largest input a runtime hook reads, in bytes: 1 MiB (an OCI container
/// state on standard input, an LXC labels file).
///
/// A state is a few hundred bytes plus the container's annotations; the
/// bound keeps a hook that was handed the wrong input from reading forever.
pub const MAX_HOOK_INPUT_BYTES: u64 = 1024 * 1024;

/// Largest OCI bundle `config.json` the hook reads for annotations, in
/// bytes: 16 MiB (only when the runtime's state leaves them out).
pub const MAX_OCI_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// How many cgroups `guestsock doctor` looks through, breadth first, for a
/// process of an instance matched by cgroup: 4096. A container's processes
/// are nearly always at its group's top; a bound keeps a group with a huge
/// tree below it from making the command crawl.
pub const MAX_DOCTOR_CGROUP_DIRS: usize = 4096;

/// Largest response head `guestsock watch docker` reads from the Docker
/// engine, in bytes: 16 KiB.
///
/// The engine's heads are a status line and fewer than ten short headers
/// (about 300 bytes); a head past this is not the engine's and the call
/// fails instead of buffering it.
pub const DOCKER_MAX_HEAD_BYTES: usize = 16 * 1024;

/// Largest answer body the Docker watcher reads from the engine, in bytes:
/// 64 MiB.
///
/// The largest answer is `GET /containers/json` on a dense host: about
/// 2 KiB per running container (its labels, ports and mounts), so 10,000
/// containers fit three times over; a container's own `inspect` is a few
/// KiB. A larger answer fails the call rather than growing without end.
pub const DOCKER_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Largest single event on the engine's event stream, and so the largest
/// chunk of that stream, in bytes: 1 MiB.
///
/// An event is one JSON line carrying the container's labels (a few hundred
/// bytes usually); Docker writes each as one chunk. A longer line or chunk
/// ends the stream, and the watcher reconnects and reconciles, so nothing
/// is missed because of it.
pub const DOCKER_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Engine events read but not yet handled by the Docker watcher: 16,384.
///
/// A reader thread drains the stream while the watcher inspects and
/// registers (a reconcile of thousands of containers takes seconds), since
/// the engine drops events for a subscriber that stops reading for 100 ms
/// with 1,024 queued. Past this queue the watcher drops the stream, then
/// reconnects and reconciles, so a burst costs a reconcile, never an event.
pub const DOCKER_EVENT_QUEUE: usize = 16 * 1024;

/// How long the Docker watcher waits for the engine to answer one call
/// (`inspect`, the container list): 30 s.
///
/// The engine answers in milliseconds; an engine that hangs is treated as
/// lost (reconnect and reconcile) rather than stalling every container's
/// registration behind it.
pub const DOCKER_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// First wait before the Docker watcher reconnects to a lost engine: 100 ms.
///
/// A restarting engine (`systemctl restart docker`) is back within a
/// second or two; the wait doubles from here up to
/// [`DOCKER_RECONNECT_MAX`].
pub const DOCKER_RECONNECT_FIRST: Duration = Duration::from_millis(100);

/// Longest wait between two attempts to reach the engine (or the admin
/// socket) again: 5 s.
///
/// Containers started while the engine is unreachable are registered by
/// the reconcile that follows the reconnection, so this bounds how long
/// they may wait for it after the engine is back.
pub const DOCKER_RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Pages (4 KiB each) the state database's write-ahead log may hold before
/// it is copied back into the database: 256, 1 MiB.
///
/// Every checkpoint costs an fsync of the database file; a longer log costs
/// that disk space until the next one, and a small or nearly full disk must
/// still be able to take a checkpoint. The log is cut back to this size
/// after each.
pub const STATE_CHECKPOINT_PAGES: i64 = 256;

/// The state database's page cache, in KiB: 2048 (SQLite's default).
///
/// It lives in the writer thread and speeds up the index updates of large
/// batches; the instances themselves are in the registry.
pub const STATE_CACHE_KIB: i64 = 2048;

/// Most threads that decode the state at start: 4.
///
/// Decoding 65,536 instance documents is most of a cold start; it splits
/// evenly, and more threads than cores gain nothing.
pub const MAX_DECODE_THREADS: usize = 4;

/// Rows handed to a decoding thread at a time at start: 256 (large enough
/// that handing them over costs nothing beside decoding them, small enough
/// that registering starts at once).
pub const DECODE_CHUNK: usize = 256;
/// The `ttl` of an identity token that names none: 600 s (docs/protocol.md
/// section 9).
///
/// Ten minutes: long enough for a token exchange or a login, short enough
/// that a leaked token is soon worth nothing (GCE's identity tokens last an
/// hour; Kubernetes projected tokens, at least ten minutes).
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 600;

/// The shortest `ttl` a guest may ask for: 60 s. Shorter is `400`: a token
/// must outlive the clock skew between the host and its verifier.
pub const MIN_TOKEN_TTL_SECS: u64 = 60;

/// The longest `ttl` a guest may ask for: 3600 s. Longer is `400`. It also
/// bounds how long a retired key stays published after its last use.
pub const MAX_TOKEN_TTL_SECS: u64 = 3600;

/// Longest `audience` of a token request: 255 bytes of visible ASCII
/// (docs/protocol.md section 9). Longer is `400`.
pub const MAX_AUDIENCE_BYTES: usize = 255;

/// `--identity-rotate`'s default: a new signing key every 24 hours.
///
/// A key's lifetime bounds what a stolen key can sign, and a daily rotation
/// keeps every verifier's refetch of the JWKS exercised.
pub const DEFAULT_KEY_ROTATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest `--identity-rotate`: 365 days. A signing key that never changes
/// is one whose theft is never undone.
pub const MAX_KEY_LIFETIME_DAYS: u64 = 365;

/// How long a scheduled key rotation that failed (no randomness from the
/// operating system) waits before it is tried again: 60 s, so that the loop
/// neither spins on it nor fills the log.
pub const ROTATION_RETRY_SECS: u64 = 60;

/// Most keys published at once (the signing key and those retired whose
/// tokens may still be valid): 32. A rotation past it is refused (`409`)
/// until a retired key is dropped, so that rotating in a loop cannot grow
/// the JWKS (and every verifier's cache of it) without bound.
pub const MAX_PUBLISHED_KEYS: usize = 32;

/// Signatures made at most for one token until one is low-S
/// (`jwt::is_low_s`): 64. Each is low-S with probability one half, on a
/// fresh nonce, so two are made on average and all 64 miss with
/// probability 2^-64; the bound keeps a broken random source from holding
/// the signer thread in a loop.
pub const LOW_S_SIGN_ATTEMPTS: u32 = 64;

/// Largest identity key file read at start: 1 MiB, far above
/// [`MAX_PUBLISHED_KEYS`] keys of a few hundred bytes each.
pub const MAX_KEYS_FILE_BYTES: u64 = 1024 * 1024;

/// Largest `/proc/self/mountinfo` `doctor` reads to find the cgroup
/// hierarchies: 16 MiB, room for about 100,000 mounts (a dense host's
/// containers each add a few).
pub const MAX_MOUNTINFO_BYTES: u64 = 16 * 1024 * 1024;

/// The vsock port `guestsock agent` connects to on the host (CID 2) by
/// default: 1024.
///
/// The first port that is not privileged: a host that serves it over real
/// AF_VSOCK needs no `CAP_NET_BIND_SERVICE` for it, and under hybrid vsock
/// (Firecracker, Cloud Hypervisor, vhost-device-vsock) it arrives on the
/// unix socket `<uds_path>_1024`. An instance's vsock listener defaults to
/// the same number.
pub const DEFAULT_AGENT_PORT: u32 = 1024;

/// How often the files of instances' own listeners are checked (still
/// there, still the socket guestsock bound): every second, at most
/// [`LISTENER_CHECKS_PER_TURN`] each time.
///
/// A socket file deleted by hand (or by a VMM's clean-up) leaves guestsock
/// listening on an inode nobody can reach: the VM's guest connections fail
/// with nothing in guestsock's log. Within a second it is noticed, logged and
/// bound again, and the backlog's connections are served on.
pub const LISTENER_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Listener files checked, and listeners that could not be opened tried
/// again, per [`LISTENER_CHECK_INTERVAL`]: 1,024 of each (an `lstat` a
/// check, a `bind` a retry: a few milliseconds on the loop at most); more
/// are taken in turns.
pub const LISTENER_CHECKS_PER_TURN: usize = 1024;

/// Listeners of its own an instance may have: 4.
///
/// One is what a VM or a container needs (its vsock port, or its socket
/// directory); a few more let an operator move one without a gap. Each is
/// a descriptor of the server's and a file on the host, so a typo in an
/// orchestrator cannot have one instance take thousands.
pub const MAX_INSTANCE_LISTENERS: usize = 4;

/// The longest path a listener's socket may have: 107 bytes, what a unix
/// socket address (`sun_path`, 108 bytes) holds with its terminating NUL.
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// In-guest connections `guestsock agent` relays at once: 256.
///
/// Each is a thread of [`AGENT_THREAD_STACK_BYTES`] with two buffers of
/// [`AGENT_RELAY_BUFFER_BYTES`], about 300 KiB of address space and far
/// less resident; a guest's own programs hold a few connections each (one
/// events stream, a request at a time), so 256 is room for a busy guest
/// while a runaway one cannot exhaust the VM's memory or threads. Past it, a
/// caller is answered `503` at accept and closed, as the host's cap does.
pub const DEFAULT_AGENT_MAX_CONNECTIONS: u32 = 256;

/// Bytes `guestsock agent` holds for each direction of one connection:
/// 16 KiB.
///
/// A relay reads at most this much from one side before it has written it
/// to the other, so a side that does not read stops the other from being
/// read (back-pressure) instead of growing a queue. Four of the server's
/// read chunks at a time keep a large answer moving in few system calls.
pub const AGENT_RELAY_BUFFER_BYTES: usize = 16 * 1024;

/// Stack of each relay thread of `guestsock agent`: 256 KiB.
///
/// A relay is one loop over two descriptors with its buffers on the heap; a
/// quarter of a megabyte is ample even for a debug build, and an eighth of
/// the default, so the connection cap costs little address space.
pub const AGENT_THREAD_STACK_BYTES: usize = 256 * 1024;

/// How long a relayed connection may pass no byte either way before
/// `guestsock agent` closes it: 360 s.
///
/// Longer than the longest silence a healthy connection keeps, a
/// `wait_for_change` of [`MAX_WAIT_SECS`], with a minute to spare (an
/// events stream is pinged every [`DEFAULT_PING_INTERVAL`] and is never
/// that quiet). The host closes its idle keep-alive connections itself;
/// this frees a relay whose other side vanished without closing.
pub const AGENT_IDLE_TIMEOUT: Duration = Duration::from_secs(MAX_WAIT_SECS + 60);

/// How long `guestsock agent` waits for a caller's request head before
/// answering it `503` when the host cannot be reached: 1 s.
///
/// The answer then follows the request, as HTTP has it, and closing does
/// not reset a request still arriving; a caller sends its request as soon
/// as it connects, so a longer wait would only delay the answer of one
/// that sends nothing.
pub const AGENT_REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// Reads `reader` to its end, refusing more than `limit` bytes: at most
/// `limit + 1` bytes are ever read, and a longer input is an error
/// ("larger than N bytes"), never silently cut short.
pub fn read_at_most(reader: impl std::io::Read, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_at_most_the_limit_and_refuses_more() {
        assert_eq!(read_at_most(&b"abcd"[..], 4).unwrap(), b"abcd");
        assert_eq!(read_at_most(&b""[..], 0).unwrap(), b"");
        let err = read_at_most(&b"abcde"[..], 4).unwrap_err();
        assert_eq!(err.to_string(), "larger than 4 bytes");
        assert!(read_at_most(&b"a"[..], 0).is_err());
    }
}
