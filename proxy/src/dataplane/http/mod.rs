//! HTTP: routing of requests by a route configuration, and the connection manager.

pub mod body;
pub mod h1_parse;
pub mod h1_server;
pub mod h1_upstream;
pub mod h1_wire;
pub mod hash_policy;
pub mod manager;
pub mod otlp;
pub mod peer;
pub mod report;
pub mod retry;
pub mod routing;
pub mod span;
pub mod trace;
pub mod zipkin;
