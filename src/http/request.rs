//! Request heads and bodies, from bytes to a borrowed [`Request`].
//!
//! Pure: takes the bytes received so far and says "complete, with how many
//! bytes it used", "need more", or what is wrong. No I/O, no allocation, so it
//! can be fuzzed and table-tested. It does not decide what a request means
//! (`api`) nor how errors are answered (`http::response`).

use std::borrow::Cow;
use std::mem::MaybeUninit;

use crate::limits::{MAX_HEAD_BYTES, MAX_HEADERS};

/// One complete request, borrowing the connection's input buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'b> {
    /// The method exactly as sent (`GET`, `PATCH`, ...).
    pub method: &'b str,
    /// The path, not yet percent-decoded, without the query string.
    pub path: &'b str,
    /// What followed the first `?` in the target, or `""`.
    pub query: &'b str,
    /// HTTP/1.0 rather than HTTP/1.1.
    pub http10: bool,
    /// Whether the client wants the connection kept open after the answer.
    pub keep_alive: bool,
    /// The `If-None-Match` header, if sent.
    pub if_none_match: Option<&'b str>,
    /// `Guestsock-Identity: true` was sent (a token request's proof that
    /// the caller meant to ask, docs/protocol.md section 9).
    pub identity_header: bool,
    /// `X-Forwarded-For` or `Forwarded` was sent: a proxy relays the
    /// request for someone else.
    pub forwarded: bool,
    /// What the headers say about a websocket upgrade.
    pub websocket: WebSocketHeaders<'b>,
    /// The body (`Content-Length` bytes after the head).
    pub body: &'b [u8],
    /// Bytes of input this request used, head and body.
    pub len: usize,
}

/// The headers of RFC 6455's opening handshake, as sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WebSocketHeaders<'b> {
    /// `Upgrade` lists the `websocket` token (case-insensitive).
    pub upgrade_websocket: bool,
    /// `Connection` lists the `upgrade` token (case-insensitive).
    pub connection_upgrade: bool,
    /// `Sec-WebSocket-Version`, trimmed.
    pub version: Option<&'b str>,
    /// `Sec-WebSocket-Key`, trimmed.
    pub key: Option<&'b str>,
}

/// The result of looking at the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'b> {
    /// A whole request is there.
    Complete(Request<'b>),
    /// More bytes are needed; nothing is wrong yet. `scan_from` is the hint
    /// to pass to the next call on the same buffer grown by more bytes.
    Partial {
        /// Where the next search for the end of the head may start.
        scan_from: usize,
        /// The head is complete; the body is not (the body timeout runs).
        head_complete: bool,
    },
}

/// What is wrong with a request. Always the client's fault; each maps to one
/// status in [`crate::error::NotServed::status`].
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum RequestError {
    /// Not HTTP/1.x syntax, or a header that makes no sense (`400`).
    Malformed(&'static str),
    /// HTTP/1.1 without `Host` (`400`).
    BadHost,
    /// A header field that may appear once only appears more than once
    /// (`400`): one of [`SINGLETON_FIELDS`], named as that table spells it.
    RepeatedField {
        /// The field's name.
        name: &'static str,
    },
    /// The head passed [`MAX_HEAD_BYTES`] (`431`).
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header fields (`431`).
    TooManyHeaders,
    /// `Content-Length` above the body limit of this socket (`413`).
    BodyTooLarge {
        /// The limit that was passed.
        limit: usize,
    },
    /// A `Transfer-Encoding` the server does not decode (`501`).
    UnsupportedTransferEncoding,
}

impl std::fmt::Display for RequestError {
    /// What the client is told.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Malformed(why) => f.write_str(why),
            RequestError::BadHost => {
                f.write_str("an HTTP/1.1 request needs exactly one Host header")
            }
            RequestError::RepeatedField { name } => {
                write!(
                    f,
                    "the header field {name} appears more than once; send it once"
                )
            }
            RequestError::HeadTooLarge => f.write_str("request head too large"),
            RequestError::TooManyHeaders => f.write_str("too many header fields"),
            RequestError::BodyTooLarge { limit } => {
                write!(f, "request body larger than {limit} bytes")
            }
            RequestError::UnsupportedTransferEncoding => {
                f.write_str("Transfer-Encoding is not supported; send Content-Length")
            }
        }
    }
}

/// The header fields a request may carry once only and that say how to
/// read or answer it. "A sender MUST NOT generate multiple field lines with
/// the same name in a message ... unless that field's definition allows
/// multiple field line values to be recombined as a comma-separated list"
/// (RFC 9110 5.3);
/// none of these is a list, so two of them leave the request ambiguous (two
/// hosts, two lengths, two media types, two answers to "did you mean to ask
/// for a token"), and a server that picks one may not pick the one a proxy
/// in front of it picked. Refused rather than guessed, same value or not
/// (RFC 9112 6.3 allows either for a repeated `Content-Length`).
/// `Sec-WebSocket-Key` "MUST NOT appear more than once in an HTTP request"
/// (RFC 6455 11.3.1); `Sec-WebSocket-Version` is one number (RFC 6455 4.1).
/// Fields defined as lists (`Connection`, `Upgrade`, `If-None-Match`,
/// `X-Forwarded-For`) may repeat, as may any field guestsock does not read.
pub const SINGLETON_FIELDS: [&str; 6] = [
    "Host",
    "Content-Length",
    "Content-Type",
    "Guestsock-Identity",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Version",
];

/// Which of [`SINGLETON_FIELDS`] a request carried so far, one bit each.
#[derive(Debug, Default)]
struct Seen(u8);

impl Seen {
    /// Notes one more `name` field; a second one of a singleton is
    /// [`RequestError::RepeatedField`]. Other names pass untouched.
    fn note(&mut self, name: &str) -> Result<(), RequestError> {
        let Some(i) = SINGLETON_FIELDS
            .iter()
            .position(|field| field.eq_ignore_ascii_case(name))
        else {
            return Ok(());
        };
        let bit = 1 << i;
        if self.0 & bit != 0 {
            return Err(RequestError::RepeatedField {
                name: SINGLETON_FIELDS[i],
            });
        }
        self.0 |= bit;
        Ok(())
    }

    /// Whether `Host` (the table's first) was sent.
    fn host(&self) -> bool {
        self.0 & 1 != 0
    }
}

/// Where to start looking for the end of the head next time when it is not
/// in `buf` yet: the blank line may straddle the old end, so back up three
/// bytes.
fn next_scan_from(buf: &[u8]) -> usize {
    buf.len().saturating_sub(3)
}

/// Whether the head (up to its blank line) is in `buf`, looking from `from`.
/// httparse accepts both `\r\n` and bare `\n` line ends, so both are looked
/// for. Stops at the first blank line: with a large body behind the head,
/// the cost is the head's length, not the buffer's.
fn has_head_end(buf: &[u8], from: usize) -> bool {
    // The usual case, a whole request without a body, ends in its blank
    // line: no need to look at every byte.
    if buf.ends_with(b"\r\n\r\n") || buf.ends_with(b"\n\n") {
        return true;
    }
    let from = from.min(buf.len());
    buf[from..].iter().enumerate().any(|(i, &b)| {
        let at = from + i;
        b == b'\n'
            && match buf.get(at + 1) {
                Some(b'\n') => true,
                Some(b'\r') => buf.get(at + 2) == Some(&b'\n'),
                _ => false,
            }
    })
}

/// Parses the request at the start of `buf`. `scan_from` is the hint an
/// earlier call on a prefix of `buf` returned in [`Parsed::Partial`] (0 when
/// in doubt), so that a head arriving a byte at a time is scanned once, not
/// once per byte. `max_body` is this socket's body limit.
pub fn parse(buf: &[u8], scan_from: usize, max_body: usize) -> Result<Parsed<'_>, RequestError> {
    if !has_head_end(buf, scan_from) {
        return if buf.len() > MAX_HEAD_BYTES {
            Err(RequestError::HeadTooLarge)
        } else {
            Ok(Parsed::Partial {
                scan_from: next_scan_from(buf),
                head_complete: false,
            })
        };
    }
    // Left uninitialized: httparse writes only the ones it uses, and 64
    // empty headers would be 2 KiB to clear on every request.
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            // Only leading empty lines so far (RFC 9112 2.2 lets us skip them).
            return if buf.len() > MAX_HEAD_BYTES {
                Err(RequestError::HeadTooLarge)
            } else {
                Ok(Parsed::Partial {
                    scan_from: 0,
                    head_complete: false,
                })
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(httparse::Error::Version) => {
            return Err(RequestError::Malformed("not an HTTP/1.x request"));
        }
        Err(_) => return Err(RequestError::Malformed("malformed request head")),
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(RequestError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(RequestError::Malformed("malformed request line"));
    };
    let http10 = version == 0;

    let mut seen = Seen::default();
    let mut content_length: Option<usize> = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut if_none_match = None;
    let mut identity_header = false;
    let mut forwarded = false;
    let mut websocket = WebSocketHeaders::default();
    for header in req.headers.iter() {
        let name = header.name;
        seen.note(name)?;
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(parse_content_length(header.value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // RFC 9112 6.1: a server that receives a transfer coding it does
            // not understand SHOULD respond with 501.
            return Err(RequestError::UnsupportedTransferEncoding);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header_str(header.value)?.split(',') {
                let token = token.trim();
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
                websocket.connection_upgrade |= token.eq_ignore_ascii_case("upgrade");
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            websocket.upgrade_websocket |= header_str(header.value)?
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            websocket.version = Some(header_str(header.value)?.trim());
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            websocket.key = Some(header_str(header.value)?.trim());
        } else if name.eq_ignore_ascii_case("if-none-match") {
            if_none_match = Some(header_str(header.value)?.trim());
        } else if name.eq_ignore_ascii_case("guestsock-identity") {
            identity_header |= header.value.trim_ascii().eq_ignore_ascii_case(b"true");
        } else if name.eq_ignore_ascii_case("x-forwarded-for")
            || name.eq_ignore_ascii_case("forwarded")
        {
            forwarded = true;
        }
    }
    // RFC 9112 3.2: "A server MUST respond with a 400 (Bad Request) status
    // code to any HTTP/1.1 request message that lacks a Host header field
    // and to any request message that contains more than one Host header
    // field line" (the second, `Seen::note`).
    if !seen.host() && !http10 {
        return Err(RequestError::BadHost);
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > max_body {
        return Err(RequestError::BodyTooLarge { limit: max_body });
    }
    let len = head_len + body_len;
    if buf.len() < len {
        // The head is complete: the next call must find its end again.
        return Ok(Parsed::Partial {
            scan_from: 0,
            head_complete: true,
        });
    }
    let (path, query) = split_target(target)?;
    Ok(Parsed::Complete(Request {
        method,
        path,
        query,
        http10,
        keep_alive: if http10 {
            keep_alive_token && !close
        } else {
            !close
        },
        if_none_match,
        identity_header,
        forwarded,
        websocket,
        body: &buf[head_len..len],
        len,
    }))
}

fn header_str(value: &[u8]) -> Result<&str, RequestError> {
    std::str::from_utf8(value).map_err(|_| RequestError::Malformed("header value is not UTF-8"))
}

/// `Content-Length = 1*DIGIT` (RFC 9110 8.6); anything else, including a sign
/// or a list, is malformed. Overflow is refused as too large.
fn parse_content_length(value: &[u8]) -> Result<usize, RequestError> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::Malformed("Content-Length is not a number"));
    }
    value.iter().try_fold(0usize, |n, d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(d - b'0')))
            .ok_or(RequestError::BodyTooLarge { limit: usize::MAX })
    })
}

/// Splits a request target into path and query. Accepts origin-form
/// (`/1.0?x`) and absolute-form (`http://lxd/1.0`, RFC 9112 3.2.2: a server
/// MUST accept it), which some HTTP libraries send to unix sockets.
fn split_target(target: &str) -> Result<(&str, &str), RequestError> {
    let origin = if target.starts_with('/') {
        target
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
            // RFC 9112 3.2.1: an empty path in absolute-form means "/".
            Some(i) => return Ok(("/", &rest[i + 1..])),
            None => "/",
        }
    } else {
        return Err(RequestError::Malformed("request target is not a path"));
    };
    Ok(match origin.split_once('?') {
        Some((path, query)) => (path, query),
        None => (origin, ""),
    })
}

/// The value of `name` in a query string (`a=1&b=2`), not decoded; the
/// first occurrence wins.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .find_map(|pair| match pair.split_once('=') {
            Some((key, value)) if key == name => Some(value),
            None if pair == name => Some(""),
            _ => None,
        })
}

/// Decodes `%XX` escapes once (docs/protocol.md section 3: `{key}` is
/// percent-decoded once). Fails on a `%` not followed by two hex digits and
/// on a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex_digit(*bytes.get(i + 1)?)?;
            let lo = hex_digit(*bytes.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY_LIMIT: usize = 100;

    fn complete(input: &str) -> Request<'_> {
        match parse(input.as_bytes(), 0, BODY_LIMIT) {
            Ok(Parsed::Complete(req)) => req,
            other => panic!("{input:?}: {other:?}"),
        }
    }

    fn error(input: &str) -> RequestError {
        match parse(input.as_bytes(), 0, BODY_LIMIT) {
            Err(e) => e,
            other => panic!("{input:?}: {other:?}"),
        }
    }

    #[test]
    fn well_formed_requests() {
        let req = complete("GET /1.0/config?x=1 HTTP/1.1\r\nHost: lxd\r\n\r\nNEXT");
        assert_eq!(
            (req.method, req.path, req.query),
            ("GET", "/1.0/config", "x=1")
        );
        assert!(req.keep_alive && !req.http10);
        assert_eq!(
            req.len,
            "GET /1.0/config?x=1 HTTP/1.1\r\nHost: lxd\r\n\r\n".len()
        );

        let req = complete(
            "PATCH /1.0 HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n{\"state\":\"Ready\"}",
        );
        assert_eq!(req.body, b"{\"state\":\"Ready\"}");

        let req = complete("GET / HTTP/1.0\r\n\r\n");
        assert!(req.http10 && !req.keep_alive);
        let req = complete("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(req.keep_alive);
        let req = complete("GET / HTTP/1.1\r\nHost: x\r\nConnection: foo, close\r\n\r\n");
        assert!(!req.keep_alive);
        let req = complete("GET / HTTP/1.1\nHost: x\n\n");
        assert_eq!(req.path, "/");
        let req = complete("\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(req.path, "/");
        let req = complete("GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"abc\" \r\n\r\n");
        assert_eq!(req.if_none_match, Some("\"abc\""));
        for (header, identity, forwarded) in [
            ("", false, false),
            ("Guestsock-Identity: true\r\n", true, false),
            ("guestsock-identity:TRUE \r\n", true, false),
            ("Guestsock-Identity: yes\r\n", false, false),
            (
                "Guestsock-Identity: true\r\nX-Forwarded-For: 1.2.3.4\r\n",
                true,
                true,
            ),
            ("forwarded: for=x\r\n", false, true),
        ] {
            let text = format!("GET / HTTP/1.1\r\nHost: x\r\n{header}\r\n");
            let req = complete(&text);
            assert_eq!(
                (req.identity_header, req.forwarded),
                (identity, forwarded),
                "{header:?}"
            );
        }
    }

    #[test]
    fn absolute_form_targets() {
        for (target, path, query) in [
            ("http://lxd/1.0", "/1.0", ""),
            ("http://lxd", "/", ""),
            ("http://lxd?a=b", "/", "a=b"),
            ("https://x/1.0/config?y", "/1.0/config", "y"),
        ] {
            let input = format!("GET {target} HTTP/1.1\r\nHost: lxd\r\n\r\n");
            let req = complete(&input);
            assert_eq!((req.path, req.query), (path, query), "{target}");
        }
    }

    #[test]
    fn partial_until_complete() {
        let full = b"PATCH /1.0 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let mut hint = 0;
        for end in 0..full.len() {
            match parse(&full[..end], hint, BODY_LIMIT) {
                Ok(Parsed::Partial { scan_from, .. }) => hint = scan_from,
                other => panic!("{end}: {other:?}"),
            }
        }
        assert!(matches!(
            parse(full, hint, BODY_LIMIT),
            Ok(Parsed::Complete(_))
        ));
    }

    #[test]
    fn errors() {
        let table: &[(&str, RequestError)] = &[
            ("GET / HTTP/1.1\r\n\r\n", RequestError::BadHost),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                RequestError::RepeatedField { name: "Host" },
            ),
            (
                "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
                RequestError::Malformed("not an HTTP/1.x request"),
            ),
            (
                "GET /\r\n\r\n",
                RequestError::Malformed("malformed request head"),
            ),
            (
                "G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
                RequestError::Malformed("malformed request head"),
            ),
            (
                "GET / HTTP/1.1\r\nBad Name: a\r\n\r\n",
                RequestError::Malformed("malformed request head"),
            ),
            (
                "GET foo HTTP/1.1\r\nHost: a\r\n\r\n",
                RequestError::Malformed("request target is not a path"),
            ),
            (
                "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
                RequestError::Malformed("request target is not a path"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
                RequestError::Malformed("Content-Length is not a number"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,1\r\n\r\n",
                RequestError::Malformed("Content-Length is not a number"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                RequestError::RepeatedField {
                    name: "Content-Length",
                },
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n",
                RequestError::BodyTooLarge { limit: BODY_LIMIT },
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                RequestError::BodyTooLarge { limit: usize::MAX },
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                RequestError::UnsupportedTransferEncoding,
            ),
            (
                "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                RequestError::Malformed("not an HTTP/1.x request"),
            ),
        ];
        for (input, want) in table {
            assert_eq!(error(input), *want, "{input:?}");
        }
    }

    /// Each field of [`SINGLETON_FIELDS`] twice (same value, different
    /// values, names in different case, apart or together, in HTTP/1.0
    /// too) is refused naming the field; fields that may repeat still
    /// parse, as one list.
    #[test]
    fn a_field_allowed_once_is_refused_twice() {
        let values: [(&str, [&str; 2]); 6] = [
            ("Host", ["lxd", "other"]),
            ("Content-Length", ["0", "1"]),
            ("Content-Type", ["application/json", "text/plain"]),
            ("Guestsock-Identity", ["true", "false"]),
            (
                "Sec-WebSocket-Key",
                ["dGhlIHNhbXBsZSBub25jZQ==", "AQIDBAUGBwgJCgsMDQ4PEA=="],
            ),
            ("Sec-WebSocket-Version", ["13", "8"]),
        ];
        assert_eq!(values.map(|(name, _)| name), SINGLETON_FIELDS);
        for (name, [one, other]) in values {
            let lower = name.to_ascii_lowercase();
            let upper = name.to_ascii_uppercase();
            for (first, second, between) in [
                (format!("{name}: {one}"), format!("{name}: {one}"), ""),
                (format!("{name}: {one}"), format!("{name}: {other}"), ""),
                (format!("{name}: {other}"), format!("{lower}:{one}"), ""),
                (
                    format!("{upper}: {one}"),
                    format!("{name}: {one}"),
                    "X-A: b\r\n",
                ),
            ] {
                for version in ["1.1", "1.0"] {
                    // Host once, unless Host is the field repeated.
                    let host = if name == "Host" { "" } else { "Host: lxd\r\n" };
                    let input = format!(
                        "GET / HTTP/{version}\r\n{host}{first}\r\n{between}{second}\r\n\r\n"
                    );
                    assert_eq!(
                        error(&input),
                        RequestError::RepeatedField { name },
                        "{input:?}"
                    );
                }
            }
            // Once is fine.
            let host = if name == "Host" { "" } else { "Host: lxd\r\n" };
            let input = format!("GET / HTTP/1.1\r\n{host}{name}: {one}\r\n\r\n");
            let _ = complete(&input);
        }
        let message = RequestError::RepeatedField { name: "Host" }.to_string();
        assert!(message.contains("Host"), "{message}");

        // Lists, and fields guestsock does not read, may repeat.
        let req = complete(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nConnection: close\r\n\
             Accept: a/b\r\nAccept: c/d\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n\
             Upgrade: h2c\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        );
        assert!(!req.keep_alive && req.forwarded);
        assert!(req.websocket.upgrade_websocket && req.websocket.connection_upgrade);
        let _ = complete(
            "GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\n\r\n",
        );
    }

    #[test]
    fn head_limits() {
        let long = format!(
            "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(error(&long), RequestError::HeadTooLarge);
        let unterminated = "a".repeat(MAX_HEAD_BYTES + 1);
        assert_eq!(error(&unterminated), RequestError::HeadTooLarge);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            error(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            RequestError::TooManyHeaders
        );
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param("type=config,device&x=1", "type"),
            Some("config,device")
        );
        assert_eq!(query_param("a&b=2", "a"), Some(""));
        assert_eq!(query_param("ab=1", "a"), None);
        assert_eq!(query_param("", "a"), None);
        assert_eq!(query_param("a=1&a=2", "a"), Some("1"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("user.foo").as_deref(), Some("user.foo"));
        assert_eq!(percent_decode("user.a%2Fb").as_deref(), Some("user.a/b"));
        assert_eq!(percent_decode("%75ser.%66oo").as_deref(), Some("user.foo"));
        assert_eq!(
            percent_decode("%2541").as_deref(),
            Some("%41"),
            "decoded once only"
        );
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        for bad in ["%", "%4", "%zz", "a%g1", "%FF"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }
}
