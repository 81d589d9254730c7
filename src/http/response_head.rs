//! Response heads, from bytes to a status and a framing: the client side's
//! reading of RFC 9112 sections 4 to 6.
//!
//! Pure: takes the bytes received so far and says "complete, with how many
//! bytes the head used", "need more", or what is wrong, as strictly as
//! `request` reads the server's side: a bounded head, one `Content-Length`
//! of digits only, never both a length and a transfer coding, no transfer
//! coding but `chunked` alone, no obs-fold. Reading the body is `chunked`'s
//! and `exchange`'s; what a status means is the caller's.

use super::ResponseError;
use crate::limits::MAX_REPLY_HEADERS;

/// How an answer's body ends (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Transfer-Encoding: chunked`: chunks up to the last one.
    Chunked,
    /// Exactly this many bytes: `Content-Length`, or 0 for an answer that
    /// has no body whatever its fields say.
    Length(usize),
    /// Neither: the body lasts until the server closes.
    UntilClose,
}

/// An answer's head, as far as a client needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// How the body ends.
    pub framing: Framing,
}

/// Parses the answer head at the start of `buf`, the answer to a `method`
/// request, whose head may take at most `max_bytes`: `Ok(Some((used,
/// head)))` once complete, `Ok(None)` if more bytes are needed.
pub fn parse(
    buf: &[u8],
    method: &str,
    max_bytes: usize,
) -> Result<Option<(usize, ResponseHead)>, ResponseError> {
    let too_large = ResponseError::HeadTooLarge { limit: max_bytes };
    let mut headers = [httparse::EMPTY_HEADER; MAX_REPLY_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    // httparse's defaults refuse obs-fold, spaces before a field's colon
    // and whitespace before the first field, in answers as in requests.
    // Parsed within the bound only, so that what is decided does not
    // depend on how much arrived past it.
    let window = &buf[..buf.len().min(max_bytes)];
    let used = match response.parse(window) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if buf.len() > max_bytes => return Err(too_large),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ResponseError::TooManyHeaders {
                limit: MAX_REPLY_HEADERS,
            });
        }
        Err(httparse::Error::Version) => {
            return Err(ResponseError::Malformed("not an HTTP/1.x status line"));
        }
        Err(httparse::Error::Status) => return Err(ResponseError::Malformed("bad status code")),
        // RFC 9112 5.2 has a user agent unfold an obs-fold; these clients
        // refuse it instead, as the server does in a request: guestsock and
        // the Docker engine never fold (a sender MUST NOT), so a fold means
        // something else answers.
        Err(_) if has_obs_fold(window) => return Err(ResponseError::ObsFold),
        Err(_) => return Err(ResponseError::Malformed("malformed header field")),
    };
    let status = response
        .code
        .ok_or(ResponseError::Malformed("no status code"))?;
    let http10 = response.version == Some(0);

    let mut length = None;
    let mut transfer_encoding = false;
    let mut codings = 0;
    let mut chunked = false;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            // RFC 9110 8.6 lets a recipient take `42, 42` (or two fields of
            // 42) as 42; refused instead, as the server refuses it in a
            // request: one length, said once, leaves nothing to agree on.
            if length.is_some() {
                return Err(ResponseError::RepeatedContentLength);
            }
            length = Some(content_length(header.value)?);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            // Fields of a list name concatenate (RFC 9110 5.3); empty
            // elements are ignored (RFC 9110 5.6.1).
            for coding in header.value.split(|&b| b == b',') {
                let coding = coding.trim_ascii();
                if !coding.is_empty() {
                    codings += 1;
                    chunked = coding.eq_ignore_ascii_case(b"chunked");
                }
            }
        }
    }
    if transfer_encoding {
        // RFC 9112 6.1: "A server or client that receives an HTTP/1.0
        // message containing a Transfer-Encoding header field MUST treat
        // the message as if the framing is faulty".
        if http10 {
            return Err(ResponseError::TransferEncodingInHttp10);
        }
        // RFC 9112 6.3: both "ought to be handled as an error".
        if length.is_some() {
            return Err(ResponseError::LengthWithTransferEncoding);
        }
        // No coding but chunked is decoded, and "A sender MUST NOT apply
        // the chunked transfer coding more than once" (RFC 9112 7).
        if codings != 1 || !chunked {
            return Err(ResponseError::UnsupportedTransferCoding);
        }
    }
    // RFC 9112 6.3, rule 1: the answer to HEAD, and any 1xx, 204 or 304,
    // ends with its head "regardless of the header fields present".
    let bodiless = method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&status)
        || status == 204
        || status == 304;
    let framing = match (bodiless, transfer_encoding, length) {
        (true, _, _) => Framing::Length(0),
        (false, true, _) => Framing::Chunked,
        (false, false, Some(length)) => Framing::Length(length),
        (false, false, None) => Framing::UntilClose,
    };
    Ok(Some((used, ResponseHead { status, framing })))
}

/// `Content-Length = 1*DIGIT` (RFC 9110 8.6): a sign, a list or a length
/// past `usize` is refused.
fn content_length(value: &[u8]) -> Result<usize, ResponseError> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(ResponseError::BadContentLength);
    }
    std::str::from_utf8(value)
        .ok()
        .and_then(|digits| digits.parse().ok())
        .ok_or(ResponseError::BadContentLength)
}

/// Whether what httparse refused in `buf` is an obs-fold: the first field
/// line after the first that starts with whitespace (continuing the
/// previous field's value), with everything before it well formed, so that
/// the answer is the same however much of the head has arrived.
/// Whitespace before the first field line is not a fold (RFC 9112 2.2),
/// only malformed.
fn has_obs_fold(buf: &[u8]) -> bool {
    let blank = |line: &[u8]| matches!(line, b"\n" | b"\r\n");
    let mut start = 0;
    let mut lines = buf.split_inclusive(|&b| b == b'\n');
    // Empty lines before the status line are skipped (RFC 9112 2.2), then
    // the status line itself.
    for line in lines.by_ref() {
        start += line.len();
        if !blank(line) {
            break;
        }
    }
    for (i, line) in lines.enumerate() {
        if blank(line) {
            return false;
        }
        if i > 0 && matches!(line.first(), Some(b' ' | b'\t')) {
            let mut headers = [httparse::EMPTY_HEADER; MAX_REPLY_HEADERS];
            let before = httparse::Response::new(&mut headers).parse(&buf[..start]);
            return matches!(before, Ok(httparse::Status::Partial));
        }
        start += line.len();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 1024;

    fn error(input: &[u8]) -> ResponseError {
        match parse(input, "GET", LIMIT) {
            Err(e) => e,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(input)),
        }
    }

    #[test]
    fn heads_say_how_their_body_ends() {
        let table: &[(&[u8], &str, u16, Framing)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                "GET",
                200,
                Framing::Chunked,
            ),
            (
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 42\r\n\r\n",
                "GET",
                404,
                Framing::Length(42),
            ),
            (b"HTTP/1.0 200 OK\r\n\r\n", "GET", 200, Framing::UntilClose),
            // Codings are case-insensitive (RFC 9112 7); empty list
            // elements and several field lines make one list.
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: , Chunked\r\n\r\n",
                "GET",
                200,
                Framing::Chunked,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\n\r\n",
                "GET",
                200,
                Framing::Chunked,
            ),
            // A bare LF ends a line (RFC 9112 2.2); no reason phrase.
            (
                b"HTTP/1.1 200\nContent-Length: 0\n\n",
                "GET",
                200,
                Framing::Length(0),
            ),
            // Leading whitespace around the length is OWS.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length:  7 \r\n\r\n",
                "GET",
                200,
                Framing::Length(7),
            ),
            // RFC 9112 6.3 rule 1: no body, whatever the fields say.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n",
                "HEAD",
                200,
                Framing::Length(0),
            ),
            (
                b"HTTP/1.1 204 No Content\r\n\r\n",
                "DELETE",
                204,
                Framing::Length(0),
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\n\r\n",
                "GET",
                304,
                Framing::Length(0),
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\n",
                "PUT",
                100,
                Framing::Length(0),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                "head",
                200,
                Framing::Length(0),
            ),
        ];
        for &(input, method, status, framing) in table {
            let mut with_body = input.to_vec();
            with_body.extend_from_slice(b"body");
            let (used, head) = parse(&with_body, method, LIMIT).unwrap().unwrap();
            assert_eq!(used, input.len(), "{:?}", String::from_utf8_lossy(input));
            assert_eq!(head, ResponseHead { status, framing });
            // Every shorter prefix needs more.
            for cut in 0..input.len() {
                assert_eq!(parse(&input[..cut], method, LIMIT).unwrap(), None, "{cut}");
            }
        }
    }

    #[test]
    fn broken_heads_are_refused() {
        let table: &[(&[u8], ResponseError)] = &[
            (
                b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
                ResponseError::Malformed("not an HTTP/1.x status line"),
            ),
            (
                b"HTTP/2.0 200 OK\r\n\r\n",
                ResponseError::Malformed("not an HTTP/1.x status line"),
            ),
            (
                b"HTTP/1.1 2000 OK\r\n\r\n",
                ResponseError::Malformed("bad status code"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
                ResponseError::Malformed("malformed header field"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
                ResponseError::Malformed("malformed header field"),
            ),
            // RFC 9112 5.2's obs-fold, of the first field and of a later one.
            (
                b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
                ResponseError::ObsFold,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: a\r\n\tb\r\n\r\n",
                ResponseError::ObsFold,
            ),
            // What is wrong first is what is said, as it arrives.
            (
                b"HTTP/1.1 200 OK\r\nBad Name: x\r\nY: a\r\n b\r\n\r\n",
                ResponseError::Malformed("malformed header field"),
            ),
            (
                b"HTTP/1.1 200 OK\r\n X: a\r\n\r\n",
                ResponseError::Malformed("malformed header field"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                ResponseError::BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
                ResponseError::BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                ResponseError::BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
                ResponseError::BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                ResponseError::BadContentLength,
            ),
            // RFC 9110 8.6's `42, 42` and two equal fields: refused (see
            // `parse`), as are differing ones.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 42, 42\r\n\r\n",
                ResponseError::BadContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                ResponseError::RepeatedContentLength,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\n",
                ResponseError::RepeatedContentLength,
            ),
            // RFC 9112 6.3: a length and a coding.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                ResponseError::LengthWithTransferEncoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                ResponseError::LengthWithTransferEncoding,
            ),
            // Codings not decoded here, or chunked twice.
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                ResponseError::UnsupportedTransferCoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                ResponseError::UnsupportedTransferCoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                ResponseError::UnsupportedTransferCoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                ResponseError::UnsupportedTransferCoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;q=1\r\n\r\n",
                ResponseError::UnsupportedTransferCoding,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n",
                ResponseError::UnsupportedTransferCoding,
            ),
            (
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                ResponseError::TransferEncodingInHttp10,
            ),
        ];
        for &(input, want) in table {
            assert_eq!(error(input), want, "{:?}", String::from_utf8_lossy(input));
            // As it arrives: needs more, then refused the same way.
            for cut in 0..input.len() {
                match parse(&input[..cut], "GET", LIMIT) {
                    Ok(None) => {}
                    Err(e) => assert_eq!(e, want, "{:?} at {cut}", String::from_utf8_lossy(input)),
                    Ok(Some(head)) => {
                        panic!("{:?} at {cut}: {head:?}", String::from_utf8_lossy(input))
                    }
                }
            }
        }
    }

    #[test]
    fn heads_past_their_bounds_are_refused() {
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_REPLY_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse(&many, "GET", usize::MAX),
            Err(ResponseError::TooManyHeaders {
                limit: MAX_REPLY_HEADERS
            })
        );
        // One that never ends, and a complete one a byte too long.
        let mut endless = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        endless.extend(vec![b'y'; LIMIT]);
        assert_eq!(
            error(&endless),
            ResponseError::HeadTooLarge { limit: LIMIT }
        );
        let mut exact = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        exact.extend(vec![b'y'; LIMIT - exact.len() - 4]);
        exact.extend_from_slice(b"\r\n\r\n");
        assert_eq!(exact.len(), LIMIT);
        assert!(matches!(parse(&exact, "GET", LIMIT), Ok(Some((LIMIT, _)))));
        assert_eq!(
            parse(&exact, "GET", LIMIT - 1),
            Err(ResponseError::HeadTooLarge { limit: LIMIT - 1 })
        );
    }
}
