//! The upstream side: choosing a cluster's endpoint, connecting to it, connection pools, and the
//! per-cluster runtime state (circuit breakers, outlier detection, consistent hashing tables)
//! with its lifecycle.

pub mod breaker;
mod choose;
pub mod connect;
pub mod hash_lb;
pub mod outlier;
pub mod pool;
pub mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use choose::*;

/// Everything the proxy keeps about its upstreams, shared by all connections.
#[derive(Default)]
pub struct Upstreams {
    /// Per-cluster state, following the snapshot.
    pub clusters: state::Clusters,
    /// Requests (HTTP) or connections (TCP) in flight per endpoint, for LEAST_REQUEST.
    pub loads: Arc<Loads>,
    /// hyper's pooled clients (HTTP/2 upstreams, mirrors, span reports).
    pub clients: pool::Clients,
    /// Advances round robin.
    counter: AtomicU64,
}

impl Upstreams {
    /// The next round robin count.
    pub fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }
}
