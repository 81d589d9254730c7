//! One guest connection's state machine: bytes in, requests answered in
//! order, bytes out, never blocking.
//!
//! Owns the connection's buffers and the edge-triggered read/write
//! discipline: read until `WouldBlock`, keep partial writes and resume them,
//! stop answering pipelined requests while too much output waits. It does not
//! know the event loop (`server`) or what a request means (`api`).
//!
//! An answer to a request that changed something is *held*: queued but not
//! written, and nothing behind it read, until the server says the change is
//! durable (PROTOCOL.md section 6: a 2xx means it is on disk).

use std::io::{self, Read, Write};

use mio::net::UnixStream;

use crate::api::admin::{self, ServerFacts};
use crate::api::{Change, guest};
use crate::http::request::{self, Parsed};
use crate::http::response::Response;
use crate::identity::{self, PeerFacts};
use crate::instance::RuleKinds;
use crate::limits::{
    MAX_ADMIN_BODY_BYTES, MAX_GUEST_BODY_BYTES, MAX_PENDING_OUTPUT_BYTES, READ_CHUNK_BYTES,
};
use crate::registry::Registry;

/// Which socket a connection came from, which decides its API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A container's process on the guest socket.
    Guest,
    /// The host's orchestrator on the admin socket; `authorized` if its uid
    /// is root or an `--admin-uid`.
    Admin {
        /// Whether the peer may use the admin API at all.
        authorized: bool,
    },
}

/// An answer held until the change it reports is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The answer is queued; the server has not yet given the change a
    /// sequence number.
    Unassigned {
        /// Where the held answer starts in the output.
        at: usize,
    },
    /// Waiting for the writer to report `seq` durable.
    Waiting {
        /// Where the held answer starts in the output.
        at: usize,
        /// The sequence number of the change's last write.
        seq: u64,
    },
}

/// What answering needs from the server.
pub struct Ctx<'a> {
    /// The instances.
    pub registry: &'a mut Registry,
    /// Where answered requests report their changes.
    pub changes: &'a mut Vec<Change>,
    /// What the admin `GET /1.0` tells.
    pub facts: &'a ServerFacts,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Reading requests and answering them in order (keep-alive).
    Open,
    /// The last answer is queued (the client asked to close, sent EOF, or
    /// sent something unreadable): flush it, then close.
    Closing,
}

/// What the event loop should do with a connection after driving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep it; it waits for readiness.
    Wait,
    /// Drop it: finished, or the socket failed.
    Close,
}

/// One accepted guest connection.
#[derive(Debug)]
pub struct Conn {
    stream: UnixStream,
    /// Which API the connection speaks.
    pub side: Side,
    /// An answer waiting for durability, if any.
    hold: Option<Hold>,
    /// Who is at the other end, established at accept.
    pub peer: PeerFacts,
    /// Received bytes not yet answered: at most one partial request (plus
    /// whatever arrived behind it in the same read). Released when empty so an
    /// idle connection holds no buffer.
    input: Vec<u8>,
    /// Where the next search for the end of the head starts in `input`.
    scan_from: usize,
    /// Answers not yet written; released when fully written.
    output: Vec<u8>,
    /// How much of `output` the kernel has taken.
    written: usize,
    state: ConnState,
    /// Edge-triggered readiness not yet drained by a read that would block.
    readable: bool,
    /// The peer shut its writing side.
    peer_eof: bool,
}

/// Whether an I/O error only means "not now".
fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Conn {
    /// A connection freshly accepted from `peer`.
    pub fn new(stream: UnixStream, peer: PeerFacts, side: Side) -> Conn {
        Conn {
            stream,
            side,
            hold: None,
            peer,
            input: Vec::new(),
            scan_from: 0,
            output: Vec::new(),
            written: 0,
            state: ConnState::Open,
            // A request may be waiting already: the first drive reads.
            readable: true,
            peer_eof: false,
        }
    }

    /// The socket, to register with the event loop.
    pub fn stream_mut(&mut self) -> &mut UnixStream {
        &mut self.stream
    }

    /// Records a readiness event. Readiness is a hint: reads stop at
    /// `WouldBlock` whatever it said.
    pub fn on_readable(&mut self) {
        self.readable = true;
    }

    /// The held answer, if one waits for durability.
    pub fn hold(&self) -> Option<Hold> {
        self.hold
    }

    /// Gives the held answer the sequence number that makes it durable.
    pub fn assign_hold(&mut self, seq: u64) {
        if let Some(Hold::Unassigned { at }) = self.hold {
            self.hold = Some(Hold::Waiting { at, seq });
        }
    }

    /// Releases the held answer: the change is durable.
    pub fn release_hold(&mut self) {
        self.hold = None;
    }

    /// Replaces the held answer by a `500` naming `error` (the change could
    /// not be made durable) and closes after it.
    pub fn fail_hold(&mut self, error: &str) {
        let Some(Hold::Waiting { at, .. } | Hold::Unassigned { at }) = self.hold.take() else {
            return;
        };
        self.output.truncate(at);
        let response = Response::error(500, format!("the change was applied but {error}"));
        let response = match self.side {
            Side::Guest => response,
            Side::Admin { .. } => response.enveloped(),
        };
        response.write_to(&mut self.output, false, false, false);
        self.state = ConnState::Closing;
    }

    /// Whether the connection holds no buffer and waits for a request.
    pub fn is_idle(&self) -> bool {
        self.input.capacity() == 0 && self.output.capacity() == 0 && self.state == ConnState::Open
    }

    /// Does all the work that readiness allows: flush, answer buffered
    /// requests, read more, until nothing moves or an answer is held. Changes
    /// requests made are appended to `ctx.changes` for the server to persist
    /// and announce.
    pub fn drive(&mut self, ctx: &mut Ctx<'_>) -> Next {
        loop {
            if self.hold.is_some() {
                return Next::Wait;
            }
            match self.flush() {
                Ok(true) => {}
                Ok(false) => return Next::Wait,
                Err(_) => return Next::Close,
            }
            if self.state == ConnState::Closing {
                return Next::Close;
            }
            if self.answer_buffered(ctx) {
                continue;
            }
            if self.peer_eof {
                // Everything complete was answered; a partial request at EOF
                // can never complete.
                self.state = ConnState::Closing;
                continue;
            }
            if !self.readable {
                return Next::Wait;
            }
            match self.read_some() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
    }

    /// Writes queued output. `Ok(true)` when all of it is written.
    fn flush(&mut self) -> io::Result<bool> {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.output.capacity() != 0 {
            self.output = Vec::new();
            self.written = 0;
        }
        Ok(true)
    }

    /// Answers the complete requests in `input`, in order, until the input
    /// holds none or the output bound is reached. Returns whether it queued
    /// any output.
    fn answer_buffered(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let mut answered = false;
        let max_body = match self.side {
            Side::Guest => MAX_GUEST_BODY_BYTES,
            Side::Admin { .. } => MAX_ADMIN_BODY_BYTES,
        };
        while self.state == ConnState::Open
            && self.hold.is_none()
            && !self.input.is_empty()
            && self.output.len() - self.written < MAX_PENDING_OUTPUT_BYTES
        {
            match request::parse(&self.input, self.scan_from, max_body) {
                Ok(Parsed::Partial { scan_from }) => {
                    self.scan_from = scan_from;
                    break;
                }
                Ok(Parsed::Complete(req)) => {
                    let (response, change) = match self.side {
                        Side::Guest => {
                            refresh_peer(&self.stream, &mut self.peer, ctx.registry);
                            guest::answer(&req, &self.peer, ctx.registry)
                        }
                        Side::Admin { authorized: true } => {
                            let (response, change) = admin::answer(&req, ctx.registry, ctx.facts);
                            (response.enveloped(), change)
                        }
                        Side::Admin { authorized: false } => (
                            Response::error(
                                403,
                                format!("uid {} may not use the admin socket", self.peer.uid),
                            )
                            .enveloped(),
                            None,
                        ),
                    };
                    let keep_alive = req.keep_alive && !response.close;
                    let at = self.output.len();
                    response.write_to(
                        &mut self.output,
                        req.method == "HEAD",
                        keep_alive,
                        req.http10,
                    );
                    let used = req.len;
                    self.consume(used);
                    if !keep_alive {
                        self.state = ConnState::Closing;
                    }
                    if let Some(change) = change {
                        ctx.changes.push(change);
                        self.hold = Some(Hold::Unassigned { at });
                    }
                }
                Err(e) => {
                    let response = Response::for_request_error(e);
                    let response = match self.side {
                        Side::Guest => response,
                        Side::Admin { .. } => response.enveloped(),
                    };
                    response.write_to(&mut self.output, false, false, false);
                    self.state = ConnState::Closing;
                }
            }
            answered = true;
        }
        answered
    }

    /// Drops `n` answered bytes from the front of `input`.
    fn consume(&mut self, n: usize) {
        self.input.drain(..n);
        self.scan_from = 0;
        if self.input.is_empty() {
            self.input = Vec::new();
        }
    }

    /// One `read` into `input`. A short read means the kernel had no more, so
    /// readiness is drained without a second, failing read.
    fn read_some(&mut self) -> io::Result<()> {
        let start = self.input.len();
        self.input.resize(start + READ_CHUNK_BYTES, 0);
        let result = self.stream.read(&mut self.input[start..]);
        let n = *result.as_ref().unwrap_or(&0);
        self.input.truncate(start + n);
        if self.input.is_empty() {
            self.input = Vec::new();
        }
        match result {
            Ok(0) => {
                self.peer_eof = true;
                self.readable = false;
            }
            Ok(n) if n < READ_CHUNK_BYTES => self.readable = false,
            Ok(_) => {}
            Err(e) if would_block(&e) => self.readable = false,
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Gathers the `/proc` facts a connection accepted before any cgroup or pid
/// rule existed now needs. The pidfd taken from the socket still pins the
/// process that connected, so facts proved through it now are as good as
/// at accept; if that process has exited, the facts fail closed.
fn refresh_peer(stream: &UnixStream, peer: &mut PeerFacts, registry: &Registry) {
    let kinds = registry.kinds_in_use();
    if kinds.needs_proc() && !peer.gathered.needs_proc() {
        match identity::peer_facts(stream, kinds) {
            Ok(facts) => *peer = facts,
            Err(_) => {
                peer.gathered = RuleKinds::CGROUP.union(RuleKinds::PID);
                peer.proc_error = Some("its credentials could not be read again");
            }
        }
    }
}
