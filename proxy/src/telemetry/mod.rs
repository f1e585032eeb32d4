//! What the proxy reports: Istio's metrics, access logs, peer metadata exchange and tracing.

pub mod access_log;
pub mod metrics;
pub mod otlp;
pub mod peer;
pub mod report;
pub mod span;
pub mod trace;
pub mod zipkin;
