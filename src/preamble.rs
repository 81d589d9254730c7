//! The agent's preamble (docs/protocol.md section 10): the one line that
//! `guestsock agent` writes before a relayed connection's first byte, and
//! that the host reads on a VM's own listener before its first request.
//!
//! Owns the line's format, its bound and its pure parser, shared by both
//! ends. It does not relay (`agent`) and does not decide what a preamble
//! is worth (a connection on a VM's listener takes it as the caller's
//! credentials, `conn`; SECURITY.md says what a VM's root can do with it).

use std::fmt;

/// The preamble's first word; the host refuses a connection that does not
/// start with it.
pub const PREAMBLE_MAGIC: &str = "GUESTSOCK-AGENT";

/// The preamble's version: the number after [`PREAMBLE_MAGIC`]. A change of
/// its fields or their meaning is a new version.
pub const PREAMBLE_VERSION: u32 = 1;

/// Longest preamble line, CRLF included: the magic, the version and three
/// 10-digit numbers with their names (`pid` may be negative in form only).
pub const MAX_PREAMBLE_BYTES: usize = 80;

/// The agent's preamble (docs/protocol.md section 10): the first line the
/// host reads on a relayed connection, `GUESTSOCK-AGENT 1 uid=U gid=G
/// pid=P\r\n`, with the in-guest caller's credentials as the guest's kernel
/// gave them. They are the guest's word: true for an honest guest, and
/// whatever its root chooses otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    /// The caller's uid in the guest.
    pub uid: u32,
    /// The caller's gid in the guest.
    pub gid: u32,
    /// The caller's pid in the agent's pid namespace.
    pub pid: i32,
}

/// What is wrong with a preamble. The agent's fault (or that of whatever
/// connected in its place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreambleError {
    /// More than [`MAX_PREAMBLE_BYTES`] without a line end.
    TooLong,
    /// The line does not start with [`PREAMBLE_MAGIC`].
    NotAnAgent,
    /// A version other than [`PREAMBLE_VERSION`].
    UnknownVersion,
    /// The fields are not `uid=U gid=G pid=P`, in that order, decimal.
    BadFields,
}

impl Preamble {
    /// The line, CRLF included.
    pub fn line(&self) -> String {
        format!(
            "{PREAMBLE_MAGIC} {PREAMBLE_VERSION} uid={} gid={} pid={}\r\n",
            self.uid, self.gid, self.pid
        )
    }

    /// Reads a preamble at the start of `buf`: `Ok(Some((preamble, bytes
    /// used)))` once its line is complete, `Ok(None)` while more bytes are
    /// needed. Pure, for the host side.
    pub fn parse(buf: &[u8]) -> Result<Option<(Preamble, usize)>, PreambleError> {
        let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
            return if buf.len() >= MAX_PREAMBLE_BYTES {
                Err(PreambleError::TooLong)
            } else {
                Ok(None)
            };
        };
        if end + 2 > MAX_PREAMBLE_BYTES {
            return Err(PreambleError::TooLong);
        }
        let line = std::str::from_utf8(&buf[..end]).map_err(|_| PreambleError::NotAnAgent)?;
        let mut words = line.split(' ');
        if words.next() != Some(PREAMBLE_MAGIC) {
            return Err(PreambleError::NotAnAgent);
        }
        if words.next() != Some(PREAMBLE_VERSION.to_string().as_str()) {
            return Err(PreambleError::UnknownVersion);
        }
        let mut field = |name: &str| {
            words
                .next()
                .and_then(|w| w.strip_prefix(name))
                .and_then(|w| w.strip_prefix('='))
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(PreambleError::BadFields)
        };
        let uid = field("uid")?
            .parse()
            .map_err(|_| PreambleError::BadFields)?;
        let gid = field("gid")?
            .parse()
            .map_err(|_| PreambleError::BadFields)?;
        let pid = field("pid")?
            .parse()
            .map_err(|_| PreambleError::BadFields)?;
        if words.next().is_some() {
            return Err(PreambleError::BadFields);
        }
        Ok(Some((Preamble { uid, gid, pid }, end + 2)))
    }
}

impl fmt::Display for PreambleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PreambleError::TooLong => "the agent's preamble line is too long",
            PreambleError::NotAnAgent => {
                "a connection on a VM's listener starts with the agent's preamble (GUESTSOCK-AGENT 1 uid=U gid=G pid=P)"
            }
            PreambleError::UnknownVersion => {
                "the agent's preamble is of a version this guestsock does not read"
            }
            PreambleError::BadFields => "the agent's preamble must say uid=U gid=G pid=P, in decimal",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preamble_lines() {
        let table = [
            (
                Preamble {
                    uid: 0,
                    gid: 0,
                    pid: 1,
                },
                "GUESTSOCK-AGENT 1 uid=0 gid=0 pid=1\r\n",
            ),
            (
                Preamble {
                    uid: 1000,
                    gid: 100,
                    pid: 4242,
                },
                "GUESTSOCK-AGENT 1 uid=1000 gid=100 pid=4242\r\n",
            ),
            (
                Preamble {
                    uid: u32::MAX,
                    gid: u32::MAX,
                    pid: i32::MAX,
                },
                "GUESTSOCK-AGENT 1 uid=4294967295 gid=4294967295 pid=2147483647\r\n",
            ),
        ];
        for (preamble, line) in table {
            assert_eq!(preamble.line(), line);
            assert!(line.len() <= MAX_PREAMBLE_BYTES, "{line}");
            let mut wire = line.as_bytes().to_vec();
            wire.extend_from_slice(b"GET /1.0 HTTP/1.1\r\n");
            assert_eq!(
                Preamble::parse(&wire),
                Ok(Some((preamble, line.len()))),
                "{line}"
            );
            // Any proper prefix needs more bytes.
            for cut in 0..line.len() - 1 {
                assert_eq!(Preamble::parse(&wire[..cut]), Ok(None), "{cut}");
            }
        }
    }

    #[test]
    fn bad_preambles() {
        use PreambleError::*;
        let long = format!("GUESTSOCK-AGENT 1 uid={} gid=0 pid=0\r\n", "1".repeat(60));
        let table: [(&[u8], PreambleError); 11] = [
            (b"GET /1.0 HTTP/1.1\r\n", NotAnAgent),
            (b"GUESTSOCK-AGENTS 1 uid=0 gid=0 pid=0\r\n", NotAnAgent),
            (b"GUESTSOCK-AGENT 2 uid=0 gid=0 pid=0\r\n", UnknownVersion),
            (b"GUESTSOCK-AGENT 1 gid=0 uid=0 pid=0\r\n", BadFields),
            (b"GUESTSOCK-AGENT 1 uid=0 gid=0\r\n", BadFields),
            (b"GUESTSOCK-AGENT 1 uid=-1 gid=0 pid=0\r\n", BadFields),
            (b"GUESTSOCK-AGENT 1 uid= gid=0 pid=0\r\n", BadFields),
            (
                b"GUESTSOCK-AGENT 1 uid=4294967296 gid=0 pid=0\r\n",
                BadFields,
            ),
            (b"GUESTSOCK-AGENT 1 uid=0 gid=0 pid=0 x=1\r\n", BadFields),
            (long.as_bytes(), TooLong),
            (&[b'x'; MAX_PREAMBLE_BYTES], TooLong),
        ];
        for (wire, error) in table {
            assert_eq!(
                Preamble::parse(wire),
                Err(error),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}
