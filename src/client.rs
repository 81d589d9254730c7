//! The client side of both sockets, for the command line: one HTTP/1.1
//! request per connection, its answer read as its head frames it, and the
//! admin envelope unwrapped.
//!
//! Owns the calls and what their answers mean to the command line; HTTP/1.1
//! itself (writing the request, parsing the answer) is [`crate::http`]'s.
//! Owns nothing of the server; it speaks to it only over the socket, like
//! any other client would.

use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::http::exchange::{self, BodyReader, ExchangeError};
use crate::limits::{CLIENT_TIMEOUT, MAX_REPLY_HEAD_BYTES};

/// A server's answer.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// Why a call got no answer it could use. The command line words the
/// remedy: what to do next depends on which socket it was and where its
/// path came from, which only the caller knows.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing could be connected to at `socket` (the caller's or the
    /// operator's fault: no server there, or no permission).
    Connect {
        /// The socket's path.
        socket: PathBuf,
        /// What `connect` said.
        source: io::Error,
    },
    /// The request could not be written (the server went away).
    Send(io::Error),
    /// The answer could not be read (the server went away or timed out).
    Receive(io::Error),
    /// The answer is not HTTP (something else listens on the socket).
    NotHttp,
    /// What answered at `socket` is not guestsock's admin socket: its
    /// answer is not in the admin envelope (the guest socket, most likely;
    /// the operator's fault: a wrong `--admin`).
    NotAdmin {
        /// The socket's path.
        socket: PathBuf,
        /// The answer's status.
        status: u16,
        /// The answer's body, cut short.
        message: String,
    },
    /// The server refused the request with this status and message (the
    /// request's fault, as the server explains).
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { socket, source } => {
                write!(f, "cannot connect to {}: {source}", socket.display())
            }
            ClientError::Send(e) => write!(f, "cannot send the request: {e}"),
            ClientError::Receive(e) => write!(f, "cannot read the answer: {e}"),
            ClientError::NotHttp => f.write_str("the server's answer is not HTTP"),
            ClientError::NotAdmin {
                socket,
                status,
                message,
            } => write!(
                f,
                "{} is not guestsock's admin socket: it answered `{status} {message}`, not in the admin socket's envelope; it looks like the guest socket, which containers use",
                socket.display()
            ),
            ClientError::Refused { status, message } => write!(f, "{status}: {message}"),
        }
    }
}

/// Sends one request to the server at `socket` and reads its answer.
pub fn call(socket: &Path, method: &str, path: &str, body: &[u8]) -> Result<Reply, ClientError> {
    call_with(socket, method, path, &[], body)
}

/// [`call`] with more header lines (`Name: value`, without their CRLF).
pub fn call_with(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> Result<Reply, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        socket: socket.to_path_buf(),
        source,
    })?;
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let mut fields = Vec::with_capacity(headers.len() + 1);
    if !body.is_empty() {
        fields.push("Content-Type: application/octet-stream");
    }
    fields.extend_from_slice(headers);
    exchange::send_request(&mut stream, method, path, "guestsock", &fields, Some(body))
        .map_err(client_error)?;
    let (head, rest) =
        exchange::read_head(&mut stream, method, MAX_REPLY_HEAD_BYTES).map_err(|e| match e {
            // Closed before a whole head: whatever answered is not guestsock.
            ExchangeError::Closed => ClientError::NotHttp,
            e => client_error(e),
        })?;
    // Not bounded: the server is guestsock, whose answers are as large as
    // the state it holds (65,536 instances, with their config, in one
    // list). Memory follows the bytes that arrive, never a declared length.
    let body = BodyReader::new(stream, head.framing, rest, usize::MAX)
        .read_to_end(usize::MAX)
        .map_err(client_error)?;
    Ok(Reply {
        status: head.status,
        body,
    })
}

/// The [`ClientError`] of a failed exchange.
fn client_error(error: ExchangeError) -> ClientError {
    match error {
        // A path or header line that would split the request.
        ExchangeError::BadRequest(why) => {
            ClientError::Send(io::Error::new(io::ErrorKind::InvalidInput, why))
        }
        ExchangeError::Send(e) => ClientError::Send(e),
        ExchangeError::Receive(e) => ClientError::Receive(e),
        ExchangeError::Closed => ClientError::Receive(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection before the answer was complete",
        )),
        ExchangeError::Response(_) => ClientError::NotHttp,
    }
}

/// An admin call: the envelope's `metadata` on success, the server's
/// message (with its status) on error.
pub fn admin(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<serde_json::Value, ClientError> {
    let reply = call(socket, method, path, body)?;
    let Some(envelope) = envelope(&reply.body) else {
        let text = String::from_utf8_lossy(&reply.body);
        let mut message = text.trim_end().to_owned();
        if let Some((cut, _)) = message.char_indices().nth(200) {
            message.truncate(cut);
            message.push_str("...");
        }
        return Err(ClientError::NotAdmin {
            socket: socket.to_path_buf(),
            status: reply.status,
            message,
        });
    };
    if (200..300).contains(&reply.status) {
        Ok(envelope
            .get("metadata")
            .cloned()
            .unwrap_or(serde_json::Value::Null))
    } else {
        let message = envelope
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("error without a message");
        Err(ClientError::Refused {
            status: reply.status,
            message: message.to_owned(),
        })
    }
}

/// The admin socket's envelope (docs/protocol.md section 7), if `body` is
/// one: a JSON object whose `type` is `sync`, or `error` without the
/// `operation` field of LXD's main-API errors. Every JSON answer of the
/// admin socket is one, and no answer of the guest socket is: the guest's
/// JSON errors (devlxd's `Forbidden` where LXD answers so, the agent's
/// `503`) are LXD's error shape, which carries `operation`.
pub fn envelope(body: &[u8]) -> Option<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let admin = match value.get("type")?.as_str()? {
        "sync" => true,
        "error" => value.get("operation").is_none(),
        _ => false,
    };
    admin.then_some(value)
}

/// Percent-encodes one path segment (everything but RFC 3986's unreserved
/// characters).
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Lines of aligned columns: each column as wide as its widest cell, two
/// spaces between, no trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    use super::*;

    /// A server on a fresh socket that answers one connection with
    /// `answer`, then keeps it open until the client goes: the request it
    /// got comes back from the thread, `None` if the client closed first.
    fn serve_once(answer: &'static [u8]) -> (PathBuf, thread::JoinHandle<Option<Vec<u8>>>) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "guestsock-client-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut piece = [0u8; 512];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut piece) {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => request.extend_from_slice(&piece[..n]),
                }
            }
            stream.write_all(answer).unwrap();
            // Until the client closes: it must not wait for this.
            while stream.read(&mut piece).unwrap_or(0) > 0 {}
            Some(request)
        });
        (path, server)
    }

    #[test]
    fn a_content_length_answer_is_read_to_its_length_not_to_eof() {
        let (path, server) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello and more");
        let reply = call_with(&path, "GET", "/1.0/config", &["X-A: b"], b"").unwrap();
        assert_eq!((reply.status, &reply.body[..]), (200, &b"hello"[..]));
        let request = server.join().unwrap().unwrap();
        assert_eq!(
            request,
            b"GET /1.0/config HTTP/1.1\r\nHost: guestsock\r\nX-A: b\r\n\
              Connection: close\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn answers_that_are_not_guestsocks_are_not_http() {
        for answer in [
            &b"SSH-2.0-OpenSSH_9.2\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        ] {
            let (path, server) = serve_once(answer);
            assert!(
                matches!(call(&path, "GET", "/", b""), Err(ClientError::NotHttp)),
                "{:?}",
                String::from_utf8_lossy(answer)
            );
            assert!(server.join().unwrap().is_some());
            let _ = std::fs::remove_file(&path);
        }
    }

    #[test]
    fn a_path_that_would_split_the_request_is_not_sent() {
        let (path, server) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n");
        let refused = call(&path, "GET", "/a HTTP/1.1\r\nX-Forged: 1\r\n\r\n", b"");
        assert!(
            matches!(&refused, Err(ClientError::Send(e)) if e.kind() == io::ErrorKind::InvalidInput),
            "{refused:?}"
        );
        assert_eq!(server.join().unwrap(), None, "a request was written");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["NAME", "STATE"],
            &[
                vec!["c1".into(), "Ready".into()],
                vec!["longer-name".into(), "".into()],
            ],
        );
        assert_eq!(t, "NAME         STATE\nc1           Ready\nlonger-name\n");
    }

    #[test]
    fn only_the_admin_envelope_is_one() {
        for (body, admin) in [
            (
                &br#"{"type":"sync","status":"Success","status_code":200,"metadata":[]}"#[..],
                true,
            ),
            (
                br#"{"type":"error","error":"not found","error_code":404}"#,
                true,
            ),
            (br#"{"api_version":"1.0","auth":"untrusted"}"#, false),
            (
                b"pid 7 (uid 0) is not part of any registered instance\n",
                false,
            ),
            (br#"["/1.0"]"#, false),
            (br#"{"type":"config"}"#, false),
            // LXD's main-API error, as the guest socket and the agent write it.
            (
                br#"{"type":"error","status":"","status_code":0,"operation":"","error_code":503,"error":"x","metadata":null}"#,
                false,
            ),
        ] {
            assert_eq!(
                envelope(body).is_some(),
                admin,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("user.foo-bar_1~"), "user.foo-bar_1~");
        assert_eq!(encode_segment("a b/é"), "a%20b%2F%C3%A9");
    }
}
