//! `outrigger-proxy`: an Envoy-compatible sidecar proxy configured over xDS.
//!
//! How a connection travels, and where each step lives:
//! - [`app`]: the composition root: builds the shared [`app::Proxy`] context once and owns the
//!   lifecycle (start, readiness, drain, shutdown);
//! - [`xds`]: the ADS client, the resource store and the node identity; it publishes
//!   [`config::Snapshot`]s, the validated domain model of [`config`];
//! - [`listener`]: binding, accepting, the original destination, filter chain selection,
//!   protocol sniffing and `tcp_proxy`;
//! - [`h1`]: the HTTP/1.x codec (ours) and the body type it shares with HTTP/2 (hyper's),
//!   generic over the stream it runs on and importing nothing from the layers above;
//! - [`http`]: the HTTP connection manager: routing, forwarding, retries, mirrors and
//!   timeouts, over the [`h1`] codec or hyper's HTTP/2;
//! - [`upstream`]: choosing an endpoint, per-cluster state (circuit breakers, outlier detection,
//!   hash tables, loads) and connection pools;
//! - [`telemetry`]: Istio's metrics, access logs, response flags, peer metadata and tracing;
//! - [`admin`]: Envoy's admin API and the status and Prometheus ports;
//! - [`dump`] and [`validate`]: reading Envoy's JSON/YAML and checking it offline.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod dump;
pub mod h1;
pub mod http;
pub mod listener;
pub mod shared;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod upstream;
pub mod validate;
pub mod xds;
