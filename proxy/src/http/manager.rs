//! The HTTP connection manager: serves HTTP/1.1 and h2c downstream, routes every request by the
//! route configuration, and forwards it over a pooled upstream client, with Envoy's error
//! responses and response flags.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::retry;
use super::routing::{
    RequestHead, needs_headers, redirect_location, rewritten_path, route, virtual_host,
};
use crate::config::Snapshot;
use crate::config::cluster::UpstreamProtocol;
use crate::config::listener::{HttpFilter, HttpManager, RouteSource};
use crate::config::route::{Action, Forward, HeaderAction, HeaderOps, PathMatch};
use crate::upstream::endpoint_count;
use crate::upstream::outlier;
use crate::upstream::{NoUpstream, Pick, cluster_of, endpoint};

pub use super::body::Body;

/// Envoy's response flags, as access logs and metrics report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFlag {
    /// No route.
    NR,
    /// No such cluster.
    NC,
    /// No healthy upstream.
    UH,
    /// Upstream connection failure.
    UF,
    /// Upstream request timeout.
    UT,
    /// Aborted by fault injection.
    FI,
    /// Upstream overflow (circuit breaking).
    UO,
    /// Stream idle timeout.
    SI,
}

impl ResponseFlag {
    /// `%RESPONSE_CODE_DETAILS%` of the local reply that carries this flag.
    pub fn details(self) -> &'static str {
        match self {
            ResponseFlag::NR => "route_not_found",
            ResponseFlag::NC => "cluster_not_found",
            ResponseFlag::UH => "no_healthy_upstream",
            ResponseFlag::UF => "upstream_reset_before_response_started{connection_failure}",
            ResponseFlag::UT => "response_timeout",
            ResponseFlag::FI => "fault_filter_abort",
            ResponseFlag::UO => "upstream_reset_before_response_started{overflow}",
            ResponseFlag::SI => "stream_idle_timeout",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::NR => "NR",
            ResponseFlag::NC => "NC",
            ResponseFlag::UH => "UH",
            ResponseFlag::UF => "UF",
            ResponseFlag::UT => "UT",
            ResponseFlag::FI => "FI",
            ResponseFlag::UO => "UO",
            ResponseFlag::SI => "SI",
        }
    }
}

type UpstreamClient = Client<HttpConnector, Body>;

/// (source address, connect timeout, HTTP/2).
type PoolKey = (Option<IpAddr>, Duration, bool);

/// Upstream clients, pooled per (source address, connect timeout, HTTP/2).
#[derive(Default)]
pub struct Upstreams {
    clients: Mutex<HashMap<PoolKey, UpstreamClient>>,
}

impl Upstreams {
    fn client(
        &self,
        bind: Option<IpAddr>,
        connect_timeout: Duration,
        http2: bool,
    ) -> Client<HttpConnector, Body> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients
            .entry((bind, connect_timeout, http2))
            .or_insert_with(|| {
                let mut c = HttpConnector::new();
                c.set_connect_timeout(Some(connect_timeout));
                c.set_nodelay(true);
                c.set_local_address(bind);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    // Plaintext HTTP/2 is h2c with prior knowledge, as Envoy speaks it.
                    .http2_only(http2)
                    .build(c)
            })
            .clone()
    }
}

/// Reports spans through the proxy's own clients, to an endpoint of the collector cluster.
pub struct SpanPoster {
    pub live: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    pub upstreams: Arc<Upstreams>,
    pub hash_tables: Arc<crate::upstream::hash_lb::HashTables>,
}

impl crate::telemetry::report::Post for SpanPoster {
    async fn post(
        &self,
        collector: &crate::config::listener::Collector,
        body: Vec<u8>,
    ) -> crate::telemetry::report::Sent {
        use crate::config::listener::Collector;
        use crate::telemetry::report::Sent;
        use http_body_util::BodyExt;
        let snap = self.live.borrow().clone();
        let Some(cluster) = snap.clusters.get(collector.cluster()) else {
            return Sent::NoCluster;
        };
        let pick = Pick::random(fastrand::u64(..), &self.hash_tables);
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let Ok(dest) = endpoint(&snap, cluster, unspecified, &pick) else {
            return Sent::Failed("no healthy endpoint".into());
        };
        let addr = match dest.resolve().await {
            Ok(a) => a,
            Err(e) => return Sent::Failed(e.to_string()),
        };
        // (path, Host, content type, HTTP/2): Zipkin JSON and OTLP/HTTP over HTTP/1.1, OTLP
        // gRPC over h2c.
        let (path, host, content_type, grpc) = match collector {
            Collector::Zipkin(z) => (z.endpoint.as_str(), &z.hostname, "application/json", false),
            Collector::OpenTelemetry(o) => match &o.http_path {
                Some(p) => (p.as_str(), &o.authority, "application/x-protobuf", false),
                None => (
                    crate::telemetry::otlp::EXPORT_PATH,
                    &o.authority,
                    "application/grpc",
                    true,
                ),
            },
        };
        let client = self
            .upstreams
            .client(cluster.bind_source, cluster.connect_timeout, grpc);
        let mut req = Request::post(format!("http://{addr}{path}"))
            .header(header::CONTENT_TYPE, content_type);
        req = if grpc {
            req.header(header::TE, "trailers")
        } else {
            req.header(header::HOST, host.as_str())
        };
        let Ok(req) = req.body(Body::Local(Full::new(Bytes::from(body)))) else {
            return Sent::Failed("bad collector address".into());
        };
        let resp = match client.request(req).await {
            Ok(r) => r,
            Err(e) => return Sent::Failed(e.to_string()),
        };
        let status = resp.status();
        let header_status = resp
            .headers()
            .get(GRPC_STATUS)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        // Read the answer to its end (the connection is reused; gRPC's status is in trailers).
        let trailers = resp
            .into_body()
            .collect()
            .await
            .ok()
            .and_then(|c| c.trailers().cloned());
        if !status.is_success() {
            return Sent::Refused(format!("HTTP {status}"));
        }
        if grpc {
            let code = header_status.or_else(|| {
                trailers
                    .as_ref()?
                    .get(GRPC_STATUS)?
                    .to_str()
                    .ok()
                    .map(String::from)
            });
            if code.as_deref() != Some("0") {
                return Sent::Refused(format!(
                    "grpc-status {}",
                    code.as_deref().unwrap_or("missing")
                ));
            }
        }
        Sent::Accepted
    }
}

use super::body::BoxError;

pub use super::h1::client::Affinity;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Box<Response<Body>> {
    let mut r = Box::new(Response::new(Body::Local(Full::new(body.into()))));
    *r.status_mut() = status;
    r
}

fn local_reply(status: StatusCode, flag: ResponseFlag, body: &str) -> Box<Response<Body>> {
    let mut r = full(status, body.to_string());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.extensions_mut().insert(flag);
    r
}

/// Headers that belong to one connection and are never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
];

/// Header names the proxy reads or writes on every request, made once at compile time.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
const X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
const X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
const X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
const X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
const X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Removes the hop-by-hop headers: one pass over the names finds which are there (usually
/// none on a request), and only those are looked up to be removed.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let mut found = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            found |= 1 << i;
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

/// A new request id, as a header value.
fn request_id_value() -> HeaderValue {
    HeaderValue::from_bytes(&request_id_bytes()).unwrap_or(HeaderValue::from_static("-"))
}

#[cfg(test)]
fn request_id() -> String {
    String::from_utf8_lossy(&request_id_bytes()).into_owned()
}

/// A random (version 4) UUID in its 36-character text form, made on the stack.
fn request_id_bytes() -> [u8; 36] {
    // Each byte's two hex digits from one table lookup, written where the text form puts them
    // (the dashes stay where they were laid).
    const PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        t
    };
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut b: [u8; 16] = fastrand::u128(..).to_le_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    for (x, at) in b.iter().zip(AT) {
        out[at..at + 2].copy_from_slice(&PAIRS[usize::from(*x)]);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_timeouts_parse() {
        use std::time::Duration;
        assert_eq!(
            super::grpc_timeout("100m"),
            Some(Duration::from_millis(100))
        );
        assert_eq!(super::grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(super::grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(super::grpc_timeout("x"), None);
        assert_eq!(super::grpc_timeout(""), None);
    }

    #[test]
    fn shadow_hosts_keep_the_port() {
        assert_eq!(super::shadow_host("ratings:9080"), "ratings-shadow:9080");
        assert_eq!(super::shadow_host("ratings"), "ratings-shadow");
        assert_eq!(super::shadow_host("[fd00::1]:80"), "[fd00::1]-shadow:80");
    }

    #[test]
    fn numbers_become_header_values() {
        for n in [0, 7, 9, 10, 1234, u64::MAX] {
            assert_eq!(super::number_value(n), n.to_string().as_str());
        }
    }

    #[test]
    fn request_ids_are_v4_uuids() {
        let id = super::request_id();
        assert_eq!(id.len(), 36);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        assert_ne!(id, super::request_id());
    }
}

/// Everything a request needs from its connection.
#[derive(Clone)]
pub struct ConnContext {
    /// The proxy's configuration; each request reads the latest.
    pub live: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    pub manager: Arc<HttpManager>,
    pub original_dst: SocketAddr,
    pub downstream: SocketAddr,
    pub upstreams: Arc<Upstreams>,
    pub counter: Arc<std::sync::atomic::AtomicU64>,
    pub loads: Arc<crate::upstream::Loads>,
    pub breakers: Arc<crate::upstream::breaker::Breakers>,
    pub affinity: Arc<Affinity>,
    pub hash_tables: Arc<crate::upstream::hash_lb::HashTables>,
    pub telemetry: Arc<crate::telemetry::metrics::Telemetry>,
    /// Accepted by `virtualInbound`: this proxy reports as the destination.
    pub inbound: bool,
    /// The connection's one request timer, where its requests run one at a time (HTTP/1.x);
    /// `None` gives each request a timer of its own (HTTP/2).
    pub timer: Option<Arc<ConnTimer>>,
}

/// A timer kept for a connection's whole life and shared by its requests in turn. It is
/// re-armed only when a request's deadline comes before the one it is set for, or once it
/// has fired; a request then checks its own deadline against the clock. With a route timeout
/// that is the same for every request, that is one timer registration per timeout period
/// instead of a registration and a removal per request.
#[derive(Debug)]
pub struct ConnTimer(Mutex<Pin<Box<tokio::time::Sleep>>>);

impl ConnTimer {
    fn new() -> ConnTimer {
        // Unarmed until the first deadline: far off, and never polled before re-arming.
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        ConnTimer(Mutex::new(Box::pin(tokio::time::sleep_until(far))))
    }

    /// Whether `at` has come; otherwise the task is woken no later than `at`.
    fn poll_until(&self, at: Instant, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let mut timer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = tokio::time::Instant::from_std(at);
        if timer.deadline() > at || timer.is_elapsed() {
            timer.as_mut().reset(at);
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // It fired: at this request's deadline, or at an earlier request's.
            if tokio::time::Instant::now() >= at {
                return Poll::Ready(());
            }
            timer.as_mut().reset(at);
        }
    }
}

/// The request's headers as routing reads them (only built when a route looks at headers).
fn headers_of(req: &Request<Body>) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect()
}

fn head_of(req: &Request<Body>, received: Instant) -> RequestHead {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
        .to_ascii_lowercase();
    RequestHead {
        host,
        path: req.uri().path().to_string(),
        query: req.uri().query().map(String::from),
        headers: Vec::new(),
        method: req.method().clone(),
        received,
        body_length: {
            use http_body::Body as _;
            req.body()
                .size_hint()
                .exact()
                .or_else(|| content_length(req.headers()))
        },
    }
}

/// Where a forwarded request went, for the metrics, access logs and spans.
#[derive(Debug, Clone)]
struct UpstreamInfo {
    snap: Arc<Snapshot>,
    cluster: Arc<crate::config::cluster::Cluster>,
    dest: crate::upstream::Dest,
}

/// Request bodies up to this size are buffered so that a retry can replay them (Envoy's
/// `per_request_buffer_limit_bytes` idea); larger or unsized bodies are streamed once.
const REPLAY_LIMIT: u64 = 64 * 1024;

/// Why an upstream send failed.
enum SendError {
    Connect(BoxError),
    Other(BoxError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Other(e) => write!(f, "{e}"),
        }
    }
}

/// One attempt: the request to `addr` with the cluster's protocol and source address.
/// HTTP/1.1 goes over this downstream connection's own upstream connections, driven by this
/// task; HTTP/2 through the shared multiplexing client.
async fn send_once(
    ctx: &ConnContext,
    cluster: &crate::config::cluster::Cluster,
    addr: SocketAddr,
    http2: bool,
    mut req: Box<Request<Body>>,
    expected_ms: Option<u64>,
) -> Result<Box<Response<Body>>, SendError> {
    if http2 {
        if let Some(ms) = expected_ms {
            req.headers_mut()
                .insert(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, HeaderValue::from(ms));
        }
        let client = ctx
            .upstreams
            .client(cluster.bind_source, cluster.connect_timeout, true);
        // Boxed: the multiplexing client's future is large and this branch is the rarer one;
        // inline it would be copied with every HTTP/1.1 request's future too.
        return match Box::pin(client.request(*req)).await {
            Ok(resp) => Ok(Box::new(resp.map(Body::Streamed))),
            Err(e) if e.is_connect() => Err(SendError::Connect(e.into())),
            Err(e) => Err(SendError::Other(e.into())),
        };
    }
    let home = super::h1::client::Home {
        affinity: ctx.affinity.clone(),
        addr,
        idle: cluster.idle_timeout,
    };
    let target = super::h1::client::Target {
        addr,
        bind: cluster.bind_source,
        connect_timeout: cluster.connect_timeout,
    };
    super::h1::client::send(&home, &target, req, expected_ms)
        .await
        .map_err(|e| {
            if e.is_connect() {
                SendError::Connect(e.into())
            } else {
                SendError::Other(e.into())
            }
        })
}

/// `fut`'s output, or `None` when `at` comes first. Unlike `tokio::time::timeout_at`, the
/// future is polled where it lies instead of being moved into the timeout's own; the timer is
/// the connection's when it has one, else one made for this wait.
async fn until<F: Future>(
    timer: Option<&ConnTimer>,
    at: Instant,
    mut fut: Pin<&mut F>,
) -> Option<F::Output> {
    let mut own: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let fired = match timer {
            Some(shared) => shared.poll_until(at, cx),
            None => own
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())))
                .as_mut()
                .poll(cx),
        };
        fired.map(|()| None)
    })
    .await
}

/// A `grpc-timeout` header value (`100m`, `5S`, …) as a duration.
pub fn grpc_timeout(v: &str) -> Option<Duration> {
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The request's timeout and per-try override, as Envoy derives them: the route's, replaced by
/// `x-envoy-upstream-rq-timeout-ms` (0: none) or, on gRPC routes, by `grpc-timeout` within
/// `grpc_timeout_header_max`; `x-envoy-upstream-rq-per-try-timeout-ms` for each try. The
/// headers are consumed, and the upstream learns the timeout from
/// `x-envoy-expected-rq-timeout-ms`.
fn timeouts(f: &Forward, headers: &mut http::HeaderMap) -> Timeouts {
    let mut timeout = f.timeout;
    if let Some(max) = f.grpc_timeout_max
        && let Some(t) = headers
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout)
    {
        timeout = Some(if max.is_zero() { t } else { t.min(max) });
    }
    // The override headers, and an expected timeout a client sent, are rare: one pass over the
    // names tells whether to look for them.
    let (mut overridden, mut sent_expected) = (false, false);
    for k in headers.keys() {
        let k = k.as_str();
        overridden |= k.starts_with("x-envoy-upstream-rq-");
        sent_expected |= k == X_ENVOY_EXPECTED_RQ_TIMEOUT_MS;
    }
    let mut ms = |name: HeaderName| {
        overridden
            .then(|| headers.remove(name))
            .flatten()
            .and_then(|v| v.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()))
    };
    if let Some(n) = ms(X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS) {
        timeout = (n > 0).then(|| Duration::from_millis(n));
    }
    let per_try = ms(X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS)
        .filter(|n| *n > 0)
        .map(Duration::from_millis);
    let expected = match (timeout, per_try) {
        (Some(t), Some(p)) => Some(t.min(p)),
        (t, p) => t.or(p),
    };
    // Replaced by the proxy's own when it has one.
    if expected.is_some() && sent_expected {
        headers.remove(X_ENVOY_EXPECTED_RQ_TIMEOUT_MS);
    }
    Timeouts {
        timeout,
        per_try,
        expected_ms: expected.map(|e| e.as_millis() as u64),
    }
}

/// A request's timeouts, by its route and its headers.
struct Timeouts {
    timeout: Option<Duration>,
    per_try: Option<Duration>,
    /// What `x-envoy-expected-rq-timeout-ms` tells the upstream. It is not put in the request's
    /// header map: the HTTP/1.1 encoder writes it after the headers (hashing the long custom
    /// name into the map cost more than the rest of the timeout handling), and the HTTP/2
    /// path inserts it just before sending.
    expected_ms: Option<u64>,
}

/// A number as a header value; the one-digit ones (most upstream service times) are static,
/// without an allocation.
fn number_value(n: u64) -> HeaderValue {
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match DIGITS.get(n as usize) {
        Some(d) => HeaderValue::from_static(d),
        None => HeaderValue::from(n),
    }
}

/// `host:port` → `host-shadow:port`, as Envoy marks mirrored requests.
fn shadow_host(host: &str) -> String {
    let split = match host.find(']') {
        Some(end) => end + 1,
        None => match host.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h.len(),
            _ => host.len(),
        },
    };
    let (name, port) = host.split_at(split);
    format!("{name}-shadow{port}")
}

/// A copy of `req`'s head, without its body.
fn copy_head(req: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(Body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

/// Sends a copy of the request to an endpoint of `cluster` in the background; its answer is
/// dropped and its failure only logged, so the primary request never waits for it.
fn mirror(
    ctx: &ConnContext,
    snap: &Snapshot,
    cluster_name: &str,
    req: &Request<Body>,
    body: Bytes,
    timeout: Option<Duration>,
) {
    let Some(cluster) = snap.clusters.get(cluster_name) else {
        tracing::debug!(cluster = %cluster_name, "mirror cluster unknown; not mirrored");
        return;
    };
    let n = ctx
        .counter
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pick = Pick {
        counter: n,
        ..Pick::random(fastrand::u64(..), &ctx.hash_tables)
    };
    let Ok(dest) = endpoint(snap, cluster, ctx.original_dst, &pick) else {
        return;
    };
    let (mut parts, _) = copy_head(req).into_parts();
    parts.version = http::Version::HTTP_11;
    if let Some(host) = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        && let Ok(v) = HeaderValue::from_str(&shadow_host(host))
    {
        parts.headers.insert(header::HOST, v);
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let client = ctx
        .upstreams
        .client(cluster.bind_source, cluster.connect_timeout, false);
    let name = cluster_name.to_string();
    tokio::spawn(async move {
        let Ok(addr) = dest.resolve().await else {
            return;
        };
        let Ok(uri) = format!("http://{addr}{path}").parse() else {
            return;
        };
        parts.uri = uri;
        let req = Request::from_parts(parts, Body::Local(Full::new(body)));
        let sent = tokio::time::timeout(
            timeout.unwrap_or(Duration::from_secs(15)),
            client.request(req),
        );
        match sent.await {
            Ok(Ok(resp)) => {
                // Read the answer to its end so the connection can be reused.
                use http_body_util::BodyExt;
                let _ = resp.into_body().collect().await;
            }
            Ok(Err(e)) => tracing::debug!(cluster = %name, error = %e, "mirrored request failed"),
            Err(_) => tracing::debug!(cluster = %name, "mirrored request timed out"),
        }
    });
}

fn no_upstream(e: NoUpstream) -> Box<Response<Body>> {
    match e {
        NoUpstream::UnknownCluster(_) => {
            local_reply(StatusCode::SERVICE_UNAVAILABLE, ResponseFlag::NC, "")
        }
        NoUpstream::NoHealthyEndpoint(_) => local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            ResponseFlag::UH,
            "no healthy upstream",
        ),
    }
}

async fn forward(
    ctx: &ConnContext,
    snap: &Arc<Snapshot>,
    mut req: Box<Request<Body>>,
    f: &Forward,
    matched: &PathMatch,
    head: &RequestHead,
    info: &mut Option<UpstreamInfo>,
) -> Box<Response<Body>> {
    let header_value = match &f.target {
        crate::config::route::Target::Header(h) => head
            .headers
            .iter()
            .find(|(n, _)| n == h)
            .map(|(_, v)| v.as_str()),
        _ => None,
    };
    let Some(cluster_name) = cluster_of(&f.target, fastrand::u64(..), header_value) else {
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, ResponseFlag::NC, "");
    };
    let Some(cluster) = snap.clusters.get(cluster_name) else {
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, ResponseFlag::NC, "");
    };
    let http2 = match cluster.upstream_protocol {
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Downstream => req.version() == http::Version::HTTP_2,
    };
    // The request stays in its box and is changed in place: only its body is taken out.
    let body = std::mem::replace(req.body_mut(), Body::empty());
    // Consistent hashing: the request's hash by the route's hash policies.
    let hashed = (cluster.lb_policy.hashed() && !f.hash_policies.is_empty()).then(|| {
        super::hash_policy::request_hash(
            &f.hash_policies,
            req.headers(),
            Some(head.host.as_str()).filter(|h| !h.is_empty()),
            head.query.as_deref(),
            ctx.downstream,
            ctx.original_dst,
        )
    });
    let hash = hashed.as_ref().and_then(|h| h.hash);
    let set_cookie = hashed.and_then(|h| h.set_cookie);
    // The upstream path: rewritten, or as received. HTTP/1.1 goes out on this connection's own
    // upstream connection in origin form (an origin-form request without a rewrite keeps its
    // URI); HTTP/2 through the shared client, which needs the absolute form.
    let rewritten = rewritten_path(f, matched, &head.path);
    let pq = (http2 || rewritten.is_some() || req.uri().authority().is_some()).then(|| {
        let path = rewritten.as_deref().unwrap_or(&head.path);
        match &head.query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        }
    });
    if let Some(pq) = &pq
        && !http2
    {
        match pq.parse() {
            Ok(u) => *req.uri_mut() = u,
            Err(_) => {
                return local_reply(
                    StatusCode::BAD_REQUEST,
                    ResponseFlag::NR,
                    "bad request path",
                );
            }
        }
    }
    *req.version_mut() = if http2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if let Some(h) = &f.host_rewrite
        && let Ok(v) = HeaderValue::from_str(h)
    {
        headers.insert(header::HOST, v);
    }
    // h2 requests carry :authority instead of Host; HTTP/1.1 upstreams need Host.
    if !headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(&head.host)
        && !head.host.is_empty()
    {
        headers.insert(header::HOST, v);
    }
    // One lookup each: the entry is found (or made) by a single hash of the name.
    headers.entry(X_REQUEST_ID).or_insert_with(request_id_value);
    // Metadata exchange: only towards mesh services (not passthrough), so that no identity
    // leaks to hosts outside the mesh.
    if ctx.manager.peer_metadata
        && !ctx.inbound
        && cluster.service.is_some()
        && let Some(own) = &ctx.telemetry.own_headers
    {
        own.add(headers);
    }
    // The span decided when the request came in.
    if let Some(hop) = req.extensions().get::<crate::telemetry::trace::Hop>() {
        for (name, value) in hop.headers() {
            if let Ok(v) = HeaderValue::from_str(&value) {
                req.headers_mut().insert(HeaderName::from_static(name), v);
            }
        }
    }
    let headers = req.headers_mut();
    headers
        .entry(X_FORWARDED_PROTO)
        .or_insert_with(|| HeaderValue::from_static("http"));
    // A body small enough to keep is buffered when the route retries; otherwise the request
    // is sent once.
    let retry = f.retry.as_ref().filter(|p| p.num_retries > 0);
    let copies = retry.is_some() || !f.mirrors.is_empty();
    let mut streamed = Some(body);
    let replay: Option<Bytes> = match (copies, &streamed) {
        (true, Some(b)) if b.is_end_stream() => Some(Bytes::new()),
        (true, Some(b)) if b.size_hint().exact().is_some_and(|n| n <= REPLAY_LIMIT) => {
            use http_body_util::BodyExt;
            match streamed.take().map(|b| b.collect()) {
                Some(c) => match Box::pin(c).await {
                    Ok(all) => Some(all.to_bytes()),
                    Err(_) => {
                        return local_reply(
                            StatusCode::BAD_REQUEST,
                            ResponseFlag::NR,
                            "request body read error",
                        );
                    }
                },
                None => None,
            }
        }
        _ => None,
    };
    let retry = retry.filter(|_| replay.is_some());
    if let Some(bytes) = &replay {
        for m in &f.mirrors {
            if m.chance.hit(fastrand::u32(..1_000_000)) {
                mirror(ctx, snap, &m.cluster, &req, bytes.clone(), f.timeout);
            }
        }
    }
    let Timeouts {
        timeout,
        per_try: per_try_override,
        expected_ms,
    } = timeouts(f, req.headers_mut());
    let started = head.received;
    let deadline = timeout.map(|t| started + t);
    let breaker = ctx.breakers.get(cluster_name, cluster.limits);
    let outliers = &ctx.telemetry.outliers;
    let mut _retrying = None;
    let mut tried: Vec<crate::upstream::Dest> = Vec::new();
    // Without retries the one attempt sends the request itself; with them each attempt sends
    // a copy of its head and `req` stays as the template.
    let mut req = Some(req);
    let mut attempt: u32 = 0;
    let loads = &ctx.loads;
    loop {
        attempt += 1;
        // The first attempt starts when the request came in; a retry reads the clock again.
        let now = if attempt == 1 {
            started
        } else {
            Instant::now()
        };
        // Ejections only matter (and only cost a lookup) where outlier detection is on.
        let ejected: &(dyn Fn(&crate::upstream::Dest) -> bool + Sync) = if cluster.outlier.is_some()
        {
            &|d| outliers.is_ejected(cluster_name, d, now)
        } else {
            &|_| false
        };
        // The endpoint: with previous_hosts, a retry looks for one not tried yet.
        let picks = match retry {
            Some(p) if p.previous_hosts && attempt > 1 => p.host_selection_max_attempts.max(1),
            _ => 1,
        };
        let mut chosen = None;
        for selection in 0..picks {
            let n = ctx
                .counter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let pick = Pick {
                counter: n,
                roll: fastrand::u64(..),
                hash,
                attempt: selection,
                active: &|d| loads.get(d),
                ejected,
                tables: &ctx.hash_tables,
            };
            match endpoint(snap, cluster, ctx.original_dst, &pick) {
                Ok(d) => {
                    let fresh = !tried.contains(&d);
                    chosen = Some(d);
                    if fresh {
                        break;
                    }
                }
                Err(e) => return no_upstream(e),
            }
        }
        // Circuit breaking: a connection for this request, or a place among the pending ones.
        let _admitted = match breaker.admit().await {
            Ok(a) => a,
            Err(why) => {
                tracing::debug!(cluster = %cluster_name, ?why, "circuit breaker overflow");
                let mut r = local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ResponseFlag::UO,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                );
                r.headers_mut()
                    .insert(X_ENVOY_OVERLOADED, HeaderValue::from_static("true"));
                return r;
            }
        };
        let Some(dest) = chosen else {
            return no_upstream(NoUpstream::NoHealthyEndpoint(cluster_name.to_string()));
        };
        if retry.is_some() {
            tried.push(dest.clone());
        }
        // In flight until the response headers are in (LEAST_REQUEST's measure).
        let _in_flight = (cluster.lb_policy == crate::config::cluster::LbPolicy::LeastRequest)
            .then(|| ctx.loads.start(&dest));
        let addr = match dest.resolve().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(cluster = %cluster_name, error = %e, "endpoint name does not resolve");
                return no_upstream(NoUpstream::NoHealthyEndpoint(cluster_name.to_string()));
            }
        };
        let outgoing = match retry {
            Some(_) => req.as_deref().map(|r| Box::new(copy_head(r))),
            None => req.take(),
        };
        // Without retries there is one attempt, so the request is always still there.
        let Some(mut outgoing) = outgoing else {
            return local_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                ResponseFlag::NR,
                "request already sent",
            );
        };
        if http2 && let Some(pq) = &pq {
            match format!("http://{addr}{pq}").parse() {
                Ok(u) => *outgoing.uri_mut() = u,
                Err(_) => {
                    return local_reply(
                        StatusCode::BAD_REQUEST,
                        ResponseFlag::NR,
                        "bad request path",
                    );
                }
            }
        }
        if retry.is_some() {
            outgoing
                .headers_mut()
                .insert(X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(attempt));
        }
        let body = match (&replay, streamed.take()) {
            (Some(bytes), _) => Body::Local(Full::new(bytes.clone())),
            (None, Some(b)) => b,
            (None, None) => Body::empty(),
        };
        *outgoing.body_mut() = body;
        // This attempt's end: the per-try timeout, within the route's deadline. The timers run
        // from the attempt's start (the first attempt's is the request's).
        let per_try = per_try_override.or(retry.and_then(|p| p.per_try_timeout));
        let limit = match (deadline, per_try.map(|t| now + t)) {
            (Some(d), Some(t)) => Some(d.min(t)),
            (d, t) => d.or(t),
        };
        // Pinned where it is made, and raced against its timer in place: wrapping it in a
        // timeout future would copy it, and it is large.
        let sent = std::pin::pin!(send_once(ctx, cluster, addr, http2, outgoing, expected_ms));
        // The stream idle timeout (the route's, else the connection manager's) ends the wait
        // for the response when it comes first: 408 with flag SI, as Envoy.
        let stream_idle = f
            .idle_timeout
            .or(ctx.manager.stream_idle_timeout)
            .filter(|t| !t.is_zero())
            .map(|t| now + t)
            .filter(|t| limit.is_none_or(|l| *t < l));
        let result = match stream_idle.or(limit) {
            Some(at) => until(ctx.timer.as_deref(), at, sent).await,
            None => Some(sent.await),
        };
        if result.is_none() && stream_idle.is_some() {
            return local_reply(
                StatusCode::REQUEST_TIMEOUT,
                ResponseFlag::SI,
                "stream timeout",
            );
        }
        // Only a retry policy reads the grpc-status: without one the header is not looked up.
        let outcome = match &result {
            None => retry::Outcome::PerTryTimeout,
            Some(Ok(resp)) => retry::Outcome::Response {
                status: resp.status().as_u16(),
                grpc: retry.and_then(|_| {
                    resp.headers()
                        .get(GRPC_STATUS)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                }),
            },
            Some(Err(SendError::Connect(_))) => retry::Outcome::ConnectFailure,
            Some(Err(SendError::Other(_))) => retry::Outcome::Reset,
        };
        if let Some(policy) = &cluster.outlier {
            let result = match outcome {
                retry::Outcome::Response { status, .. } => outlier::Result::Status(status),
                _ => outlier::Result::Failed,
            };
            let hosts = endpoint_count(snap, cluster);
            outliers.report(cluster_name, policy, &dest, result, hosts, Instant::now());
        }
        if let Some(p) = retry
            && attempt <= p.num_retries
            && deadline.is_none_or(|d| Instant::now() < d)
            && retry::retriable(p, outcome)
        {
            let wait = retry::backoff(p, attempt, fastrand::f64());
            // max_retries: a retry needs a place among the cluster's concurrent retries.
            let slot = breaker.retry();
            if slot.is_some() && deadline.is_none_or(|d| Instant::now() + wait < d) {
                _retrying = slot;
                tracing::debug!(cluster = %cluster_name, upstream = %addr, attempt, ?outcome, "retrying");
                Box::pin(tokio::time::sleep(wait)).await;
                continue;
            }
        }
        return match result {
            None => local_reply(
                StatusCode::GATEWAY_TIMEOUT,
                ResponseFlag::UT,
                "upstream request timeout",
            ),
            Some(Ok(resp)) => {
                let elapsed = started.elapsed().as_millis() as u64;
                let mut resp = resp;
                *info = Some(UpstreamInfo {
                    snap: snap.clone(),
                    cluster: cluster.clone(),
                    dest: dest.clone(),
                });
                // The HTTP/1.1 upstream connection consumed its hop-by-hop headers itself.
                if http2 {
                    strip_hop_by_hop(resp.headers_mut());
                }
                resp.headers_mut()
                    .insert(X_ENVOY_UPSTREAM_SERVICE_TIME, number_value(elapsed));
                if let Some(c) = &set_cookie
                    && let Ok(v) = HeaderValue::from_str(c)
                {
                    resp.headers_mut().append(header::SET_COOKIE, v);
                }
                resp
            }
            Some(Err(e)) => {
                tracing::debug!(cluster = %cluster_name, upstream = %addr, error = %e, "upstream request failed");
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ResponseFlag::UF,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                )
            }
        };
    }
}

/// Writes `adds` into `headers` as their actions say.
fn add_headers(headers: &mut http::HeaderMap, adds: &[(String, String, HeaderAction)]) {
    for (k, v, action) in adds {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) else {
            continue;
        };
        match action {
            HeaderAction::Append => {
                headers.append(name, value);
            }
            HeaderAction::AddIfAbsent => {
                if !headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
            HeaderAction::Overwrite => {
                headers.insert(name, value);
            }
            HeaderAction::OverwriteIfExists => {
                if headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
        }
    }
}

/// Applies the route's, then the virtual host's, then the route configuration's request header
/// operations.
fn request_headers(headers: &mut http::HeaderMap, ops: [&HeaderOps; 3]) {
    for o in ops {
        for h in &o.request_remove {
            headers.remove(h.as_str());
        }
        add_headers(headers, &o.request_add);
    }
}

fn response_headers(headers: &mut http::HeaderMap, ops: [&HeaderOps; 3]) {
    for o in ops {
        for h in &o.response_remove {
            headers.remove(h.as_str());
        }
        add_headers(headers, &o.response_add);
    }
}

/// Counts the request in Istio's metrics, as the reporting side sees it.
fn record(
    ctx: &ConnContext,
    head: &RequestHead,
    resp: &Response<Body>,
    info: Option<&UpstreamInfo>,
    received: Instant,
    peer: Option<&crate::telemetry::metrics::Workload>,
) {
    use std::hash::{BuildHasher, Hash, Hasher};
    // gRPC's status label: only a gRPC response (by its content type, a standard header and a
    // cheap lookup) is searched for a grpc-status, as Istio labels only gRPC requests with it.
    let grpc = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let grpc_status = grpc
        .then(|| resp.headers().get(GRPC_STATUS))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let flags = response_flags(resp);
    let flag: &str = &flags;
    // What makes a series different, hashed; the labels are built once per series. The key is
    // the series' identity, so the hash is foldhash's quality variant (64 bits, full
    // avalanche): streaming xxHash cost more than the rest of the recording.
    let mut h = foldhash::quality::FixedState::with_seed(SERIES_SEED).build_hasher();
    ctx.inbound.hash(&mut h);
    peer.hash(&mut h);
    match info {
        Some(i) => {
            i.cluster.name.hash(&mut h);
            i.dest.hash(&mut h);
            if i.cluster.service.is_none() {
                head.host.hash(&mut h);
            }
        }
        None => head.host.hash(&mut h),
    }
    resp.status().as_u16().hash(&mut h);
    flag.hash(&mut h);
    grpc_status.hash(&mut h);
    let key = h.finish();
    let labels = || {
        let host = super::routing::strip_port(&head.host).to_string();
        let service = match info.and_then(|i| i.cluster.service.clone()) {
            Some(s) => (s.host, s.name, s.namespace),
            None => {
                let name = host.split('.').next().unwrap_or("unknown").to_string();
                (host.clone(), name, "unknown".into())
            }
        };
        let me = ctx.telemetry.me.clone();
        // The destination: the endpoint's EDS metadata, else what its sidecar said.
        let exchanged = || {
            peer.cloned()
                .unwrap_or_else(crate::telemetry::metrics::Workload::unknown)
        };
        let (reporter, source, destination) = if ctx.inbound {
            ("destination", exchanged(), me)
        } else {
            let endpoint = info
                .and_then(|i| crate::upstream::endpoint_workload(&i.snap, &i.cluster, &i.dest))
                .map(|w| crate::telemetry::metrics::Workload::from_istio(&w));
            ("source", me, endpoint.unwrap_or_else(exchanged))
        };
        crate::telemetry::metrics::RequestLabels {
            reporter,
            source,
            destination,
            service,
            protocol: if grpc { "grpc" } else { "http" },
            response_code: resp.status().as_u16(),
            response_flags: flag.to_string(),
            grpc_status: grpc_status.to_string(),
        }
    };
    let observation = crate::telemetry::metrics::Observation {
        duration_ms: received.elapsed().as_secs_f64() * 1000.0,
        request_bytes: head.body_length.unwrap_or(0),
        response_bytes: response_length(resp),
    };
    ctx.telemetry.metrics.record(key, labels, observation);
}

/// The seed of the series keys: fixed, so that keys are the same for the process's life.
const SERIES_SEED: u64 = 0x6f75_7472_6967_6772;

/// The response body's length: known exactly, or from Content-Length; 0 when streamed.
fn response_length(resp: &Response<Body>) -> u64 {
    use http_body::Body as _;
    resp.body()
        .size_hint()
        .exact()
        .or_else(|| content_length(resp.headers()))
        .unwrap_or(0)
}

fn content_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Routes and answers one request, and counts it.
pub async fn handle(
    ctx: Arc<ConnContext>,
    mut req: Box<Request<Body>>,
) -> Result<Box<Response<Body>>, Infallible> {
    let received = Instant::now();
    // Tracing: this hop's span, decided before routing so that local replies are traced too.
    let hop = ctx.manager.tracing.as_ref().map(|t| {
        let h = req.headers();
        crate::telemetry::trace::next_hop(
            |name| h.get(name).and_then(|v| v.to_str().ok()).map(String::from),
            || fastrand::f64() * 100.0 < t.sampling,
            || fastrand::u64(..),
            t.collector.as_ref().is_none_or(|c| c.trace_id_128bit()),
        )
    });
    let reported = match (
        &hop,
        ctx.manager
            .tracing
            .as_ref()
            .and_then(|t| t.collector.as_ref()),
    ) {
        (Some(h), Some(collector)) if h.sampled => Some(collector.clone()),
        _ => None,
    };
    // The hop goes with the request (forward sets its headers); the span's copy only when it
    // is reported.
    let hop = hop.map(|h| {
        let kept = reported.is_some().then(|| h.clone());
        req.extensions_mut().insert(h);
        kept
    });
    if reported.is_some() {
        req.extensions_mut().insert(NameSpan);
    }
    let recorded = (!ctx.manager.access_logs.is_empty() || reported.is_some()).then(|| {
        // The request id the upstream will see is decided here, so that the log shows it.
        req.headers_mut()
            .entry(X_REQUEST_ID)
            .or_insert_with(request_id_value);
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        (
            req.headers().clone(),
            req.version(),
            path,
            std::time::SystemTime::now(),
        )
    });
    // Istio's metadata exchange: the client's identity comes in on the request, the server's
    // on the response; the app sees neither.
    let exchange = ctx.manager.peer_metadata;
    let mut peer = None;
    if exchange && ctx.inbound {
        peer = crate::telemetry::peer::take(req.headers_mut());
    }
    let (mut resp, head, info) = respond(&ctx, req, received).await;
    if exchange {
        if ctx.inbound {
            if let Some(own) = &ctx.telemetry.own_headers {
                own.add(resp.headers_mut());
            }
        } else {
            peer = crate::telemetry::peer::take(resp.headers_mut());
        }
    }
    let info = info.as_ref();
    record(&ctx, &head, &resp, info, received, peer.as_ref());
    if let Some((headers, version, path, start)) = recorded {
        if !ctx.manager.access_logs.is_empty() {
            access_log(
                &ctx, &head, &headers, version, &path, start, &resp, info, received,
            );
        }
        if let (Some(collector), Some(Some(hop))) = (reported, hop) {
            let span = span(
                &ctx, hop, &head, &headers, version, start, &resp, info, received,
            );
            ctx.telemetry.spans.submit(&collector, span);
        }
    }
    Ok(resp)
}

/// The route's `decorator.operation`, carried on the response to name the span.
#[derive(Debug, Clone)]
struct Operation(String);

/// Marks a request whose span is reported: its route names the span.
#[derive(Debug, Clone, Copy)]
struct NameSpan;

/// Carries the route's operation on a reported request's response.
fn name_span(resp: &mut Response<Body>, operation: Option<&String>, named: bool) {
    if named && let Some(op) = operation {
        resp.extensions_mut().insert(Operation(op.clone()));
    }
}

/// The request's span, tagged as Envoy tags an HTTP span.
#[allow(clippy::too_many_arguments)]
fn span(
    ctx: &ConnContext,
    hop: crate::telemetry::trace::Hop,
    head: &RequestHead,
    request_headers: &http::HeaderMap,
    version: http::Version,
    start: std::time::SystemTime,
    resp: &Response<Body>,
    info: Option<&UpstreamInfo>,
    received: Instant,
) -> crate::telemetry::span::Span {
    let header = |name: &str| {
        request_headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let url = match &head.query {
        Some(q) => format!("http://{}{}?{q}", head.host, head.path),
        None => format!("http://{}{}", head.host, head.path),
    };
    let status = resp.status().as_u16();
    let me = &ctx.telemetry.me;
    let mut tags = vec![
        ("component", "proxy".to_string()),
        ("node_id", ctx.telemetry.node_id.clone()),
        ("guid:x-request-id", header("x-request-id")),
        ("http.url", url),
        ("http.method", head.method.to_string()),
        ("downstream_cluster", "-".to_string()),
        ("user_agent", header("user-agent")),
        (
            "http.protocol",
            match version {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2",
                _ => "HTTP/1.1",
            }
            .to_string(),
        ),
        ("peer.address", ctx.downstream.ip().to_string()),
        (
            "request_size",
            content_length(request_headers).unwrap_or(0).to_string(),
        ),
        ("response_size", response_length(resp).to_string()),
        ("response_flags", response_flags(resp).into_owned()),
        ("http.status_code", status.to_string()),
        ("istio.canonical_service", me.app.clone()),
        ("istio.canonical_revision", me.version.clone()),
        ("istio.namespace", me.namespace.clone()),
    ];
    if let Some(i) = info {
        tags.push(("upstream_cluster", i.cluster.name.clone()));
        tags.push(("upstream_cluster.name", i.cluster.name.clone()));
    }
    if status >= 500 {
        tags.push(("error", "true".to_string()));
    }
    let (kind, remote) = if ctx.inbound {
        (crate::telemetry::span::Kind::Server, Some(ctx.downstream))
    } else {
        (
            crate::telemetry::span::Kind::Client,
            info.and_then(|i| match &i.dest {
                crate::upstream::Dest::Ip(a) => Some(*a),
                crate::upstream::Dest::Name(..) => None,
            }),
        )
    };
    crate::telemetry::span::Span {
        trace_id: hop.trace_id,
        id: hop.span_id,
        parent_id: hop.parent_id,
        name: match resp.extensions().get::<Operation>() {
            Some(op) => op.0.clone(),
            None => format!("{}{}", head.host, head.path),
        },
        kind,
        start,
        duration: received.elapsed(),
        remote,
        tags,
    }
}

/// Writes the request to every access log of the connection manager.
#[allow(clippy::too_many_arguments)]
fn access_log(
    ctx: &ConnContext,
    head: &RequestHead,
    request_headers: &http::HeaderMap,
    version: http::Version,
    path: &str,
    start: std::time::SystemTime,
    resp: &Response<Body>,
    info: Option<&UpstreamInfo>,
    received: Instant,
) {
    let flag = resp.extensions().get::<ResponseFlag>().copied();
    let details = match (flag, info) {
        (Some(f), _) => f.details(),
        (None, Some(_)) => "via_upstream",
        (None, None) => "direct_response",
    };
    let bytes_sent = response_length(resp);
    let upstream_host = info.map(|i| i.dest.to_string());
    let entry = crate::telemetry::access_log::Entry {
        start,
        method: head.method.as_str(),
        path,
        authority: &head.host,
        protocol: match version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        },
        request_headers,
        response_headers: resp.headers(),
        response_code: resp.status().as_u16(),
        response_flags: &response_flags(resp),
        response_code_details: details,
        bytes_received: content_length(request_headers).unwrap_or(0),
        bytes_sent,
        duration_ms: received.elapsed().as_millis() as u64,
        upstream_host: upstream_host.as_deref(),
        upstream_cluster: info.map(|i| i.cluster.name.as_str()),
        downstream_local: ctx.original_dst,
        downstream_remote: ctx.downstream,
        route_name: "",
    };
    for log in &ctx.manager.access_logs {
        log.write(&entry);
    }
}

/// The response, the request as routing saw it, and where it went when it was forwarded.
async fn respond(
    ctx: &ConnContext,
    mut req: Box<Request<Body>>,
    received: Instant,
) -> (Box<Response<Body>>, RequestHead, Option<UpstreamInfo>) {
    let mut info = None;
    let mut head = head_of(&req, received);
    let named = req.extensions().get::<NameSpan>().is_some();
    let snap = ctx.live.borrow().clone();
    let rc = match &ctx.manager.routes {
        RouteSource::Inline(rc) => Some(rc),
        RouteSource::Rds(name) => snap.routes.get(name).map(|r| r.as_ref()),
    };
    let vh = rc.and_then(|rc| virtual_host(rc, &head.host));
    if vh.is_some_and(needs_headers) {
        head.headers = headers_of(&req);
    }
    let Some((vh, route)) = vh.and_then(|vh| route(vh, &head).map(|r| (vh, r))) else {
        return (
            local_reply(StatusCode::NOT_FOUND, ResponseFlag::NR, ""),
            head,
            None,
        );
    };
    let no_ops = HeaderOps::default();
    let rc_headers = rc.map(|rc| &rc.headers).unwrap_or(&no_ops);
    let mut delayed = false;
    if let Some(fault) = &route.fault
        && ctx
            .manager
            .http_filters
            .iter()
            .any(|f| matches!(f, HttpFilter::Fault))
    {
        if let Some((delay, chance)) = fault.delay
            && chance.hit(fastrand::u32(..1_000_000))
        {
            tokio::time::sleep(delay).await;
            delayed = true;
        }
        if let Some((abort, chance)) = fault.abort
            && chance.hit(fastrand::u32(..1_000_000))
        {
            let (mut resp, status) = match abort {
                crate::config::route::Abort::Http(status) => {
                    let status =
                        StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                    (
                        local_reply(status, ResponseFlag::FI, "fault filter abort"),
                        status,
                    )
                }
                crate::config::route::Abort::Grpc(code) => (grpc_abort(code), StatusCode::OK),
            };
            if delayed {
                resp.extensions_mut().insert(DelayInjected);
            }
            response_headers(
                resp.headers_mut(),
                [&route.headers, &vh.headers, rc_headers],
            );
            tracing::info!(host = %head.host, path = %head.path, status = status.as_u16(), response_flags = "FI", "local reply");
            name_span(&mut resp, route.operation.as_ref(), named);
            return (resp, head, None);
        }
    }
    request_headers(req.headers_mut(), [&route.headers, &vh.headers, rc_headers]);
    let mut resp = match &route.action {
        Action::Direct { status, body } => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            full(status, body.clone().unwrap_or_default())
        }
        Action::Redirect(r) => {
            let mut resp = full(
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                Bytes::new(),
            );
            if let Ok(v) = HeaderValue::from_str(&redirect_location(r, &head, &route.matcher.path))
            {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        Action::NonForwarding => local_reply(StatusCode::NOT_FOUND, ResponseFlag::NR, ""),
        Action::Forward(f) => {
            forward(ctx, &snap, req, f, &route.matcher.path, &head, &mut info).await
        }
    };
    response_headers(
        resp.headers_mut(),
        [&route.headers, &vh.headers, rc_headers],
    );
    if let Some(flag) = resp.extensions().get::<ResponseFlag>() {
        tracing::info!(host = %head.host, path = %head.path, status = resp.status().as_u16(), response_flags = flag.as_str(), "local reply");
    }
    if delayed {
        resp.extensions_mut().insert(DelayInjected);
    }
    name_span(&mut resp, route.operation.as_ref(), named);
    (resp, head, info)
}

/// Marks a response whose request was delayed by fault injection (flag DI).
#[derive(Debug, Clone, Copy)]
struct DelayInjected;

/// Envoy's response flags of a response, comma-separated (`DI,FI`), or `-`.
fn response_flags(resp: &Response<Body>) -> std::borrow::Cow<'static, str> {
    let delayed = resp.extensions().get::<DelayInjected>().is_some();
    match (delayed, resp.extensions().get::<ResponseFlag>()) {
        (false, None) => "-".into(),
        (true, None) => "DI".into(),
        (false, Some(f)) => f.as_str().into(),
        (true, Some(f)) => format!("DI,{}", f.as_str()).into(),
    }
}

/// A gRPC abort as Envoy's fault filter sends it: HTTP 200, trailers-only, with the status.
fn grpc_abort(code: u32) -> Box<Response<Body>> {
    let mut r = full(StatusCode::OK, String::new());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS, HeaderValue::from(code));
    h.insert(
        HeaderName::from_static("grpc-message"),
        HeaderValue::from_static("fault filter abort"),
    );
    r.extensions_mut().insert(ResponseFlag::FI);
    r
}

/// Envoy's `max_request_headers_kb` default (60 KiB).
pub const MAX_REQUEST_HEADERS: usize = 60 * 1024;

/// Requests in flight on a downstream connection, and when the last one ended (for the
/// connection's idle timeout).
#[derive(Default)]
pub(super) struct Activity {
    active: std::sync::atomic::AtomicUsize,
    /// Milliseconds since the connection started.
    last: std::sync::atomic::AtomicU64,
}

/// A request in flight; its end is noted when it is dropped.
pub(super) struct Active<'a>(&'a Activity, Instant);

impl Activity {
    /// A request starts on a connection that started at `started`.
    pub(super) fn start(&self, started: Instant) -> Active<'_> {
        self.active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Active(self, started)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.0
            .last
            .store(self.1.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once the connection has had no request in flight for `idle`.
pub(super) async fn idle_for(activity: &Activity, started: Instant, idle: Duration) {
    use std::sync::atomic::Ordering;
    loop {
        let last = started + Duration::from_millis(activity.last.load(Ordering::Relaxed));
        let deadline = last + idle;
        if Instant::now() >= deadline && activity.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        tokio::time::sleep_until(
            deadline
                .max(Instant::now() + Duration::from_millis(10))
                .into(),
        )
        .await;
    }
}

/// Serves one downstream HTTP connection: HTTP/2 with prior knowledge through hyper, HTTP/1.x
/// through the proxy's own codec. `h2` says which when the listener's inspector already knows;
/// otherwise the first bytes are looked at (without consuming them).
pub async fn serve_connection(ctx: ConnContext, stream: TcpStream, h2: Option<bool>) {
    let h2 = match h2 {
        Some(known) => known,
        None => {
            let idle = ctx.manager.idle_timeout.unwrap_or(Duration::MAX);
            match tokio::time::timeout(idle, opens_with_h2_preface(&stream)).await {
                Ok(h2) => h2,
                Err(_) => return,
            }
        }
    };
    if h2 {
        serve_hyper(ctx, stream).await;
    } else {
        let ctx = ConnContext {
            timer: Some(Arc::new(ConnTimer::new())),
            ..ctx
        };
        super::h1::server::serve(Arc::new(ctx), stream).await;
    }
}

/// Whether the client's first bytes are the HTTP/2 connection preface. Clients send it whole,
/// so waiting for the rest of a partial match is rare and short.
async fn opens_with_h2_preface(stream: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; PREFACE.len()];
    for _ in 0..100 {
        match stream.peek(&mut buf).await {
            Ok(n) if n > 0 && PREFACE.starts_with(&buf[..n]) => {
                if n == PREFACE.len() {
                    return true;
                }
            }
            _ => return false,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Serves a connection with hyper (HTTP/2 and HTTP/1.1).
async fn serve_hyper(ctx: ConnContext, stream: TcpStream) {
    let idle = ctx.manager.idle_timeout;
    let ctx = Arc::new(ctx);
    let activity = Arc::new(Activity::default());
    let started = Instant::now();
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let (ctx, activity) = (ctx.clone(), activity.clone());
            async move {
                let _active = activity.start(started);
                handle(ctx, Box::new(req.map(Body::Streamed)))
                    .await
                    .map(|resp| *resp)
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Envoy's default limits: 60 KiB of request headers and 100 headers, else 431.
    builder.http1().max_buf_size(MAX_REQUEST_HEADERS);
    builder
        .http2()
        .max_header_list_size(MAX_REQUEST_HEADERS as u32);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = match idle {
        Some(idle) => {
            tokio::select! {
                r = conn.as_mut() => r,
                () = idle_for(&activity, started, idle) => {
                    // Envoy closes an idle connection (HTTP/2: GOAWAY first); a request that
                    // races in is still answered.
                    tracing::debug!(?idle, "downstream connection idle; closing");
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        None => conn.await,
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream HTTP connection ended with an error");
    }
}
