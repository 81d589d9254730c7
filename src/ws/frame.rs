//! Websocket frames (RFC 6455 section 5.2): parsing a frame header, and
//! writing the server's frames (and, for tests, benchmarks and fuzz seeds,
//! a client's).
//!
//! The header parser only reads the wire format; what is allowed (masking,
//! opcodes, control-frame rules) is decided by `ws::reader`.

/// The opcodes of RFC 6455 section 5.2.
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// A text message (or its first fragment).
    pub const TEXT: u8 = 0x1;
    /// A binary message (or its first fragment).
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The final fragment of a message.
    pub fin: bool,
    /// RSV1-3, as the three bits below FIN.
    pub rsv: u8,
    /// The opcode, 0-15.
    pub opcode: u8,
    /// The masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// The payload length.
    pub len: u64,
}

impl FrameHeader {
    /// Whether the opcode is a control frame's (close, ping, pong, reserved
    /// 0xB-0xF).
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// What is wrong with a header's wire format: always the client's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A 64-bit length with its most significant bit set ("the most
    /// significant bit MUST be 0", RFC 6455 5.2).
    LengthTopBitSet,
    /// A length in a longer form than needed: RFC 6455 5.2 says "the
    /// minimal number of bytes MUST be used to encode the length".
    NonMinimalLength,
}

/// Parses the frame header at the start of `buf`: `Ok(None)` if more bytes
/// are needed, else the header and its length in bytes (2 to 14).
pub fn parse_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            let Some(bytes) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = u64::from(u16::from_be_bytes([bytes[0], bytes[1]]));
            if len < 126 {
                return Err(FrameError::NonMinimalLength);
            }
            (len, 4)
        }
        127 => {
            let Some(bytes) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            let len = u64::from_be_bytes(be);
            if len & (1 << 63) != 0 {
                return Err(FrameError::LengthTopBitSet);
            }
            if len <= u64::from(u16::MAX) {
                return Err(FrameError::NonMinimalLength);
            }
            (len, 10)
        }
        short => (u64::from(short), 2),
    };
    let mask = if masked {
        let Some(bytes) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        None
    };
    Ok(Some((
        FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: b0 & 0x0f,
            mask,
            len,
        },
        at,
    )))
}

/// XORs `data` with the masking key, `offset` bytes into the payload
/// (RFC 6455 5.3).
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    for (i, byte) in data.iter_mut().enumerate() {
        // offset + i never overflows: both are below the payload length.
        let index = (offset.wrapping_add(i as u64) % 4) as usize;
        *byte ^= mask[index];
    }
}

/// Appends one unmasked, unfragmented frame: "A server MUST NOT mask any
/// frames that it sends to the client" (RFC 6455 5.1).
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    push_length(out, 0, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a masked frame as a client sends it, its first byte (FIN, RSV,
/// opcode) exactly `b0`. guestsock never sends one; its tests, benchmarks
/// and fuzz seeds build client input with it.
pub fn write_masked_frame(out: &mut Vec<u8>, b0: u8, mask: [u8; 4], payload: &[u8]) {
    out.push(b0);
    push_length(out, 0x80, payload.len());
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask, 0);
}

/// Appends the second header byte (`mask_bit` or'ed in) and the extended
/// length, in the minimal form RFC 6455 5.2 requires.
fn push_length(out: &mut Vec<u8>, mask_bit: u8, len: usize) {
    match len {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
}

/// Appends a close frame with `code` (and no reason), or an empty one.
pub fn write_close(out: &mut Vec<u8>, code: Option<u16>) {
    match code {
        Some(code) => write_frame(out, opcode::CLOSE, &code.to_be_bytes()),
        None => write_frame(out, opcode::CLOSE, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_examples() {
        // RFC 6455 5.7: a single-frame masked text message "Hello".
        let masked = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut written = Vec::new();
        write_masked_frame(&mut written, 0x81, [0x37, 0xfa, 0x21, 0x3d], b"Hello");
        assert_eq!(written, masked);
        let (h, n) = parse_header(&masked).unwrap().unwrap();
        assert_eq!(
            (h.fin, h.rsv, h.opcode, h.mask, h.len, n),
            (true, 0, opcode::TEXT, Some([0x37, 0xfa, 0x21, 0x3d]), 5, 6)
        );
        let mut payload = masked[6..].to_vec();
        unmask(&mut payload, h.mask.unwrap(), 0);
        assert_eq!(payload, b"Hello");
        // Unmasked "Hello", as the server writes it.
        let mut out = Vec::new();
        write_frame(&mut out, opcode::TEXT, b"Hello");
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        // 256 bytes binary: 16-bit length; 64 KiB: 64-bit length.
        out.clear();
        write_frame(&mut out, opcode::BINARY, &[0; 256]);
        assert_eq!(out[..4], [0x82, 0x7E, 0x01, 0x00]);
        out.clear();
        write_frame(&mut out, opcode::BINARY, &[0; 65536]);
        assert_eq!(out[..10], [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(parse_header(&out).unwrap().unwrap().0.len, 65536);
    }

    #[test]
    fn partial_headers_need_more() {
        let full = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        for end in 0..full.len() {
            assert_eq!(parse_header(&full[..end]), Ok(None), "{end}");
        }
        assert_eq!(parse_header(&full).unwrap().unwrap().1, 14);
    }

    #[test]
    fn bad_lengths() {
        assert_eq!(
            parse_header(&[0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::LengthTopBitSet)
        );
        assert_eq!(
            parse_header(&[0x82, 0x7E, 0, 5]),
            Err(FrameError::NonMinimalLength)
        );
        assert_eq!(
            parse_header(&[0x82, 0x7F, 0, 0, 0, 0, 0, 0, 0xff, 0xff]),
            Err(FrameError::NonMinimalLength)
        );
    }
}
