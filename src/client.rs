//! The client side of both sockets, for the command line: one HTTP/1.1
//! request per connection, the answer read to EOF, and the admin envelope
//! unwrapped.
//!
//! Owns nothing of the server; it speaks to it only over the socket, like
//! any other client would.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::limits::{CLIENT_TIMEOUT, MAX_REPLY_HEADERS};

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
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: guestsock\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    if !body.is_empty() {
        request.extend_from_slice(b"Content-Type: application/octet-stream\r\n");
    }
    for header in headers {
        request.extend_from_slice(header.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    stream.write_all(&request).map_err(ClientError::Send)?;
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .map_err(ClientError::Receive)?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_REPLY_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = response.parse(&reply) else {
        return Err(ClientError::NotHttp);
    };
    Ok(Reply {
        status: response.code.unwrap_or(0),
        body: reply[head_len..].to_vec(),
    })
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
    use super::*;

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
