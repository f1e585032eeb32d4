//! Spans as OpenTelemetry's OTLP `ExportTraceServiceRequest` (protobuf), for the
//! `envoy.tracers.opentelemetry` tracer: one resource (the sidecar, `service.name`), one scope,
//! the batch's spans. The messages are the subset of opentelemetry-proto v1 the proxy writes,
//! with the upstream field numbers.

use prost::Message;

use super::span::{Kind, Local, Span};

#[derive(Clone, PartialEq, Message)]
pub struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ScopeSpans {
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<OtlpSpan>,
}

#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct OtlpSpan {
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    pub name: String,
    /// SPAN_KIND_SERVER = 2, SPAN_KIND_CLIENT = 3.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Status {
    #[prost(string, tag = "2")]
    pub message: String,
    /// STATUS_CODE_UNSET = 0, STATUS_CODE_ERROR = 2.
    #[prost(int32, tag = "3")]
    pub code: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(oneof = "Value", tags = "1")]
    pub value: Option<Value>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(string, tag = "1")]
    StringValue(String),
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
    }
}

/// Hex ids to bytes; a 64-bit trace id is left-padded to OTLP's 16 bytes.
fn id_bytes(hex: &str, len: usize) -> Vec<u8> {
    let hex = format!("{hex:0>width$}", width = len * 2);
    (0..len)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0))
        .collect()
}

fn nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The batch as the protobuf body of one export. `service_name` names the resource.
pub fn encode(spans: &[Span], local: &Local, service_name: &str) -> Vec<u8> {
    let spans = spans
        .iter()
        .map(|s| {
            let start = nanos(s.start);
            let error = s.tags.iter().any(|(k, v)| *k == "error" && v == "true");
            OtlpSpan {
                trace_id: id_bytes(&s.trace_id, 16),
                span_id: id_bytes(&s.id, 8),
                parent_span_id: s
                    .parent_id
                    .as_deref()
                    .map(|p| id_bytes(p, 8))
                    .unwrap_or_default(),
                name: s.name.clone(),
                kind: match s.kind {
                    Kind::Server => 2,
                    Kind::Client => 3,
                },
                start_time_unix_nano: start,
                end_time_unix_nano: start + s.duration.as_nanos() as u64,
                attributes: s.tags.iter().map(|(k, v)| kv(k, v)).collect(),
                status: error.then(|| Status {
                    message: String::new(),
                    code: 2,
                }),
            }
        })
        .collect();
    let name = if service_name.is_empty() {
        local.service_name.as_str()
    } else {
        service_name
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", name)],
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "outrigger-proxy".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans,
            }],
        }],
    }
    .encode_to_vec()
}

/// The gRPC message frame: uncompressed flag, big-endian length, message.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// The gRPC method the spans go to.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn spans_become_one_resource_with_otlp_ids_and_kinds() {
        let span = Span {
            trace_id: "463ac35c9f6413ad".into(),
            id: "a2fb4a1d1a96d312".into(),
            parent_id: None,
            name: "cart.default.svc.cluster.local:8080/*".into(),
            kind: Kind::Server,
            start: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            duration: Duration::from_micros(1500),
            remote: None,
            tags: vec![("http.status_code", "503".into()), ("error", "true".into())],
        };
        let local = Local {
            service_name: "cart.default".into(),
            ip: None,
        };
        let bytes = encode(&[span], &local, "");
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let rs = &req.resource_spans[0];
        assert_eq!(
            rs.resource.as_ref().unwrap().attributes[0],
            kv("service.name", "cart.default")
        );
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(
            s.trace_id,
            [
                0, 0, 0, 0, 0, 0, 0, 0, 0x46, 0x3a, 0xc3, 0x5c, 0x9f, 0x64, 0x13, 0xad
            ]
        );
        assert_eq!(s.span_id, [0xa2, 0xfb, 0x4a, 0x1d, 0x1a, 0x96, 0xd3, 0x12]);
        assert!(s.parent_span_id.is_empty());
        assert_eq!(s.kind, 2);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 1_500_000);
        assert_eq!(s.status.as_ref().unwrap().code, 2);
        // The configured service name wins over the sidecar's.
        let bytes = encode(&[], &local, "custom");
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            req.resource_spans[0].resource.as_ref().unwrap().attributes[0],
            kv("service.name", "custom")
        );
        assert_eq!(grpc_frame(&[7, 8]), [0, 0, 0, 0, 2, 7, 8]);
    }
}
