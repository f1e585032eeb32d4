//! A finished span of one request on one sidecar, as the tracers report it: CLIENT on the
//! outbound side, SERVER on the inbound side, each with its own id (Istio's
//! `shared_span_context: false`). The encodings are in `zipkin` and `otlp`.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The outbound side: this proxy calls a service.
    Client,
    /// The inbound side: this proxy receives for its workload.
    Server,
}

/// The reporting sidecar (Zipkin's `localEndpoint`, OTLP's resource), named as Istio names it
/// (`<app>.<namespace>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Local {
    pub service_name: String,
    pub ip: Option<IpAddr>,
}

/// One finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: String,
    pub id: String,
    pub parent_id: Option<String>,
    pub name: String,
    pub kind: Kind,
    pub start: SystemTime,
    pub duration: Duration,
    /// The other side of the hop: the upstream host (client) or the downstream peer (server).
    pub remote: Option<SocketAddr>,
    pub tags: Vec<(&'static str, String)>,
}

/// A client span with fixed ids and times, for the encoders' tests.
#[cfg(test)]
pub fn sample(id: u64) -> Span {
    Span {
        trace_id: "463ac35c9f6413ad48485a3953bb6124".into(),
        id: format!("{id:016x}"),
        parent_id: Some("a2fb4a1d1a96d312".into()),
        name: "bill-service.default.svc.cluster.local:8080/*".into(),
        kind: Kind::Client,
        start: std::time::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
        duration: Duration::from_micros(2_500),
        remote: Some("10.30.0.11:8080".parse().expect("an address")),
        tags: vec![("http.status_code", "200".into())],
    }
}
