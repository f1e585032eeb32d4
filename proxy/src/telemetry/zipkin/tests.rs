use super::*;
use crate::telemetry::span::{Local, sample as span};
use std::time::Duration;

#[test]
fn a_span_in_zipkin_v2_json() {
    let local = Local {
        service_name: "client.default".into(),
        ip: Some("10.30.0.10".parse().unwrap()),
    };
    let v = to_json(&span(7), &local);
    assert_eq!(
        v,
        json!({
            "traceId": "463ac35c9f6413ad48485a3953bb6124",
            "id": "0000000000000007",
            "parentId": "a2fb4a1d1a96d312",
            "name": "bill-service.default.svc.cluster.local:8080/*",
            "kind": "CLIENT",
            "timestamp": 1_700_000_000_123_456u64,
            "duration": 2_500,
            "localEndpoint": {"serviceName": "client.default", "ipv4": "10.30.0.10"},
            "remoteEndpoint": {"ipv4": "10.30.0.11", "port": 8080},
            "tags": {"http.status_code": "200"},
        })
    );
    // A root span has no parentId; an instant one lasts a microsecond; IPv6 endpoints.
    let mut root = span(8);
    root.parent_id = None;
    root.duration = Duration::ZERO;
    root.remote = Some("[fd00::2]:80".parse().unwrap());
    let v = to_json(&root, &Local::default());
    assert!(v.get("parentId").is_none());
    assert_eq!(v["duration"], 1);
    assert_eq!(v["remoteEndpoint"], json!({"ipv6": "fd00::2", "port": 80}));
}
