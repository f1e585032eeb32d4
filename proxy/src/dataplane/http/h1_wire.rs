//! HTTP/1.x wire pieces both sides of the proxy share: header lines, framing headers, chunks,
//! and streaming a body with its framing.

use std::pin::Pin;

use http::HeaderMap;
use http_body::Body as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::body::{Body, BoxError};

/// Where a header's name and value lie in a head: (name start, name end, value start, value
/// end).
pub type Span = (usize, usize, usize, usize);

/// The offset of `part` (a slice of `whole`) in `whole`.
pub fn offset(whole: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

/// The span of an httparse header within the buffer it was parsed from.
pub fn span(buf: &[u8], h: &httparse::Header<'_>) -> Span {
    let ns = offset(buf, h.name.as_bytes());
    let vs = offset(buf, h.value);
    (ns, ns + h.name.len(), vs, vs + h.value.len())
}

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
pub async fn stream_body(
    stream: &mut TcpStream,
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

#[cfg(test)]
mod tests {
    use super::*;

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
