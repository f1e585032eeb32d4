//! Forwarding a routed request to its cluster, in three steps: [`prepare`] the request once
//! (cluster, hash, path rewrite, headers, a body kept for retries and mirrors), then
//! [`super::attempt`] it as many times as the retry policy allows, then [`finish`] the
//! response (service time, cookie).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body as _;

use super::attempt::{Attempts, attempts};
use super::headers::{
    X_ENVOY_UPSTREAM_SERVICE_TIME, X_FORWARDED_PROTO, X_REQUEST_ID, number_value, request_id_value,
    strip_hop_by_hop,
};
use super::local_reply::local_reply;
use super::mirror::mirror;
use super::router::UpstreamInfo;
use super::routing::{RequestHead, rewritten_path};
use super::timeouts::{Timeouts, timeouts};
use super::{ConnContext, hash_policy};
use crate::config::Snapshot;
use crate::config::cluster::{Cluster, UpstreamProtocol};
use crate::config::route::{Forward, PathMatch};
use crate::h1::body::Body;
use crate::telemetry::flags::ResponseFlag;
use crate::upstream::cluster_of;

/// Request bodies up to this size are buffered so that a retry can replay them (Envoy's
/// `per_request_buffer_limit_bytes` idea); larger or unsized bodies are streamed once.
const REPLAY_LIMIT: u64 = 64 * 1024;

/// A request made ready for its attempts.
pub(super) struct Prepared<'a> {
    pub cluster_name: &'a str,
    pub cluster: &'a Arc<Cluster>,
    pub http2: bool,
    /// The request (its body taken out); with retries, the template each attempt copies.
    pub req: Box<Request<Body>>,
    /// The body, when it is streamed once.
    pub streamed: Option<Body>,
    /// The body, when it is kept for retries and mirrors.
    pub replay: Option<Bytes>,
    /// The path and query HTTP/2 attempts put in their absolute URI.
    pub pq: Option<String>,
    /// The request's consistent hash, and the cookie to set with the response.
    pub hash: Option<u64>,
    pub set_cookie: Option<String>,
    pub timeouts: Timeouts,
}

pub(super) async fn forward(
    ctx: &ConnContext,
    snap: &Arc<Snapshot>,
    req: Box<Request<Body>>,
    f: &Forward,
    matched: &PathMatch,
    head: &RequestHead,
    info: &mut Option<UpstreamInfo>,
) -> Box<Response<Body>> {
    let p = match prepare(ctx, snap, req, f, matched, head).await {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    if let Some(bytes) = &p.replay {
        for m in &f.mirrors {
            if m.chance.hit(fastrand::u32(..1_000_000)) {
                mirror(ctx, snap, &m.cluster, &p.req, bytes.clone(), f.timeout);
            }
        }
    }
    let (cluster, http2, set_cookie) = (p.cluster.clone(), p.http2, p.set_cookie.clone());
    match attempts(ctx, snap, f, head, p).await {
        Attempts::Reply(reply) => reply,
        Attempts::Answered(resp, dest) => {
            *info = Some(UpstreamInfo {
                snap: snap.clone(),
                cluster,
                dest,
            });
            finish(resp, http2, head.received, set_cookie.as_deref())
        }
    }
}

/// Everything decided once per request: the cluster and protocol, the hash, the upstream
/// path, the forwarded headers, and the body kept for retries and mirrors. A local reply when
/// the request cannot be forwarded.
async fn prepare<'a>(
    ctx: &ConnContext,
    snap: &'a Snapshot,
    mut req: Box<Request<Body>>,
    f: &'a Forward,
    matched: &PathMatch,
    head: &RequestHead,
) -> Result<Prepared<'a>, Box<Response<Body>>> {
    let header_value = match &f.target {
        crate::config::route::Target::Header(h) => head
            .headers
            .iter()
            .find(|(n, _)| n == h)
            .map(|(_, v)| v.as_str()),
        _ => None,
    };
    let no_cluster = || local_reply(StatusCode::SERVICE_UNAVAILABLE, ResponseFlag::NC, "");
    let cluster_name =
        cluster_of(&f.target, fastrand::u64(..), header_value).ok_or_else(no_cluster)?;
    let (cluster_name, cluster) = snap
        .clusters
        .get_key_value(cluster_name)
        .ok_or_else(no_cluster)?;
    let http2 = match cluster.upstream_protocol {
        UpstreamProtocol::Http1 => false,
        UpstreamProtocol::Http2 => true,
        UpstreamProtocol::Downstream => req.version() == http::Version::HTTP_2,
    };
    // The request stays in its box and is changed in place: only its body is taken out.
    let body = std::mem::replace(req.body_mut(), Body::empty());
    // Consistent hashing: the request's hash by the route's hash policies.
    let hashed = (cluster.lb_policy.hashed() && !f.hash_policies.is_empty()).then(|| {
        hash_policy::request_hash(
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
        *req.uri_mut() = pq.parse().map_err(|_| {
            local_reply(
                StatusCode::BAD_REQUEST,
                ResponseFlag::NR,
                "bad request path",
            )
        })?;
    }
    *req.version_mut() = if http2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    forwarded_headers(ctx, cluster, head, &mut req, f);
    // A body small enough to keep is buffered when the route retries or mirrors; otherwise
    // the request is sent once.
    let copies = f.retry.as_ref().is_some_and(|p| p.num_retries > 0) || !f.mirrors.is_empty();
    let mut streamed = Some(body);
    let replay: Option<Bytes> = match (copies, &streamed) {
        (true, Some(b)) if b.is_end_stream() => Some(Bytes::new()),
        (true, Some(b)) if b.size_hint().exact().is_some_and(|n| n <= REPLAY_LIMIT) => {
            use http_body_util::BodyExt;
            match streamed.take().map(|b| b.collect()) {
                Some(c) => Some(
                    Box::pin(c)
                        .await
                        .map_err(|_| {
                            local_reply(
                                StatusCode::BAD_REQUEST,
                                ResponseFlag::NR,
                                "request body read error",
                            )
                        })?
                        .to_bytes(),
                ),
                None => None,
            }
        }
        _ => None,
    };
    let timeouts = timeouts(f, req.headers_mut());
    Ok(Prepared {
        cluster_name,
        cluster,
        http2,
        req,
        streamed,
        replay,
        pq,
        hash,
        set_cookie,
        timeouts,
    })
}

/// The headers a forwarded request carries: hop-by-hop ones removed, the Host (rewritten, or
/// from `:authority`), a request id, Istio's metadata exchange towards mesh services, the
/// trace context, and `x-forwarded-proto`.
fn forwarded_headers(
    ctx: &ConnContext,
    cluster: &Cluster,
    head: &RequestHead,
    req: &mut Request<Body>,
    f: &Forward,
) {
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
        && let Some(own) = &ctx.shared.telemetry.own_headers
    {
        own.add(headers);
    }
    // The span decided when the request came in.
    if let Some(hop) = req.extensions().get::<crate::telemetry::trace::Hop>() {
        for (name, value) in hop.headers() {
            if let Ok(v) = HeaderValue::from_str(&value) {
                req.headers_mut()
                    .insert(http::header::HeaderName::from_static(name), v);
            }
        }
    }
    req.headers_mut()
        .entry(X_FORWARDED_PROTO)
        .or_insert_with(|| HeaderValue::from_static("http"));
}

/// The upstream's response as the client gets it: the service time, the hash policy's cookie.
fn finish(
    mut resp: Box<Response<Body>>,
    http2: bool,
    started: Instant,
    set_cookie: Option<&str>,
) -> Box<Response<Body>> {
    let elapsed = started.elapsed().as_millis() as u64;
    // The HTTP/1.1 upstream connection consumed its hop-by-hop headers itself.
    if http2 {
        strip_hop_by_hop(resp.headers_mut());
    }
    resp.headers_mut()
        .insert(X_ENVOY_UPSTREAM_SERVICE_TIME, number_value(elapsed));
    if let Some(c) = set_cookie
        && let Ok(v) = HeaderValue::from_str(c)
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

/// A request's deadline, from when it came in.
pub(super) fn deadline(started: Instant, timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| started + t)
}
