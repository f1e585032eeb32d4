//! The snapshot: one immutable view of the whole accepted configuration, as the data path reads
//! it. The xDS store publishes a new one after every accepted change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

use super::cluster::{Cluster, LoadAssignment};
use super::listener::Listener;
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
