//! Responses, from a [`Response`] value to bytes on a connection's output.
//!
//! Owns the three body kinds of PROTOCOL.md section 2 (JSON, raw value,
//! plain-text error) and the one mapping from a request error to its status.
//! Which response a request gets is `api`'s business.

use std::io::Write;

use serde::Serialize;

use crate::http::request::RequestError;

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
}

impl BodyKind {
    fn content_type(self) -> &'static str {
        match self {
            BodyKind::Json => "application/json",
            BodyKind::Raw => "application/octet-stream",
            BodyKind::Error => "text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff",
            BodyKind::Metrics => "text/plain; version=0.0.4; charset=utf-8",
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
        }
    }

    /// A `200` JSON answer whose body (ending in `\n`) is already written.
    pub fn json_bytes(body: Vec<u8>) -> Response {
        Response {
            kind: BodyKind::Json,
            ..Response::raw(body)
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
        }
    }

    /// An error answer with a short message.
    pub fn error(status: u16, message: impl std::fmt::Display) -> Response {
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
    /// no length (PROTOCOL.md section 2).
    pub fn not_modified(etag: String) -> Response {
        Response {
            status: 304,
            kind: BodyKind::Raw,
            body: Vec::new(),
            allow: None,
            close: false,
            etag: Some(etag),
            extra_header: None,
        }
    }

    /// `405` naming the methods `path` takes.
    pub fn method_not_allowed(allow: &'static str) -> Response {
        Response {
            allow: Some(allow),
            ..Response::error(405, "method not allowed")
        }
    }

    /// The answer to a request that could not be read; the connection ends
    /// after it, since where the next request would start is unknown.
    pub fn for_request_error(err: RequestError) -> Response {
        let response = match err {
            RequestError::Malformed(why) => Response::error(400, why),
            RequestError::BadHost => {
                Response::error(400, "an HTTP/1.1 request needs exactly one Host header")
            }
            RequestError::HeadTooLarge => Response::error(431, "request head too large"),
            RequestError::TooManyHeaders => Response::error(431, "too many header fields"),
            RequestError::BodyTooLarge { limit } => {
                Response::error(413, format!("request body larger than {limit} bytes"))
            }
            RequestError::UnsupportedTransferEncoding => Response::error(
                501,
                "Transfer-Encoding is not supported; send Content-Length",
            ),
        };
        Response {
            close: true,
            ..response
        }
    }

    /// The admin socket's form of this response: LXD's main-API envelope
    /// (PROTOCOL.md section 6). A JSON answer becomes `metadata` of a
    /// `sync` success; an error becomes an `error` object with its status.
    /// Raw answers are left as they are.
    pub fn enveloped(self) -> Response {
        let body = match self.kind {
            BodyKind::Raw | BodyKind::Metrics => return self,
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

    fn text(r: &Response, head_only: bool, keep_alive: bool, http10: bool) -> String {
        let mut out = Vec::new();
        r.write_to(&mut out, head_only, keep_alive, http10);
        String::from_utf8(out).unwrap()
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
        let r = Response::method_not_allowed("GET, HEAD");
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
        let r = Response::method_not_allowed("GET").enveloped();
        assert_eq!((r.status, r.allow), (405, Some("GET")));
    }

    #[test]
    fn request_errors_close_with_their_status() {
        for (err, status) in [
            (RequestError::Malformed("x"), 400),
            (RequestError::BadHost, 400),
            (RequestError::HeadTooLarge, 431),
            (RequestError::TooManyHeaders, 431),
            (RequestError::BodyTooLarge { limit: 1 }, 413),
            (RequestError::UnsupportedTransferEncoding, 501),
        ] {
            let r = Response::for_request_error(err);
            assert_eq!((r.status, r.close, r.kind), (status, true, BodyKind::Error));
        }
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
