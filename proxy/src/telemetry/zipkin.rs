//! Spans in Zipkin's v2 JSON model, as Envoy's `envoy.tracers.zipkin` POSTs them (an array per
//! report) to `collector_endpoint` on the collector cluster.

use std::net::IpAddr;
use std::time::UNIX_EPOCH;

use serde_json::{Map, Value, json};

use super::span::{Kind, Local, Span};

fn endpoint(ip: IpAddr) -> (&'static str, String) {
    match ip {
        IpAddr::V4(v4) => ("ipv4", v4.to_string()),
        IpAddr::V6(v6) => ("ipv6", v6.to_string()),
    }
}

/// The span in Zipkin's v2 JSON model; times in microseconds since the epoch.
pub fn to_json(span: &Span, local: &Local) -> Value {
    let start = span
        .start
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut out = Map::new();
    out.insert("traceId".into(), json!(span.trace_id));
    out.insert("id".into(), json!(span.id));
    if let Some(p) = &span.parent_id {
        out.insert("parentId".into(), json!(p));
    }
    out.insert("name".into(), json!(span.name));
    out.insert(
        "kind".into(),
        json!(match span.kind {
            Kind::Client => "CLIENT",
            Kind::Server => "SERVER",
        }),
    );
    out.insert("timestamp".into(), json!(start));
    // Zipkin wants at least a microsecond.
    out.insert(
        "duration".into(),
        json!((span.duration.as_micros() as u64).max(1)),
    );
    let mut le = Map::new();
    le.insert("serviceName".into(), json!(local.service_name));
    if let Some(ip) = local.ip {
        let (k, v) = endpoint(ip);
        le.insert(k.into(), json!(v));
    }
    out.insert("localEndpoint".into(), Value::Object(le));
    if let Some(r) = span.remote {
        let (k, v) = endpoint(r.ip());
        out.insert("remoteEndpoint".into(), json!({ k: v, "port": r.port() }));
    }
    let tags: Map<String, Value> = span
        .tags
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    out.insert("tags".into(), Value::Object(tags));
    Value::Object(out)
}

/// A report's body: the spans as one JSON array.
pub fn encode(spans: &[Span], local: &Local) -> Vec<u8> {
    let all: Vec<Value> = spans.iter().map(|s| to_json(s, local)).collect();
    serde_json::to_vec(&Value::Array(all)).unwrap_or_default()
}

#[cfg(test)]
mod tests;
