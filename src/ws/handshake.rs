//! The opening handshake (RFC 6455 section 4.2), server side.
//!
//! Decides from a request's headers whether it asks for a websocket, whether
//! the ask is valid, and what `Sec-WebSocket-Accept` answers it. The `101`
//! itself is written by the connection.

use base64::Engine;
use sha1::{Digest, Sha1};

use crate::http::request::Request;

/// The GUID of RFC 6455 section 1.3, appended to the client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a websocket request is refused: the client's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// `Upgrade: websocket` without `Connection: upgrade`, or websocket
    /// headers without `Upgrade: websocket` (`400`).
    MissingUpgrade,
    /// `Sec-WebSocket-Version` other than 13 (`426` with
    /// `Sec-WebSocket-Version: 13`).
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` missing, or not 16 bytes in base64 (`400`).
    BadKey,
}

impl HandshakeError {
    /// The short message sent with the error status.
    pub fn message(self) -> &'static str {
        match self {
            HandshakeError::MissingUpgrade => {
                "a websocket request needs Upgrade: websocket and Connection: upgrade"
            }
            HandshakeError::UnsupportedVersion => "only Sec-WebSocket-Version 13 is supported",
            HandshakeError::BadKey => "Sec-WebSocket-Key must be 16 bytes in base64",
        }
    }
}

/// `Sec-WebSocket-Accept` for a client's key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// What a request says about websockets: `Ok(None)` if it does not ask for
/// one, `Ok(Some(accept))` if it validly does, or why it is refused.
pub fn check(req: &Request<'_>) -> Result<Option<String>, HandshakeError> {
    let ws = &req.websocket;
    if !ws.upgrade_websocket {
        return if ws.key.is_some() || ws.version.is_some() {
            Err(HandshakeError::MissingUpgrade)
        } else {
            Ok(None)
        };
    }
    if !ws.connection_upgrade {
        return Err(HandshakeError::MissingUpgrade);
    }
    if ws.version != Some("13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = ws.key.ok_or(HandshakeError::BadKey)?;
    // "a base64-encoded value that, when decoded, is 16 bytes in length"
    // (RFC 6455 4.2.1 item 5).
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(bytes) if bytes.len() == 16 => Ok(Some(accept_key(key))),
        _ => Err(HandshakeError::BadKey),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{Parsed, parse};

    #[test]
    fn rfc_sample_key() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn checked(headers: &str) -> Result<Option<String>, HandshakeError> {
        let text = format!("GET /1.0/events HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let Ok(Parsed::Complete(req)) = parse(text.as_bytes(), 0, 0) else {
            panic!("{text}")
        };
        check(&req)
    }

    #[test]
    fn header_rules() {
        let good = "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        assert_eq!(
            checked(good),
            Ok(Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()))
        );
        assert_eq!(
            checked(&good.replace("websocket", "WebSocket")),
            checked(good)
        );
        assert_eq!(checked(""), Ok(None));
        for (headers, want) in [
            (
                good.replace("keep-alive, Upgrade", "keep-alive"),
                HandshakeError::MissingUpgrade,
            ),
            (
                good.replace("Upgrade: websocket\r\n", ""),
                HandshakeError::MissingUpgrade,
            ),
            (
                good.replace(": 13", ": 8"),
                HandshakeError::UnsupportedVersion,
            ),
            (
                good.replace("Sec-WebSocket-Version: 13\r\n", ""),
                HandshakeError::UnsupportedVersion,
            ),
            (
                good.replace("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ=="),
                HandshakeError::BadKey,
            ),
            (
                good.replace("dGhlIHNhbXBsZSBub25jZQ==", "!!"),
                HandshakeError::BadKey,
            ),
            (
                good.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                HandshakeError::BadKey,
            ),
        ] {
            assert_eq!(checked(&headers), Err(want), "{headers}");
        }
    }
}
