//! TODO

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use crate::config::Snapshot;
use crate::config::listener::{HttpFilter, RouteSource};
use crate::config::route::{Action, HeaderOps};
use crate::http::routing::{RequestHead, needs_headers, redirect_location, route, virtual_host};

use super::ConnContext;
use super::forward::forward;
use crate::h1::body::Body;
use crate::http::headers::{
    X_REQUEST_ID, content_length, request_headers, request_id_value, response_headers,
};
use crate::http::local_reply::{full, grpc_abort, local_reply};
use crate::http::observe::{access_log, record, span};
use crate::telemetry::flags::{DelayInjected, ResponseFlag};

/// The request's headers as routing reads them (only built when a route looks at headers).
pub(crate) fn headers_of(req: &Request<Body>) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect()
}

pub(crate) fn head_of(req: &Request<Body>, received: Instant) -> RequestHead {
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
pub(crate) struct UpstreamInfo {
    pub snap: Arc<Snapshot>,
    pub cluster: Arc<crate::config::cluster::Cluster>,
    pub dest: crate::upstream::Dest,
}

/// Routes and answers one request, and counts it.
pub async fn handle(ctx: Arc<ConnContext>, mut req: Box<Request<Body>>) -> Box<Response<Body>> {
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
            if let Some(own) = &ctx.shared.telemetry.own_headers {
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
            ctx.shared.telemetry.spans.submit(&collector, span);
        }
    }
    resp
}

/// The route's `decorator.operation`, carried on the response to name the span.
#[derive(Debug, Clone)]
pub(crate) struct Operation(pub String);

/// Marks a request whose span is reported: its route names the span.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NameSpan;

/// Carries the route's operation on a reported request's response.
pub(crate) fn name_span(resp: &mut Response<Body>, operation: Option<&String>, named: bool) {
    if named && let Some(op) = operation {
        resp.extensions_mut().insert(Operation(op.clone()));
    }
}

/// The response, the request as routing saw it, and where it went when it was forwarded.
pub(crate) async fn respond(
    ctx: &ConnContext,
    mut req: Box<Request<Body>>,
    received: Instant,
) -> (Box<Response<Body>>, RequestHead, Option<UpstreamInfo>) {
    let mut info = None;
    let mut head = head_of(&req, received);
    let named = req.extensions().get::<NameSpan>().is_some();
    let snap = ctx.shared.snapshot();
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
