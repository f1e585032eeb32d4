//! The snapshot: one immutable view of the whole accepted configuration, as the data path reads
//! it. The xDS store publishes a new one after every accepted change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

use super::cluster::{Cluster, Discovery, LoadAssignment, LocalityEndpoints};
use super::listener::{Listener, NetworkFilter, RouteSource};
use super::route::RouteConfig;
pub use crate::xds::ResourceType;

/// One immutable view of the whole configuration; a connection reads one snapshot.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every accepted resource as it arrived, with the version it came with (for `/config_dump`).
    pub raw: BTreeMap<(ResourceType, String), Raw>,
    pub listeners: BTreeMap<String, Arc<Listener>>,
    pub routes: BTreeMap<String, Arc<RouteConfig>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    pub endpoints: BTreeMap<String, Arc<LoadAssignment>>,
    pub secrets: BTreeSet<String>,
}

/// An accepted resource in wire form.
#[derive(Debug, Clone, PartialEq)]
pub struct Raw {
    pub version: String,
    pub any: Any,
}

impl Snapshot {
    /// `cluster`'s endpoints by locality: its EDS assignment in this snapshot, else its own.
    pub fn localities<'a>(&'a self, cluster: &'a Cluster) -> &'a [LocalityEndpoints] {
        let assignment = match &cluster.discovery {
            Discovery::Eds { service_name } => self.endpoints.get(service_name).map(|a| a.as_ref()),
            _ => cluster.load_assignment.as_ref(),
        };
        assignment.map(|a| a.localities.as_slice()).unwrap_or(&[])
    }

    /// The EDS names the clusters use.
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.clusters
            .values()
            .filter_map(|c| match &c.discovery {
                Discovery::Eds { service_name } => Some(service_name.clone()),
                _ => None,
            })
            .collect()
    }

    /// The route configurations the listeners reference through RDS.
    pub fn rds_names(&self) -> BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| l.filter_chains.iter().chain(l.default_filter_chain.iter()))
            .flat_map(|c| c.filters.iter())
            .filter_map(|f| match f {
                NetworkFilter::Http(h) => match &h.routes {
                    RouteSource::Rds(name) => Some(name.clone()),
                    RouteSource::Inline(_) => None,
                },
                _ => None,
            })
            .collect()
    }
}
