//! Responses, from a [`Response`] value to bytes on a connection's output.
//!
//! Owns the three body kinds of docs/protocol.md section 2 (JSON, raw value,
//! plain-text error) and writing them. Which response a request gets is
//! `api`'s business; which status an error gets, `error`'s.

use std::cell::Cell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::metrics::Reason;

/// What the body is, which fixes its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json`: a JSON document and one `\n`.
    Json,
    /// `application/octet-stream`: a value's bytes exactly.
    Raw,
    /// `text/plain; charset=utf-8` with `nosniff`: a message and one `\n`.
    Error,
    /// Prometheus' text exposition format (admin `GET /1.0/metrics`).
    Metrics,
    /// `application/jwt` (RFC 7519 10.3.1): an identity token, never to be
    /// stored by a cache on the way (`Cache-Control: no-store`).
    Jwt,
}

impl BodyKind {
    fn content_type(self) -> &'static str {
        match self {
            BodyKind::Json => "application/json",
            BodyKind::Raw => "application/octet-stream",
            BodyKind::Error => "text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff",
            BodyKind::Metrics => "text/plain; version=0.0.4; charset=utf-8",
            BodyKind::Jwt => "application/jwt\r\nCache-Control: no-store",
        }
    }
}

/// One answer, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The kind of body.
    pub kind: BodyKind,
    /// The body bytes, already in their final form.
    pub body: Vec<u8>,
    /// For `405`: the methods the path takes.
    pub allow: Option<&'static str>,
    /// Whether the connection must end after this answer whatever the client
    /// asked (the request could not be read to its end).
    pub close: bool,
    /// The `ETag`, quoted, for answers that carry one.
    pub etag: Option<String>,
    /// One more header line (without its CRLF), e.g.
    /// `Sec-WebSocket-Version: 13` on a `426`.
    pub extra_header: Option<&'static str>,
    /// For a refusal, what the metrics count it as (set by
    /// `NotServed::response`), so that nothing maps a status back to why.
    pub refused: Option<Reason>,
}

impl Response {
    /// A `200` JSON answer.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Response {
        // Most answers are small: one allocation instead of a few growths.
        let mut body = Vec::with_capacity(128);
        if serde_json::to_writer(&mut body, value).is_err() {
            body.clear();
            body.extend_from_slice(b"null");
        }
        body.push(b'\n');
        Response {
            status: 200,
            kind: BodyKind::Json,
            body,
            allow: None,
            close: false,
            etag: None,
            extra_header: None,
            refused: None,
        }
    }

    /// A `200` JSON answer whose body (ending in `\n`) is already written.
    pub fn json_bytes(body: Vec<u8>) -> Response {
        Response {
            kind: BodyKind::Json,
            ..Response::raw(body)
        }
    }

    /// A `200` identity token: the compact JWS as a raw value.
    pub fn jwt(token: String) -> Response {
        Response {
            kind: BodyKind::Jwt,
            ..Response::raw(token.into_bytes())
        }
    }

    /// A `200` raw-value answer.
    pub fn raw(body: Vec<u8>) -> Response {
        Response {
            status: 200,
            kind: BodyKind::Raw,
            body,
            allow: None,
            close: false,
            etag: None,
            extra_header: None,
            refused: None,
        }
    }

    /// An error answer with a short message: for `NotServed::response`,
    /// which chooses the status.
    pub(crate) fn error(status: u16, message: impl std::fmt::Display) -> Response {
        let mut body = message.to_string().into_bytes();
        body.push(b'\n');
        Response {
            status,
            kind: BodyKind::Error,
            body,
            allow: None,
            close: false,
            etag: None,
            extra_header: None,
            refused: None,
        }
    }

    /// An error in the envelope of LXD's main API, as LXD writes it where
    /// devlxd answers with it (`response.Forbidden` and friends): Go's
    /// `json.Encoder` output, one `\n`, then the `\n` of `fmt.Fprintln`.
    /// Fields in Go's struct order; `message` is written as serde writes a
    /// JSON string, which equals Go's for the plain ASCII messages used here.
    pub(crate) fn lxd_api_error(status: u16, message: &str) -> Response {
        let mut body = Vec::with_capacity(128 + message.len());
        body.extend_from_slice(
            br#"{"type":"error","status":"","status_code":0,"operation":"","error_code":"#,
        );
        push_decimal(&mut body, usize::from(status));
        body.extend_from_slice(br#","error":"#);
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut body, message);
        body.extend_from_slice(b",\"metadata\":null}\n\n");
        Response {
            status,
            kind: BodyKind::Json,
            body,
            allow: None,
            close: false,
            etag: None,
            extra_header: Some("X-Content-Type-Options: nosniff"),
            refused: None,
        }
    }

    /// This answer with an `ETag` derived from its status and body, so that
    /// it changes whenever the body would (FNV-1a, 64 bits: an opaque
    /// version, not a security boundary; the body is the guest's own data).
    pub fn with_etag(self) -> Response {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.status.to_be_bytes().iter().chain(&self.body) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // Sixteen hex digits, quoted, without the formatting machinery.
        let mut etag = String::with_capacity(18);
        etag.push('"');
        for shift in (0..16).rev() {
            let digit = (hash >> (shift * 4)) & 0xf;
            etag.push(char::from(b"0123456789abcdef"[digit as usize]));
        }
        etag.push('"');
        Response {
            etag: Some(etag),
            ..self
        }
    }

    /// `304 Not Modified` standing for an answer with this tag: no body and
    /// no length (docs/protocol.md section 2).
    pub fn not_modified(etag: String) -> Response {
        Response {
            status: 304,
            kind: BodyKind::Raw,
            body: Vec::new(),
            allow: None,
            close: false,
            etag: Some(etag),
            extra_header: None,
            refused: None,
        }
    }

    /// The admin socket's form of this response: LXD's main-API envelope
    /// (docs/protocol.md section 7). A JSON answer becomes `metadata` of a
    /// `sync` success; an error becomes an `error` object with its status.
    /// Raw answers are left as they are.
    pub fn enveloped(self) -> Response {
        let body = match self.kind {
            BodyKind::Raw | BodyKind::Metrics | BodyKind::Jwt => return self,
            BodyKind::Json if self.status < 400 => {
                let metadata = self.body.strip_suffix(b"\n").unwrap_or(&self.body);
                let mut body = Vec::with_capacity(metadata.len() + 64);
                let _ = write!(
                    body,
                    "{{\"type\":\"sync\",\"status\":\"Success\",\"status_code\":{},\"metadata\":",
                    self.status
                );
                body.extend_from_slice(metadata);
                body
            }
            BodyKind::Json | BodyKind::Error => {
                let text = String::from_utf8_lossy(&self.body);
                serde_json::to_vec(&serde_json::json!({
                    "type": "error",
                    "error": text.trim_end(),
                    "error_code": self.status,
                }))
                .unwrap_or_default()
            }
        };
        let mut body = body;
        if self.kind == BodyKind::Json && self.status < 400 {
            body.push(b'}');
        }
        body.push(b'\n');
        Response {
            kind: BodyKind::Json,
            body,
            ..self
        }
    }

    /// Appends the response to `out`. `head_only` answers a `HEAD`;
    /// `keep_alive` says whether the connection stays open after it, and
    /// `http10` whether that needs saying (HTTP/1.0 closes by default).
    pub fn write_to(&self, out: &mut Vec<u8>, head_only: bool, keep_alive: bool, http10: bool) {
        // Sized once: every request writes one of these.
        let head = 160
            + self.etag.as_ref().map_or(0, String::len)
            + self.allow.map_or(0, str::len)
            + self.extra_header.map_or(0, str::len);
        out.reserve(head + if head_only { 0 } else { self.body.len() });
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, usize::from(self.status));
        out.push(b' ');
        out.extend_from_slice(reason(self.status).as_bytes());
        out.extend_from_slice(b"\r\n");
        push_date(out);
        if self.status != 304 {
            out.extend_from_slice(b"Content-Type: ");
            out.extend_from_slice(self.kind.content_type().as_bytes());
            out.extend_from_slice(b"\r\nContent-Length: ");
            push_decimal(out, self.body.len());
            out.extend_from_slice(b"\r\n");
        }
        let lines = [
            ("ETag: ", self.etag.as_deref()),
            ("Allow: ", self.allow),
            ("", self.extra_header),
        ];
        for (name, value) in lines {
            if let Some(value) = value {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

/// Appends the head of a websocket handshake's answer (RFC 6455 4.2.2): the
/// subscription is live once this is queued.
pub fn write_upgrade_head(out: &mut Vec<u8>, accept: &str) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    push_date(out);
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends the head of a plain event stream (docs/protocol.md section 5): no
/// length, since it lasts until the connection ends.
pub fn write_stream_head(out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    push_date(out);
    out.extend_from_slice(b"Content-Type: application/json\r\nConnection: close\r\n\r\n");
}

/// `Date: ` and the current time as an IMF-fixdate, with its CRLF.
const DATE_LINE_LEN: usize = 6 + 29 + 2;

thread_local! {
    /// The `Date` line of the current second, and that second: a server
    /// with a clock MUST send `Date` (RFC 9110 6.6.1), and formatting it
    /// once a second rather than once an answer keeps it off the profile.
    static DATE_LINE: Cell<(u64, [u8; DATE_LINE_LEN])> = const { Cell::new((u64::MAX, [0; DATE_LINE_LEN])) };
}

/// Appends `Date: <now>\r\n`.
fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let line = DATE_LINE.with(|cached| {
        let (second, line) = cached.get();
        if second == now {
            return line;
        }
        let mut line = [0u8; DATE_LINE_LEN];
        line[..6].copy_from_slice(b"Date: ");
        line[6..35].copy_from_slice(&imf_fixdate(now));
        line[35..].copy_from_slice(b"\r\n");
        cached.set((now, line));
        line
    });
    out.extend_from_slice(&line);
}

/// `secs` after the Unix epoch as an IMF-fixdate (RFC 9110 5.6.7), e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn imf_fixdate(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    let (year, month, day) = crate::events::civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = ((days + 4) % 7) as usize;
    let two = |n: u64| [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8];
    let mut out = [0u8; 29];
    out[..3].copy_from_slice(DAYS[weekday]);
    out[3..5].copy_from_slice(b", ");
    out[5..7].copy_from_slice(&two(day));
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    out[11] = b' ';
    out[12..14].copy_from_slice(&two(year / 100));
    out[14..16].copy_from_slice(&two(year));
    out[16] = b' ';
    out[17..19].copy_from_slice(&two(of_day / 3600));
    out[19] = b':';
    out[20..22].copy_from_slice(&two(of_day / 60 % 60));
    out[22] = b':';
    out[23..25].copy_from_slice(&two(of_day % 60));
    out[25..].copy_from_slice(b" GMT");
    out
}

/// Appends `n` in decimal, without the formatting machinery (this runs
/// twice per answer).
fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The reason phrase for the statuses guestsock sends.
fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The response as text, its `Date` line (checked to be the second
    /// line, well formed) taken out so that the rest can be compared.
    fn text(r: &Response, head_only: bool, keep_alive: bool, http10: bool) -> String {
        let mut out = Vec::new();
        r.write_to(&mut out, head_only, keep_alive, http10);
        without_date(String::from_utf8(out).unwrap())
    }

    fn without_date(text: String) -> String {
        let (status, rest) = text.split_once("\r\n").unwrap();
        let (date, rest) = rest.split_once("\r\n").unwrap();
        let value = date
            .strip_prefix("Date: ")
            .expect("Date is the second line");
        assert!(
            value.len() == 29 && value.ends_with(" GMT") && value.as_bytes()[3] == b',',
            "{value:?}"
        );
        format!("{status}\r\n{rest}")
    }

    #[test]
    fn imf_fixdate_vectors() {
        // RFC 9110 5.6.7's example, the epoch, leap days, a century that is
        // not a leap year; checked with GNU `date -u -d @SECS`.
        for (secs, date) in [
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_709_251_199, "Thu, 29 Feb 2024 23:59:59 GMT"),
            (4_107_542_400, "Mon, 01 Mar 2100 00:00:00 GMT"),
            (4_102_444_799, "Thu, 31 Dec 2099 23:59:59 GMT"),
            (253_402_300_799, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ] {
            assert_eq!(
                std::str::from_utf8(&imf_fixdate(secs)).unwrap(),
                date,
                "{secs}"
            );
        }
    }

    #[test]
    fn every_head_carries_the_date() {
        let mut out = Vec::new();
        write_upgrade_head(&mut out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(
            without_date(String::from_utf8(out).unwrap()),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
        let mut out = Vec::new();
        write_stream_head(&mut out);
        assert_eq!(
            without_date(String::from_utf8(out).unwrap()),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        );
        let r = Response::not_modified("\"x\"".into());
        assert_eq!(
            text(&r, false, true, false),
            "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"
        );
    }

    #[test]
    fn json_body_ends_in_one_newline() {
        let r = Response::json(&["/1.0"]);
        assert_eq!(
            text(&r, false, true, false),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n[\"/1.0\"]\n"
        );
    }

    #[test]
    fn raw_value_is_exact() {
        let r = Response::raw(b"bar".to_vec());
        assert!(text(&r, false, true, false).ends_with("Content-Length: 3\r\n\r\nbar"));
    }

    #[test]
    fn errors_are_plain_text_and_nosniff() {
        let r = Response::error(404, "not found");
        assert_eq!(
            text(&r, false, false, false),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n"
        );
        let r = Response {
            allow: Some("GET, HEAD"),
            ..Response::error(405, "method not allowed")
        };
        assert!(text(&r, false, true, false).contains("\r\nAllow: GET, HEAD\r\n"));
    }

    #[test]
    fn head_keeps_length_and_drops_body() {
        let r = Response::raw(b"bar".to_vec());
        let t = text(&r, true, true, true);
        assert!(
            t.ends_with("Content-Length: 3\r\nConnection: keep-alive\r\n\r\n"),
            "{t}"
        );
    }

    #[test]
    fn admin_envelope() {
        let r = Response::json(&serde_json::json!({"a": 1})).enveloped();
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            "{\"type\":\"sync\",\"status\":\"Success\",\"status_code\":200,\"metadata\":{\"a\":1}}\n"
        );
        let r = Response::error(409, "taken \"x\"").enveloped();
        assert_eq!((r.status, r.kind), (409, BodyKind::Json));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "error", "error": "taken \"x\"", "error_code": 409})
        );
        let r = Response {
            allow: Some("GET"),
            ..Response::error(405, "method not allowed")
        }
        .enveloped();
        assert_eq!((r.status, r.allow), (405, Some("GET")));
    }

    #[test]
    fn decimal() {
        for n in [0, 7, 10, 99, 103, 4096, 65_535, usize::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn etag_is_fnv1a_of_status_and_body_in_sixteen_hex_digits() {
        // FNV-1a 64 over [0, 200] + "bar" and over [1, 148] (status 404,
        // empty body), computed independently.
        let tag = Response::raw(b"bar".to_vec()).with_etag().etag;
        assert_eq!(tag.as_deref(), Some("\"3a306b57ac59b60a\""));
        let mut missing = Response::raw(Vec::new());
        missing.status = 404;
        assert_eq!(
            missing.with_etag().etag.as_deref(),
            Some("\"082fae07b4e97aa8\"")
        );
    }
}
