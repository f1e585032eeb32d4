//! TODO

use std::time::Instant;

use http::Response;
use http::header::{self};

use crate::http::routing::RequestHead;

use super::ConnContext;
use crate::h1::body::Body;
use crate::http::headers::{GRPC_STATUS, content_length};
use crate::http::router::{Operation, UpstreamInfo};
use crate::telemetry::flags::{ResponseFlag, response_flags};

/// Counts the request in Istio's metrics, as the reporting side sees it.
pub(crate) fn record(
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
        let me = ctx.shared.telemetry.me.clone();
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
    ctx.shared
        .telemetry
        .metrics
        .record(key, labels, observation);
}

/// The seed of the series keys: fixed, so that keys are the same for the process's life.
pub(crate) const SERIES_SEED: u64 = 0x6f75_7472_6967_6772;

/// The response body's length: known exactly, or from Content-Length; 0 when streamed.
pub(crate) fn response_length(resp: &Response<Body>) -> u64 {
    use http_body::Body as _;
    resp.body()
        .size_hint()
        .exact()
        .or_else(|| content_length(resp.headers()))
        .unwrap_or(0)
}

/// The request's span, tagged as Envoy tags an HTTP span.
#[allow(clippy::too_many_arguments)]
pub(crate) fn span(
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
    let me = &ctx.shared.telemetry.me;
    let mut tags = vec![
        ("component", "proxy".to_string()),
        ("node_id", ctx.shared.telemetry.node_id.clone()),
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
pub(crate) fn access_log(
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
