//! What every part of the running proxy shares, built once by [`crate::app`]: the live
//! configuration, telemetry, the upstream state and the lifecycle. Connections hold an `Arc` of
//! it instead of copies of its parts.

mod lifecycle;

use std::sync::Arc;

use tokio::sync::watch;

pub use lifecycle::{ConnGuard, DrainStrategy, Lifecycle};

use crate::config::Snapshot;
use crate::telemetry::Telemetry;
use crate::upstream::Upstreams;

/// The proxy's shared context.
pub struct Shared {
    /// The latest accepted configuration; each connection and request reads it.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub telemetry: Telemetry,
    pub upstreams: Upstreams,
    pub lifecycle: Lifecycle,
}

impl Shared {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, telemetry: Telemetry) -> Shared {
        Shared {
            snapshots,
            telemetry,
            upstreams: Upstreams::default(),
            lifecycle: Lifecycle::default(),
        }
    }

    /// The configuration as it is now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }
}
