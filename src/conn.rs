//! One connection's state machine: bytes in, requests answered in order,
//! bytes out, never blocking; and, once it subscribes, an event stream or a
//! websocket.
//!
//! Owns the connection's buffers and the edge-triggered read/write
//! discipline: read until `WouldBlock`, keep partial writes and resume them,
//! stop answering pipelined requests while too much output waits. It parses
//! each request and hands it to `dispatch`, which returns what it calls for
//! (a response, a subscription, a wait); the connection only acts on that.
//! It does not know the event loop (`server`) or what a request means
//! (`api`). It is generic over its socket: the server's is a mio
//! `UnixStream`, the unit tests' and the fuzzer's one end of a socket pair.
//! What it shares with `dispatch` and the server (its side, the context of
//! a drive, a subscription, a wait) is `request_ctx`'s, below both.
//!
//! An answer to a request that changed something is *held*: queued but not
//! written, and nothing behind it read, until the server says the change is
//! durable (docs/protocol.md section 7: a 2xx means it is on disk).

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use mio::net::UnixStream;

use crate::api::guest::{self, GuestAnswer};
use crate::api::identity::JWKS_PATH;
use crate::dispatch::{Outcome, dispatch};
use crate::error::NotServed;
use crate::http::request::{self, Parsed, Request, WebSocketHeaders};
use crate::http::response::{self, Response};
use crate::identity::{self, PeerFacts};
use crate::limits::{
    MAX_ADMIN_BODY_BYTES, MAX_EVENT_FRAMING_BYTES, MAX_GUEST_BODY_BYTES, MAX_PENDING_OUTPUT_BYTES,
    MAX_SUBSCRIBER_QUEUE_BYTES, MAX_WS_MESSAGE_BYTES, READ_CHUNK_BYTES, REFUSALS_PER_CONNECTION,
    REQUESTS_PER_TURN, SPARE_BUFFER_BYTES, Tunables,
};
use crate::preamble::Preamble;
use crate::registry::{InstanceId, Registry};
use crate::request_ctx::{ChangeWait, Ctx, Identification, KnownCaller, Side, Subscription};
use crate::ws::close_code;
use crate::ws::frame::{self, opcode};
use crate::ws::reader::{Action, Reader};

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
    /// An identity token is being signed (off the loop); its answer is
    /// written once it is. Nothing of it is queued yet.
    Minting {
        /// Names the token; 0 until the server gives it one.
        ticket: u64,
        /// The request asked to keep the connection.
        keep_alive: bool,
        /// The request was HTTP/1.0.
        http10: bool,
    },
}

/// Where a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Reading requests and answering them in order (keep-alive).
    Open,
    /// A guest request waits for a change (boxed: rare, and it holds a path).
    Waiting(Box<ChangeWait>),
    /// An event stream of JSON lines; any byte from the client ends it.
    Stream(Subscription),
    /// A websocket of events.
    WebSocket {
        /// What it is subscribed to.
        subscription: Subscription,
        /// The client's side of the protocol.
        reader: Reader,
        /// When the client last sent anything (a pong included).
        last_heard: Instant,
    },
    /// The last answer is queued (the client asked to close, sent EOF, or
    /// sent something unreadable): flush it, then close.
    Closing,
}

/// What the event loop should do with a connection after driving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Keep it; it waits for readiness.
    Wait,
    /// Keep it; it used up its turn ([`REQUESTS_PER_TURN`]) with more to
    /// do: drive it again in the next turn, after the others.
    Yield,
    /// Drop it: finished, or the socket failed.
    Close,
}

/// Whose list a connection is on, so that it is taken off when it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// An event subscriber of this instance (`None`: the admin stream).
    Subscriber(Option<InstanceId>),
    /// A guest request waiting for a change of this instance.
    Waiter(InstanceId),
}

/// What the server must register for a connection after driving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// It became a subscriber.
    Subscribed(Subscription),
    /// It waits for a change of its instance (its deadline is a timer
    /// like any other, `Conn::deadline`).
    Waiting(InstanceId),
}

/// One accepted connection.
#[derive(Debug)]
pub struct Conn<S = UnixStream> {
    /// The socket: the server's is a mio `UnixStream`; unit tests and the
    /// `connection` fuzz target drive one end of a socket pair.
    stream: S,
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
    /// Where, in `output`, the event a subscriber is reading now ends: what
    /// is queued behind it counts against its bound.
    event_end: usize,
    state: ConnState,
    /// Edge-triggered readiness not yet drained by a read that would block.
    readable: bool,
    /// The peer shut its writing side.
    peer_eof: bool,
    /// Its listener is a VM's: the agent's preamble, which says who called
    /// inside the guest, comes before the first request.
    awaiting_preamble: bool,
    /// epoll said the peer shut its side: read until EOF.
    read_closed: bool,
    /// A subscription or wait the server has not registered yet.
    registration: Option<Registration>,
    /// The server's list this connection is on (kept by the server).
    pub listed: Option<Listed>,
    /// Which count the connection is in (kept by the server).
    pub counted: Counted,
    /// When the first byte of the request being read arrived.
    request_started: Option<Instant>,
    /// When that request's head was complete (its body is being read).
    head_done_at: Option<Instant>,
    /// When bytes last moved in either direction.
    last_progress: Instant,
    /// The deadline the server has a timer for.
    pub timer: Option<Instant>,
    /// At least one request was answered on this connection.
    served: bool,
    /// How its listener identifies its callers, and the instance its caller
    /// was found to be at which registry generation (`dispatch`): while the
    /// registry is unchanged, a request costs no identity lookup.
    known: KnownCaller,
    /// Requests refused on this connection (`403`, `429`); at
    /// [`REFUSALS_PER_CONNECTION`] it is closed.
    refusals: u8,
    /// Until when the connection is not read nor answered: its instance is
    /// over its rate, and the next request waits for the bucket's next
    /// token (back-pressure) instead of being answered `429`.
    paused_until: Option<Instant>,
}

/// Which connection count a guest connection is in, decided at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Not counted (admin connections).
    Nothing,
    /// A caller that matched no instance.
    Unknown,
    /// A connection of this instance (id and registration serial).
    Instance(InstanceId, u64),
}

/// What a connection's deadline called for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Nothing was due (the deadline moved).
    Nothing,
    /// The pause for its instance's rate is over: drive it.
    Resumed,
    /// An answer was queued: drive the connection to send it.
    Answered,
    /// Close it.
    Close,
}

/// Whether an I/O error only means "not now".
fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl<S: Read + Write + AsFd> Conn<S> {
    /// A connection freshly accepted from `peer` on a listener of `side`
    /// that identifies its callers `by` that rule.
    pub fn new(stream: S, peer: PeerFacts, side: Side, by: Identification) -> Conn<S> {
        Conn {
            stream,
            side,
            hold: None,
            peer,
            input: Vec::new(),
            scan_from: 0,
            output: Vec::new(),
            written: 0,
            event_end: 0,
            state: ConnState::Open,
            // A request may be waiting already: the first drive reads.
            readable: true,
            peer_eof: false,
            awaiting_preamble: by.takes_preamble(),
            read_closed: false,
            registration: None,
            listed: None,
            counted: Counted::Nothing,
            request_started: None,
            head_done_at: None,
            last_progress: Instant::now(),
            timer: None,
            served: false,
            known: KnownCaller::new(by),
            refusals: 0,
            paused_until: None,
        }
    }

    /// How its listener identifies its callers.
    pub fn by(&self) -> Identification {
        self.known.by()
    }

    /// Notes what was read from the socket when it was accepted: `arrived`,
    /// bytes came (the caller left them in
    /// [`Buffers::input`](crate::request_ctx::Buffers::input), which this
    /// connection, having no buffer of its own, borrows on its first drive,
    /// so a request answered at once costs no allocation); `drained`, the
    /// read was short, so the kernel had nothing more then (a later arrival
    /// raises a readiness event once it is registered).
    pub fn received(&mut self, arrived: bool, drained: bool) {
        if arrived {
            self.request_started = Some(self.last_progress);
        }
        self.readable = !drained;
    }

    /// The socket, to register with the event loop.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Records a readiness event. Readiness is a hint: reads stop at
    /// `WouldBlock` whatever it said. `read_closed` says the peer has shut
    /// its side: then a short read does not mean drained, since the EOF
    /// behind the data will not raise another edge.
    pub fn on_readable(&mut self, read_closed: bool) {
        self.readable = true;
        self.read_closed |= read_closed;
    }

    /// The connection's state.
    pub fn state(&self) -> &ConnState {
        &self.state
    }

    /// What the server must register since the last call.
    pub fn take_registration(&mut self) -> Option<Registration> {
        self.registration.take()
    }

    /// The subscription, if the connection is a subscriber.
    pub fn subscription(&self) -> Option<Subscription> {
        match &self.state {
            ConnState::Stream(subscription) | ConnState::WebSocket { subscription, .. } => {
                Some(*subscription)
            }
            _ => None,
        }
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

    /// Whether the held answer waits for exactly write `seq` (a connection
    /// key may have been reused by a connection holding another answer).
    pub fn holds(&self, seq: u64) -> bool {
        matches!(self.hold, Some(Hold::Waiting { seq: held, .. }) if held == seq)
    }

    /// Gives the token being signed for this connection its ticket.
    pub fn assign_mint(&mut self, ticket: u64) {
        if let Some(Hold::Minting { ticket: held, .. }) = &mut self.hold {
            *held = ticket;
        }
    }

    /// Whether the connection waits for exactly token `ticket` (its key may
    /// have been reused by another connection since).
    pub fn mints(&self, ticket: u64) -> bool {
        matches!(self.hold, Some(Hold::Minting { ticket: held, .. }) if held == ticket)
    }

    /// The token is signed (or could not be): queues its answer, ending the
    /// hold; the connection closes after it if the request asked to, or the
    /// server is `stopping`.
    pub fn finish_mint(&mut self, response: Response, stopping: bool) {
        let Some(Hold::Minting {
            keep_alive, http10, ..
        }) = self.hold
        else {
            return;
        };
        self.hold = None;
        let keep_alive = keep_alive && !response.close && !stopping;
        response.write_to(&mut self.output, false, keep_alive, http10);
        if !keep_alive {
            self.state = ConnState::Closing;
        }
    }

    /// Replaces the held answer by a `500` naming `error` (the change could
    /// not be made durable, so it was not made at all) and closes after it.
    pub fn fail_hold(&mut self, error: &str) {
        let Some(Hold::Waiting { at, .. } | Hold::Unassigned { at }) = self.hold else {
            return;
        };
        self.hold = None;
        self.output.truncate(at);
        let response = NotServed::NotDurable(error.to_owned()).response();
        self.side_response(response)
            .write_to(&mut self.output, false, false, false);
        self.state = ConnState::Closing;
    }

    /// Whether a stopping server may close the connection now: it waits for
    /// nothing and has been answered at least once (an idle keep-alive
    /// connection, which any HTTP client must expect to be closed). A
    /// connection that has not sent its first request yet is given the
    /// grace period to send it.
    pub fn closable_when_stopping(&self) -> bool {
        self.state == ConnState::Open
            && self.hold.is_none()
            && self.pending_output() == 0
            && self.input.is_empty()
            && self.served
    }

    /// Bytes queued and not yet taken by the kernel.
    pub fn pending_output(&self) -> usize {
        self.output.len() - self.written
    }

    /// Queues one event for a subscriber: `json` is the event object.
    ///
    /// A subscriber is cut off (websocket close 1008, or just closed in
    /// stream mode) only for what it failed to read: when the events
    /// waiting behind the one it is reading now would pass
    /// [`MAX_SUBSCRIBER_QUEUE_BYTES`]. An event larger than that bound (a
    /// 1 MiB config value) is still queued when nothing waits behind the
    /// event being read, so a reading subscriber gets every event of a
    /// change that sets two large values, and a queue holds at most the
    /// event being read plus the bound or one larger event: a subscriber
    /// that does not read never makes the server's memory grow. Returns
    /// `false` if it was cut off.
    pub fn push_event(&mut self, json: &[u8]) -> bool {
        let websocket = match &self.state {
            ConnState::Stream(_) => false,
            ConnState::WebSocket { .. } => true,
            _ => return true,
        };
        let was_empty = self.pending_output() == 0;
        let behind = self
            .output
            .len()
            .saturating_sub(self.event_end.max(self.written));
        if behind > 0 && behind + json.len() + MAX_EVENT_FRAMING_BYTES > MAX_SUBSCRIBER_QUEUE_BYTES
        {
            self.cut_off(close_code::POLICY);
            return false;
        }
        if websocket {
            frame::write_frame(&mut self.output, opcode::TEXT, json);
        } else {
            self.output.extend_from_slice(json);
            self.output.push(b'\n');
        }
        if was_empty {
            self.event_end = self.output.len();
        }
        self.flush_and_release();
        true
    }

    /// Ends a websocket with `code` (best effort: the close frame replaces
    /// what is queued only if no frame is half written) or an event stream;
    /// the connection is closed after one try to write.
    pub fn cut_off(&mut self, code: u16) {
        if matches!(self.state, ConnState::WebSocket { .. }) && self.written == 0 {
            self.output.clear();
            frame::write_close(&mut self.output, Some(code));
            self.flush_and_release();
        }
        self.state = ConnState::Closing;
    }

    /// Sends a websocket ping, unless the client has been silent for longer
    /// than `silence`: then it is dropped (`false`).
    pub fn ping(&mut self, now: Instant, silence: Duration) -> bool {
        let ConnState::WebSocket { last_heard, .. } = &self.state else {
            return true;
        };
        if now.saturating_duration_since(*last_heard) > silence {
            self.state = ConnState::Closing;
            return false;
        }
        if self.pending_output() < MAX_SUBSCRIBER_QUEUE_BYTES {
            frame::write_frame(&mut self.output, opcode::PING, b"guestsock");
            self.flush_and_release();
        }
        true
    }

    /// Ends a websocket or stream because the server is going away.
    pub fn going_away(&mut self) {
        match self.state {
            ConnState::WebSocket { .. } => {
                frame::write_close(&mut self.output, Some(close_code::GOING_AWAY));
                self.flush_and_release();
                self.state = ConnState::Closing;
            }
            ConnState::Stream(_) => self.state = ConnState::Closing,
            _ => {}
        }
    }

    /// When the connection's current phase times out, if it can.
    pub fn deadline(&self, limits: &Tunables) -> Option<Instant> {
        if self.hold.is_some() {
            return None;
        }
        if self.paused_until.is_some() {
            return self.paused_until;
        }
        match &self.state {
            ConnState::Waiting(wait) => Some(wait.deadline),
            ConnState::Stream(_) | ConnState::WebSocket { .. } => None,
            ConnState::Closing => Some(self.last_progress + limits.idle_timeout),
            ConnState::Open => match (self.request_started, self.head_done_at) {
                (_, Some(head_done)) => Some(head_done + limits.body_timeout),
                (Some(started), None) => Some(started + limits.header_timeout),
                (None, None) => Some(self.last_progress + limits.idle_timeout),
            },
        }
    }

    /// Acts on a deadline that passed at `now`: a slow request gets `408`
    /// and the connection closes after it; an idle one is closed; a wait
    /// is answered with what is there.
    pub fn expire(&mut self, now: Instant, limits: &Tunables, registry: &mut Registry) -> Expired {
        if self.deadline(limits).is_none_or(|at| at > now) {
            return Expired::Nothing;
        }
        if self.paused_until.take().is_some() {
            // Its next request's token is there: answer it.
            return Expired::Resumed;
        }
        match self.state {
            ConnState::Waiting(_) => {
                if self.recheck_wait(registry, true) {
                    Expired::Answered
                } else {
                    Expired::Nothing
                }
            }
            ConnState::Open if self.request_started.is_some() && self.pending_output() == 0 => {
                self.side_response(NotServed::TooSlow.response()).write_to(
                    &mut self.output,
                    false,
                    false,
                    false,
                );
                self.state = ConnState::Closing;
                self.last_progress = now;
                Expired::Answered
            }
            _ => Expired::Close,
        }
    }

    /// For a connection waiting for a change: answers if the answer's tag
    /// moved, or anyway when `timed_out`. Returns whether it answered.
    pub fn recheck_wait(&mut self, registry: &mut Registry, timed_out: bool) -> bool {
        let ConnState::Waiting(wait) = &self.state else {
            return false;
        };
        let req = Request {
            method: "GET",
            path: &wait.path,
            query: "",
            http10: wait.http10,
            keep_alive: wait.keep_alive,
            if_none_match: None,
            identity_header: false,
            forwarded: false,
            websocket: WebSocketHeaders::default(),
            body: &[],
            len: 0,
        };
        // The wait's instance is the one the request was answered as.
        let caller = Ok(wait.instance);
        let response = match guest::answer(&req, &caller, &self.peer, registry, None) {
            GuestAnswer::Respond(response, _) => response,
            // Cannot happen for the tagged paths; answer what is there.
            _ => NotServed::WaitUnanswered.response(),
        };
        if !timed_out && response.etag.as_ref() == Some(&wait.etag) {
            return false;
        }
        let (head_only, keep_alive, http10) = (wait.head_only, wait.keep_alive, wait.http10);
        response.write_to(&mut self.output, head_only, keep_alive, http10);
        self.served = true;
        self.state = if keep_alive {
            ConnState::Open
        } else {
            ConnState::Closing
        };
        true
    }

    /// Does all the work that readiness allows: flush, answer buffered
    /// requests, read more, until nothing moves or an answer is held. Changes
    /// requests made are appended to `ctx.changes` for the server to persist
    /// and announce.
    pub fn drive(&mut self, ctx: &mut Ctx<'_>) -> Next {
        // A connection with no buffer of its own (the usual case: idle
        // between requests) borrows the server's for this drive, so that a
        // request answered at once costs no allocation. What is left in them
        // afterwards (a partial request, unwritten output) is copied into
        // buffers of its own.
        let lent_input = self.input.capacity() == 0;
        if lent_input {
            std::mem::swap(&mut self.input, &mut ctx.buffers.input);
        }
        let lent_output = self.output.capacity() == 0;
        if lent_output {
            std::mem::swap(&mut self.output, &mut ctx.buffers.output);
        }
        let next = self.drive_buffered(ctx);
        if lent_input {
            give_back(&mut self.input, &mut ctx.buffers.input);
        }
        if lent_output {
            give_back(&mut self.output, &mut ctx.buffers.output);
        }
        self.release_empty();
        next
    }

    /// [`Conn::drive`] with the buffers in place.
    fn drive_buffered(&mut self, ctx: &mut Ctx<'_>) -> Next {
        let mut budget = REQUESTS_PER_TURN;
        loop {
            if self.hold.is_some() {
                return Next::Wait;
            }
            match self.flush() {
                Ok(true) => {}
                Ok(false) => return Next::Wait,
                Err(_) => return Next::Close,
            }
            // Not read, so a flood waits in its own socket buffer.
            if self.paused_until.is_some() {
                return Next::Wait;
            }
            if budget == 0
                && self.state == ConnState::Open
                && (self.readable || !self.input.is_empty())
            {
                return Next::Yield;
            }
            let progressed = match self.state {
                ConnState::Closing => return Next::Close,
                ConnState::Open => self.answer_buffered(ctx, &mut budget),
                ConnState::WebSocket { .. } => self.read_frames(),
                ConnState::Stream(_) => {
                    // "any byte from the client, or EOF, ends it".
                    if !self.input.is_empty() || self.peer_eof {
                        self.state = ConnState::Closing;
                        continue;
                    }
                    false
                }
                ConnState::Waiting(_) => {
                    // The client gave up: nobody will read the answer.
                    if self.peer_eof {
                        return Next::Close;
                    }
                    false
                }
            };
            if progressed {
                continue;
            }
            // Paused for its rate: nothing more is read, so what waits
            // stays in the kernel's buffer (bounded by it), not ours.
            if self.paused_until.is_some() {
                return Next::Wait;
            }
            if self.peer_eof {
                // Everything complete was answered; a partial request at EOF
                // can never complete.
                self.state = ConnState::Closing;
                continue;
            }
            // A waiting request's pipelined successors wait in the kernel's
            // buffer, not ours, beyond one chunk (enough to see EOF).
            let input_full =
                matches!(self.state, ConnState::Waiting(_)) && self.input.len() >= READ_CHUNK_BYTES;
            if !self.readable || input_full {
                return Next::Wait;
            }
            match self.read_some(ctx.scratch) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
    }

    /// Writes what it can of the output outside [`Conn::drive`] (an event, a
    /// ping, a close), then frees emptied buffers.
    fn flush_and_release(&mut self) {
        let _ = self.flush();
        self.release_empty();
    }

    /// Frees buffers that hold nothing, so that an idle connection holds no
    /// buffer memory.
    fn release_empty(&mut self) {
        if self.output.is_empty() && self.output.capacity() != 0 {
            self.output = Vec::new();
        }
        if self.input.is_empty() && self.input.capacity() != 0 {
            self.input = Vec::new();
        }
    }

    /// Writes queued output. `Ok(true)` when all of it is written; the
    /// buffer is then emptied, keeping its capacity for the next answer.
    fn flush(&mut self) -> io::Result<bool> {
        while self.written < self.output.len() {
            match self.stream.write(&self.output[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    self.last_progress = Instant::now();
                }
                Err(e) if would_block(&e) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.output.clear();
        self.written = 0;
        self.event_end = 0;
        Ok(true)
    }

    /// How long the next request must wait for its instance's rate, if it
    /// must: only on a guest connection that was answered before and whose
    /// instance is known at the registry's current generation. A first
    /// request is identified and, over the rate, answered `429`: a caller
    /// that connects anew for every request pays for its connection, and
    /// learns to slow down from the answer.
    fn rate_wait(&self, ctx: &Ctx<'_>) -> Option<Duration> {
        if self.side != Side::Guest || !self.served {
            return None;
        }
        let id = self.known.remembered(ctx.registry)?;
        ctx.registry.get(id)?.bucket.wait(
            Instant::now(),
            ctx.limits.rate_per_sec,
            ctx.limits.rate_burst,
        )
    }

    /// The admin socket's envelope around `response`, on that socket.
    fn side_response(&self, response: Response) -> Response {
        match self.side {
            Side::Guest => response,
            Side::Admin { .. } => response.enveloped(),
        }
    }

    /// Answers the complete requests in `input`, in order, until the input
    /// holds none, `budget` requests were answered, the output bound is
    /// reached or the connection changes state. Returns whether it did
    /// anything.
    fn answer_buffered(&mut self, ctx: &mut Ctx<'_>, budget: &mut usize) -> bool {
        let mut answered = false;
        let max_body = match self.side {
            Side::Guest => MAX_GUEST_BODY_BYTES,
            Side::Admin { .. } => MAX_ADMIN_BODY_BYTES,
        };
        while self.state == ConnState::Open
            && self.hold.is_none()
            && !self.input.is_empty()
            && *budget > 0
            && self.output.len() - self.written < MAX_PENDING_OUTPUT_BYTES
        {
            if self.awaiting_preamble {
                match Preamble::parse(&self.input) {
                    Ok(None) => break,
                    Ok(Some((preamble, used))) => {
                        // Only the VMM's connections speak for the VM; an
                        // intruder's preamble is read past and believed in
                        // nothing (its requests are refused).
                        if self.known.by().own_instance().is_some() {
                            self.peer.speaks_for(&preamble);
                        }
                        self.awaiting_preamble = false;
                        self.consume(used);
                        continue;
                    }
                    Err(e) => {
                        NotServed::BadPreamble(e).response().write_to(
                            &mut self.output,
                            false,
                            false,
                            false,
                        );
                        self.state = ConnState::Closing;
                        return true;
                    }
                }
            }
            let req = match request::parse(&self.input, self.scan_from, max_body) {
                Ok(Parsed::Partial {
                    scan_from,
                    head_complete,
                }) => {
                    self.scan_from = scan_from;
                    if head_complete && self.head_done_at.is_none() {
                        self.head_done_at = Some(Instant::now());
                    }
                    break;
                }
                Ok(Parsed::Complete(req)) => req,
                Err(e) => {
                    self.side_response(NotServed::Unreadable(e).response())
                        .write_to(&mut self.output, false, false, false);
                    self.state = ConnState::Closing;
                    return true;
                }
            };
            if req.path != JWKS_PATH
                && let Some(wait) = self.rate_wait(ctx)
            {
                self.paused_until = Some(Instant::now() + wait);
                break;
            }
            answered = true;
            *budget -= 1;
            if self.side == Side::Guest && !self.known.by().takes_preamble() {
                // A rule of a kind this connection has no facts for may have
                // been registered since it was accepted. (A VM's caller has
                // no host process to read.)
                identity::gather_missing(
                    &self.stream,
                    &mut self.peer,
                    ctx.registry.kinds_in_use(),
                    ctx.cgroups,
                );
            }
            let started = self.request_started.unwrap_or_else(Instant::now);
            let used = req.len;
            let (response, change) =
                match dispatch(&req, self.side, &self.peer, &mut self.known, started, ctx) {
                    Outcome::Respond(response, change) => (response, change),
                    Outcome::Subscribe(plan) => {
                        self.start_subscription(plan, used);
                        return true;
                    }
                    Outcome::Wait(wait) => {
                        self.registration = Some(Registration::Waiting(wait.instance));
                        self.state = ConnState::Waiting(Box::new(wait));
                        self.consume(used);
                        return true;
                    }
                    Outcome::Mint(mint) => {
                        // Nothing behind it is read until it is answered.
                        ctx.mints.push(mint);
                        self.hold = Some(Hold::Minting {
                            ticket: 0,
                            keep_alive: req.keep_alive,
                            http10: req.http10,
                        });
                        self.served = true;
                        self.consume(used);
                        return true;
                    }
                };
            if matches!(response.status, 403 | 429) {
                self.refusals = self.refusals.saturating_add(1);
            }
            let keep_alive = req.keep_alive
                && !response.close
                && !ctx.stopping
                && self.refusals < REFUSALS_PER_CONNECTION;
            self.served = true;
            let at = self.output.len();
            response.write_to(
                &mut self.output,
                req.method == "HEAD",
                keep_alive,
                req.http10,
            );
            self.consume(used);
            if !keep_alive {
                self.state = ConnState::Closing;
            }
            if let Some(change) = change {
                ctx.changes.push(change);
                self.hold = Some(Hold::Unassigned { at });
            }
        }
        answered
    }

    /// Turns the connection into a subscriber (docs/protocol.md section 5) as
    /// `plan` says, after consuming the `used` bytes of its request; or
    /// answers why not and closes.
    fn start_subscription(
        &mut self,
        plan: Result<(Option<String>, Subscription), Response>,
        used: usize,
    ) {
        self.consume(used);
        let (accept, subscription) = match plan {
            Ok(plan) => plan,
            Err(response) => {
                self.side_response(response)
                    .write_to(&mut self.output, false, false, false);
                self.state = ConnState::Closing;
                return;
            }
        };
        match accept {
            Some(accept) => {
                // The subscription is live from the moment the 101 is queued.
                response::write_upgrade_head(&mut self.output, &accept);
                self.state = ConnState::WebSocket {
                    subscription,
                    reader: Reader::new(MAX_WS_MESSAGE_BYTES),
                    last_heard: Instant::now(),
                };
            }
            None => {
                response::write_stream_head(&mut self.output);
                self.state = ConnState::Stream(subscription);
            }
        }
        self.registration = Some(Registration::Subscribed(subscription));
    }

    /// Reads the client's frames from `input`: answers pings, echoes a
    /// close, fails the connection on a protocol error. Returns whether it
    /// consumed anything.
    fn read_frames(&mut self) -> bool {
        let ConnState::WebSocket {
            reader, last_heard, ..
        } = &mut self.state
        else {
            return false;
        };
        let mut progressed = false;
        loop {
            let (used, action) = reader.feed(&mut self.input);
            if used > 0 {
                self.input.drain(..used);
                *last_heard = Instant::now();
                progressed = true;
            }
            match action {
                None if used == 0 => break,
                None => {}
                Some(Action::Alive) => *last_heard = Instant::now(),
                // A client pinging faster than it reads gets no more pongs
                // than the queue holds.
                Some(Action::Pong(payload))
                    if self.output.len() - self.written < MAX_SUBSCRIBER_QUEUE_BYTES =>
                {
                    frame::write_frame(&mut self.output, opcode::PONG, &payload);
                }
                Some(Action::Pong(_)) => {}
                Some(Action::Close(code)) => {
                    frame::write_close(&mut self.output, code);
                    self.state = ConnState::Closing;
                    self.input.clear();
                    return true;
                }
                Some(Action::Fail(violation)) => {
                    frame::write_close(&mut self.output, Some(violation.close_code()));
                    self.state = ConnState::Closing;
                    self.input.clear();
                    return true;
                }
            }
        }
        progressed
    }

    /// Drops `n` answered bytes from the front of `input`.
    fn consume(&mut self, n: usize) {
        self.input.drain(..n);
        self.scan_from = 0;
        self.head_done_at = None;
        if self.input.is_empty() {
            self.request_started = None;
        } else {
            // A pipelined request behind it starts its clock now.
            self.request_started = Some(Instant::now());
        }
    }

    /// One `read` through the server's scratch buffer into `input`: only
    /// the bytes that arrived are kept, so a connection's buffer is the size
    /// of its request, not of a read. A short read means the kernel had no
    /// more, so readiness is drained without a second, failing read.
    fn read_some(&mut self, scratch: &mut [u8]) -> io::Result<()> {
        let start = self.input.len();
        let result = self.stream.read(scratch);
        let n = *result.as_ref().unwrap_or(&0);
        if n > 0 {
            self.input.extend_from_slice(&scratch[..n]);
            let now = Instant::now();
            self.last_progress = now;
            if start == 0 {
                self.request_started = Some(now);
            }
        }
        match result {
            Ok(0) => {
                self.peer_eof = true;
                self.readable = false;
            }
            Ok(n) if n < scratch.len() && !self.read_closed => self.readable = false,
            Ok(_) => {}
            Err(e) if would_block(&e) => self.readable = false,
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Returns a borrowed buffer to the server (`spare`), leaving the connection
/// an exact copy of what it still holds (indices into it stay valid).
fn give_back(buffer: &mut Vec<u8>, spare: &mut Vec<u8>) {
    let own = if buffer.is_empty() {
        Vec::new()
    } else {
        buffer.clone()
    };
    *spare = std::mem::replace(buffer, own);
    spare.clear();
    // One large answer must not keep a large buffer for good.
    spare.shrink_to(SPARE_BUFFER_BYTES);
}

#[cfg(test)]
mod tests {
    //! One connection driven over a real socket pair (`fuzzing::run_connection`),
    //! the peer registered as instance `me`: what it writes for what it is
    //! sent, chunked as a peer might send it.

    use crate::fuzzing::run_connection;
    use crate::request_ctx::Side;

    const ADMIN: Side = Side::Admin { authorized: true };

    fn text(side: Side, input: &str, step: usize) -> String {
        String::from_utf8(run_connection(side, input.as_bytes(), step)).expect("UTF-8")
    }

    fn statuses(out: &str) -> Vec<&str> {
        out.match_indices("HTTP/1.1 ")
            .map(|(at, _)| &out[at + 9..at + 12])
            .collect()
    }

    #[test]
    fn pipelined_requests_are_answered_in_order_whatever_the_chunks() {
        let input = "GET /1.0/config/user.a HTTP/1.1\r\nHost: lxd\r\n\r\n\
                     HEAD /1.0/config/user.a HTTP/1.1\r\nHost: lxd\r\n\r\n\
                     GET /1.0/config/volatile.x HTTP/1.1\r\nHost: lxd\r\n\r\n\
                     GET /nope HTTP/1.1\r\nHost: lxd\r\n\r\n";
        for step in [1, 2, 7, 64, 4096] {
            let out = text(Side::Guest, input, step);
            assert_eq!(
                statuses(&out),
                ["200", "200", "403", "404"],
                "step {step}: {out}"
            );
            // The GET carries the value, the HEAD only its length.
            assert_eq!(out.matches("\r\n\r\n1").count(), 1, "step {step}: {out}");
        }
    }

    #[test]
    fn a_long_pipeline_is_answered_whole_over_several_turns() {
        // Five turns' worth (REQUESTS_PER_TURN each), in one chunk.
        let n = super::REQUESTS_PER_TURN * 5 + 3;
        let input = "GET /1.0/config/user.a HTTP/1.1\r\nHost: x\r\n\r\n".repeat(n);
        let out = text(Side::Guest, &input, input.len());
        assert_eq!(statuses(&out), vec!["200"; n]);
    }

    #[test]
    fn a_refused_caller_is_closed_after_a_few_refusals() {
        // `volatile.x` is host-only: 403, again and again.
        let input = "GET /1.0/config/volatile.x HTTP/1.1\r\nHost: x\r\n\r\n".repeat(10);
        let out = text(Side::Guest, &input, input.len());
        let limit = usize::from(super::REFUSALS_PER_CONNECTION);
        assert_eq!(statuses(&out), vec!["403"; limit]);
        assert_eq!(out.matches("Connection: close\r\n").count(), 1, "{out}");
    }

    #[test]
    fn a_broken_request_is_answered_then_closed() {
        let input =
            "GET /1.0 HTTP/1.1\r\nHost: lxd\r\n\r\nGARBAGE\r\n\r\nGET /1.0 HTTP/1.1\r\n\r\n";
        let out = text(Side::Guest, input, 5);
        assert_eq!(statuses(&out), ["200", "400"], "{out}");
        assert!(out.ends_with("\n"), "{out}");
        assert!(out.contains("Connection: close"), "{out}");
    }

    #[test]
    fn a_partial_request_at_eof_gets_nothing() {
        let out = text(Side::Guest, "GET /1.0 HTTP/1.1\r\nHost: l", 3);
        assert_eq!(out, "");
    }

    #[test]
    fn an_admin_change_is_answered_once_committed_and_then_served() {
        let input = "PUT /1.0/instances/me/config/user.b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nnew\
                     GET /1.0/instances/me/config/user.b HTTP/1.1\r\nHost: x\r\n\r\n";
        let out = text(ADMIN, input, 9);
        assert_eq!(statuses(&out), ["200", "200"], "{out}");
        assert!(out.ends_with("new"), "{out}");
    }

    #[test]
    fn a_websocket_subscription_switches_to_frames() {
        let input = "GET /1.0/events HTTP/1.1\r\nHost: lxd\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let out = run_connection(Side::Guest, input.as_bytes(), 11);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
        // RFC 6455 1.3's example key and accept value.
        assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{text}");
    }

    #[test]
    fn a_token_is_answered_in_order_with_its_content_type() {
        let input = "GET /1.0/identity/token?audience=x HTTP/1.1\r\nHost: lxd\r\nGuestsock-Identity: true\r\n\r\n\
                     GET /1.0/identity/jwks HTTP/1.1\r\nHost: lxd\r\n\r\n";
        for step in [3, 4096] {
            let out = text(Side::Guest, input, step);
            assert_eq!(statuses(&out), ["200", "200"], "step {step}: {out}");
            assert!(
                out.contains("Content-Type: application/jwt\r\nCache-Control: no-store\r\n"),
                "{out}"
            );
            assert!(out.contains("\r\n\r\neyJ"), "{out}");
        }
    }

    #[test]
    fn every_answer_is_well_formed() {
        // The fuzz target's property on a few fixed inputs (the first byte
        // picks the side and the chunk size).
        for data in [
            &b"\x00GET /1.0 HTTP/1.1\r\nHost: lxd\r\n\r\nHEAD /1.0/devices HTTP/1.1\r\nHost: lxd\r\n\r\n"[..],
            b"\x01GET /1.0/instances?recursion=1 HTTP/1.1\r\nHost: x\r\n\r\nDELETE /1.0/instances/me HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x04GET /1.0/events HTTP/1.1\r\nHost: lxd\r\n\r\n",
            b"\x06GET /1.0/config?wait_for_change=true HTTP/1.1\r\nHost: lxd\r\nIf-None-Match: \"x\"\r\n\r\n",
        ] {
            crate::fuzzing::connection(data);
        }
    }
}
