//! One request and its answer over a blocking stream: how every client
//! here talks HTTP/1.1 (the command line to guestsock, the Docker watcher
//! to the engine).
//!
//! Owns writing a request (one per connection, `Connection: close`),
//! reading the answer's head (skipping interim `1xx` answers) and reading
//! its body as the head frames it, each bounded by the caller. The only
//! module of `http` that does I/O, and generic over `Read`/`Write` so that
//! tests drive it over bytes in memory; the parsing is `response_head`'s,
//! `chunked`'s and `lines`' own. It does not connect, set timeouts, or
//! decide what a status means: that is the caller's.

use std::fmt;
use std::io::{self, Read, Write};

use super::chunked::Dechunker;
use super::response_head::{self, Framing, ResponseHead};
use super::{ResponseError, token_len};
use crate::limits::READ_CHUNK_BYTES;

/// Why an exchange failed, each variant saying whose fault it is.
#[derive(Debug)]
pub enum ExchangeError {
    /// The request asked for cannot be written as HTTP/1.1 (the caller's
    /// fault: a CR, LF or space where the request line or a field would
    /// split); says which part.
    BadRequest(&'static str),
    /// The request could not be written (the server went away, or the
    /// caller's write timeout passed).
    Send(io::Error),
    /// The answer could not be read (the server went away, or the caller's
    /// read timeout passed).
    Receive(io::Error),
    /// The server closed the connection before the answer was complete.
    Closed,
    /// The answer's bytes are not a valid answer (the server's fault).
    Response(ResponseError),
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExchangeError::BadRequest(why) => write!(f, "the request cannot be sent: {why}"),
            ExchangeError::Send(e) => write!(f, "cannot send the request: {e}"),
            ExchangeError::Receive(e) => write!(f, "cannot read the answer: {e}"),
            ExchangeError::Closed => {
                f.write_str("the connection closed before the answer was complete")
            }
            ExchangeError::Response(e) => write!(f, "the answer is not valid HTTP/1.1: {e}"),
        }
    }
}

impl std::error::Error for ExchangeError {}

impl From<ResponseError> for ExchangeError {
    fn from(e: ResponseError) -> ExchangeError {
        ExchangeError::Response(e)
    }
}

/// Appends a request to `out`: `method target HTTP/1.1`, `Host: host`,
/// the `fields` (`Name: value`, without their CRLF), `Connection: close`
/// (one request per connection), then, if there is a `body`, its
/// `Content-Length` and the body. Refuses what would not stay one request
/// on the wire.
pub fn write_request(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    host: &str,
    fields: &[&str],
    body: Option<&[u8]>,
) -> Result<(), ExchangeError> {
    // method = token; request-target and Host: visible ASCII, no space
    // (RFC 9112 3); a field line: a token, ":", and no CR, LF or NUL in
    // its value (RFC 9110 5.5).
    let visible = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if method.is_empty() || token_len(method.as_bytes()) != method.len() {
        return Err(ExchangeError::BadRequest("the method is not a token"));
    }
    if !visible(target) {
        return Err(ExchangeError::BadRequest(
            "the target is not visible ASCII without spaces",
        ));
    }
    if !visible(host) {
        return Err(ExchangeError::BadRequest(
            "the host is not visible ASCII without spaces",
        ));
    }
    for field in fields {
        let name = token_len(field.as_bytes());
        if name == 0
            || field.as_bytes().get(name) != Some(&b':')
            || field.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
        {
            return Err(ExchangeError::BadRequest(
                "a header field is not `Name: value` on one line",
            ));
        }
    }
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for field in fields {
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n");
    if let Some(body) = body {
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    Ok(())
}

/// Writes the request of [`write_request`] to `stream`.
pub fn send_request(
    stream: &mut impl Write,
    method: &str,
    target: &str,
    host: &str,
    fields: &[&str],
    body: Option<&[u8]>,
) -> Result<(), ExchangeError> {
    let mut request = Vec::new();
    write_request(&mut request, method, target, host, fields, body)?;
    stream.write_all(&request).map_err(ExchangeError::Send)
}

/// Reads the head of the answer to a `method` request from `stream`, at
/// most `max_head` bytes with any interim answers before it: the head,
/// and the bytes read past it (the body's first).
pub fn read_head(
    stream: &mut impl Read,
    method: &str,
    max_head: usize,
) -> Result<(ResponseHead, Vec<u8>), ExchangeError> {
    let too_large = ResponseError::HeadTooLarge { limit: max_head };
    let mut buf = Vec::new();
    // Bytes of the heads parsed so far: interim answers count against the
    // bound, so that an endless run of them is refused like an endless head.
    let mut parsed = 0;
    loop {
        if let Some((used, head)) = response_head::parse(&buf, method, max_head)? {
            if head.status == 101 {
                return Err(ResponseError::UnrequestedUpgrade.into());
            }
            buf.drain(..used);
            parsed += used;
            if parsed > max_head {
                return Err(too_large.into());
            }
            // RFC 9110 15.2: "A client MUST be able to parse one or more
            // 1xx responses received prior to a final response, even if
            // the client does not expect one."
            if !(100..200).contains(&head.status) {
                return Ok((head, buf));
            }
            continue;
        }
        if parsed + buf.len() > max_head {
            return Err(too_large.into());
        }
        if read_some(stream, &mut buf).map_err(ExchangeError::Receive)? == 0 {
            return Err(ExchangeError::Closed);
        }
    }
}

/// Reads what `stream` has into `buf` (at most [`READ_CHUNK_BYTES`]),
/// retrying `Interrupted`: how many bytes, 0 at the end of the stream.
fn read_some(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut piece = [0u8; READ_CHUNK_BYTES];
    loop {
        match stream.read(&mut piece) {
            Ok(n) => {
                buf.extend_from_slice(&piece[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Where a body being read stands.
#[derive(Debug)]
enum Body {
    /// `Content-Length`: this many bytes still to come.
    Length(usize),
    /// Chunked: the decoder, holding at most one chunk.
    Chunked(Dechunker),
    /// Until the server closes.
    UntilClose,
    /// Complete: nothing more is read.
    Done,
}

/// An answer's body being read from its stream, decoded as its head
/// frames it, piece by piece (an event stream) or whole
/// ([`BodyReader::read_to_end`]).
#[derive(Debug)]
pub struct BodyReader<S> {
    /// The connection.
    stream: S,
    /// Bytes read with the head, not yet decoded.
    unread: Vec<u8>,
    /// Where the body stands.
    body: Body,
}

impl<S: Read> BodyReader<S> {
    /// The body framed by `framing` on `stream`, whose first bytes,
    /// `unread`, came with the head; a chunk may take at most `max_chunk`.
    pub fn new(stream: S, framing: Framing, unread: Vec<u8>, max_chunk: usize) -> BodyReader<S> {
        let body = match framing {
            Framing::Length(0) => Body::Done,
            Framing::Length(length) => Body::Length(length),
            Framing::Chunked => Body::Chunked(Dechunker::new(max_chunk)),
            Framing::UntilClose => Body::UntilClose,
        };
        BodyReader {
            stream,
            unread,
            body,
        }
    }

    /// Appends what comes next of the body, decoded, to `out` (waiting for
    /// one read at most; possibly nothing, when that read ended inside a
    /// chunk's size line): `Ok(true)` while more of it may follow,
    /// `Ok(false)` once it is complete. A stream that ends before its
    /// length or last chunk is [`ExchangeError::Closed`].
    pub fn read_into(&mut self, out: &mut Vec<u8>) -> Result<bool, ExchangeError> {
        if matches!(self.body, Body::Done) {
            return Ok(false);
        }
        let mut input = std::mem::take(&mut self.unread);
        if input.is_empty()
            && read_some(&mut self.stream, &mut input).map_err(ExchangeError::Receive)? == 0
        {
            return match self.body {
                Body::UntilClose => {
                    self.body = Body::Done;
                    Ok(false)
                }
                _ => Err(ExchangeError::Closed),
            };
        }
        match &mut self.body {
            Body::Length(left) => {
                // Bytes past the length are not this answer's: dropped.
                let take = input.len().min(*left);
                out.extend_from_slice(&input[..take]);
                *left -= take;
                if *left == 0 {
                    self.body = Body::Done;
                }
            }
            Body::Chunked(dechunker) => {
                dechunker.push(&input, out)?;
                if dechunker.is_done() {
                    self.body = Body::Done;
                }
            }
            Body::UntilClose => out.extend_from_slice(&input),
            Body::Done => {}
        }
        Ok(!matches!(self.body, Body::Done))
    }

    /// The whole body, at most `max` bytes: a longer `Content-Length` is
    /// refused before a byte of it is read, any other body once it passes
    /// the bound.
    pub fn read_to_end(mut self, max: usize) -> Result<Vec<u8>, ExchangeError> {
        let too_large = ResponseError::BodyTooLarge { limit: max };
        if matches!(self.body, Body::Length(length) if length > max) {
            return Err(too_large.into());
        }
        let mut body = Vec::new();
        loop {
            let more = self.read_into(&mut body)?;
            if body.len() > max {
                return Err(too_large.into());
            }
            if !more {
                return Ok(body);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that hands out `step` bytes a read, says `Interrupted`
    /// before each, then ends; or fails every read (`None`), to show
    /// nothing is read.
    struct Trickle {
        bytes: Option<Vec<u8>>,
        step: usize,
        interrupt: bool,
    }

    impl Trickle {
        fn new(bytes: &[u8], step: usize) -> Trickle {
            Trickle {
                bytes: Some(bytes.to_vec()),
                step,
                interrupt: true,
            }
        }

        fn unreadable() -> Trickle {
            Trickle {
                bytes: None,
                step: 1,
                interrupt: false,
            }
        }
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(bytes) = &mut self.bytes else {
                return Err(io::Error::other("read when nothing should be"));
            };
            self.interrupt = !self.interrupt;
            if !self.interrupt {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.step.min(buf.len()).min(bytes.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            bytes.drain(..n);
            Ok(n)
        }
    }

    /// The head and whole body of `answer`, read in pieces of `step`.
    fn exchange(answer: &[u8], step: usize, max: usize) -> Result<(u16, Vec<u8>), ExchangeError> {
        let mut stream = Trickle::new(answer, step);
        let (head, rest) = read_head(&mut stream, "GET", 1024)?;
        let body = BodyReader::new(stream, head.framing, rest, max).read_to_end(max)?;
        Ok((head.status, body))
    }

    #[test]
    fn requests_are_written_one_per_connection() {
        let mut out = Vec::new();
        write_request(
            &mut out,
            "GET",
            "/events?x=%7B",
            "docker",
            &["User-Agent: g/1"],
            None,
        )
        .unwrap();
        assert_eq!(
            out,
            b"GET /events?x=%7B HTTP/1.1\r\nHost: docker\r\nUser-Agent: g/1\r\n\
              Connection: close\r\n\r\n"
        );
        out.clear();
        write_request(&mut out, "PUT", "/1.0", "guestsock", &[], Some(b"{}")).unwrap();
        assert_eq!(
            out,
            b"PUT /1.0 HTTP/1.1\r\nHost: guestsock\r\nConnection: close\r\n\
              Content-Length: 2\r\n\r\n{}"
        );
        // What would split the request, or is not one, is refused.
        for (method, target, field) in [
            ("GET", "/a b", "X: y"),
            ("GET", "/a\r\nX: y", "X: y"),
            ("GET", "", "X: y"),
            ("G T", "/", "X: y"),
            ("", "/", "X: y"),
            ("GET", "/", "X: y\r\nZ: w"),
            ("GET", "/", "X: y\n"),
            ("GET", "/", "X y"),
            ("GET", "/", ": y"),
            ("GET", "/", "X"),
        ] {
            assert!(
                matches!(
                    write_request(&mut out, method, target, "h", &[field], None),
                    Err(ExchangeError::BadRequest(_))
                ),
                "{method:?} {target:?} {field:?}"
            );
        }
        assert!(matches!(
            write_request(&mut out, "GET", "/", "a b", &[], None),
            Err(ExchangeError::BadRequest(_))
        ));
    }

    #[test]
    fn answers_are_read_as_their_head_frames_them() {
        let table: &[(&[u8], u16, &[u8])] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, b"hello"),
            // Bytes past the length are not the answer's.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello", 200, b"he"),
            (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 404, b""),
            (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", 200, b"until the end"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n",
                200,
                b"Wikipedia",
            ),
            // Interim answers are skipped (RFC 9110 15.2).
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                  HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
                201,
                b"ok",
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
        ];
        for &(answer, status, body) in table {
            for step in [1, 3, answer.len()] {
                let (got_status, got_body) = exchange(answer, step, 1024)
                    .unwrap_or_else(|e| panic!("{:?} in steps of {step}: {e}", answer));
                assert_eq!((got_status, &got_body[..]), (status, body), "{step}");
            }
        }
    }

    #[test]
    fn broken_or_cut_answers_are_refused() {
        let closed =
            |answer: &[u8]| matches!(exchange(answer, 2, 1024), Err(ExchangeError::Closed));
        assert!(closed(b""));
        assert!(closed(b"HTTP/1.1 200 OK\r\n"));
        assert!(closed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhell"));
        assert!(closed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n"
        ));
        let refused = |answer: &[u8]| match exchange(answer, 2, 1024) {
            Err(ExchangeError::Response(e)) => e,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(answer)),
        };
        assert_eq!(
            refused(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
            ResponseError::UnrequestedUpgrade
        );
        // Bytes after the last chunk, read with it; once it is decoded,
        // nothing more is read, so later ones are never seen.
        let after = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nmore";
        assert!(matches!(
            exchange(after, after.len(), 1024),
            Err(ExchangeError::Response(ResponseError::BytesAfterLastChunk))
        ));
        assert_eq!(exchange(after, 2, 1024).unwrap(), (200, Vec::new()));
        // Interim answers count against the head's bound.
        let endless_interim = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(1024 / 25 + 1);
        assert_eq!(
            refused(&endless_interim),
            ResponseError::HeadTooLarge { limit: 1024 }
        );
        let mut cut = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(1024 / 25 - 1);
        cut.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nX: 0123456789012345678901234567890123456789\r\n\r\n",
        );
        assert_eq!(refused(&cut), ResponseError::HeadTooLarge { limit: 1024 });
    }

    #[test]
    fn bodies_past_their_bound_are_refused() {
        let too_large = |answer: &[u8]| {
            matches!(
                exchange(answer, 7, 4),
                Err(ExchangeError::Response(ResponseError::BodyTooLarge {
                    limit: 4
                }))
            )
        };
        assert!(too_large(b"HTTP/1.1 200 OK\r\n\r\nhello"));
        assert!(too_large(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"
        ));
        // The bound itself is fine.
        assert_eq!(
            exchange(b"HTTP/1.1 200 OK\r\n\r\nhell", 7, 4).unwrap().1,
            b"hell"
        );
        // A declared length past the bound: not one byte of it is read.
        let body = BodyReader::new(Trickle::unreadable(), Framing::Length(5), Vec::new(), 4);
        assert!(matches!(
            body.read_to_end(4),
            Err(ExchangeError::Response(ResponseError::BodyTooLarge {
                limit: 4
            }))
        ));
        // A chunk past its bound, before its data is read.
        let body = BodyReader::new(
            Trickle::unreadable(),
            Framing::Chunked,
            b"5\r\n".to_vec(),
            4,
        );
        assert!(matches!(
            body.read_to_end(100),
            Err(ExchangeError::Response(ResponseError::ChunkTooLarge {
                limit: 4
            }))
        ));
    }

    #[test]
    fn a_stream_is_read_piece_by_piece_to_its_end() {
        let stream = Trickle::new(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 4);
        let mut body = BodyReader::new(stream, Framing::Chunked, b"1\r\nx\r\n".to_vec(), 16);
        let mut pieces = Vec::new();
        loop {
            let mut piece = Vec::new();
            let more = body.read_into(&mut piece).unwrap();
            pieces.push(piece);
            if !more {
                break;
            }
        }
        // What came with the head first, then read by read.
        assert_eq!(pieces[0], b"x");
        assert_eq!(pieces.concat(), b"xabcde");
        // Once complete, nothing more is read.
        assert!(!body.read_into(&mut Vec::new()).unwrap());
        let mut body = BodyReader::new(Trickle::unreadable(), Framing::Length(0), Vec::new(), 16);
        assert!(!body.read_into(&mut Vec::new()).unwrap());
    }
}
