//! Istio's HTTP metadata exchange (`istio.metadata_exchange`, peer_metadata with
//! `istio_headers`): each sidecar tells the other who it is in `x-envoy-peer-metadata` (a
//! base64 protobuf `Struct` of the node metadata) and `x-envoy-peer-metadata-id` (the node id).
//! The client's sidecar sends them on requests, the server's on responses; each side takes the
//! peer's out of the message before it reaches the app, and labels its metrics with them
//! (`source_*` on the server, `destination_*` on the client).

use std::collections::BTreeMap;

use base64::Engine as _;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message as _;

use crate::telemetry::metrics::Workload;

pub const METADATA: HeaderName = HeaderName::from_static("x-envoy-peer-metadata");
pub const METADATA_ID: HeaderName = HeaderName::from_static("x-envoy-peer-metadata-id");

/// This proxy's two header values, made once.
#[derive(Debug, Clone)]
pub struct OwnHeaders {
    pub id: HeaderValue,
    pub metadata: HeaderValue,
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

impl OwnHeaders {
    /// The headers for node `id` running `me` with its pod `labels` and pod name.
    pub fn new(
        id: &str,
        me: &Workload,
        pod: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<OwnHeaders> {
        let mut fields = BTreeMap::new();
        fields.insert("NAME".to_string(), string(pod));
        fields.insert("NAMESPACE".to_string(), string(&me.namespace));
        fields.insert("WORKLOAD_NAME".to_string(), string(&me.name));
        fields.insert("CLUSTER_ID".to_string(), string(&me.cluster));
        let mut label_fields: BTreeMap<String, Value> =
            labels.iter().map(|(k, v)| (k.clone(), string(v))).collect();
        // The canonical service and revision, as the injector labels every pod.
        label_fields
            .entry("service.istio.io/canonical-name".into())
            .or_insert_with(|| string(&me.app));
        label_fields
            .entry("service.istio.io/canonical-revision".into())
            .or_insert_with(|| string(&me.version));
        fields.insert(
            "LABELS".to_string(),
            Value {
                kind: Some(Kind::StructValue(Struct {
                    fields: label_fields.into_iter().collect(),
                })),
            },
        );
        let bytes = Struct {
            fields: fields.into_iter().collect(),
        }
        .encode_to_vec();
        Some(OwnHeaders {
            id: HeaderValue::from_str(id).ok()?,
            metadata: HeaderValue::from_str(
                &base64::engine::general_purpose::STANDARD.encode(bytes),
            )
            .ok()?,
        })
    }

    /// Sets both headers on `headers`.
    pub fn add(&self, headers: &mut HeaderMap) {
        headers.insert(METADATA_ID, self.id.clone());
        headers.insert(METADATA, self.metadata.clone());
    }
}

/// The peer's workload from its `x-envoy-peer-metadata` value; `None` when absent or not a
/// metadata struct. Labels fall back as Istio's stats do: canonical name, `app`, workload name.
pub fn decode(value: &[u8]) -> Option<Workload> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .ok()?;
    let s = Struct::decode(bytes.as_slice()).ok()?;
    let get = |st: &Struct, k: &str| match st.fields.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(v)) if !v.is_empty() => Some(v.clone()),
        _ => None,
    };
    let labels = match s.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(l)) => l.clone(),
        _ => Struct::default(),
    };
    let name =
        get(&s, "WORKLOAD_NAME").or_else(|| get(&s, "NAME").map(|p| Workload::name_of_pod(&p)))?;
    let unknown = || "unknown".to_string();
    Some(Workload {
        app: get(&labels, "service.istio.io/canonical-name")
            .or_else(|| get(&labels, "app"))
            .unwrap_or_else(|| name.clone()),
        version: get(&labels, "service.istio.io/canonical-revision")
            .or_else(|| get(&labels, "version"))
            .unwrap_or_else(unknown),
        namespace: get(&s, "NAMESPACE").unwrap_or_else(unknown),
        cluster: get(&s, "CLUSTER_ID").unwrap_or_else(unknown),
        name,
    })
}

/// Removes the peer's headers from `headers`, returning its workload.
pub fn take(headers: &mut HeaderMap) -> Option<Workload> {
    headers.remove(METADATA_ID);
    decode(headers.remove(METADATA)?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Workload {
        Workload {
            name: "reviews-v2".into(),
            namespace: "bookinfo".into(),
            app: "reviews".into(),
            version: "v2".into(),
            cluster: "Kubernetes".into(),
        }
    }

    #[test]
    fn own_headers_round_trip_and_are_taken_out() {
        let labels = BTreeMap::from([
            ("app".to_string(), "reviews".to_string()),
            ("version".to_string(), "v2".to_string()),
        ]);
        let own = OwnHeaders::new(
            "sidecar~10.0.0.5~reviews-v2-5d8f9c7b6d-abcde.bookinfo~bookinfo.svc.cluster.local",
            &me(),
            "reviews-v2-5d8f9c7b6d-abcde",
            &labels,
        )
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-other", HeaderValue::from_static("kept"));
        own.add(&mut h);
        assert_eq!(take(&mut h), Some(me()));
        assert!(!h.contains_key(METADATA) && !h.contains_key(METADATA_ID));
        assert_eq!(h.get("x-other").unwrap(), "kept");
        assert_eq!(take(&mut h), None);
    }

    #[test]
    fn istio_fallbacks_and_garbage() {
        // Only a pod name and plain labels, as an older proxy sends.
        let s = Struct {
            fields: [
                ("NAME".to_string(), string("ratings-v1-7d5c9f8b4c-x2x9z")),
                ("NAMESPACE".to_string(), string("default")),
                (
                    "LABELS".to_string(),
                    Value {
                        kind: Some(Kind::StructValue(Struct {
                            fields: [("app".to_string(), string("ratings"))].into(),
                        })),
                    },
                ),
            ]
            .into(),
        };
        let value = base64::engine::general_purpose::STANDARD.encode(s.encode_to_vec());
        let w = decode(value.as_bytes()).unwrap();
        assert_eq!(
            (w.name.as_str(), w.app.as_str(), w.version.as_str()),
            ("ratings-v1", "ratings", "unknown")
        );
        assert_eq!(decode(b"not base64!"), None);
        assert_eq!(decode(b"AAAA"), None);
    }
}
