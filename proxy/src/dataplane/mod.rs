//! The data path: accepting connections, choosing listener and filter chain, forwarding.

pub mod breaker;
pub mod hash_lb;
pub mod http;
pub mod outlier;
pub mod relay;
pub mod select;
pub mod server;
pub mod sniff;
pub mod upstream;
