//! HTTP/1.1 to upstreams without a connection task: the request's own task writes the request
//! and reads the response head, and the response body reads the socket as the downstream side
//! pulls it. A body that arrived with the head is handed over whole and the connection goes back
//! to its downstream connection's keep-alive set at once.
//!
//! Compared with a client that runs each connection as its own task, a request costs no
//! channel hand-offs and no task wake-ups between the two sides: one write and one read.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::Full;
use thiserror::Error;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::parse::{self, ResponseHead as Parsed};
use super::wire::{
    BadChunk, Chunk, Decoded, HEADROOM, READ_CHUNK, Span, StreamError, content_length,
    decode_chunked, full_bytes, has_token, header_line, header_name, last_coding, poll_fill,
    stream_body,
};
use crate::h1::body::{Body, BoxError};

/// The largest response head accepted (Envoy's `max_response_headers_kb` default).
pub const MAX_HEAD: usize = 60 * 1024;

#[derive(Debug, Error)]
pub enum H1Error {
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("writing the request: {0}")]
    Write(std::io::Error),
    #[error("reading the response: {0}")]
    Read(std::io::Error),
    #[error("the upstream closed the connection before responding")]
    ClosedBeforeResponse,
    #[error("malformed response head: {0}")]
    BadHead(String),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("response body: {0}")]
    BadChunk(#[from] BadChunk),
    #[error("the upstream closed the connection in the middle of the response body")]
    Truncated,
    #[error("reading the request body: {0}")]
    RequestBody(BoxError),
}

impl H1Error {
    /// Whether the failure was the connection attempt itself.
    pub fn is_connect(&self) -> bool {
        matches!(self, H1Error::Connect(..) | H1Error::ConnectTimeout(_))
    }
}

/// One upstream HTTP/1.1 connection between requests.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read and not consumed yet.
    rbuf: BytesMut,
    /// The last request's bytes (kept for its allocation).
    wbuf: Vec<u8>,
    /// Where the last response head's headers lay (kept for its allocation).
    spans: Vec<Span>,
}

impl Conn {
    pub async fn connect(
        addr: SocketAddr,
        bind: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Conn, H1Error> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(|e| H1Error::Connect(addr, e))?;
        if let Some(ip) = bind {
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| H1Error::Connect(addr, e))?;
        }
        let stream = tokio::time::timeout(timeout, socket.connect(addr))
            .await
            .map_err(|_| H1Error::ConnectTimeout(addr))?
            .map_err(|e| H1Error::Connect(addr, e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| H1Error::Connect(addr, e))?;
        Ok(Conn {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::new(),
            spans: Vec::with_capacity(16),
        })
    }

    /// Whether a kept connection can carry another request: the upstream has neither closed it
    /// nor sent anything unasked. Costs a read only when the socket has become readable.
    fn reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        if !self.rbuf.is_empty() {
            return false;
        }
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), &mut cx, &mut self.rbuf),
                Poll::Pending
            ),
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        poll_fill(&mut self.stream, &mut self.rbuf, cx)
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// The HTTP/1.1 upstream connections one downstream connection has used, by endpoint. Its
/// requests come one at a time, so they reuse these without a shared pool (no lock contention,
/// no pool bookkeeping per request).
#[derive(Default)]
pub struct Affinity {
    /// (endpoint, connection, when it was last handed back: only noted with a short idle
    /// timeout).
    conns: Mutex<Vec<(SocketAddr, Conn, Option<Instant>)>>,
}

/// Upstream connections kept per downstream connection.
const AFFINITY_MAX: usize = 4;

impl Affinity {
    /// A kept connection to `addr`, unless it has been idle for `idle` or has been closed.
    fn take(&self, addr: SocketAddr, idle: Option<Duration>) -> Option<Conn> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = short(idle) {
            conns.retain(|(_, _, at)| at.is_none_or(|at| at.elapsed() < i));
        }
        while let Some(i) = conns.iter().position(|(a, _, _)| *a == addr) {
            let (_, mut conn, _) = conns.swap_remove(i);
            if conn.reusable() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection for the next request. With an idle timeout shorter than Envoy's
    /// default (which the downstream connection's own idle timeout covers), a timer drops it
    /// once that time has passed unused, which closes it.
    fn put(self: &Arc<Self>, addr: SocketAddr, conn: Conn, idle: Option<Duration>) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() >= AFFINITY_MAX {
            return;
        }
        let idle = short(idle);
        conns.push((addr, conn, idle.map(|_| Instant::now())));
        if let Some(idle) = idle {
            let me = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(idle).await;
                if let Some(me) = me.upgrade() {
                    let mut conns = me.conns.lock().unwrap_or_else(|e| e.into_inner());
                    conns.retain(|(_, _, at)| at.is_none_or(|at| at.elapsed() < idle));
                }
            });
        }
    }
}

/// An idle timeout shorter than Envoy's default: longer ones are left to the downstream
/// connection's own idle timeout, which ends the kept connections with it.
fn short(idle: Option<Duration>) -> Option<Duration> {
    idle.filter(|i| *i < crate::config::listener::DEFAULT_IDLE_TIMEOUT)
}

/// Where a connection goes back to once its response is read to the end.
#[derive(Clone)]
pub struct Home {
    pub affinity: Arc<Affinity>,
    pub addr: SocketAddr,
    pub idle: Option<Duration>,
}

/// Where a connection comes from: the endpoint and how to reach it.
pub struct Target {
    pub addr: SocketAddr,
    pub bind: Option<IpAddr>,
    pub connect_timeout: Duration,
}

/// Sends `req` over a kept connection to the endpoint, else a new one, and returns the response
/// with its head read; `expected_ms` is written as `x-envoy-expected-rq-timeout-ms`. A kept connection that turns out closed before any response byte is
/// replaced once by a new one when the request can be written again (no streamed body).
pub async fn send(
    home: &Home,
    target: &Target,
    mut req: Box<Request<Body>>,
    expected_ms: Option<u64>,
) -> Result<Box<Response<Body>>, H1Error> {
    let mut kept = home.affinity.take(target.addr, home.idle);
    let mut out = kept
        .as_mut()
        .map(|c| std::mem::take(&mut c.wbuf))
        .unwrap_or_default();
    // The head is encoded before any wait, so that it is not held in this future.
    let (head_only, mut body) = encode_request(&mut req, expected_ms, &mut out);
    drop(req);
    let streamed = body.is_some();
    let (mut conn, mut reused) = match kept {
        Some(c) => (c, true),
        None => (
            Box::pin(Conn::connect(
                target.addr,
                target.bind,
                target.connect_timeout,
            ))
            .await?,
            false,
        ),
    };
    loop {
        let sent = async {
            conn.stream.write_all(&out).await.map_err(H1Error::Write)?;
            if let Some(body) = &mut body {
                Box::pin(write_body(&mut conn.stream, body)).await?;
            }
            read_head(&mut conn, head_only).await
        }
        .await;
        match sent {
            Ok(head) => {
                // Kept for the next request unless a large body grew it.
                if out.capacity() <= READ_CHUNK {
                    conn.wbuf = out;
                }
                return Ok(respond(conn, head, home));
            }
            Err(e) if reused && !streamed && e.before_response() => {
                tracing::debug!(upstream = %target.addr, error = %e, "kept upstream connection was closed; sending on a new one");
                conn = Box::pin(Conn::connect(
                    target.addr,
                    target.bind,
                    target.connect_timeout,
                ))
                .await?;
                reused = false;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes the request's head into `out`, with its body when that is at hand. Returns whether
/// the response can have no body (HEAD) and the body still to stream, if any.
fn encode_request(
    req: &mut Request<Body>,
    expected_ms: Option<u64>,
    out: &mut Vec<u8>,
) -> (bool, Option<Body>) {
    let mut body = std::mem::replace(req.body_mut(), Body::empty());
    out.clear();
    let streamed = match &mut body {
        Body::Local(full) => {
            let data = full_bytes(full);
            encode_head(req, BodyFraming::Fixed(data.len() as u64), expected_ms, out);
            out.extend_from_slice(&data);
            false
        }
        b if b.is_end_stream() => {
            encode_head(req, BodyFraming::Fixed(0), expected_ms, out);
            false
        }
        b => {
            let framing = match b.size_hint().exact() {
                Some(n) => BodyFraming::Fixed(n),
                None => BodyFraming::Chunked,
            };
            encode_head(req, framing, expected_ms, out);
            true
        }
    };
    (req.method() == Method::HEAD, streamed.then_some(body))
}

impl H1Error {
    /// Failures of a kept connection that mean the upstream closed it before seeing the request.
    fn before_response(&self) -> bool {
        match self {
            H1Error::ClosedBeforeResponse | H1Error::Write(_) => true,
            H1Error::Read(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    Fixed(u64),
    Chunked,
}

/// Writes the request line and headers. Hop-by-hop headers are already gone; the framing
/// headers are written from `framing`, and `Expect` is dropped (the downstream side answers
/// `100 Continue` itself when the body is read, as Envoy does by default). The expected
/// timeout, which the router decides last, follows the headers.
fn encode_head<B>(
    req: &Request<B>,
    framing: BodyFraming,
    expected_ms: Option<u64>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    out.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::EXPECT
        {
            continue;
        }
        header_line(out, name.as_str(), value.as_bytes());
    }
    if let Some(ms) = expected_ms {
        out.extend_from_slice(b"x-envoy-expected-rq-timeout-ms: ");
        out.extend_from_slice(itoa::Buffer::new().format(ms).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyFraming::Fixed(n) => {
            // A body, or a method that is expected to have one, says its length.
            let expects_body = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
            if n > 0 || expects_body || req.headers().contains_key(header::CONTENT_LENGTH) {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Streams the downstream request body; chunked when its length is unknown, with trailers in
/// the last chunk.
async fn write_body(stream: &mut TcpStream, body: &mut Body) -> Result<(), H1Error> {
    let chunked = body.size_hint().exact().is_none();
    let mut scratch = Vec::new();
    stream_body(stream, body, chunked, &mut scratch)
        .await
        .map_err(|e| match e {
            StreamError::Body(e) => H1Error::RequestBody(e),
            StreamError::Io(e) => H1Error::Write(e),
        })
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// This many bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    UntilClose,
}

/// Reads the response head, skipping interim (1xx) responses.
async fn read_head(conn: &mut Conn, head_only: bool) -> Result<Head, H1Error> {
    loop {
        match take_head(&mut conn.rbuf, &mut conn.spans, head_only)? {
            Some(head)
                if head.status.is_informational()
                    && head.status != StatusCode::SWITCHING_PROTOCOLS =>
            {
                continue;
            }
            Some(head) => return Ok(head),
            None if conn.rbuf.len() >= MAX_HEAD => return Err(H1Error::HeadTooLarge),
            None => {}
        }
        let was_empty = conn.rbuf.is_empty();
        if conn.fill().await.map_err(H1Error::Read)? == 0 {
            return Err(if was_empty {
                H1Error::ClosedBeforeResponse
            } else {
                H1Error::Truncated
            });
        }
    }
}

/// The complete head at the start of `buf`, split off, if it is all there. Synchronous, so that
/// the parser's tables stay on the stack rather than in the request's future.
fn take_head(
    buf: &mut BytesMut,
    spans: &mut Vec<Span>,
    head_only: bool,
) -> Result<Option<Head>, H1Error> {
    let Some(parsed) = parse_head(buf, spans)? else {
        return Ok(None);
    };
    let raw = buf.split_to(parsed.len).freeze();
    build_head(&raw, &parsed, spans, head_only).map(Some)
}

/// Parses the head at the start of `buf` once, if it is all there, noting where each header
/// is in `spans` (the connection's vector, reused) so that the values can share the buffer
/// once it is split off.
fn parse_head(buf: &[u8], spans: &mut Vec<Span>) -> Result<Option<Parsed>, H1Error> {
    parse::response(buf, spans).map_err(|e| H1Error::BadHead(e.to_string()))
}

/// Parses a whole head held in `raw`.
#[cfg(test)]
fn decode_head(raw: &Bytes, head_only: bool) -> Result<Head, H1Error> {
    let mut spans = Vec::new();
    let parsed = parse_head(raw, &mut spans)?.ok_or(H1Error::BadHead("incomplete".into()))?;
    build_head(raw, &parsed, &spans, head_only)
}

/// The head's status, headers (their values share `raw`), framing and keep-alive. The
/// hop-by-hop headers are consumed here, by the connection they belong to, and not passed on.
fn build_head(
    raw: &Bytes,
    parsed: &Parsed,
    spans: &[Span],
    head_only: bool,
) -> Result<Head, H1Error> {
    let status =
        StatusCode::from_u16(parsed.status).map_err(|_| H1Error::BadHead("status code".into()))?;
    let mut headers = HeaderMap::with_capacity(spans.len() + HEADROOM);
    // The last transfer coding named, and whether `Connection: close` was said.
    let mut last_coding_seen: Option<&[u8]> = None;
    let mut close = false;
    // A malformed length only matters to a response that can have a body.
    let mut length: Result<Option<u64>, &'static str> = Ok(None);
    for &(ns, ne, vs, ve) in spans {
        let value = &raw[vs..ve];
        let name = header_name(&raw[ns..ne]).map_err(|_| {
            H1Error::BadHead(format!(
                "header name {:?}",
                String::from_utf8_lossy(&raw[ns..ne])
            ))
        })?;
        if name == header::TRANSFER_ENCODING {
            if let Some(c) = last_coding(value) {
                last_coding_seen = Some(c);
            }
            continue;
        }
        if name == header::CONNECTION {
            close |= has_token(value, b"close");
            continue;
        }
        if hop_by_hop_other(&name) {
            continue;
        }
        if name == header::CONTENT_LENGTH
            && let Ok(l) = &mut length
            && let Err(e) = content_length(value, l)
        {
            length = Err(e);
        }
        let value = HeaderValue::from_maybe_shared(raw.slice(vs..ve))
            .map_err(|_| H1Error::BadHead(format!("value of header {name}")))?;
        headers.append(name, value);
    }
    let framing = framing(head_only, status, last_coding_seen, length)?;
    let keep_alive = parsed.version_11 && !close && framing != Framing::UntilClose;
    Ok(Head {
        status,
        headers,
        framing,
        keep_alive,
    })
}

/// Whether `name` is a hop-by-hop header other than `Connection` and `Transfer-Encoding`.
fn hop_by_hop_other(name: &HeaderName) -> bool {
    name == header::UPGRADE
        || name == header::TE
        || name == header::TRAILER
        || name == "keep-alive"
        || name == "proxy-connection"
}

/// How the body of a response is delimited (RFC 9112 section 6.3), given the last transfer
/// coding named and the content length.
fn framing(
    head_only: bool,
    status: StatusCode,
    coding: Option<&[u8]>,
    length: Result<Option<u64>, &'static str>,
) -> Result<Framing, H1Error> {
    if head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if let Some(last) = coding {
        return Ok(if last.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::UntilClose
        });
    }
    Ok(match length.map_err(|e| H1Error::BadHead(e.into()))? {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// Turns a read head into the response. A body that is already in the buffer is handed over
/// whole, and the connection goes home at once; otherwise the body streams from the socket.
fn respond(mut conn: Conn, head: Head, home: &Home) -> Box<Response<Body>> {
    let body = match head.framing {
        Framing::Empty => {
            if head.keep_alive {
                home.affinity.put(home.addr, conn, home.idle);
            }
            Body::empty()
        }
        Framing::Length(n) if (conn.rbuf.len() as u64) >= n => {
            let data = conn.rbuf.split_to(n as usize).freeze();
            if head.keep_alive && conn.rbuf.is_empty() {
                home.affinity.put(home.addr, conn, home.idle);
            }
            Body::Local(Full::new(data))
        }
        framing => Body::Upstream(Box::new(Streaming {
            conn: Some(conn),
            framing,
            keep_alive: head.keep_alive,
            home: home.clone(),
        })),
    };
    let mut resp = Box::new(Response::new(body));
    *resp.status_mut() = head.status;
    *resp.version_mut() = Version::HTTP_11;
    *resp.headers_mut() = head.headers;
    resp
}

/// A response body read from the upstream connection as it is polled.
pub struct Streaming {
    /// `None` once the body has ended.
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    home: Home,
}

impl std::fmt::Debug for Streaming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streaming")
            .field("framing", &self.framing)
            .finish()
    }
}

impl Streaming {
    /// The body has ended cleanly: a connection with nothing left over goes home.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.rbuf.is_empty()
        {
            self.home.affinity.put(self.home.addr, conn, self.home.idle);
        }
    }
}

impl http_body::Body for Streaming {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = self.get_mut();
        loop {
            let Some(conn) = me.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut me.framing {
                Framing::Empty | Framing::Length(0) => {
                    me.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(n) if !conn.rbuf.is_empty() => {
                    let take = (*n).min(conn.rbuf.len() as u64);
                    *n -= take;
                    let data = conn.rbuf.split_to(take as usize).freeze();
                    if *n == 0 {
                        me.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(state) => match decode_chunked(state, &mut conn.rbuf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Done) => {
                        me.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => {
                        me.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                Framing::UntilClose if !conn.rbuf.is_empty() => {
                    let data = conn.rbuf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                _ => {}
            }
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    me.conn = None;
                    return Poll::Ready(match me.framing {
                        Framing::UntilClose => None,
                        _ => Some(Err(H1Error::Truncated.into())),
                    });
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    me.conn = None;
                    return Poll::Ready(Some(Err(H1Error::Read(e).into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.framing, Framing::Empty | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], head_only: bool) -> Result<Head, H1Error> {
        decode_head(&Bytes::copy_from_slice(raw), head_only)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", false).unwrap();
        assert_eq!(h.framing, Framing::Length(3));
        assert!(h.keep_alive);
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", true).unwrap();
        assert_eq!(h.framing, Framing::Empty, "HEAD has no body");
        let h = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
        let h = head(b"HTTP/1.1 204 No Content\r\n\r\n", false).unwrap();
        assert_eq!(h.framing, Framing::Empty);
        let h = head(
            b"HTTP/1.1 204 No Content\r\nContent-Length: x\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(
            h.framing,
            Framing::Empty,
            "a length that cannot apply is not read"
        );
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(
            !h.keep_alive,
            "a body delimited by close ends the connection"
        );
        let h = head(
            b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!h.keep_alive);
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false).unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 closes");
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\n\r\n", false).unwrap();
        assert_eq!(h.framing, Framing::Length(4));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTX/1.1 200 OK\r\n\r\n",
        ] {
            assert!(
                head(bad, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn header_values_share_the_head_buffer() {
        let raw =
            Bytes::from_static(b"HTTP/1.1 200 OK\r\nX-A: one\r\nx-a: two\r\nServer: s\r\n\r\n");
        let h = decode_head(&raw, false).unwrap();
        let all: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(all, ["one", "two"]);
        assert_eq!(h.headers["server"], "s");
        let h = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
              Transfer-Encoding: chunked\r\nTrailer: x-sum\r\nX-Kept: 1\r\n\r\n",
            false,
        )
        .unwrap();
        let names: Vec<_> = h.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["x-kept"],
            "hop-by-hop headers stay with the connection"
        );
        assert!(h.keep_alive);
    }

    #[test]
    fn request_heads_carry_their_framing() {
        let req = Request::post("http://example/a/b?q=1")
            .header("host", "svc")
            .header("content-length", "99")
            .header("expect", "100-continue")
            .body(())
            .unwrap();
        let mut req = req;
        *req.uri_mut() = "/a/b?q=1".parse().unwrap();
        let mut out = Vec::new();
        encode_head(&req, BodyFraming::Fixed(5), Some(15000), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a/b?q=1 HTTP/1.1\r\nhost: svc\r\nx-envoy-expected-rq-timeout-ms: 15000\r\n\
             content-length: 5\r\n\r\n"
        );
        let mut out = Vec::new();
        encode_head(&req, BodyFraming::Chunked, None, &mut out);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("transfer-encoding: chunked\r\n\r\n")
        );
        let get = Request::get("/").body(()).unwrap();
        let mut out = Vec::new();
        encode_head(&get, BodyFraming::Fixed(0), None, &mut out);
        assert_eq!(
            out, b"GET / HTTP/1.1\r\n\r\n",
            "a GET without a body has no length"
        );
    }
}
