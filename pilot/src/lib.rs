//! outrigger-pilot: reads Istio networking YAML and a service registry from files, translates
//! them into the xDS istiod would send each sidecar, and serves it over ADS.
#![forbid(unsafe_code)]

pub mod analyze;
pub mod duration;
pub mod findings;
pub mod load;
pub mod mesh;
pub mod registry;
pub mod resources;
pub mod server;
pub mod translate;
pub mod watch;
