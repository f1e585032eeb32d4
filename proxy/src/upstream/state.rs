//! Per-cluster runtime state: each cluster of the snapshot has one [`ClusterState`] (circuit
//! breaker, outlier detection, consistent hashing table), created when a snapshot brings the
//! cluster and dropped when one removes it; endpoints that leave a cluster are pruned from its
//! outlier state. A long-lived sidecar with churning pods therefore keeps state only for what
//! its configuration holds now.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use super::Dest;
use super::breaker::{Breaker, BreakerStats};
use super::hash_lb::HashTables;
use super::outlier::Outliers;
use crate::config::Address;
use crate::config::Snapshot;
use crate::config::cluster::Cluster;

/// One cluster's runtime state.
#[derive(Debug)]
pub struct ClusterState {
    pub breaker: Arc<Breaker>,
    pub outliers: Outliers,
    pub hash_table: HashTables,
}

impl ClusterState {
    fn new(cluster: &Cluster) -> ClusterState {
        ClusterState {
            breaker: Arc::new(Breaker::new(cluster.limits)),
            outliers: Outliers::default(),
            hash_table: HashTables::default(),
        }
    }
}

/// The state of every cluster, by name. Looked up under a read lock (shared by every request);
/// written only when a snapshot changes the set of clusters.
#[derive(Debug, Default)]
pub struct Clusters {
    by_name: RwLock<HashMap<String, Arc<ClusterState>, foldhash::fast::FixedState>>,
}

impl Clusters {
    /// `cluster`'s state. Made here if the cluster arrived after the last [`Clusters::sync`]
    /// (the next sync keeps it); a cluster whose thresholds changed gets a new breaker.
    pub fn get(&self, cluster: &Cluster) -> Arc<ClusterState> {
        {
            let m = self.by_name.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = m.get(&cluster.name)
                && s.breaker.limits() == cluster.limits
            {
                return s.clone();
            }
        }
        let mut m = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        let s = m
            .entry(cluster.name.clone())
            .and_modify(|s| {
                if s.breaker.limits() != cluster.limits {
                    *s = Arc::new(ClusterState {
                        breaker: Arc::new(Breaker::new(cluster.limits)),
                        outliers: Outliers::default(),
                        hash_table: HashTables::default(),
                    });
                }
            })
            .or_insert_with(|| Arc::new(ClusterState::new(cluster)));
        s.clone()
    }

    /// The state of a cluster by name, if it has any.
    pub fn find(&self, name: &str) -> Option<Arc<ClusterState>> {
        let m = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        m.get(name).cloned()
    }

    /// Follows `snap`: state for its clusters is made or kept (a new breaker where thresholds
    /// changed), state of clusters it no longer has is dropped, and each cluster's outlier
    /// state forgets endpoints the cluster no longer has.
    pub fn sync(&self, snap: &Snapshot) {
        for cluster in snap.clusters.values() {
            let state = self.get(cluster);
            if !state.outliers.is_empty() {
                let live = endpoints(snap, cluster);
                state.outliers.retain(|d| live.contains(d));
            }
        }
        let mut m = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        let before = m.len();
        m.retain(|name, _| snap.clusters.contains_key(name));
        if m.len() < before {
            tracing::debug!(
                removed = before - m.len(),
                kept = m.len(),
                "cluster state pruned"
            );
        }
    }

    /// How many clusters have state, and how many endpoints their outlier detection remembers.
    pub fn size(&self) -> (usize, usize) {
        let m = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        (m.len(), m.values().map(|s| s.outliers.len()).sum())
    }

    /// Every cluster's breaker counters, sorted by cluster.
    pub fn breaker_stats(&self) -> Vec<BreakerStats> {
        let m = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<BreakerStats> = m.iter().map(|(n, s)| s.breaker.stats(n)).collect();
        out.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        out
    }
}

/// The endpoints `cluster` has in `snap`, as outlier detection keys them.
fn endpoints(snap: &Snapshot, cluster: &Cluster) -> HashSet<Dest> {
    snap.localities(cluster)
        .iter()
        .flat_map(|l| &l.endpoints)
        .filter_map(|e| match &e.address {
            Address::Socket(a) => Some(Dest::Ip(*a)),
            Address::Dns(h, p) => Some(Dest::Name(h.clone(), *p)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::config::cluster::{Endpoint, Limits, LoadAssignment, LocalityEndpoints, Outlier};
    use crate::upstream::outlier::Result;

    fn eds(name: &str, limits: Limits) -> Arc<Cluster> {
        let wire = crate::testing::eds_cluster(name);
        let mut c = Cluster::try_from(&wire).unwrap();
        c.limits = limits;
        c.outlier = Some(Outlier {
            consecutive_5xx: Some(5),
            consecutive_gateway: None,
            split_local_origin: false,
            consecutive_local_origin: None,
            base_ejection: std::time::Duration::from_secs(30),
            max_ejection_percent: 10,
        });
        Arc::new(c)
    }

    fn assignment(name: &str, first: u32, count: u32) -> Arc<LoadAssignment> {
        let endpoints: Vec<(String, u32)> = (first..first + count)
            .map(|i| {
                (
                    format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255),
                    80,
                )
            })
            .collect();
        let refs: Vec<(&str, u32)> = endpoints.iter().map(|(a, p)| (a.as_str(), *p)).collect();
        let wire = crate::testing::load_assignment(name, &refs);
        Arc::new(LoadAssignment::try_from(&wire).unwrap())
    }

    fn dest(a: &Endpoint) -> Dest {
        match &a.address {
            Address::Socket(s) => Dest::Ip(*s),
            _ => unreachable!("socket endpoints"),
        }
    }

    #[test]
    fn changed_thresholds_replace_the_breaker() {
        let all = Clusters::default();
        let limits = Limits::default();
        let a = all.get(&eds("c", limits));
        assert!(Arc::ptr_eq(&a, &all.get(&eds("c", limits))));
        let more = Limits {
            max_requests: limits.max_requests + 1,
            ..limits
        };
        assert!(!Arc::ptr_eq(&a.breaker, &all.get(&eds("c", more)).breaker));
    }

    /// 10,000 endpoints churn through EDS, each reporting failures to outlier detection; the
    /// state follows the snapshot: only the endpoints the cluster has now are remembered, and a
    /// removed cluster leaves nothing behind.
    #[test]
    fn state_follows_endpoint_churn_and_cluster_removal() {
        let all = Clusters::default();
        let cluster = eds("churn", Limits::default());
        let policy = cluster.outlier.unwrap();
        let mut snap = Snapshot::default();
        snap.clusters.insert("churn".into(), cluster.clone());
        let now = Instant::now();
        for round in 0..100u32 {
            let la = assignment("churn", round * 100, 100);
            snap.endpoints.insert("churn".into(), la.clone());
            all.sync(&snap);
            let state = all.get(&cluster);
            for e in la
                .localities
                .iter()
                .flat_map(|l: &LocalityEndpoints| &l.endpoints)
            {
                state
                    .outliers
                    .report("churn", &policy, &dest(e), Result::Status(503), 100, now);
            }
            assert_eq!(
                all.size(),
                (1, 100),
                "round {round}: only this round's endpoints"
            );
        }
        snap.endpoints
            .insert("churn".into(), assignment("churn", 0, 0));
        all.sync(&snap);
        assert_eq!(all.size(), (1, 0));
        snap.clusters.clear();
        all.sync(&snap);
        assert_eq!(all.size(), (0, 0));
        assert!(all.find("churn").is_none());
    }
}
