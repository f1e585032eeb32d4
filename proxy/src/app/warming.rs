//! Envoy's warming: a listener is not ready until the route configurations it names (RDS) are
//! in, nor a cluster until its endpoints (EDS) are. Readiness waits for both, or for the
//! initial fetch timeout, so that a request right after "ready" is not answered 404 NR.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Snapshot;

/// Envoy's default `initial_fetch_timeout`: after it, what has not arrived is not waited for.
pub const INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// What `snap` still waits for: the RDS names its listeners use and the EDS names its clusters
/// use that it does not have. Empty when warmed.
pub fn warmed(snap: &Snapshot) -> Vec<String> {
    let routes = snap
        .rds_names()
        .into_iter()
        .filter(|n| !snap.routes.contains_key(n))
        .map(|n| format!("RDS {n}"));
    let endpoints = snap
        .eds_names()
        .into_iter()
        .filter(|n| !snap.endpoints.contains_key(n))
        .map(|n| format!("EDS {n}"));
    routes.chain(endpoints).collect()
}

/// Resolves once the current snapshot is warmed, or after `timeout` (what is missing then is
/// logged).
pub async fn wait(snapshots: &watch::Receiver<Arc<Snapshot>>, timeout: Duration) {
    let mut rx = snapshots.clone();
    let done = tokio::time::timeout(timeout, rx.wait_for(|s| warmed(s).is_empty())).await;
    if done.is_err() {
        let missing = warmed(&snapshots.borrow());
        tracing::warn!(
            ?missing,
            timeout_s = timeout.as_secs(),
            "initial fetch timeout: ready without these"
        );
    }
}
