//! The client-to-server direction of a websocket: bytes in, one [`Action`]
//! at a time out.
//!
//! A subscriber has nothing to say to guestsock, so data messages are read
//! and discarded as they stream in (checked for UTF-8 when text, and
//! against a size limit), never buffered. Only control frames, at most 125
//! bytes, wait until they are whole. Every protocol rule of RFC 6455 that a
//! client can break is checked here and answered with the close code the
//! RFC gives; sending the answer is the connection's business.

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
    /// The client broke the protocol: close with this code and shut.
    Fail(u16),
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
                if let Err(code) = self.check_text(chunk, remaining == 0 && header.fin) {
                    return (take, Some(self.fail(code)));
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

    fn fail(&mut self, code: u16) -> Action {
        self.stage = Stage::Done;
        Action::Fail(code)
    }

    fn header(&mut self, buf: &mut [u8]) -> (usize, Option<Action>) {
        let (header, header_len) = match parse_header(buf) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return (0, None),
            Err(FrameError::LengthTopBitSet | FrameError::NonMinimalLength) => {
                return (0, Some(self.fail(close_code::PROTOCOL_ERROR)));
            }
        };
        // "MUST be 0 unless an extension is negotiated" (5.2): none is.
        if header.rsv != 0 {
            return (0, Some(self.fail(close_code::PROTOCOL_ERROR)));
        }
        // "The server MUST close the connection upon receiving a frame that
        // is not masked" (5.1).
        let Some(mask) = header.mask else {
            return (0, Some(self.fail(close_code::PROTOCOL_ERROR)));
        };
        if header.is_control() {
            // "All control frames MUST have a payload length of 125 bytes or
            // less and MUST NOT be fragmented" (5.5).
            if header.len > 125 || !header.fin {
                return (0, Some(self.fail(close_code::PROTOCOL_ERROR)));
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
                _ => self.fail(close_code::PROTOCOL_ERROR),
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
            // A continuation with no message started, a new message inside
            // a fragmented one (5.4), or a reserved data opcode (5.2).
            _ => return (0, Some(self.fail(close_code::PROTOCOL_ERROR))),
        }
        let total = self.message_len.saturating_add(header.len);
        if total > self.max_message {
            return (0, Some(self.fail(close_code::TOO_BIG)));
        }
        self.message_len = total;
        self.stage = Stage::Payload {
            header,
            remaining: header.len,
            offset: 0,
        };
        // An empty final frame ends its message at once.
        if header.len == 0 {
            if let Err(code) = self.check_text(&mut [], header.fin) {
                return (header_len, Some(self.fail(code)));
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
    fn check_text(&mut self, chunk: &mut [u8], last: bool) -> Result<(), u16> {
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
                Err(e) if e.error_len().is_some() => return Err(close_code::INVALID_DATA),
                Err(_) => {
                    // Still incomplete: everything fits in the carry.
                    let total = have + more;
                    if total > 3 {
                        return Err(close_code::INVALID_DATA);
                    }
                    carry[..total].copy_from_slice(window);
                    *carried = total as u8;
                    rest = &[];
                }
            }
        }
        match std::str::from_utf8(rest) {
            Ok(_) => {}
            Err(e) if e.error_len().is_some() => return Err(close_code::INVALID_DATA),
            Err(e) => {
                let tail = &rest[e.valid_up_to()..];
                carry[..tail.len()].copy_from_slice(tail);
                *carried = tail.len() as u8;
            }
        }
        if last && *carried > 0 {
            return Err(close_code::INVALID_DATA);
        }
        Ok(())
    }
}

/// What a client's close frame calls for (RFC 6455 5.5.1 and 7.4).
fn close_action(payload: &[u8]) -> Action {
    match payload {
        [] => Action::Close(None),
        [_] => Action::Fail(close_code::PROTOCOL_ERROR),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            // 1004-1006 and 1015 must never be sent; 1012-1014 are
            // registered since; 0-999 and 1016-2999 are not usable.
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                Action::Fail(close_code::PROTOCOL_ERROR)
            } else if std::str::from_utf8(reason).is_err() {
                Action::Fail(close_code::INVALID_DATA)
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
        let unmasked = vec![0x81, 0x01, b'a'];
        let table: Vec<(Vec<u8>, Action)> = vec![
            (unmasked, Action::Fail(1002)),
            (frame(0xC1, b"a"), Action::Fail(1002)), // RSV1
            (frame(0x83, b"a"), Action::Fail(1002)), // reserved data opcode
            (frame(0x8B, b"a"), Action::Fail(1002)), // reserved control opcode
            (frame(0x89, &[0; 126]), Action::Fail(1002)), // control over 125
            (frame(0x09, b"a"), Action::Fail(1002)), // fragmented ping
            (frame(0x80, b"a"), Action::Fail(1002)), // continuation first
            (
                [frame(0x01, b"a"), frame(0x81, b"b")].concat(),
                Action::Fail(1002),
            ),
            (frame(0x81, &[0xff]), Action::Fail(1007)),
            (frame(0x81, &[0xe2, 0x9c]), Action::Fail(1007)), // truncated at the end
            (frame(0x88, &[0x03]), Action::Fail(1002)),
            (frame(0x88, &[0x03, 0xed]), Action::Fail(1002)), // 1005
            (frame(0x88, &[0x03, 0xe8, 0xff]), Action::Fail(1007)),
            (frame(0x82, &[0; 1001]), Action::Fail(1009)),
            (
                [frame(0x02, &[0; 600]), frame(0x80, &[0; 600])].concat(),
                Action::Fail(1009),
            ),
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                Action::Fail(1002),
            ),
        ];
        for (input, want) in table {
            assert_eq!(every_split(&input), vec![want.clone()], "{input:02x?}");
        }
        assert_eq!(every_split(&frame(0x88, b"")), vec![Action::Close(None)]);
        assert_eq!(
            every_split(&frame(0x88, &[0x0f, 0xa0])),
            vec![Action::Close(Some(4000))]
        );
    }

    #[test]
    fn nothing_is_read_after_close_or_failure() {
        let mut input = frame(0x88, b"");
        input.extend(frame(0x89, b"late"));
        assert_eq!(run(&input, input.len()), vec![Action::Close(None)]);
    }
}
