//! HTTP/1.x wire pieces both sides of the proxy share: header lines, framing headers, chunks,
//! and streaming a body with its framing.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::{self, HeaderName};
use http_body::Body as _;
use http_body_util::Full;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::h1::body::{Body, BoxError};

/// The most headers a head may have (Envoy's `max_headers_count` default).
pub const MAX_HEADERS: usize = 100;
/// Read buffer growth.
pub const READ_CHUNK: usize = 16 * 1024;
/// Room for the headers the proxy adds (request id, forwarded proto, expected timeout; service
/// time), so that adding them does not grow a small map (kept small: the map's allocation stays
/// in the allocator's per-thread cache).
pub const HEADROOM: usize = 4;
/// A chunk-size line longer than this is malformed (extensions included).
const MAX_CHUNK_LINE: usize = 4096;
/// The most trailer bytes after a chunked body (as for headers, Envoy's 60 KiB).
const MAX_TRAILERS: usize = 60 * 1024;

/// A chunked body that does not follow the chunked coding.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed chunked body")]
pub struct BadChunk;

/// Reads more of `stream` into `buf`, growing it when little room is left; `Ok(0)` at end of
/// stream. A short read clears the socket's readiness, so the next wait costs no extra read.
pub fn poll_fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}

/// The bytes of a body the proxy holds whole.
pub fn full_bytes(full: &mut Full<Bytes>) -> Bytes {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(full).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// The header named by `raw`. The names servers and clients send on nearly every message, as
/// they spell them, are matched directly; the rest go through `HeaderName::from_bytes`, which
/// validates and lower-cases them.
pub fn header_name(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    let known = match raw {
        b"Host" | b"host" => header::HOST,
        b"Date" | b"date" => header::DATE,
        b"Server" | b"server" => header::SERVER,
        b"Accept" | b"accept" => header::ACCEPT,
        b"Connection" | b"connection" => header::CONNECTION,
        b"User-Agent" | b"user-agent" => header::USER_AGENT,
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
        b"Transfer-Encoding" | b"transfer-encoding" => header::TRANSFER_ENCODING,
        _ => return HeaderName::from_bytes(raw),
    };
    Ok(known)
}

/// Where a header's name and value lie in a head: (name start, name end, value start, value
/// end).
pub type Span = (usize, usize, usize, usize);

/// Whether a comma-separated header value holds `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The last transfer coding a `Transfer-Encoding` value names.
pub fn last_coding(value: &[u8]) -> Option<&[u8]> {
    value
        .split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .rfind(|t| !t.is_empty())
}

/// Folds a `Content-Length` value (possibly a list of equal numbers) into `length`; `Err` when
/// it is not a number or disagrees with what was seen before.
pub fn content_length(value: &[u8], length: &mut Option<u64>) -> Result<(), &'static str> {
    // The usual value: one number of a few digits.
    if !value.is_empty() && value.len() <= 18 && value.iter().all(u8::is_ascii_digit) {
        let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return Err("conflicting content-length");
        }
        *length = Some(n);
        return Ok(());
    }
    for part in value.split(|b| *b == b',') {
        let n = std::str::from_utf8(part.trim_ascii())
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or("content-length")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting content-length");
        }
        *length = Some(n);
    }
    Ok(())
}

/// `name: value\r\n`.
pub fn header_line(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// One chunk of a chunked body.
pub fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk, with the trailers if any.
pub fn last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        header_line(out, name.as_str(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Why streaming a body stopped.
#[derive(Debug)]
pub enum StreamError {
    /// The body being read failed.
    Body(BoxError),
    /// The connection being written failed.
    Io(std::io::Error),
}

/// Writes `body`'s frames to `stream`, chunked (trailers in the last chunk) or as they are.
/// `out` is scratch space.
pub async fn stream_body<S: AsyncWrite + Unpin>(
    stream: &mut S,
    body: &mut Body,
    chunked: bool,
    out: &mut Vec<u8>,
) -> Result<(), StreamError> {
    let mut trailers = None;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await;
        let Some(frame) = frame else {
            break;
        };
        let frame = frame.map_err(StreamError::Body)?;
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if chunked => {
                out.clear();
                chunk(out, &data);
                stream.write_all(out).await.map_err(StreamError::Io)?;
            }
            Ok(data) => stream.write_all(&data).await.map_err(StreamError::Io)?,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                    break;
                }
            }
        }
    }
    if chunked {
        out.clear();
        last_chunk(out, trailers.as_ref());
        stream.write_all(out).await.map_err(StreamError::Io)?;
    }
    Ok(())
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    Done,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    NeedMore,
    Done,
}

/// Decodes as much of a chunked body from `buf` as is there, up to the next data. Trailers are
/// read and dropped: HTTP/1.1 responses rarely carry them and the downstream side has no use
/// for them without HTTP/2.
pub fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Decoded, BadChunk> {
    loop {
        match *state {
            Chunk::Done => return Ok(Decoded::Done),
            Chunk::Size => {
                let Some(end) = line_end(buf) else {
                    return if buf.len() > MAX_CHUNK_LINE {
                        Err(BadChunk)
                    } else {
                        Ok(Decoded::NeedMore)
                    };
                };
                let line = &buf[..end];
                let digits = line
                    .split(|b| *b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                if digits.is_empty() || digits.len() > 15 {
                    return Err(BadChunk);
                }
                let size = std::str::from_utf8(digits)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .ok_or(BadChunk)?;
                let _ = buf.split_to(end + 2);
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(n) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = n.min(buf.len() as u64);
                let data = buf.split_to(take as usize).freeze();
                *state = if take == n {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(n - take)
                };
                return Ok(Decoded::Data(data));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(BadChunk);
                }
                let _ = buf.split_to(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers => {
                let Some(end) = line_end(buf) else {
                    return if buf.len() > MAX_TRAILERS {
                        Err(BadChunk)
                    } else {
                        Ok(Decoded::NeedMore)
                    };
                };
                let _ = buf.split_to(end + 2);
                if end == 0 {
                    *state = Chunk::Done;
                }
            }
        }
    }
}

/// The index of the first CRLF in `buf`.
fn line_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Chunk, usize), BadChunk> {
        let mut state = Chunk::Size;
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match decode_chunked(&mut state, &mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::NeedMore | Decoded::Done => return Ok((out, state, buf.len())),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (body, state, left) =
            decode_all(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\nNEXT")
                .unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(state, Chunk::Done);
        assert_eq!(left, 4, "bytes after the body stay in the buffer");
    }

    #[test]
    fn chunked_bodies_decode_byte_by_byte() {
        let input = b"a\r\n0123456789\r\n0\r\n\r\n";
        let mut state = Chunk::Size;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in input {
            buf.extend_from_slice(&[*b]);
            while let Decoded::Data(d) = decode_chunked(&mut state, &mut buf).unwrap() {
                out.extend_from_slice(&d);
            }
        }
        assert_eq!(out, b"0123456789");
        assert_eq!(state, Chunk::Done);
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"ffffffffffffffffff\r\n",
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(decode_all(&long).is_err());
    }

    #[test]
    fn lengths_codings_and_tokens() {
        let mut n = None;
        assert!(content_length(b"4, 4", &mut n).is_ok());
        assert_eq!(n, Some(4));
        assert!(content_length(b"5", &mut n).is_err(), "conflict");
        for bad in [&b""[..], b"-1", b"0x10", b"1 2"] {
            assert!(content_length(bad, &mut None).is_err(), "{bad:?}");
        }
        assert_eq!(last_coding(b"gzip, chunked ,"), Some(&b"chunked"[..]));
        assert_eq!(last_coding(b" "), None);
        assert!(has_token(b"Keep-Alive, Close", b"close"));
        assert!(!has_token(b"closed", b"close"));
    }

    #[test]
    fn chunks_and_trailers() {
        let mut out = Vec::new();
        chunk(&mut out, b"hello world, this is 31 bytes..");
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        last_chunk(&mut out, Some(&trailers));
        assert_eq!(
            out,
            b"1f\r\nhello world, this is 31 bytes..\r\n0\r\ngrpc-status: 0\r\n\r\n"
        );
    }
}
