//! TODO

use std::time::Duration;

use http::header::HeaderName;

use crate::config::route::Forward;

use crate::http::headers::{
    GRPC_TIMEOUT, X_ENVOY_EXPECTED_RQ_TIMEOUT_MS, X_ENVOY_UPSTREAM_RQ_PER_TRY_TIMEOUT_MS,
    X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS,
};

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
pub(crate) fn timeouts(f: &Forward, headers: &mut http::HeaderMap) -> Timeouts {
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
pub(crate) struct Timeouts {
    pub timeout: Option<Duration>,
    pub per_try: Option<Duration>,
    /// What `x-envoy-expected-rq-timeout-ms` tells the upstream. It is not put in the request's
    /// header map: the HTTP/1.1 encoder writes it after the headers (hashing the long custom
    /// name into the map cost more than the rest of the timeout handling), and the HTTP/2
    /// path inserts it just before sending.
    pub expected_ms: Option<u64>,
}
