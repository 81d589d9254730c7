//! The properties the fuzz targets check, one function per target, here so
//! that `cargo test` can replay every input that ever broke one
//! (`fuzz/regressions/<target>/`, see `tests/fuzz_regressions.rs`).
//!
//! Each function panics if a property fails; a panic is what libFuzzer
//! reports. None of this is used by the server itself.

use crate::client::encode_segment;
use crate::http::ResponseError;
use crate::http::chunked::Dechunker;
use crate::http::exchange::{self, BodyReader, ExchangeError};
use crate::http::request::{self, Parsed, Request};
use crate::http::response_head::{self, Framing};
use crate::instance::InstanceSpec;
use crate::ws::frame::{parse_header, write_frame};
use crate::ws::reader::{Action, Reader};

/// The HTTP request parser, fed `data` in chunks whose sizes come from its
/// first byte, as a connection would see it:
/// - it never panics, and never claims more bytes than it was given;
/// - parsing incrementally (with the scan hints) decides exactly what
///   parsing the whole input at once decides;
/// - a complete request, written out again in canonical form, parses to
///   the same request.
pub fn http_request(data: &[u8]) {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    let max_body = 1024;
    let whole = request::parse(input, 0, max_body);
    let mut hint = 0;
    let mut end = 0;
    let incremental = loop {
        end = (end + step).min(input.len());
        let result = request::parse(&input[..end], hint, max_body);
        match result {
            Ok(Parsed::Partial { scan_from, .. }) if end < input.len() => {
                assert!(scan_from <= end, "hint past the input");
                hint = scan_from;
            }
            other => break other,
        }
    };
    match (&whole, &incremental) {
        (Ok(Parsed::Complete(a)), Ok(Parsed::Complete(b))) => {
            assert_eq!(a, b, "incremental and whole parses differ");
            assert!(a.len <= input.len());
            round_trip(a);
        }
        (Ok(Parsed::Partial { .. }), Ok(Parsed::Partial { .. })) => {}
        (Err(a), Err(b)) => assert_eq!(a, b, "incremental and whole errors differ"),
        // A request that completed early in the incremental run completes
        // on the whole input too, and vice versa.
        (a, b) => panic!("whole {a:?} but incremental {b:?}"),
    }
}

/// Writes `req` in canonical form and checks it parses back the same.
fn round_trip(req: &Request<'_>) {
    let mut text = format!(
        "{} {}{}{} HTTP/1.{}\r\nHost: lxd\r\n",
        req.method,
        req.path,
        if req.query.is_empty() { "" } else { "?" },
        req.query,
        if req.http10 { 0 } else { 1 },
    );
    let mut connection = Vec::new();
    if req.http10 && req.keep_alive {
        connection.push("keep-alive");
    }
    if !req.http10 && !req.keep_alive {
        connection.push("close");
    }
    if req.websocket.connection_upgrade {
        connection.push("upgrade");
    }
    if !connection.is_empty() {
        text.push_str(&format!("Connection: {}\r\n", connection.join(", ")));
    }
    if req.websocket.upgrade_websocket {
        text.push_str("Upgrade: websocket\r\n");
    }
    if let Some(v) = req.websocket.version {
        text.push_str(&format!("Sec-WebSocket-Version: {v}\r\n"));
    }
    if let Some(k) = req.websocket.key {
        text.push_str(&format!("Sec-WebSocket-Key: {k}\r\n"));
    }
    if let Some(tag) = req.if_none_match {
        text.push_str(&format!("If-None-Match: {tag}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", req.body.len()));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(req.body);
    let again = match request::parse(&bytes, 0, usize::MAX) {
        Ok(Parsed::Complete(again)) => again,
        other => panic!("canonical form of {req:?} does not parse: {other:?}"),
    };
    assert_eq!(
        (
            again.method,
            again.path,
            again.query,
            again.http10,
            again.keep_alive
        ),
        (req.method, req.path, req.query, req.http10, req.keep_alive)
    );
    assert_eq!(
        (again.if_none_match, again.websocket, again.body),
        (req.if_none_match, req.websocket, req.body)
    );
    assert_eq!(again.len, bytes.len());
}

/// The client side's answer parsers, fed `data` after its first byte (the
/// size of each read, and whether the request was `HEAD`) as a server
/// would send it, head then body:
/// - they never panic, and never claim more bytes than they were given;
/// - a head read a piece at a time is decided as the whole is (the same
///   head, or the same error);
/// - a chunked body decodes to the same data, completion and error
///   whatever the read boundaries, and its data chunked again (with
///   extensions and a trailer) decodes back to itself;
/// - `exchange`, reading the same bytes from a stream, finds the same head
///   and a body that agrees with the pure parsers.
pub fn http_response(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(control % 64) + 1;
    let method = if control & 0x80 != 0 { "HEAD" } else { "GET" };
    let whole = response_head::parse(input, method, RESPONSE_MAX_HEAD);
    let mut end = 0;
    let incremental = loop {
        end = (end + step).min(input.len());
        match response_head::parse(&input[..end], method, RESPONSE_MAX_HEAD) {
            Ok(None) if end < input.len() => {}
            other => break other,
        }
    };
    assert_eq!(whole, incremental, "incremental and whole heads differ");
    let head = match whole {
        Ok(Some((used, head))) => {
            assert!(used <= input.len() && used <= RESPONSE_MAX_HEAD);
            Some((used, head))
        }
        _ => None,
    };
    let exchanged = exchange::read_head(&mut Pieces::new(input, step), method, RESPONSE_MAX_HEAD);
    match (&whole, &exchanged) {
        (Ok(Some((_, head))), _) if head.status == 101 => assert!(matches!(
            exchanged,
            Err(ExchangeError::Response(ResponseError::UnrequestedUpgrade))
        )),
        // Interim answers are skipped: what follows is another head.
        (Ok(Some((_, head))), _) if (100..200).contains(&head.status) => {}
        (Ok(Some((_, head))), Ok((got, _))) => assert_eq!(head, got),
        (Ok(None), Err(ExchangeError::Closed)) => {}
        (Err(e), Err(ExchangeError::Response(got))) => assert_eq!(e, got),
        (a, b) => panic!("parsed {a:?} but exchanged {b:?}"),
    }
    let Some((used, head)) = head else {
        return;
    };
    if (100..200).contains(&head.status) {
        return;
    }
    let body = &input[used..];
    let read = exchange::read_head(&mut Pieces::new(input, step), method, RESPONSE_MAX_HEAD)
        .map(|(_, rest)| rest)
        .and_then(|rest| {
            let stream = Pieces::new(&input[used + rest.len()..], step);
            BodyReader::new(stream, head.framing, rest, RESPONSE_MAX_CHUNK)
                .read_to_end(RESPONSE_MAX_BODY)
        });
    let too_large = |read: &Result<Vec<u8>, ExchangeError>| {
        matches!(
            read,
            Err(ExchangeError::Response(ResponseError::BodyTooLarge { .. }))
        )
    };
    match head.framing {
        Framing::Length(length) if length > RESPONSE_MAX_BODY => assert!(too_large(&read)),
        Framing::Length(length) if length > body.len() => {
            assert!(matches!(read, Err(ExchangeError::Closed)), "{read:?}");
        }
        Framing::Length(length) => assert_eq!(read.unwrap(), &body[..length]),
        Framing::UntilClose if body.len() > RESPONSE_MAX_BODY => assert!(too_large(&read)),
        Framing::UntilClose => assert_eq!(read.unwrap(), body),
        Framing::Chunked => {
            let (decoded, outcome) = dechunk(body, body.len());
            let (in_steps, stepped) = dechunk(body, step);
            assert_eq!(
                (&decoded, &outcome),
                (&in_steps, &stepped),
                "whole and stepped chunked decoding differ"
            );
            match read {
                // It stops reading at the last chunk: what came after it in
                // a later read is never seen.
                Ok(read) => {
                    assert_eq!(read, decoded);
                    assert!(matches!(
                        outcome,
                        Ok(true) | Err(ResponseError::BytesAfterLastChunk)
                    ));
                }
                Err(ExchangeError::Closed) => assert_eq!(outcome, Ok(false)),
                Err(ExchangeError::Response(ResponseError::BodyTooLarge { .. })) => {
                    assert!(decoded.len() > RESPONSE_MAX_BODY);
                }
                Err(ExchangeError::Response(e)) => assert_eq!(outcome, Err(e)),
                Err(e) => panic!("{e}"),
            }
            if outcome == Ok(true) {
                let again = chunk(&decoded, step);
                assert_eq!(dechunk(&again, step), (decoded, Ok(true)));
            }
        }
    }
}

/// The largest head, chunk and body `http_response` allows: small, so that
/// the fuzzer reaches every bound.
const RESPONSE_MAX_HEAD: usize = 1024;
/// See [`RESPONSE_MAX_HEAD`].
const RESPONSE_MAX_CHUNK: usize = 256;
/// See [`RESPONSE_MAX_HEAD`].
const RESPONSE_MAX_BODY: usize = 4096;

/// A chunked body fed to a decoder in pieces of `step`: the data decoded,
/// and whether it completed, or the error.
fn dechunk(body: &[u8], step: usize) -> (Vec<u8>, Result<bool, ResponseError>) {
    let mut dechunker = Dechunker::new(RESPONSE_MAX_CHUNK);
    let mut out = Vec::new();
    for piece in body.chunks(step.max(1)) {
        if let Err(e) = dechunker.push(piece, &mut out) {
            return (out, Err(e));
        }
    }
    (out, Ok(dechunker.is_done()))
}

/// `data` in the chunked coding, chunks of `step` bytes with an extension,
/// then a trailer field.
fn chunk(data: &[u8], step: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in data.chunks(step.clamp(1, RESPONSE_MAX_CHUNK)) {
        out.extend_from_slice(format!("{:x} ; n=\"v\"\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    out
}

/// A stream that hands out its bytes `step` at a time, then ends.
struct Pieces<'a> {
    /// What is left to read.
    bytes: &'a [u8],
    /// The most one read gives.
    step: usize,
}

impl<'a> Pieces<'a> {
    fn new(bytes: &'a [u8], step: usize) -> Pieces<'a> {
        Pieces { bytes, step }
    }
}

impl std::io::Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

/// The websocket reader, fed `data` in chunks as a connection would:
/// - it never panics and never consumes more than it is given;
/// - once it reports a close or a failure it reads nothing more;
/// - a failure closes with 1002, 1007 or 1009, the codes RFC 6455 gives for
///   what a client can break;
/// - a pong echoes at most 125 bytes (a control frame's limit).
///
/// Also: any payload written as a server frame parses back to its header.
pub fn ws_reader(data: &[u8]) {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 32) + 1;
    let mut reader = Reader::new(4096);
    let mut buf: Vec<u8> = Vec::new();
    let mut done = false;
    for chunk in input.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            let (used, action) = reader.feed(&mut buf);
            assert!(used <= before, "consumed past the input");
            buf.drain(..used);
            if done {
                assert_eq!((used, &action), (0, &None), "read after the end");
                break;
            }
            match action {
                Some(Action::Close(_)) => done = true,
                Some(Action::Fail(violation)) => {
                    assert!(matches!(violation.close_code(), 1002 | 1007 | 1009));
                    done = true;
                }
                Some(Action::Pong(payload)) => assert!(payload.len() <= 125),
                Some(Action::Alive) => {}
                None if used == 0 => break,
                None => {}
            }
        }
    }
    let mut frame = Vec::new();
    write_frame(&mut frame, 0x1, input);
    let (header, len) = parse_header(&frame)
        .expect("own frame parses")
        .expect("own frame is complete");
    assert_eq!(
        (header.len, header.mask, header.fin),
        (input.len() as u64, None, true)
    );
    assert_eq!(&frame[len..], input);
}

/// The admin API's JSON bodies: an instance object that parses and
/// validates serializes back to itself; a config patch parses or is refused
/// without panicking.
pub fn admin_json(data: &[u8]) {
    if let Ok(spec) = serde_json::from_slice::<InstanceSpec>(data)
        && let Ok(valid) = spec.validate("host")
    {
        let text = serde_json::to_vec(&valid).expect("serializes");
        let again: InstanceSpec = serde_json::from_slice(&text).expect("parses back");
        assert_eq!(again, valid);
        assert_eq!(
            again.validate("host").as_ref(),
            Ok(&valid),
            "validation is stable"
        );
    }
    let _ = serde_json::from_slice::<std::collections::BTreeMap<String, Option<String>>>(data);
}

/// Percent-decoding of keys and paths: decoding what `encode_segment` made
/// gives the original back, and decoding is never longer than its input.
pub fn percent_decoding(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(decoded) = request::percent_decode(text) {
        assert!(decoded.len() <= text.len());
    }
    let encoded = encode_segment(text);
    assert_eq!(request::percent_decode(&encoded).as_deref(), Some(text));
}

/// A token request's query (`audience`, `ttl`): it never panics; what it
/// accepts is an audience of 1 to 255 visible ASCII characters and a ttl
/// within its bounds; what it refuses is a `400`.
pub fn token_query(data: &[u8]) {
    use crate::limits::{MAX_AUDIENCE_BYTES, MAX_TOKEN_TTL_SECS, MIN_TOKEN_TTL_SECS};
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    match crate::api::identity::token_query(query) {
        Ok((audience, ttl)) => {
            assert!(
                (1..=MAX_AUDIENCE_BYTES).contains(&audience.len()),
                "{audience:?}"
            );
            assert!(
                audience.bytes().all(|b| b.is_ascii_graphic()),
                "{audience:?}"
            );
            assert!((MIN_TOKEN_TTL_SECS..=MAX_TOKEN_TTL_SECS).contains(&ttl));
        }
        Err(error) => assert_eq!(error.status(), 400, "{error}"),
    }
}

/// A whole connection, on one end of a real socket pair, guest or admin
/// side as the first byte says: `data` is what the peer sends, in chunks
/// whose size also comes from the first byte, then the peer's EOF. After
/// each chunk the connection is driven as the server drives it (a change is
/// committed and its held answer released, a wait is answered at once) and
/// everything it wrote is read back. Properties:
/// - it never panics;
/// - what it queues stays within its bound (at most
///   [`MAX_PENDING_OUTPUT_BYTES`] plus one answer, which is bounded by what
///   the admin socket accepts);
/// - everything it writes is a sequence of well-formed HTTP/1.1 responses,
///   one per request it answered, each with its length (no body for
///   `HEAD` and 304); a `101` is followed only by well-formed unmasked
///   websocket frames, and an event stream's head only by JSON lines.
pub fn connection(data: &[u8]) {
    use crate::limits::{MAX_ADMIN_BODY_BYTES, MAX_GUEST_BODY_BYTES};
    use crate::request_ctx::Side;

    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let side = if first & 1 == 0 {
        Side::Guest
    } else {
        Side::Admin { authorized: true }
    };
    let step = usize::from(first >> 1) * 37 + 1;
    let written = run_connection(side, input, step);
    let max_body = match side {
        Side::Guest => MAX_GUEST_BODY_BYTES,
        Side::Admin { .. } => MAX_ADMIN_BODY_BYTES,
    };
    check_responses(&written, &head_requests(input, max_body));
}

/// A connection on a VM's own listener (docs/protocol.md section 10): the
/// input is the agent's side, a preamble and then requests, driven as
/// [`connection`] drives the shared socket's (the first byte sets the
/// chunk size). Properties: it never panics; if the input starts with a
/// valid preamble, what the connection writes is well-formed answers to the
/// requests after it, as for [`connection`]; if it starts with an invalid
/// one, exactly one `400` and nothing more; if the preamble is incomplete,
/// nothing.
pub fn vm_connection(data: &[u8]) {
    use crate::limits::MAX_GUEST_BODY_BYTES;
    use crate::preamble::Preamble;
    use crate::request_ctx::Side;

    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(first) * 37 + 1;
    let written = run_connection_on(Side::Guest, true, input, step);
    match Preamble::parse(input) {
        Ok(Some((_, used))) => check_responses(
            &written,
            &head_requests(&input[used..], MAX_GUEST_BODY_BYTES),
        ),
        Ok(None) => assert!(
            written.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&written)
        ),
        Err(_) => {
            assert!(
                written.starts_with(b"HTTP/1.1 400 "),
                "{:?}",
                String::from_utf8_lossy(&written)
            );
            check_responses(&written, &[false]);
        }
    }
}

/// Drives one connection of `side` as [`connection`] describes, the peer
/// sending `input` in chunks of `step` bytes and then EOF; returns
/// everything the connection wrote. The peer is this process, registered
/// as instance `me` (`guest_access: any`, `user.a` = `1`, device `eth0`).
/// Also used by `conn`'s unit tests.
pub fn run_connection(side: crate::request_ctx::Side, input: &[u8], step: usize) -> Vec<u8> {
    run_connection_on(side, false, input, step)
}

/// [`run_connection`], on a VM's own listener of instance `me` (whose VMM
/// is this process) when `vm`: the input starts with the agent's preamble.
fn run_connection_on(
    side: crate::request_ctx::Side,
    vm: bool,
    input: &[u8],
    step: usize,
) -> Vec<u8> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use crate::api::Change;
    use crate::api::admin::{Connections, ServerFacts};
    use crate::conn::Conn;
    use crate::identity::{CgroupPaths, peer_facts};
    use crate::instance::RuleKinds;
    use crate::limits::{
        MAX_ADMIN_BODY_BYTES, MAX_PENDING_OUTPUT_BYTES, READ_CHUNK_BYTES, Tunables,
    };
    use crate::metrics::Metrics;
    use crate::registry::Registry;
    use crate::request_ctx::{Buffers, Ctx};

    let (server_end, mut peer) = UnixStream::pair().expect("socket pair");
    server_end.set_nonblocking(true).expect("non-blocking");
    peer.set_nonblocking(true).expect("non-blocking");

    let uid = nix::unistd::getuid().as_raw();
    let mut registry = Registry::new("fuzz".into());
    let me: InstanceSpec = serde_json::from_value(serde_json::json!({
        "name": "me", "match": {"uid_range": [uid, 1]}, "guest_access": "any",
        "config": {"user.a": "1", "cloud-init.user-data": "#cloud-config\n", "volatile.x": "y"},
        "devices": {"eth0": {"type": "nic"}},
    }))
    .expect("instance");
    let id = registry.insert(me).expect("registered");
    let facts = ServerFacts {
        version: "fuzz",
        pid: 0,
        guest_socket: "guest".into(),
        admin_socket: "admin".into(),
        state_dir: "state".into(),
        connections: Connections::default(),
    };
    let limits = Tunables {
        rate_per_sec: 0,
        ..Tunables::default()
    };
    let mut metrics = Metrics::default();
    let mut cgroups = CgroupPaths::default();
    let mut scratch = vec![0; READ_CHUNK_BYTES];
    let mut buffers = Buffers::default();
    let mut refusal_logged = None;
    let mut changes: Vec<Change> = Vec::new();
    let mut issuer = crate::issuer::Issuer::ephemeral("fuzz");
    let mut mints = Vec::new();
    let facts_of_peer =
        peer_facts(&server_end, RuleKinds::empty(), &mut cgroups).expect("peer credentials");
    let by = if vm {
        crate::request_ctx::Identification::Own {
            listener: 0,
            id,
            serial: registry.get(id).expect("registered").serial,
            by: crate::request_ctx::OwnListener::Vsock { vmm_uid: uid },
        }
    } else {
        crate::request_ctx::Identification::PeerCredentials
    };
    let mut conn = Conn::new(server_end, facts_of_peer, side, by);

    let mut written = Vec::new();
    let mut chunks = input.chunks(step.max(1)).peekable();
    let mut seq = 0;
    loop {
        match chunks.next() {
            Some(chunk) => {
                // The peer never blocks here: what it sends fits the socket
                // buffer once the server has read what came before.
                let _ = peer.write_all(chunk);
            }
            None => {
                let _ = peer.shutdown(std::net::Shutdown::Write);
            }
        }
        let done = chunks.peek().is_none();
        // Drive until nothing moves: the server would, on readiness and
        // in the turns after one that used up a connection's budget (at
        // most one turn per request, each at least 16 bytes long).
        for _ in 0..64 + input.len() / 16 {
            conn.on_readable(done);
            let mut ctx = Ctx {
                registry: &mut registry,
                changes: &mut changes,
                facts: &facts,
                limits: &limits,
                metrics: &mut metrics,
                subscribers: 0,
                scratch: &mut scratch,
                cgroups: &mut cgroups,
                buffers: &mut buffers,
                stopping: false,
                handing_over: false,
                refusal_logged: &mut refusal_logged,
                issuer: &mut issuer,
                mints: &mut mints,
            };
            let next = conn.drive(&mut ctx);
            let pending = conn.pending_output();
            assert!(
                pending <= MAX_PENDING_OUTPUT_BYTES + 4 * MAX_ADMIN_BODY_BYTES,
                "{pending} bytes queued"
            );
            let mut progressed = false;
            // As the server does once the writer reports the change durable.
            fn settle(registry: &mut Registry, issuer: &mut crate::issuer::Issuer, change: Change) {
                match change {
                    Change::Put { staged, .. } => {
                        registry.commit(&staged);
                    }
                    Change::Remove { name } => {
                        registry.commit_remove(&name);
                    }
                    Change::Batch(changes) => {
                        changes
                            .into_iter()
                            .for_each(|c| settle(registry, issuer, c));
                    }
                    Change::Keys { staged, .. } => {
                        issuer.commit(&staged);
                    }
                }
            }
            for change in changes.drain(..) {
                settle(&mut registry, &mut issuer, change);
                seq += 1;
                conn.assign_hold(seq);
                conn.release_hold();
                progressed = true;
            }
            // As the server does once the signer has signed.
            for mint in mints.drain(..) {
                let (key, iat, exp) = issuer
                    .mint(crate::issuer::unix_now(), mint.ttl)
                    .expect("no change of keys in flight");
                let claims = mint.claims(issuer.config(), iat, exp);
                let signed = crate::signer::sign(&ring::rand::SystemRandom::new(), &key, claims)
                    .expect("signed");
                conn.assign_mint(1);
                conn.finish_mint(crate::http::response::Response::jwt(signed), false);
                progressed = true;
            }
            let _ = conn.take_registration();
            if matches!(conn.state(), crate::conn::ConnState::Waiting(_)) {
                progressed |= conn.recheck_wait(&mut registry, true);
            }
            let mut buf = [0u8; 65536];
            loop {
                match peer.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        written.extend_from_slice(&buf[..n]);
                        progressed = true;
                    }
                    Err(_) => break,
                }
            }
            // A connection that used up its turn is driven again, as the
            // server does in its next turn.
            if next == crate::conn::Next::Yield {
                progressed = true;
            }
            if next == crate::conn::Next::Close || !progressed {
                break;
            }
        }
        if done {
            break;
        }
    }
    written
}

/// Whether each request the peer sent, in order, is a `HEAD`, as the
/// connection parses them (so the answers' bodies can be told apart).
fn head_requests(mut input: &[u8], max_body: usize) -> Vec<bool> {
    let mut heads = Vec::new();
    while let Ok(Parsed::Complete(req)) = request::parse(input, 0, max_body) {
        heads.push(req.method == "HEAD");
        input = &input[req.len..];
    }
    heads
}

/// Checks that `out` is well-formed answers (see [`connection`]).
fn check_responses(mut out: &[u8], heads: &[bool]) {
    let mut answer = 0;
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "answer {answer} is not an HTTP response ({other:?}): {:?}",
                String::from_utf8_lossy(&out[..out.len().min(200)])
            ),
        };
        assert_eq!(response.version, Some(1), "HTTP/1.1");
        let status = response.code.expect("status");
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        assert!(header("Date").is_some(), "every answer has a Date");
        let length = header("Content-Length");
        let rest = &out[head_len..];
        if status == 101 {
            check_frames(rest);
            return;
        }
        let Some(length) = length else {
            if status == 304 {
                out = rest;
                answer += 1;
                continue;
            }
            // The event stream: JSON lines until the end.
            assert_eq!(status, 200, "only the event stream has no length");
            for line in rest.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                serde_json::from_slice::<serde_json::Value>(line).expect("an event line is JSON");
            }
            return;
        };
        let length: usize = length.trim().parse().expect("Content-Length is a number");
        let head_only = heads.get(answer).copied().unwrap_or(false);
        let body = if head_only { 0 } else { length };
        assert!(
            rest.len() >= body,
            "answer {answer} ({status}) is cut short: {} of {body} body bytes",
            rest.len()
        );
        out = &rest[body..];
        answer += 1;
    }
}

/// Checks that `out` is whole, unmasked server frames.
fn check_frames(mut out: &[u8]) {
    while !out.is_empty() {
        let (header, header_len) = match parse_header(out) {
            Ok(Some(parsed)) => parsed,
            other => panic!("not a whole frame header: {other:?}"),
        };
        assert!(header.mask.is_none(), "a server frame is never masked");
        let end = header_len
            .checked_add(usize::try_from(header.len).expect("length"))
            .expect("length");
        assert!(out.len() >= end, "a frame is cut short");
        out = &out[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_hold_on_simple_inputs() {
        http_request(b"\x05GET /1.0?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi");
        http_request(b"\x01PATCH / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        http_request(b"\x03G\r\n\r\n");
        ws_reader(&[3, 0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
        admin_json(br#"{"name":"c1","match":{"cgroup":"/a"},"config":{"user.x":"1"}}"#);
        percent_decoding("user.é%zz/ ?".as_bytes());
    }
}
