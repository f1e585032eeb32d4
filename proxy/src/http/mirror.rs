//! TODO

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderValue};
use http_body_util::Full;

use crate::config::Snapshot;
use crate::upstream::{Pick, endpoint};

use super::ConnContext;
use crate::h1::body::Body;

/// `host:port` → `host-shadow:port`, as Envoy marks mirrored requests.
pub(crate) fn shadow_host(host: &str) -> String {
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
pub(crate) fn copy_head(req: &Request<Body>) -> Request<Body> {
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
pub(crate) fn mirror(
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
    let n = ctx.shared.upstreams.next();
    let state = ctx.shared.upstreams.clusters.get(cluster);
    let pick = Pick {
        counter: n,
        ..Pick::random(fastrand::u64(..), &state.hash_table)
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
    let client =
        ctx.shared
            .upstreams
            .clients
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
