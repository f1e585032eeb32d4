//! The upstream side: choosing a cluster's endpoint, and the per-cluster runtime state
//! (circuit breakers, outlier detection, consistent hashing tables, requests in flight).

pub mod breaker;
mod choose;
pub mod connect;
pub mod hash_lb;
pub mod outlier;

pub use choose::*;
