//! The chunked transfer coding (RFC 9112 section 7.1), decoded: a body's
//! bytes in, its data out.
//!
//! Pure: [`parse_chunk`] looks at the bytes received so far and says
//! "a chunk of `used` bytes, its data here", "the last chunk", "need more"
//! or what is wrong; [`Dechunker`] holds what one chunk needs between reads.
//! Every size is bounded before it is buffered: a chunk by the caller, a
//! chunk-size line and the trailer section by
//! [`MAX_CHUNK_LINE_BYTES`]. Chunk extensions are checked against their
//! grammar and ignored; trailer fields are checked and dropped. It does not
//! read a socket (`exchange`) nor know which answers are chunked
//! (`response_head`).

use super::{ResponseError, token_len};
use crate::limits::{MAX_CHUNK_LINE_BYTES, MAX_REPLY_HEADERS};

/// One step of a chunked body, found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// A chunk whose data is `buf[start..end]`; the chunk with its size
    /// line and final CRLF takes `used` bytes.
    Data {
        /// Where the data starts.
        start: usize,
        /// Where it ends.
        end: usize,
        /// The whole chunk's length.
        used: usize,
    },
    /// The last chunk (size 0) with its trailer section and the blank line
    /// that ends the body: `used` bytes.
    Last {
        /// Its length.
        used: usize,
    },
}

/// The line at the start of `buf` (without its CRLF, a bare LF accepted as
/// RFC 9112 2.2 allows) and the bytes it takes with its terminator, or
/// `None` if it is not complete; a line longer than `limit` is an error.
fn size_line(buf: &[u8], limit: usize) -> Result<Option<(&[u8], usize)>, ResponseError> {
    let too_long = ResponseError::ChunkLineTooLong { limit };
    match buf.iter().take(limit + 2).position(|&b| b == b'\n') {
        Some(lf) => {
            let text = &buf[..lf];
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if text.len() > limit {
                return Err(too_long);
            }
            Ok(Some((text, lf + 1)))
        }
        None if buf.len() > limit + 1 => Err(too_long),
        None => Ok(None),
    }
}

/// Parses one chunk at the start of `buf`, whose data may be at most
/// `max_size` bytes: `Ok(None)` if more bytes are needed.
pub fn parse_chunk(buf: &[u8], max_size: usize) -> Result<Option<Chunk>, ResponseError> {
    let Some((line, line_used)) = size_line(buf, MAX_CHUNK_LINE_BYTES)? else {
        return Ok(None);
    };
    // chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
    // chunk-size = 1*HEXDIG
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ResponseError::BadChunkSize);
    }
    check_extensions(&line[digits..])?;
    let mut size: usize = 0;
    for &digit in &line[..digits] {
        let value = char::from(digit).to_digit(16).unwrap_or(0) as usize;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(value))
            .filter(|&s| s <= max_size)
            .ok_or(ResponseError::ChunkTooLarge { limit: max_size })?;
    }
    if size == 0 {
        // last-chunk trailer-section CRLF
        return Ok(trailer_section(&buf[line_used..])?.map(|used| Chunk::Last {
            used: line_used + used,
        }));
    }
    let start = line_used;
    let end = start + size;
    if buf.len() < end + 2 {
        if buf.len() > end && buf[end] != b'\r' {
            return Err(ResponseError::ChunkNotTerminated);
        }
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(ResponseError::ChunkNotTerminated);
    }
    Ok(Some(Chunk::Data {
        start,
        end,
        used: end + 2,
    }))
}

/// Checks what follows a chunk-size against RFC 9112 7.1.1:
/// `chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`,
/// a name a token, a value a token or a quoted-string. "A recipient MUST
/// ignore unrecognized chunk extensions": all of them are, once checked.
fn check_extensions(mut rest: &[u8]) -> Result<(), ResponseError> {
    let bad = ResponseError::BadChunkExtension;
    loop {
        rest = skip_bws(rest);
        let Some((&b';', after)) = rest.split_first() else {
            return if rest.is_empty() { Ok(()) } else { Err(bad) };
        };
        rest = skip_bws(after);
        let name = token_len(rest);
        if name == 0 {
            return Err(bad);
        }
        rest = skip_bws(&rest[name..]);
        if let Some((&b'=', after)) = rest.split_first() {
            rest = skip_bws(after);
            let value = match rest.first() {
                Some(b'"') => quoted_string_len(rest).ok_or(bad)?,
                _ => token_len(rest),
            };
            if value == 0 {
                return Err(bad);
            }
            rest = &rest[value..];
        }
    }
}

/// `BWS = OWS = *( SP / HTAB )` (RFC 9110 5.6.3), skipped.
fn skip_bws(bytes: &[u8]) -> &[u8] {
    let n = bytes
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    &bytes[n..]
}

/// The length of the `quoted-string` (RFC 9110 5.6.4) at the start of
/// `bytes`, quotes included, or `None` if it is not one.
fn quoted_string_len(bytes: &[u8]) -> Option<usize> {
    // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text;
    // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text ).
    let text = |b: u8| b == b'\t' || b == b' ' || (b'!'..=b'~').contains(&b) || b >= 0x80;
    let mut i = 1;
    loop {
        match *bytes.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' if bytes.get(i + 1).is_some_and(|&b| text(b)) => i += 2,
            b'\\' => return None,
            b if text(b) => i += 1,
            _ => return None,
        }
    }
}

/// The trailer section at the start of `buf` and the blank line that ends
/// it (`*( field-line CRLF ) CRLF`, RFC 9112 7.1.2): its length once
/// complete, `None` if more bytes are needed. Its fields are checked as a
/// head's are (no obs-fold) and dropped: the clients read none.
fn trailer_section(buf: &[u8]) -> Result<Option<usize>, ResponseError> {
    let too_large = ResponseError::TrailersTooLarge {
        limit: MAX_CHUNK_LINE_BYTES,
    };
    let mut fields = [httparse::EMPTY_HEADER; MAX_REPLY_HEADERS];
    // Parsed within the bound only, so that what is decided does not
    // depend on how much arrived past it.
    let window = &buf[..buf.len().min(MAX_CHUNK_LINE_BYTES)];
    match httparse::parse_headers(window, &mut fields) {
        Ok(httparse::Status::Complete((used, _))) => Ok(Some(used)),
        Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE_BYTES => Err(too_large),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(ResponseError::TooManyHeaders {
            limit: MAX_REPLY_HEADERS,
        }),
        Err(_) => Err(ResponseError::BadTrailer),
    }
}

/// Decodes a chunked body fed in pieces as they are read; holds at most one
/// chunk of undecoded bytes.
#[derive(Debug)]
pub struct Dechunker {
    /// Bytes read but not yet decoded (part of one chunk).
    pending: Vec<u8>,
    /// The largest chunk accepted.
    max_chunk: usize,
    /// Whether the last chunk has been seen.
    done: bool,
}

impl Dechunker {
    /// A decoder taking chunks of at most `max_chunk` bytes.
    pub fn new(max_chunk: usize) -> Dechunker {
        Dechunker {
            pending: Vec::new(),
            max_chunk,
            done: false,
        }
    }

    /// Feeds `input`, appending the data of every complete chunk to `out`.
    /// Bytes after the last chunk are an error (one answer per connection).
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), ResponseError> {
        if self.done {
            if input.is_empty() {
                return Ok(());
            }
            return Err(ResponseError::BytesAfterLastChunk);
        }
        self.pending.extend_from_slice(input);
        let mut offset = 0;
        loop {
            match parse_chunk(&self.pending[offset..], self.max_chunk)? {
                Some(Chunk::Data { start, end, used }) => {
                    out.extend_from_slice(&self.pending[offset + start..offset + end]);
                    offset += used;
                }
                Some(Chunk::Last { used }) => {
                    offset += used;
                    self.done = true;
                    if offset != self.pending.len() {
                        return Err(ResponseError::BytesAfterLastChunk);
                    }
                    break;
                }
                None => break,
            }
        }
        self.pending.drain(..offset);
        Ok(())
    }

    /// Whether the body is complete (the last chunk was decoded).
    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to a fresh decoder in pieces of `step` bytes.
    fn dechunk(input: &[u8], step: usize, max: usize) -> Result<(Vec<u8>, bool), ResponseError> {
        let mut dechunker = Dechunker::new(max);
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            dechunker.push(piece, &mut out)?;
        }
        Ok((out, dechunker.is_done()))
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        // (input, decoded, complete). RFC 9112 gives the grammar of 7.1
        // and the decoding of 7.1.3, but no example message; these are
        // each of the grammar's productions, and the example of MDN's
        // `Trailer` page.
        let table: &[(&[u8], &[u8], bool)] = &[
            // chunk, chunk, last-chunk, an empty trailer-section, CRLF.
            (b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n", b"Wikipedia", true),
            (
                b"7\r\nMozilla\r\n9\r\nDeveloper\r\n7\r\nNetwork\r\n0\r\n\
                  Expires: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n",
                b"MozillaDeveloperNetwork",
                true,
            ),
            // chunk-size = 1*HEXDIG: either case, leading zeros.
            (
                b"0A\r\n0123456789\r\na\r\nabcdefghij\r\n00\r\n\r\n",
                b"0123456789abcdefghij",
                true,
            ),
            // chunk-ext, with BWS, tokens and quoted-strings, ignored.
            (
                b"3;name=value\r\nabc\r\n3 ; x\r\ndef\r\n0;end\r\n\r\n",
                b"abcdef",
                true,
            ),
            (
                b"1;a=\"q \\\"d\\\" ;\";b ; c = d\t\r\nx\r\n0\r\n\r\n",
                b"x",
                true,
            ),
            // trailer-section: field lines, dropped.
            (
                b"2\r\nhi\r\n0\r\nExpires: never\r\nX: y\r\n\r\n",
                b"hi",
                true,
            ),
            // A bare LF ends a size line and the trailer (RFC 9112 2.2).
            (b"2\nhi\r\n0\n\n", b"hi", true),
            // Not yet complete.
            (b"4\r\nWiki\r\n5\r\npedi", b"Wiki", false),
            (b"4\r\nWiki\r\n0\r\n", b"Wiki", false),
            (b"4\r\nWiki\r\n0\r\nX: y\r\n", b"Wiki", false),
            (b"", b"", false),
            // Docker's event stream: one JSON line per chunk.
            (b"a\r\n{\"a\":\"b\"}\n\r\n", b"{\"a\":\"b\"}\n", false),
        ];
        for &(input, decoded, complete) in table {
            for step in [1, 2, 3, 7, input.len()] {
                let (out, done) = dechunk(input, step, 1024)
                    .unwrap_or_else(|e| panic!("{:?} in steps of {step}: {e}", input));
                assert_eq!(out, decoded, "{:?} in steps of {step}", input);
                assert_eq!(done, complete, "{:?} in steps of {step}", input);
            }
        }
    }

    #[test]
    fn broken_chunked_bodies_are_refused() {
        let table: &[(&[u8], ResponseError)] = &[
            (b"x\r\nabc\r\n", ResponseError::BadChunkSize),
            (b"\r\nabc\r\n", ResponseError::BadChunkSize),
            (b"-1\r\nabc\r\n", ResponseError::BadChunkSize),
            (b" 3\r\nabc\r\n", ResponseError::BadChunkSize),
            (b"3x\r\nabc\r\n", ResponseError::BadChunkExtension),
            (b"3;\r\nabc\r\n", ResponseError::BadChunkExtension),
            (b"3;=v\r\nabc\r\n", ResponseError::BadChunkExtension),
            (b"3;a=\r\nabc\r\n", ResponseError::BadChunkExtension),
            (b"3;a b\r\nabc\r\n", ResponseError::BadChunkExtension),
            (b"3;a=\"open\r\nabc\r\n", ResponseError::BadChunkExtension),
            (b"3;a=\"\x01\"\r\nabc\r\n", ResponseError::BadChunkExtension),
            (b"3;a\rb\r\nabc\r\n", ResponseError::BadChunkExtension),
            (b"3\r\nabcd\r\n", ResponseError::ChunkNotTerminated),
            (b"3\r\nabc\n0\r\n\r\n", ResponseError::ChunkNotTerminated),
            (b"0\r\n\r\nextra", ResponseError::BytesAfterLastChunk),
            (b"0\r\nBad Name: x\r\n\r\n", ResponseError::BadTrailer),
            (b"0\r\nX: a\r\n folded\r\n\r\n", ResponseError::BadTrailer),
        ];
        for &(input, want) in table {
            assert_eq!(
                dechunk(input, input.len(), 1024),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Nothing is read after the last chunk, even in a later piece.
        let mut dechunker = Dechunker::new(1024);
        let mut out = Vec::new();
        dechunker.push(b"0\r\n\r\n", &mut out).unwrap();
        dechunker.push(b"", &mut out).unwrap();
        assert_eq!(
            dechunker.push(b"x", &mut out),
            Err(ResponseError::BytesAfterLastChunk)
        );
    }

    #[test]
    fn chunks_past_their_bounds_are_refused_before_they_are_buffered() {
        // Over the caller's bound, and exactly at it.
        assert_eq!(
            parse_chunk(b"401\r\n", 1024),
            Err(ResponseError::ChunkTooLarge { limit: 1024 })
        );
        assert_eq!(parse_chunk(b"400\r\n", 1024), Ok(None));
        // A size that would overflow usize.
        assert_eq!(
            parse_chunk(b"fffffffffffffffffffffffff\r\n", usize::MAX),
            Err(ResponseError::ChunkTooLarge { limit: usize::MAX })
        );
        // A size line that never ends, and a too long one that does.
        let line_too_long = Err(ResponseError::ChunkLineTooLong {
            limit: MAX_CHUNK_LINE_BYTES,
        });
        let endless = vec![b'1'; MAX_CHUNK_LINE_BYTES + 2];
        assert_eq!(parse_chunk(&endless, usize::MAX), line_too_long);
        let mut long_ext = b"1;".to_vec();
        long_ext.extend(vec![b'x'; MAX_CHUNK_LINE_BYTES]);
        long_ext.extend_from_slice(b"\r\n");
        assert_eq!(parse_chunk(&long_ext, 1024), line_too_long);
        // The longest line allowed.
        let mut longest = b"1;".to_vec();
        longest.extend(vec![b'x'; MAX_CHUNK_LINE_BYTES - 2]);
        longest.extend_from_slice(b"\r\nx\r\n");
        assert!(matches!(parse_chunk(&longest, 1024), Ok(Some(_))));
        // An endless trailer section, and too many trailer fields.
        let mut trailers = b"0\r\n".to_vec();
        let field = format!("X: {}\r\n", "y".repeat(250));
        for _ in 0..MAX_CHUNK_LINE_BYTES / field.len() + 1 {
            trailers.extend_from_slice(field.as_bytes());
        }
        assert!(MAX_CHUNK_LINE_BYTES / field.len() < MAX_REPLY_HEADERS);
        assert_eq!(
            parse_chunk(&trailers, 1024),
            Err(ResponseError::TrailersTooLarge {
                limit: MAX_CHUNK_LINE_BYTES
            })
        );
        let mut many = b"0\r\n".to_vec();
        for _ in 0..=MAX_REPLY_HEADERS {
            many.extend_from_slice(b"X: 1\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_chunk(&many, 1024),
            Err(ResponseError::TooManyHeaders {
                limit: MAX_REPLY_HEADERS
            })
        );
    }
}
