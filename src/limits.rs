//! Every bound guestsock enforces, in one place.
//!
//! Each constant says its default and why. Bounds a guest can push against are
//! checked before anything is allocated for the input that would cross them.

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

/// cgroup ids remembered with the path they name (`identity::CgroupPaths`):
/// 65,536, about 6 MiB at most.
///
/// Each is learned on the first connection from a cgroup and spares later
/// ones a `/proc` read. A host creating and removing cgroups for ever would
/// grow the map without end, so at this size it is emptied and learned
/// again; a dense host's live cgroups fit many times over.
pub const MAX_KNOWN_CGROUPS: usize = 65_536;

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
pub const LOG_THROTTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest request body on the admin socket, in bytes: 8 MiB.
///
/// Admin bodies are instance objects, whose config values may each be up to
/// [`MAX_VALUE_BYTES`]; 8 MiB leaves room for several large values in one
/// object while keeping what one admin request can make the server buffer
/// bounded. A larger declared length is answered `413` before it is read.
pub const MAX_ADMIN_BODY_BYTES: usize = 8 * 1024 * 1024;

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

/// How often the server pings a websocket subscriber: 10 s. A subscriber
/// silent for three intervals is dropped (docs/protocol.md section 5).
pub const PING_INTERVAL_SECS: u64 = 10;

/// The limits an operator tunes with `serve` flags, with their defaults.
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
    /// `--max-per-instance`: open guest connections of one instance; default
    /// 32. One container cannot take the slots of the others: past it, `503`.
    pub max_per_instance: u32,
    /// `--max-unknown`: open guest connections from callers that match no
    /// instance, all together; default 64. They can only ever be told `403`.
    pub max_unknown: u32,
    /// `--header-timeout`: from a request's first byte to the end of its
    /// head; default 5 s. Past it (a slowloris), `408` and close.
    pub header_timeout: std::time::Duration,
    /// `--body-timeout`: from the end of the head to the end of the body;
    /// default 10 s. Past it, `408` and close.
    pub body_timeout: std::time::Duration,
    /// `--idle-timeout`: a keep-alive connection with no request under way,
    /// or an answer the peer does not read; default 60 s. Event streams
    /// and websockets are exempt (websockets have the ping rule instead).
    pub idle_timeout: std::time::Duration,
    /// `--rate-limit`: guest requests per second per instance, refilling a
    /// token bucket of `rate_burst`; default 100. Past it, `429` with
    /// `Retry-After`. 0 turns it off (benchmarks).
    pub rate_per_sec: u32,
    /// `--rate-burst`: the bucket's size; default 200.
    pub rate_burst: u32,
    /// `--ws-ping-interval`: how often websocket subscribers are pinged;
    /// default 10 s. One silent for three intervals is dropped.
    pub ping_interval: std::time::Duration,
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

/// Admin connections open at once, at most: 16. They may go past the guest
/// ceiling, into [`RESERVED_FDS`], so that the operator always gets in when
/// guests hold every slot; the rest of the reserve stays for the writer.
pub const MAX_ADMIN_CONNECTIONS: usize = 16;

impl Default for Tunables {
    fn default() -> Tunables {
        use std::time::Duration;
        Tunables {
            max_connections: None,
            max_per_instance: 32,
            max_unknown: 64,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            rate_per_sec: 100,
            rate_burst: 200,
            ping_interval: Duration::from_secs(PING_INTERVAL_SECS),
        }
    }
}
