//! This proxy's own workload, as Istio's metrics label it.

use crate::telemetry::metrics::Workload;
use crate::xds::node::Identity;

/// pilot-agent's WORKLOAD_NAME, else the pod's Deployment name; app and version from its
/// labels.
pub fn own_workload(id: &Identity) -> Workload {
    let label = |k: &str| {
        id.extra
            .get("LABELS")
            .and_then(|l| l.get(k))
            .and_then(|v| v.as_str())
            .map(String::from)
    };
    let name = id
        .extra
        .get("WORKLOAD_NAME")
        .and_then(|v| v.as_str())
        .map(String::from)
        .unwrap_or_else(|| Workload::name_of_pod(&id.pod_name));
    Workload {
        app: label("app")
            .or_else(|| label("app.kubernetes.io/name"))
            .unwrap_or_else(|| name.clone()),
        version: label("version")
            .or_else(|| label("app.kubernetes.io/version"))
            .unwrap_or_else(|| "unknown".into()),
        name,
        namespace: id.namespace.clone(),
        cluster: id.cluster_id.clone(),
    }
}
