//! The client-to-server direction of a websocket: bytes in, one [`Action`]
//! at a time out.
//!
//! A subscriber has nothing to say to guestsock, so data messages are read
//! and discarded as they stream in (checked for UTF-8 when text, and
//! against a size limit), never buffered. Only control frames, at most 125
//! bytes, wait until they are whole. Every protocol rule of RFC 6455 that a
//! client can break is checked here, named by a [`Violation`] and answered
//! with the close code the RFC gives ([`Violation::close_code`]); sending the
//! answer is the connection's business.

use crate::ws::close_code;
use crate::ws::frame::{FrameError, FrameHeader, opcode, parse_header, unmask};

/// What the server must do about what the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer a ping with a pong carrying this payload.
    Pong(Vec<u8>),
    /// The client answered a ping (or sent an unsolicited pong): it is alive.
    Alive,
    /// The client closed: echo its code (none if it sent none), then shut
    /// the connection.
    Close(Option<u16>),
    /// The client broke the protocol: close with its
    /// [`Violation::close_code`] and shut.
    Fail(Violation),
}

/// A rule of RFC 6455 that the client broke (tungstenite's `ProtocolError`):
/// always the client's fault, and the connection is failed with
/// [`Violation::close_code`]. Each variant is enforced at one place in
/// [`Reader`], where the rule is quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A 64-bit payload length with its most significant bit set (5.2).
    LengthTopBitSet,
    /// A payload length in a longer form than it needs (5.2).
    NonMinimalLength,
    /// RSV1, RSV2 or RSV3 set, with no extension negotiated (5.2).
    ReservedBitsSet,
    /// A client frame without a mask (5.1).
    UnmaskedClientFrame,
    /// A control frame with more than 125 bytes of payload (5.5).
    ControlFrameTooLong,
    /// A control frame without FIN (5.5).
    FragmentedControlFrame,
    /// An opcode RFC 6455 reserves: `0x3`-`0x7` or `0xB`-`0xF` (5.2).
    ReservedOpcode(u8),
    /// A continuation frame with no fragmented message under way (5.4).
    UnexpectedContinuation,
    /// A new text or binary message before the fragmented one ended (5.4).
    ExpectedContinuation,
    /// A data message longer than the server takes (7.4.1, `1009`).
    MessageTooLarge {
        /// The largest message taken, in bytes.
        limit: u64,
    },
    /// A text message that is not UTF-8 (8.1).
    InvalidUtf8,
    /// A close frame whose body is one byte, too short for a code (5.5.1).
    TruncatedCloseCode,
    /// A close code that may not be sent in a close frame (7.4).
    InvalidCloseCode(u16),
    /// A close frame's reason that is not UTF-8 (5.5.1).
    InvalidCloseReason,
}

impl Violation {
    /// The close code the connection is failed with (RFC 6455 7.4.1): `1007`
    /// for data that is not UTF-8, `1009` for a message too large, `1002`
    /// for every other broken rule.
    pub fn close_code(self) -> u16 {
        match self {
            Violation::InvalidUtf8 | Violation::InvalidCloseReason => close_code::INVALID_DATA,
            Violation::MessageTooLarge { .. } => close_code::TOO_BIG,
            Violation::LengthTopBitSet
            | Violation::NonMinimalLength
            | Violation::ReservedBitsSet
            | Violation::UnmaskedClientFrame
            | Violation::ControlFrameTooLong
            | Violation::FragmentedControlFrame
            | Violation::ReservedOpcode(_)
            | Violation::UnexpectedContinuation
            | Violation::ExpectedContinuation
            | Violation::TruncatedCloseCode
            | Violation::InvalidCloseCode(_) => close_code::PROTOCOL_ERROR,
        }
    }
}

impl From<FrameError> for Violation {
    fn from(e: FrameError) -> Violation {
        match e {
            FrameError::LengthTopBitSet => Violation::LengthTopBitSet,
            FrameError::NonMinimalLength => Violation::NonMinimalLength,
        }
    }
}

/// The kind of data message being received, if one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    /// Between messages.
    None,
    /// A text message, with the bytes of a UTF-8 sequence split across
    /// frames or reads still to be completed.
    Text { carry: [u8; 3], carried: u8 },
    /// A binary message.
    Binary,
}

/// Where the reader is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Expecting a frame header.
    Header,
    /// Inside a data frame's payload: `remaining` bytes to go, `offset`
    /// bytes already read (for the mask).
    Payload {
        header: FrameHeader,
        remaining: u64,
        offset: u64,
    },
    /// The connection failed or closed: nothing more is read.
    Done,
}

/// The reading side of one websocket connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reader {
    stage: Stage,
    message: Message,
    /// Bytes of the current data message so far.
    message_len: u64,
    /// Largest data message accepted.
    max_message: u64,
}

impl Reader {
    /// A reader that accepts data messages up to `max_message` bytes.
    pub fn new(max_message: u64) -> Reader {
        Reader {
            stage: Stage::Header,
            message: Message::None,
            message_len: 0,
            max_message,
        }
    }

    /// Consumes what it can of `buf`: returns how many bytes it used and the
    /// action they call for, if any. Call again with the rest until it uses
    /// nothing and returns no action (it then needs more bytes).
    pub fn feed(&mut self, buf: &mut [u8]) -> (usize, Option<Action>) {
        match self.stage {
            Stage::Done => (0, None),
            Stage::Header => self.header(buf),
            Stage::Payload {
                header,
                remaining,
                offset,
            } => {
                let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                let chunk = &mut buf[..take];
                if let Some(mask) = header.mask {
                    unmask(chunk, mask, offset);
                }
                let remaining = remaining - take as u64;
                if let Err(violation) = self.check_text(chunk, remaining == 0 && header.fin) {
                    return (take, Some(self.fail(violation)));
                }
                self.stage = if remaining == 0 {
                    if header.fin {
                        self.message = Message::None;
                        self.message_len = 0;
                    }
                    Stage::Header
                } else {
                    Stage::Payload {
                        header,
                        remaining,
                        offset: offset + take as u64,
                    }
                };
                (take, None)
            }
        }
    }

    fn fail(&mut self, violation: Violation) -> Action {
        self.stage = Stage::Done;
        Action::Fail(violation)
    }

    fn header(&mut self, buf: &mut [u8]) -> (usize, Option<Action>) {
        let (header, header_len) = match parse_header(buf) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return (0, None),
            // "the minimal number of bytes MUST be used to encode the
            // length", and "the most significant bit MUST be 0" (5.2).
            Err(e) => return (0, Some(self.fail(e.into()))),
        };
        // "MUST be 0 unless an extension is negotiated" (5.2): none is.
        if header.rsv != 0 {
            return (0, Some(self.fail(Violation::ReservedBitsSet)));
        }
        // "The server MUST close the connection upon receiving a frame that
        // is not masked" (5.1).
        let Some(mask) = header.mask else {
            return (0, Some(self.fail(Violation::UnmaskedClientFrame)));
        };
        if header.is_control() {
            // "All control frames MUST have a payload length of 125 bytes or
            // less and MUST NOT be fragmented" (5.5).
            if header.len > 125 {
                return (0, Some(self.fail(Violation::ControlFrameTooLong)));
            }
            if !header.fin {
                return (0, Some(self.fail(Violation::FragmentedControlFrame)));
            }
            let len = header.len as usize;
            let Some(payload) = buf.get_mut(header_len..header_len + len) else {
                return (0, None);
            };
            unmask(payload, mask, 0);
            let used = header_len + len;
            let action = match header.opcode {
                opcode::PING => Action::Pong(payload.to_vec()),
                opcode::PONG => Action::Alive,
                opcode::CLOSE => {
                    let action = close_action(payload);
                    self.stage = Stage::Done;
                    action
                }
                // "%xB-F are reserved for further control frames"; "If an
                // unknown opcode is received, the receiving endpoint MUST
                // _Fail the WebSocket Connection_" (5.2).
                reserved => self.fail(Violation::ReservedOpcode(reserved)),
            };
            return (used, Some(action));
        }
        match (header.opcode, self.message) {
            (opcode::TEXT, Message::None) => {
                self.message = Message::Text {
                    carry: [0; 3],
                    carried: 0,
                }
            }
            (opcode::BINARY, Message::None) => self.message = Message::Binary,
            (opcode::CONTINUATION, Message::Text { .. } | Message::Binary) => {}
            // A fragmented message is "a single frame with the FIN bit clear
            // and an opcode other than 0, followed by zero or more frames
            // with the FIN bit clear and the opcode set to 0" (5.4).
            (opcode::CONTINUATION, Message::None) => {
                return (0, Some(self.fail(Violation::UnexpectedContinuation)));
            }
            // "The fragments of one message MUST NOT be interleaved between
            // the fragments of another message unless an extension has been
            // negotiated" (5.4).
            (opcode::TEXT | opcode::BINARY, _) => {
                return (0, Some(self.fail(Violation::ExpectedContinuation)));
            }
            // "%x3-7 are reserved for further non-control frames" (5.2).
            (reserved, _) => return (0, Some(self.fail(Violation::ReservedOpcode(reserved)))),
        }
        // "1009 indicates that an endpoint is terminating the connection
        // because it has received a message that is too big for it to
        // process" (7.4.1).
        let total = self.message_len.saturating_add(header.len);
        if total > self.max_message {
            let limit = self.max_message;
            return (0, Some(self.fail(Violation::MessageTooLarge { limit })));
        }
        self.message_len = total;
        self.stage = Stage::Payload {
            header,
            remaining: header.len,
            offset: 0,
        };
        // An empty final frame ends its message at once.
        if header.len == 0 {
            if let Err(violation) = self.check_text(&mut [], header.fin) {
                return (header_len, Some(self.fail(violation)));
            }
            self.stage = Stage::Header;
            if header.fin {
                self.message = Message::None;
                self.message_len = 0;
            }
        }
        (header_len, None)
    }

    /// Checks a chunk of a text message incrementally: "When an endpoint is
    /// to interpret a byte stream as UTF-8 but finds that the byte stream is
    /// not, in fact, a valid UTF-8 stream, that endpoint MUST _Fail the
    /// WebSocket Connection_" (8.1), with 1007 (7.4.1).
    fn check_text(&mut self, chunk: &mut [u8], last: bool) -> Result<(), Violation> {
        let Message::Text { carry, carried } = &mut self.message else {
            return Ok(());
        };
        let mut joined = [0u8; 3 + 4];
        let mut rest: &[u8] = chunk;
        // Complete a sequence split at the previous boundary first.
        if *carried > 0 {
            let have = usize::from(*carried);
            joined[..have].copy_from_slice(&carry[..have]);
            let more = rest.len().min(4);
            joined[have..have + more].copy_from_slice(&rest[..more]);
            let window = &joined[..have + more];
            match std::str::from_utf8(window) {
                Ok(_) => {
                    rest = &rest[more..];
                    *carried = 0;
                }
                Err(e) if e.valid_up_to() >= have => {
                    let used = e.valid_up_to() - have;
                    rest = &rest[used..];
                    *carried = 0;
                }
                Err(e) if e.error_len().is_some() => return Err(Violation::InvalidUtf8),
                Err(_) => {
                    // Still incomplete: everything fits in the carry.
                    let total = have + more;
                    if total > 3 {
                        return Err(Violation::InvalidUtf8);
                    }
                    carry[..total].copy_from_slice(window);
                    *carried = total as u8;
                    rest = &[];
                }
            }
        }
        match std::str::from_utf8(rest) {
            Ok(_) => {}
            Err(e) if e.error_len().is_some() => return Err(Violation::InvalidUtf8),
            Err(e) => {
                let tail = &rest[e.valid_up_to()..];
                carry[..tail.len()].copy_from_slice(tail);
                *carried = tail.len() as u8;
            }
        }
        if last && *carried > 0 {
            return Err(Violation::InvalidUtf8);
        }
        Ok(())
    }
}

/// What a client's close frame calls for (RFC 6455 5.5.1 and 7.4).
fn close_action(payload: &[u8]) -> Action {
    match payload {
        [] => Action::Close(None),
        // "If there is a body, the first two bytes of the body MUST be a
        // 2-byte unsigned integer" (5.5.1).
        [_] => Action::Fail(Violation::TruncatedCloseCode),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // 1004-1006 and 1015 must never be sent ("MUST NOT be set as a
            // status code in a Close control frame by an endpoint", 7.4.1);
            // 1012-1014 are registered since; 0-999 and 1016-2999 are not
            // usable (7.4.2).
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                Action::Fail(Violation::InvalidCloseCode(code))
            } else if std::str::from_utf8(reason).is_err() {
                // "the body MAY contain UTF-8-encoded data with value
                // /reason/" (5.5.1), and data that is not UTF-8 fails the
                // connection (8.1).
                Action::Fail(Violation::InvalidCloseReason)
            } else {
                Action::Close(Some(code))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    /// A masked client frame.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::ws::frame::write_masked_frame(&mut out, b0, MASK, payload);
        out
    }

    /// Feeds `input` in chunks of `step` bytes; returns the actions.
    fn run(input: &[u8], step: usize) -> Vec<Action> {
        let mut reader = Reader::new(1000);
        let mut buf: Vec<u8> = Vec::new();
        let mut actions = Vec::new();
        for chunk in input.chunks(step.max(1)) {
            buf.extend_from_slice(chunk);
            loop {
                let (used, action) = reader.feed(&mut buf);
                buf.drain(..used);
                match action {
                    Some(action) => actions.push(action),
                    None if used == 0 => break,
                    None => {}
                }
            }
        }
        actions
    }

    fn every_split(input: &[u8]) -> Vec<Action> {
        let whole = run(input, input.len());
        for step in 1..input.len().min(20) {
            assert_eq!(run(input, step), whole, "step {step}");
        }
        whole
    }

    #[test]
    fn pings_pongs_and_discarded_data() {
        let mut input = frame(0x81, "héllo wörld ✓".as_bytes());
        input.extend(frame(0x89, b"ping!"));
        input.extend(frame(0x02, &[1, 2, 3]));
        input.extend(frame(0x8A, b""));
        input.extend(frame(0x80, &[4]));
        input.extend(frame(0x01, "✓".as_bytes()[..1].as_ref()));
        input.extend(frame(0x89, b"mid"));
        input.extend(frame(0x80, "✓".as_bytes()[1..].as_ref()));
        input.extend(frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
        assert_eq!(
            every_split(&input),
            vec![
                Action::Pong(b"ping!".to_vec()),
                Action::Alive,
                Action::Pong(b"mid".to_vec()),
                Action::Close(Some(1000))
            ]
        );
    }

    #[test]
    fn protocol_violations() {
        use Violation as V;
        let unmasked = vec![0x81, 0x01, b'a'];
        let too_large = V::MessageTooLarge { limit: 1000 };
        // Input, the rule it breaks, and the close code it is failed with.
        let table: Vec<(Vec<u8>, Violation, u16)> = vec![
            (unmasked, V::UnmaskedClientFrame, 1002),
            (frame(0xC1, b"a"), V::ReservedBitsSet, 1002), // RSV1
            (frame(0x91, b"a"), V::ReservedBitsSet, 1002), // RSV3
            (frame(0x83, b"a"), V::ReservedOpcode(0x3), 1002),
            (frame(0x8B, b"a"), V::ReservedOpcode(0xB), 1002),
            (frame(0x89, &[0; 126]), V::ControlFrameTooLong, 1002),
            (frame(0x09, b"a"), V::FragmentedControlFrame, 1002), // ping
            (frame(0x80, b"a"), V::UnexpectedContinuation, 1002),
            (
                [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
                V::ExpectedContinuation,
                1002,
            ),
            (frame(0x81, &[0xff]), V::InvalidUtf8, 1007),
            (frame(0x81, &[0xe2, 0x9c]), V::InvalidUtf8, 1007), // truncated at the end
            (frame(0x88, &[0x03]), V::TruncatedCloseCode, 1002),
            (frame(0x88, &[0x03, 0xed]), V::InvalidCloseCode(1005), 1002),
            (
                frame(0x88, &[0x03, 0xe8, 0xff]),
                V::InvalidCloseReason,
                1007,
            ),
            (frame(0x82, &[0; 1001]), too_large, 1009),
            (
                [frame(0x02, &[0; 600]), frame(0x80, &[0; 600])].concat(),
                too_large,
                1009,
            ),
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                V::LengthTopBitSet,
                1002,
            ),
            (
                vec![0x82, 0xFE, 0x00, 0x7D, 1, 2, 3, 4],
                V::NonMinimalLength,
                1002,
            ),
        ];
        for (input, violation, code) in table {
            assert_eq!(
                every_split(&input),
                vec![Action::Fail(violation)],
                "{input:02x?}"
            );
            assert_eq!(violation.close_code(), code, "{violation:?}");
        }
        assert_eq!(every_split(&frame(0x88, b"")), vec![Action::Close(None)]);
        assert_eq!(
            every_split(&frame(0x88, &[0x0f, 0xa0])),
            vec![Action::Close(Some(4000))]
        );
    }

    #[test]
    fn every_violation_has_its_close_code() {
        use Violation as V;
        for (violation, code) in [
            (V::LengthTopBitSet, 1002),
            (V::NonMinimalLength, 1002),
            (V::ReservedBitsSet, 1002),
            (V::UnmaskedClientFrame, 1002),
            (V::ControlFrameTooLong, 1002),
            (V::FragmentedControlFrame, 1002),
            (V::ReservedOpcode(0x3), 1002),
            (V::UnexpectedContinuation, 1002),
            (V::ExpectedContinuation, 1002),
            (V::MessageTooLarge { limit: 1 }, 1009),
            (V::InvalidUtf8, 1007),
            (V::TruncatedCloseCode, 1002),
            (V::InvalidCloseCode(1005), 1002),
            (V::InvalidCloseReason, 1007),
        ] {
            assert_eq!(violation.close_code(), code, "{violation:?}");
        }
    }

    #[test]
    fn nothing_is_read_after_close_or_failure() {
        let mut input = frame(0x88, b"");
        input.extend(frame(0x89, b"late"));
        assert_eq!(run(&input, input.len()), vec![Action::Close(None)]);
    }
}
