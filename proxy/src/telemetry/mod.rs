//! What the proxy reports: Istio's metrics, access logs, peer metadata exchange and tracing.

pub mod access_log;
pub mod flags;
pub mod metrics;
pub mod otlp;
pub mod peer;
pub mod report;
pub mod span;
pub mod trace;
pub mod zipkin;

use std::sync::Arc;

use metrics::{Metrics, Workload};

/// What the data path reports through, shared with the admin API.
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    /// This proxy's own workload, one side of every series.
    pub me: Workload,
    /// This proxy's metadata exchange headers (`None`: not sent).
    pub own_headers: Option<peer::OwnHeaders>,
    /// Spans waiting for their report to a collector.
    pub spans: Arc<report::Reporter>,
    /// The node id, a tag of every span.
    pub node_id: String,
}

impl Default for Telemetry {
    fn default() -> Telemetry {
        Telemetry {
            metrics: Default::default(),
            me: Workload::unknown(),
            own_headers: None,
            spans: Arc::new(report::Reporter::new(Default::default())),
            node_id: String::new(),
        }
    }
}
