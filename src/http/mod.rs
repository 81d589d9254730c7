//! HTTP/1.1 in both directions, the one place RFC 9112 is written down.
//!
//! The server side (docs/protocol.md section 2): `request` turns bytes into
//! requests, `response` turns answers into bytes. The client side, for every
//! client guestsock has (the command line's, the Docker watcher's to the
//! engine, and any that comes next): `exchange` writes a request, and
//! `response_head`, `chunked` and `lines` turn the answer's bytes into a
//! status, a framing and a body.
//!
//! Everything but `exchange` is pure: bytes in, "complete, with how many
//! bytes used", "need more" or an error out, so that it is table-tested and
//! fuzzed (`http_request`, `http_response`). `exchange` is the only module
//! here that does I/O, over any blocking `Read`/`Write`. Not owned here: what
//! a request means (`api`, `dispatch`), a connection's state (`conn`), which
//! status a refusal gets (`error`), and what a client makes of an answer
//! (`client`, `runtime::docker`).

use std::fmt;

pub mod chunked;
pub mod exchange;
pub mod lines;
pub mod request;
pub mod response;
pub mod response_head;

/// What is wrong with the bytes of an answer a client reads. Always the
/// answering server's fault (or that of whatever answers in its place);
/// a client gives up on the answer, since guessing what a broken message
/// meant is how two readers of it come to disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// The head is not HTTP/1.x syntax (httparse refused it); says where.
    Malformed(&'static str),
    /// A header field line folded onto the next (obs-fold, RFC 9112 5.2).
    ObsFold,
    /// The head passed the caller's bound.
    HeadTooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
    /// More header fields than [`crate::limits::MAX_REPLY_HEADERS`].
    TooManyHeaders {
        /// The bound.
        limit: usize,
    },
    /// A `Content-Length` that is not `1*DIGIT` (RFC 9110 8.6), a list
    /// included, or that does not fit in a `usize`.
    BadContentLength,
    /// `Content-Length` more than once.
    RepeatedContentLength,
    /// Both `Content-Length` and `Transfer-Encoding` (RFC 9112 6.2: a sender
    /// MUST NOT send both).
    LengthWithTransferEncoding,
    /// A `Transfer-Encoding` other than `chunked` alone: a coding the
    /// clients do not decode (`gzip, chunked`), or `chunked` twice.
    UnsupportedTransferCoding,
    /// `Transfer-Encoding` in an HTTP/1.0 answer (RFC 9112 6.1: its framing
    /// is faulty).
    TransferEncodingInHttp10,
    /// `101 Switching Protocols` to a request that asked for no upgrade
    /// (RFC 9110 7.8: a server MUST NOT switch to a protocol that was not
    /// asked for).
    UnrequestedUpgrade,
    /// The body passed the caller's bound.
    BodyTooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
    /// A chunk-size that is not hexadecimal (RFC 9112 7.1).
    BadChunkSize,
    /// A chunk larger than the caller's bound.
    ChunkTooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
    /// A chunk-size line (size and extensions) longer than
    /// [`crate::limits::MAX_CHUNK_LINE_BYTES`].
    ChunkLineTooLong {
        /// The bound, in bytes.
        limit: usize,
    },
    /// What follows a chunk-size is not chunk extensions (RFC 9112 7.1.1).
    BadChunkExtension,
    /// A chunk's data not followed by CRLF.
    ChunkNotTerminated,
    /// A trailer section that is not field lines (RFC 9112 7.1.2).
    BadTrailer,
    /// A trailer section longer than
    /// [`crate::limits::MAX_CHUNK_LINE_BYTES`].
    TrailersTooLarge {
        /// The bound, in bytes.
        limit: usize,
    },
    /// Bytes after the last chunk's trailer section (one answer per
    /// connection: nothing may follow it).
    BytesAfterLastChunk,
    /// A line of a line-delimited body longer than the caller's bound.
    LineTooLong {
        /// The bound, in bytes.
        limit: usize,
    },
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResponseError::Malformed(why) => write!(f, "the head is not HTTP/1.x: {why}"),
            ResponseError::ObsFold => {
                f.write_str("a header field is folded over two lines (obs-fold)")
            }
            ResponseError::HeadTooLarge { limit } => {
                write!(f, "the head is longer than {limit} bytes")
            }
            ResponseError::TooManyHeaders { limit } => {
                write!(f, "the head has more than {limit} header fields")
            }
            ResponseError::BadContentLength => f.write_str("Content-Length is not a length"),
            ResponseError::RepeatedContentLength => {
                f.write_str("Content-Length appears more than once")
            }
            ResponseError::LengthWithTransferEncoding => {
                f.write_str("both Content-Length and Transfer-Encoding are sent")
            }
            ResponseError::UnsupportedTransferCoding => {
                f.write_str("a Transfer-Encoding other than chunked alone")
            }
            ResponseError::TransferEncodingInHttp10 => {
                f.write_str("Transfer-Encoding in an HTTP/1.0 answer")
            }
            ResponseError::UnrequestedUpgrade => {
                f.write_str("101 Switching Protocols, but no upgrade was asked for")
            }
            ResponseError::BodyTooLarge { limit } => {
                write!(f, "the body is longer than {limit} bytes")
            }
            ResponseError::BadChunkSize => f.write_str("a chunk size is not hexadecimal"),
            ResponseError::ChunkTooLarge { limit } => {
                write!(f, "a chunk is longer than {limit} bytes")
            }
            ResponseError::ChunkLineTooLong { limit } => {
                write!(f, "a chunk-size line is longer than {limit} bytes")
            }
            ResponseError::BadChunkExtension => {
                f.write_str("junk after a chunk size (not a chunk extension)")
            }
            ResponseError::ChunkNotTerminated => f.write_str("chunk data not followed by CRLF"),
            ResponseError::BadTrailer => f.write_str("a trailer section that is not fields"),
            ResponseError::TrailersTooLarge { limit } => {
                write!(f, "the trailer section is longer than {limit} bytes")
            }
            ResponseError::BytesAfterLastChunk => f.write_str("bytes after the last chunk"),
            ResponseError::LineTooLong { limit } => {
                write!(f, "a line of the body is longer than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for ResponseError {}

/// The length of the `token` (RFC 9110 5.6.2) at the start of `bytes`: a
/// method, a field name, a chunk extension's name.
fn token_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        .count()
}
