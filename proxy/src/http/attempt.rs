//! The attempts of a forwarded request: each picks an endpoint (another one on a retry with
//! `previous_hosts`), passes the circuit breaker, sends over HTTP/1.1 (this connection's own
//! upstream connections) or HTTP/2 (the shared client) within its timeouts, reports the result
//! to outlier detection, and is retried as the route's policy says.

use std::net::SocketAddr;
use std::time::Instant;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body_util::Full;

use super::ConnContext;
use super::forward::{Prepared, deadline};
use super::headers::{
    GRPC_STATUS, X_ENVOY_ATTEMPT_COUNT, X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, X_ENVOY_OVERLOADED,
};
use super::local_reply::{local_reply, no_upstream};
use super::mirror::copy_head;
use super::retry;
use super::routing::RequestHead;
use super::timer::until;
use crate::config::Snapshot;
use crate::config::cluster::{Cluster, LbPolicy};
use crate::config::route::Forward;
use crate::h1::body::{Body, BoxError};
use crate::telemetry::flags::ResponseFlag;
use crate::upstream::{Dest, NoUpstream, Pick, endpoint, endpoint_count, outlier};

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

/// How the attempts ended.
pub(super) enum Attempts {
    /// The upstream answered, from this endpoint.
    Answered(Box<Response<Body>>, Dest),
    /// The proxy answers itself (no endpoint, overflow, timeout, failure).
    Reply(Box<Response<Body>>),
}

/// Runs the attempts of a prepared request.
pub(super) async fn attempts(
    ctx: &ConnContext,
    snap: &Snapshot,
    f: &Forward,
    head: &RequestHead,
    p: Prepared<'_>,
) -> Attempts {
    let Prepared {
        cluster_name,
        cluster,
        http2,
        req,
        mut streamed,
        replay,
        pq,
        hash,
        timeouts,
        ..
    } = p;
    let retry = f
        .retry
        .as_ref()
        .filter(|p| p.num_retries > 0)
        .filter(|_| replay.is_some());
    let started = head.received;
    let deadline = deadline(started, timeouts.timeout);
    let state = ctx.shared.upstreams.clusters.get(cluster);
    let breaker = &state.breaker;
    let outliers = &state.outliers;
    let loads = &ctx.shared.upstreams.loads;
    let mut _retrying = None;
    let mut tried: Vec<Dest> = Vec::new();
    // Without retries the one attempt sends the request itself; with them each attempt sends
    // a copy of its head and `req` stays as the template.
    let mut req = Some(req);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        // The first attempt starts when the request came in; a retry reads the clock again.
        let now = if attempt == 1 {
            started
        } else {
            Instant::now()
        };
        // Ejections only matter (and only cost a lookup) where outlier detection is on.
        let ejected: &(dyn Fn(&Dest) -> bool + Sync) = if cluster.outlier.is_some() {
            &|d| outliers.is_ejected(d, now)
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
            let pick = Pick {
                counter: ctx.shared.upstreams.next(),
                roll: fastrand::u64(..),
                hash,
                attempt: selection,
                active: &|d| loads.get(d),
                ejected,
                tables: &state.hash_table,
            };
            match endpoint(snap, cluster, ctx.original_dst, &pick) {
                Ok(d) => {
                    let fresh = !tried.contains(&d);
                    chosen = Some(d);
                    if fresh {
                        break;
                    }
                }
                Err(e) => return Attempts::Reply(no_upstream(e)),
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
                return Attempts::Reply(r);
            }
        };
        let Some(dest) = chosen else {
            let e = NoUpstream::NoHealthyEndpoint(cluster_name.to_string());
            return Attempts::Reply(no_upstream(e));
        };
        if retry.is_some() {
            tried.push(dest.clone());
        }
        // In flight until the response headers are in (LEAST_REQUEST's measure).
        let _in_flight = (cluster.lb_policy == LbPolicy::LeastRequest).then(|| loads.start(&dest));
        let addr = match dest.resolve().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(cluster = %cluster_name, error = %e, "endpoint name does not resolve");
                let e = NoUpstream::NoHealthyEndpoint(cluster_name.to_string());
                return Attempts::Reply(no_upstream(e));
            }
        };
        let outgoing = match retry {
            Some(_) => req.as_deref().map(|r| Box::new(copy_head(r))),
            None => req.take(),
        };
        // Without retries there is one attempt, so the request is always still there.
        let Some(mut outgoing) = outgoing else {
            return Attempts::Reply(local_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                ResponseFlag::NR,
                "request already sent",
            ));
        };
        if http2 && let Some(pq) = &pq {
            match format!("http://{addr}{pq}").parse() {
                Ok(u) => *outgoing.uri_mut() = u,
                Err(_) => {
                    return Attempts::Reply(local_reply(
                        StatusCode::BAD_REQUEST,
                        ResponseFlag::NR,
                        "bad request path",
                    ));
                }
            }
        }
        if retry.is_some() {
            outgoing
                .headers_mut()
                .insert(X_ENVOY_ATTEMPT_COUNT, HeaderValue::from(attempt));
        }
        *outgoing.body_mut() = match (&replay, streamed.take()) {
            (Some(bytes), _) => Body::Local(Full::new(bytes.clone())),
            (None, Some(b)) => b,
            (None, None) => Body::empty(),
        };
        // This attempt's end: the per-try timeout, within the route's deadline. The timers run
        // from the attempt's start (the first attempt's is the request's).
        let per_try = timeouts.per_try.or(retry.and_then(|p| p.per_try_timeout));
        let limit = match (deadline, per_try.map(|t| now + t)) {
            (Some(d), Some(t)) => Some(d.min(t)),
            (d, t) => d.or(t),
        };
        // Pinned where it is made, and raced against its timer in place: wrapping it in a
        // timeout future would copy it, and it is large.
        let sent = std::pin::pin!(send_once(
            ctx,
            cluster,
            addr,
            http2,
            outgoing,
            timeouts.expected_ms
        ));
        // The stream idle timeout (the route's, else the connection manager's) ends the wait
        // for the response when it comes first: 408 with flag SI, as Envoy.
        let stream_idle = f
            .idle_timeout
            .or(ctx.manager.stream_idle_timeout)
            .filter(|t| !t.is_zero())
            .map(|t| now + t)
            .filter(|t| limit.is_none_or(|l| *t < l));
        let result = match stream_idle.or(limit) {
            Some(at) => until(ctx.timer.as_ref(), at, sent).await,
            None => Some(sent.await),
        };
        if result.is_none() && stream_idle.is_some() {
            return Attempts::Reply(local_reply(
                StatusCode::REQUEST_TIMEOUT,
                ResponseFlag::SI,
                "stream timeout",
            ));
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
            None => Attempts::Reply(local_reply(
                StatusCode::GATEWAY_TIMEOUT,
                ResponseFlag::UT,
                "upstream request timeout",
            )),
            Some(Ok(resp)) => Attempts::Answered(resp, dest),
            Some(Err(e)) => {
                tracing::debug!(cluster = %cluster_name, upstream = %addr, error = %e, "upstream request failed");
                Attempts::Reply(local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ResponseFlag::UF,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                ))
            }
        };
    }
}

/// One attempt: the request to `addr` with the cluster's protocol and source address.
/// HTTP/1.1 goes over this downstream connection's own upstream connections, driven by this
/// task; HTTP/2 through the shared multiplexing client.
async fn send_once(
    ctx: &ConnContext,
    cluster: &Cluster,
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
        let client =
            ctx.shared
                .upstreams
                .clients
                .client(cluster.bind_source, cluster.connect_timeout, true);
        // Boxed: the multiplexing client's future is large and this branch is the rarer one;
        // inline it would be copied with every HTTP/1.1 request's future too.
        return match Box::pin(client.request(*req)).await {
            Ok(resp) => Ok(Box::new(resp.map(Body::Streamed))),
            Err(e) if e.is_connect() => Err(SendError::Connect(e.into())),
            Err(e) => Err(SendError::Other(e.into())),
        };
    }
    let home = crate::h1::client::Home {
        affinity: ctx.affinity.clone(),
        addr,
        idle: cluster.idle_timeout,
    };
    let target = crate::h1::client::Target {
        addr,
        bind: cluster.bind_source,
        connect_timeout: cluster.connect_timeout,
    };
    crate::h1::client::send(&home, &target, req, expected_ms)
        .await
        .map_err(|e| {
            if e.is_connect() {
                SendError::Connect(e.into())
            } else {
                SendError::Other(e.into())
            }
        })
}
