//! A body of newline-terminated records, split into lines: the shape of
//! every stream a client here follows (the Docker engine's `/events`, one
//! JSON object a line, as guestsock's own plain event stream is,
//! docs/protocol.md section 5).
//!
//! Pure: decoded body bytes in, whole lines out, at most one line held and
//! that one bounded by the caller. It does not undo a transfer coding
//! (`chunked`) nor read what a line says (the caller).

use super::ResponseError;

/// Splits a byte stream into `\n`-terminated lines, holding at most one
/// line of `max` bytes.
#[derive(Debug)]
pub struct Lines {
    /// Bytes after the last complete line.
    partial: Vec<u8>,
    /// The longest line accepted, without its newline.
    max: usize,
}

impl Lines {
    /// A splitter for lines of at most `max` bytes.
    pub fn new(max: usize) -> Lines {
        Lines {
            partial: Vec::new(),
            max,
        }
    }

    /// Feeds `data`; returns every line it completes, without newlines,
    /// blank ones dropped. A line past the bound is
    /// [`ResponseError::LineTooLong`], found before it is buffered.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>, ResponseError> {
        let too_long = ResponseError::LineTooLong { limit: self.max };
        let mut lines = Vec::new();
        let mut rest = data;
        while let Some(lf) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.len() + lf > self.max {
                return Err(too_long);
            }
            self.partial.extend_from_slice(&rest[..lf]);
            let line = std::mem::take(&mut self.partial);
            if !line.trim_ascii().is_empty() {
                lines.push(line);
            }
            rest = &rest[lf + 1..];
        }
        if self.partial.len() + rest.len() > self.max {
            return Err(too_long);
        }
        self.partial.extend_from_slice(rest);
        Ok(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_pieces_and_bounded() {
        let mut lines = Lines::new(10);
        assert_eq!(lines.push(b"abc").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(
            lines.push(b"de\nfg\n\nh").unwrap(),
            vec![b"abcde".to_vec(), b"fg".to_vec()]
        );
        assert_eq!(lines.push(b"\n").unwrap(), vec![b"h".to_vec()]);
        // Blank lines (a keep-alive newline) are dropped.
        assert_eq!(lines.push(b" \r\n\n").unwrap(), Vec::<Vec<u8>>::new());
        // Exactly the bound is accepted, one byte more is not.
        assert_eq!(
            lines.push(b"0123456789\n").unwrap(),
            vec![b"0123456789".to_vec()]
        );
        assert_eq!(
            lines.push(b"0123456789a"),
            Err(ResponseError::LineTooLong { limit: 10 })
        );
        let mut lines = Lines::new(10);
        lines.push(b"01234").unwrap();
        assert_eq!(
            lines.push(b"56789a\n"),
            Err(ResponseError::LineTooLong { limit: 10 })
        );
    }
}
