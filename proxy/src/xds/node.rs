//! The `node` a sidecar presents to istiod, built from the environment pilot-agent gives Envoy.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};

/// The Istio version we present: istiod gates features by it.
pub const ISTIO_VERSION: &str = "1.27.0";

/// Who the proxy is, as istiod needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub pod_name: String,
    pub namespace: String,
    pub instance_ips: Vec<String>,
    pub service_account: String,
    pub cluster_id: String,
    pub dns_domain: String,
    /// Every `ISTIO_META_<KEY>` as `<KEY>`, every `ISTIO_METAJSON_<KEY>` as parsed JSON.
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Identity {
    /// From environment variables (`POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`, `SERVICE_ACCOUNT`,
    /// `ISTIO_META_*`, `ISTIO_METAJSON_*`), through a lookup function so tests can supply them.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Identity {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let get = |k: &str| vars.get(k).cloned().unwrap_or_default();
        let namespace = Some(get("POD_NAMESPACE"))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let mut extra = BTreeMap::new();
        for (k, v) in &vars {
            if let Some(key) = k.strip_prefix("ISTIO_METAJSON_") {
                if let Ok(json) = serde_json::from_str(v) {
                    extra.insert(key.to_string(), json);
                }
            } else if let Some(key) = k.strip_prefix("ISTIO_META_") {
                extra.insert(key.to_string(), serde_json::Value::String(v.clone()));
            }
        }
        Identity {
            pod_name: Some(get("POD_NAME"))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "outrigger".into()),
            dns_domain: format!("{namespace}.svc.cluster.local"),
            namespace,
            instance_ips: get("INSTANCE_IP")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            service_account: Some(get("SERVICE_ACCOUNT"))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            cluster_id: Some(get("ISTIO_META_CLUSTER_ID"))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "Kubernetes".into()),
            extra,
        }
    }

    /// `sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`.
    pub fn node_id(&self) -> String {
        let ip = self
            .instance_ips
            .first()
            .map(String::as_str)
            .unwrap_or("127.0.0.1");
        format!(
            "sidecar~{ip}~{}.{}~{}",
            self.pod_name, self.namespace, self.dns_domain
        )
    }

    pub fn node(&self) -> Node {
        let mut meta: BTreeMap<String, serde_json::Value> = self.extra.clone();
        let mut set = |k: &str, v: String| {
            meta.insert(k.to_string(), serde_json::Value::String(v));
        };
        set("ISTIO_VERSION", ISTIO_VERSION.into());
        set("NAME", self.pod_name.clone());
        set("NAMESPACE", self.namespace.clone());
        set("INSTANCE_IPS", self.instance_ips.join(","));
        set("SERVICE_ACCOUNT", self.service_account.clone());
        set("CLUSTER_ID", self.cluster_id.clone());
        set("ENVOY_STATUS_PORT", "15021".into());
        set("ENVOY_PROMETHEUS_PORT", "15090".into());
        meta.entry("INTERCEPTION_MODE".into())
            .or_insert_with(|| serde_json::Value::String("REDIRECT".into()));
        Node {
            id: self.node_id(),
            cluster: format!(
                "{}.{}",
                self.pod_name
                    .rsplit_once('-')
                    .map(|(a, _)| a)
                    .unwrap_or(&self.pod_name),
                self.namespace
            ),
            metadata: Some(to_struct(&meta)),
            user_agent_name: "outrigger".into(),
            ..Default::default()
        }
    }
}

fn to_value(v: &serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

fn to_struct(m: &BTreeMap<String, serde_json::Value>) -> Struct {
    Struct {
        fields: m.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_from_pilot_agent_environment() {
        let env = [
            ("POD_NAME", "reviews-v1-5d8b7c9f4-abcde"),
            ("POD_NAMESPACE", "bookinfo"),
            ("INSTANCE_IP", "10.244.1.7"),
            ("SERVICE_ACCOUNT", "bookinfo-reviews"),
            ("ISTIO_META_CLUSTER_ID", "east"),
            ("ISTIO_META_INTERCEPTION_MODE", "TPROXY"),
            (
                "ISTIO_METAJSON_LABELS",
                r#"{"app":"reviews","version":"v1"}"#,
            ),
        ];
        let id = Identity::from_env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let node = id.node();
        assert_eq!(
            node.id,
            "sidecar~10.244.1.7~reviews-v1-5d8b7c9f4-abcde.bookinfo~bookinfo.svc.cluster.local"
        );
        let meta = node.metadata.unwrap().fields;
        let s = |k: &str| match meta.get(k).and_then(|v| v.kind.clone()) {
            Some(Kind::StringValue(s)) => s,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(s("NAMESPACE"), "bookinfo");
        assert_eq!(s("INSTANCE_IPS"), "10.244.1.7");
        assert_eq!(s("CLUSTER_ID"), "east");
        assert_eq!(s("INTERCEPTION_MODE"), "TPROXY");
        assert_eq!(s("ISTIO_VERSION"), ISTIO_VERSION);
        assert!(matches!(meta["LABELS"].kind, Some(Kind::StructValue(_))));
    }
}
