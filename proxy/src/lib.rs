//! `outrigger-proxy`: an Envoy-compatible sidecar proxy configured over xDS.
//!
//! So far: reading Envoy configuration (config dumps, bootstraps) into Envoy's wire types
//! ([`dump`]) and converting those into the proxy's own validated domain types ([`config`]).
#![forbid(unsafe_code)]

pub mod accesslog;
pub mod admin;
pub mod bootstrap;
pub mod config;
pub mod dataplane;
pub mod dump;
pub mod stats;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod validate;
pub mod xds;
