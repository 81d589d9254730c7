//! One guest connection's state machine: bytes in, requests answered in
//! order, bytes out, never blocking.
//!
//! Owns the connection's buffers and the edge-triggered read/write
//! discipline: read until `WouldBlock`, keep partial writes and resume them,
//! stop answering pipelined requests while too much output waits. It does not
//! know the event loop (`server`) or what a request means (`api::guest`).

use std::io::{self, Read, Write};

use mio::net::UnixStream;

use crate::api::guest::{self, GuestChange};
use crate::http::request::{self, Parsed};
use crate::http::response::Response;
use crate::identity::PeerFacts;
use crate::limits::{MAX_GUEST_BODY_BYTES, MAX_PENDING_OUTPUT_BYTES, READ_CHUNK_BYTES};
use crate::registry::Registry;

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
    pub fn new(stream: UnixStream, peer: PeerFacts) -> Conn {
        Conn {
            stream,
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

    /// Whether the connection holds no buffer and waits for a request.
    pub fn is_idle(&self) -> bool {
        self.input.capacity() == 0 && self.output.capacity() == 0 && self.state == ConnState::Open
    }

    /// Does all the work that readiness allows: flush, answer buffered
    /// requests, read more, until nothing moves. Changes guest requests made
    /// are appended to `changes` for the server to persist and announce.
    pub fn drive(&mut self, registry: &mut Registry, changes: &mut Vec<GuestChange>) -> Next {
        loop {
            match self.flush() {
                Ok(true) => {}
                Ok(false) => return Next::Wait,
                Err(_) => return Next::Close,
            }
            if self.state == ConnState::Closing {
                return Next::Close;
            }
            if self.answer_buffered(registry, changes) {
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
    fn answer_buffered(&mut self, registry: &mut Registry, changes: &mut Vec<GuestChange>) -> bool {
        let mut answered = false;
        while self.state == ConnState::Open
            && !self.input.is_empty()
            && self.output.len() - self.written < MAX_PENDING_OUTPUT_BYTES
        {
            match request::parse(&self.input, self.scan_from, MAX_GUEST_BODY_BYTES) {
                Ok(Parsed::Partial { scan_from }) => {
                    self.scan_from = scan_from;
                    break;
                }
                Ok(Parsed::Complete(req)) => {
                    let (response, change) = guest::answer(&req, &self.peer, registry);
                    changes.extend(change);
                    let keep_alive = req.keep_alive && !response.close;
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
                }
                Err(e) => {
                    Response::for_request_error(e).write_to(&mut self.output, false, false, false);
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
