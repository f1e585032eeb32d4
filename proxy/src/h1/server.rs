//! HTTP/1.x from downstream clients, served by the connection's own task: request heads parsed
//! once (`h1_parse`) into header values that share the read buffer, a body that arrived with
//! its head handed over whole, a longer one streamed to the request as the connection reads it,
//! and the response written head and body in one write when the body is at hand. Connections
//! that open with the HTTP/2 preface (h2c) are served by hyper instead.
//!
//! Envoy's limits and answers: 60 KiB of request headers or more than 100 headers get 431, a
//! malformed head 400, a transfer coding other than chunked 501; each closes the connection.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::Full;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::idle::{Activity, MAX_REQUEST_HEADERS, idle_for};
use super::parse::{self, HeadError, RequestHead as Parsed};
use super::wire::{
    Chunk, Decoded, HEADROOM, MAX_HEADERS, READ_CHUNK, Span, StreamError, content_length,
    decode_chunked, full_bytes, has_token, header_line, header_name, last_coding, poll_fill,
    stream_body,
};
use crate::h1::body::{Body, BoxError};

/// What answers the requests of a connection (the connection manager's router), and tells
/// the codec when the proxy is draining.
pub trait Handler: Send + Sync {
    /// The response to one request.
    fn handle(&self, req: Box<Request<Body>>) -> impl Future<Output = Box<Response<Body>>> + Send;

    /// Whether the connection should close after the response being written (a drain).
    fn drain_close(&self) -> bool {
        false
    }

    /// Resolves when the proxy starts draining: a connection with no request in flight is
    /// closed then.
    fn drain_started(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// A stream the codec can serve: plain TCP, TLS, or anything else that reads and writes.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Stream for S {}

/// A local body up to this size is copied behind the head, so that both go in one write.
const COALESCE: usize = 16 * 1024;

/// Why a request head was refused; the connection is closed after the answer.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("request headers larger than {MAX_REQUEST_HEADERS} bytes or more than {MAX_HEADERS}")]
    TooLarge,
    #[error("transfer coding other than chunked")]
    UnknownCoding,
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            Refusal::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::UnknownCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

/// Parses the head at the start of `buf` once, if it is all there, noting where each header
/// is in `spans` (the connection's vector, reused).
fn parse_head(buf: &[u8], spans: &mut Vec<Span>) -> Result<Option<Parsed>, Refusal> {
    parse::request(buf, spans).map_err(|e| match e {
        HeadError::TooManyHeaders => Refusal::TooLarge,
        e => Refusal::Malformed(e.to_string()),
    })
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A request head ready for the connection manager.
struct Head {
    parts: http::request::Parts,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// Builds the request head from `raw` (header values share it) and decides its framing and
/// persistence (RFC 9112 sections 6 and 9.3).
fn build_head(raw: &Bytes, p: &Parsed, spans: &[Span]) -> Result<Head, Refusal> {
    let method = Method::from_bytes(&raw[p.method.0..p.method.1])
        .map_err(|_| Refusal::Malformed("method".into()))?;
    let uri = Uri::from_maybe_shared(raw.slice(p.target.0..p.target.1))
        .map_err(|_| Refusal::Malformed("request target".into()))?;
    let mut headers = HeaderMap::with_capacity(spans.len() + HEADROOM);
    let mut length: Option<u64> = None;
    let mut coding: Option<&[u8]> = None;
    let (mut close, mut keep_alive_token, mut expect_continue) = (false, false, false);
    for &(ns, ne, vs, ve) in spans {
        let name = header_name(&raw[ns..ne]).map_err(|_| {
            Refusal::Malformed(format!(
                "header name {:?}",
                String::from_utf8_lossy(&raw[ns..ne])
            ))
        })?;
        let value = &raw[vs..ve];
        if name == header::CONTENT_LENGTH {
            content_length(value, &mut length).map_err(|e| Refusal::Malformed(e.into()))?;
        } else if name == header::TRANSFER_ENCODING {
            if let Some(c) = last_coding(value) {
                coding = Some(c);
            }
        } else if name == header::CONNECTION {
            close |= has_token(value, b"close");
            keep_alive_token |= has_token(value, b"keep-alive");
        } else if name == header::EXPECT {
            expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        let value = HeaderValue::from_maybe_shared(raw.slice(vs..ve))
            .map_err(|_| Refusal::Malformed(format!("value of header {name}")))?;
        headers.append(name, value);
    }
    let framing = match (coding, length) {
        // Both: a request that could be read two ways (smuggling), refused as Envoy does.
        (Some(_), Some(_)) => {
            return Err(Refusal::Malformed(
                "both content-length and transfer-encoding".into(),
            ));
        }
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
        (Some(_), None) => return Err(Refusal::UnknownCoding),
        (None, Some(0)) | (None, None) => Framing::None,
        (None, Some(n)) => Framing::Length(n),
    };
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = if p.version_11 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    parts.headers = headers;
    Ok(Head {
        parts,
        framing,
        keep_alive: if p.version_11 {
            !close
        } else {
            keep_alive_token && !close
        },
        expect_continue: p.version_11 && expect_continue && framing != Framing::None,
    })
}

/// The complete request head at the start of `buf`, split off, if it is all there.
/// Synchronous, so that the parser's tables stay on the stack rather than in the connection's
/// future.
fn take_head(buf: &mut BytesMut, spans: &mut Vec<Span>) -> Result<Option<Head>, Refusal> {
    let Some(parsed) = parse_head(buf, spans)? else {
        return Ok(None);
    };
    let raw = buf.split_to(parsed.len).freeze();
    build_head(&raw, &parsed, spans).map(Some)
}

/// A request body still arriving from the client; the connection's task reads it and hands
/// over the data as the request's consumer pulls.
#[derive(Debug)]
pub struct Inbound {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
    /// Bytes still to come, when the length was given.
    remaining: Option<u64>,
    done: bool,
}

impl http_body::Body for Inbound {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = self.get_mut();
        if me.done {
            return Poll::Ready(None);
        }
        match me.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(data))) => {
                if let Some(r) = &mut me.remaining {
                    *r = r.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => {
                me.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                me.done = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Reads more of the connection into `buf`; `Ok(0)` at end of stream.
async fn read_more<S: Stream>(stream: &mut S, buf: &mut BytesMut) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| poll_fill(stream, buf, cx)).await
}

/// Reads a request body that did not arrive with its head and hands it to `tx`. True when the
/// body was read to its end (the connection can carry another request).
async fn pump<S: Stream>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    framing: Framing,
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
    expect_continue: bool,
) -> bool {
    if expect_continue
        && rbuf.is_empty()
        && stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
    {
        return false;
    }
    let cut_short = || -> BoxError { "the client closed the connection mid-body".into() };
    match framing {
        Framing::None => true,
        Framing::Length(mut left) => loop {
            if !rbuf.is_empty() {
                let take = left.min(rbuf.len() as u64);
                left -= take;
                if tx
                    .send(Ok(rbuf.split_to(take as usize).freeze()))
                    .await
                    .is_err()
                {
                    return false;
                }
                if left == 0 {
                    return true;
                }
                continue;
            }
            if !matches!(read_more(stream, rbuf).await, Ok(n) if n > 0) {
                let _ = tx.send(Err(cut_short())).await;
                return false;
            }
        },
        Framing::Chunked => {
            let mut state = Chunk::Size;
            loop {
                match decode_chunked(&mut state, rbuf) {
                    Ok(Decoded::Data(data)) => {
                        if tx.send(Ok(data)).await.is_err() {
                            return false;
                        }
                    }
                    Ok(Decoded::Done) => return true,
                    Ok(Decoded::NeedMore) => {
                        if !matches!(read_more(stream, rbuf).await, Ok(n) if n > 0) {
                            let _ = tx.send(Err(cut_short())).await;
                            return false;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return false;
                    }
                }
            }
        }
    }
}

/// Serves HTTP/1.x requests on `stream` with `handler` until the client closes it, a request
/// or response says close, it has been idle for `idle`, or the proxy drains.
pub async fn serve<S: Stream, H: Handler>(handler: H, mut stream: S, idle: Option<Duration>) {
    let started = Instant::now();
    let activity = Activity::default();
    let idle_wait = async {
        match idle {
            Some(idle) => idle_for(&activity, started, idle).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(idle_wait);
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut wbuf = Vec::with_capacity(1024);
    let mut spans = Vec::with_capacity(16);
    loop {
        let head = loop {
            match take_head(&mut rbuf, &mut spans) {
                Ok(Some(h)) => break h,
                Ok(None) if rbuf.len() >= MAX_REQUEST_HEADERS => {
                    return refuse(&mut stream, Refusal::TooLarge).await;
                }
                Ok(None) => {}
                Err(r) => return refuse(&mut stream, r).await,
            }
            let read = if rbuf.is_empty() {
                tokio::select! {
                    biased;
                    r = read_more(&mut stream, &mut rbuf) => r,
                    () = &mut idle_wait => {
                        tracing::debug!(?idle, "downstream connection idle; closing");
                        return;
                    }
                    () = handler.drain_started() => {
                        tracing::debug!("draining: idle downstream connection closed");
                        return;
                    }
                }
            } else {
                read_more(&mut stream, &mut rbuf).await
            };
            if !matches!(read, Ok(n) if n > 0) {
                return;
            }
        };
        let head_request = head.parts.method == Method::HEAD;
        let version = head.parts.version;
        let mut keep_alive = head.keep_alive;
        let (body, pending) = match head.framing {
            Framing::None => (Body::empty(), None),
            Framing::Length(n) if rbuf.len() as u64 >= n => (
                Body::Local(Full::new(rbuf.split_to(n as usize).freeze())),
                None,
            ),
            framing => {
                let (tx, rx) = mpsc::channel(2);
                let remaining = match framing {
                    Framing::Length(n) => Some(n),
                    _ => None,
                };
                let body = Inbound {
                    rx,
                    remaining,
                    done: false,
                };
                (Body::Inbound(body), Some((framing, tx)))
            }
        };
        // In flight until its response is written: the idle timeout counts from then.
        let _active = activity.start(started);
        // Pinned where it is made: the request's future is large, and moving it costs a copy.
        let mut handled =
            std::pin::pin!(handler.handle(Box::new(Request::from_parts(head.parts, body))));
        let resp = match pending {
            None => {
                // While the request runs, the connection is watched: a client that closes it
                // cancels the request (as Envoy resets the upstream request, and hyper without
                // half-close); the bytes of a pipelined next request are kept.
                loop {
                    tokio::select! {
                        biased;
                        r = &mut handled => break r,
                        n = read_more(&mut stream, &mut rbuf), if rbuf.len() < MAX_REQUEST_HEADERS => {
                            if !matches!(n, Ok(n) if n > 0) {
                                tracing::debug!("the client closed the connection before the response; request cancelled");
                                return;
                            }
                        }
                    }
                }
            }
            Some((framing, tx)) => {
                // The request runs while this task reads its body; a body left unread when the
                // response is ready means the connection cannot carry another request.
                let pumped = pump(&mut stream, &mut rbuf, framing, tx, head.expect_continue);
                tokio::pin!(pumped);
                let mut complete = None;
                let resp = loop {
                    tokio::select! {
                        biased;
                        r = &mut handled => break r,
                        c = &mut pumped, if complete.is_none() => complete = Some(c),
                    }
                };
                keep_alive &= complete == Some(true);
                resp
            }
        };
        // Draining: this response tells the client to close.
        keep_alive &= !handler.drain_close();
        match write_response(
            &mut stream,
            &mut wbuf,
            resp,
            head_request,
            version,
            keep_alive,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => return linger_close(&mut stream).await,
            Err(e) => {
                tracing::debug!(error = %e, "writing the response failed; closing");
                return;
            }
        }
    }
}

/// Answers a refused request head and closes the connection.
async fn refuse<S: Stream>(stream: &mut S, why: Refusal) {
    tracing::debug!(error = %why, "refusing a request");
    let status = why.status();
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nconnection: close\r\ndate: ",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
    )
    .into_bytes();
    date(&mut answer);
    answer.extend_from_slice(b"\r\n\r\n");
    let _ = stream.write_all(&answer).await;
    linger_close(stream).await;
}

/// How long, and how much, a closing connection still reads from a client that keeps sending.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 256 * 1024;

/// Closes after a last response: the write side first, then what the client still sends is
/// read and dropped (bounded in time and bytes) until it closes too. Closing with unread bytes
/// would make the kernel reset the connection, and the client could lose the response.
async fn linger_close<S: Stream>(stream: &mut S) {
    use tokio::io::AsyncReadExt;
    if stream.shutdown().await.is_err() {
        return;
    }
    // On the heap: a buffer in the future would be part of every connection's task, whose
    // state is as large as its largest await.
    let drain = async {
        let mut sink = vec![0u8; 4096];
        let mut total = 0;
        while total < LINGER_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The Date header's value, made at most once a second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(c.1.as_bytes());
    });
}

/// How the response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// No body (HEAD, 1xx, 204, 304).
    Bodyless,
    Sized,
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    UntilClose,
}

/// Writes the response head into `out` and decides the body's framing and whether the
/// connection stays open.
fn encode_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    size: Option<u64>,
    head_request: bool,
    version: Version,
    keep_alive: bool,
) -> (Out, bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let bodyless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || (name == header::CONTENT_LENGTH && !bodyless)
        {
            continue;
        }
        header_line(out, name.as_str(), value.as_bytes());
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    let mut keep_alive = keep_alive;
    let framing = match (bodyless, size) {
        (true, _) => Out::Bodyless,
        (false, Some(n)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
            Out::Sized
        }
        (false, None) if version == Version::HTTP_11 => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Out::Chunked
        }
        (false, None) => {
            keep_alive = false;
            Out::UntilClose
        }
    };
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// Writes the response; `Ok(true)` when the connection can carry another request.
async fn write_response<S: Stream>(
    stream: &mut S,
    out: &mut Vec<u8>,
    mut resp: Box<Response<Body>>,
    head_request: bool,
    version: Version,
    keep_alive: bool,
) -> std::io::Result<bool> {
    out.clear();
    let (framing, keep_alive) = encode_head(
        out,
        resp.status(),
        resp.headers(),
        resp.body().size_hint().exact(),
        head_request,
        version,
        keep_alive,
    );
    let body = resp.body_mut();
    if framing == Out::Bodyless {
        stream.write_all(out).await?;
        return Ok(keep_alive);
    }
    if let Body::Local(full) = body {
        let data = full_bytes(full);
        if data.len() <= COALESCE {
            out.extend_from_slice(&data);
            stream.write_all(out).await?;
        } else {
            stream.write_all(out).await?;
            stream.write_all(&data).await?;
        }
        return Ok(keep_alive);
    }
    stream.write_all(out).await?;
    stream_body(stream, body, framing == Out::Chunked, out)
        .await
        .map_err(|e| match e {
            StreamError::Body(e) => std::io::Error::other(e),
            StreamError::Io(e) => e,
        })?;
    Ok(keep_alive && framing != Out::UntilClose)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> Result<Head, Refusal> {
        let raw = Bytes::copy_from_slice(raw);
        let mut spans = Vec::new();
        let p = parse_head(&raw, &mut spans)?.expect("complete");
        build_head(&raw, &p, &spans)
    }

    #[test]
    fn request_framing_and_persistence() {
        let h = head(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\n").unwrap();
        assert_eq!(h.parts.method, Method::GET);
        assert_eq!(h.parts.uri, "/a?b=1");
        assert_eq!(h.parts.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(h.framing, Framing::None);
        assert!(h.keep_alive);
        let h =
            head(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.expect_continue);
        let h = head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let h = head(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let h = head(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 closes unless asked");
        let h = head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
        assert_eq!(h.parts.version, Version::HTTP_10);
    }

    #[test]
    fn bad_heads_are_refused_with_envoys_codes() {
        let status = |raw: &[u8]| head(raw).err().map(|r| r.status().as_u16());
        assert_eq!(status(b"GARBAGE\r\n\r\n"), Some(400));
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(400),
            "smuggling-shaped requests are refused"
        );
        assert_eq!(
            status(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Some(501)
        );
        let many: Vec<u8> = [
            b"GET / HTTP/1.1\r\n".to_vec(),
            (0..101)
                .flat_map(|i| format!("x-{i}: v\r\n").into_bytes())
                .collect(),
            b"\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(status(&many), Some(431));
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> http::response::Parts {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn encoded(
        parts: &http::response::Parts,
        size: Option<u64>,
        head_request: bool,
        version: Version,
    ) -> (String, Out, bool) {
        let mut out = Vec::new();
        let (framing, keep) = encode_head(
            &mut out,
            parts.status,
            &parts.headers,
            size,
            head_request,
            version,
            true,
        );
        (String::from_utf8(out).unwrap(), framing, keep)
    }

    #[test]
    fn response_heads_carry_their_framing() {
        let p = response(200, &[("content-length", "99"), ("x-a", "1")]);
        let (text, framing, keep) = encoded(&p, Some(2), false, Version::HTTP_11);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: "),
            "{text}"
        );
        assert!(text.ends_with("\r\ncontent-length: 2\r\n\r\n"), "{text}");
        assert_eq!((framing, keep), (Out::Sized, true));
        let (text, framing, _) = encoded(&p, Some(0), true, Version::HTTP_11);
        assert!(
            text.contains("content-length: 99\r\n"),
            "HEAD keeps the length: {text}"
        );
        assert_eq!(framing, Out::Bodyless);
        let (text, framing, _) = encoded(&p, None, false, Version::HTTP_11);
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert_eq!(framing, Out::Chunked);
        let (text, framing, keep) = encoded(&p, None, false, Version::HTTP_10);
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert_eq!((framing, keep), (Out::UntilClose, false));
        let (text, _, _) = encoded(&p, Some(1), false, Version::HTTP_10);
        assert!(text.contains("connection: keep-alive\r\n"), "{text}");
        let (text, framing, _) = encoded(&response(204, &[]), None, false, Version::HTTP_11);
        assert_eq!(framing, Out::Bodyless);
        assert!(!text.contains("transfer-encoding"), "{text}");
    }
}
