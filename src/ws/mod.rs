//! RFC 6455 websockets, by hand: the opening handshake, frames, and the
//! reader that turns a client's bytes into what the server must do.
//!
//! Everything here is pure (bytes in, decisions out) so that it can be
//! fuzzed and table-tested. Subscriptions and fan-out are `server`'s
//! business; a connection's life, `conn`'s.

pub mod frame;
pub mod handshake;
pub mod reader;

/// Close codes guestsock sends or accepts (RFC 6455 section 7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutting down).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message was not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation: here, a subscriber too slow to keep up.
    pub const POLICY: u16 = 1008;
    /// A message was larger than the server takes.
    pub const TOO_BIG: u16 = 1009;
}
