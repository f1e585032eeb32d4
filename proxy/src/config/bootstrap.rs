//! Starting from an Envoy bootstrap (`-c FILE`): static resources, or the ADS address of
//! pilot-agent's bootstrap.

use std::sync::Arc;

use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use thiserror::Error;
use tokio::sync::watch;

use crate::config::Address;
use crate::config::Snapshot;
use crate::config::cluster::LoadAssignment;
use crate::xds::client::{Handle, XdsAddress};
use crate::xds::store::{Rejection, ResourceType, Store, nack_message};

/// Where the configuration comes from.
pub enum Source {
    Xds(XdsAddress),
    Static(Arc<Snapshot>),
}

#[derive(Debug, Error)]
pub enum BootstrapError {
    #[error(
        "dynamic_resources is set but there is no usable 'xds-grpc' cluster to take the ADS address from"
    )]
    NoXdsCluster,
    #[error("{0}")]
    Rejected(String),
}

fn pack<M: prost::Name>(m: &M) -> envoy_types::pb::google::protobuf::Any {
    envoy_types::pb::google::protobuf::Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// Decides the source of a bootstrap.
pub fn source(b: &Bootstrap) -> Result<Source, BootstrapError> {
    let statics = b.static_resources.clone().unwrap_or_default();
    if b.dynamic_resources.is_some() {
        // pilot-agent's bootstrap: xDS over the xds-grpc cluster (a Unix socket or host:port).
        let cluster = statics
            .clusters
            .iter()
            .find(|c| c.name == "xds-grpc")
            .ok_or(BootstrapError::NoXdsCluster)?;
        let assignment = cluster
            .load_assignment
            .as_ref()
            .ok_or(BootstrapError::NoXdsCluster)?;
        // istiod's address may be a name (a STRICT_DNS xds-grpc cluster).
        let la =
            LoadAssignment::convert(assignment, true).map_err(|_| BootstrapError::NoXdsCluster)?;
        let addr = la
            .localities
            .iter()
            .flat_map(|l| l.endpoints.iter())
            .next()
            .ok_or(BootstrapError::NoXdsCluster)?;
        return Ok(Source::Xds(match &addr.address {
            Address::Pipe(p) => XdsAddress::Unix(p.into()),
            Address::Socket(s) => XdsAddress::Tcp(s.to_string()),
            Address::Dns(h, p) => XdsAddress::Tcp(format!("{h}:{p}")),
            Address::Internal(_) => return Err(BootstrapError::NoXdsCluster),
        }));
    }
    let mut store = Store::default();
    let none = Default::default();
    let mut rejected: Vec<(ResourceType, Vec<Rejection>)> = Vec::new();
    let clusters: Vec<_> = statics.clusters.iter().map(pack).collect();
    let listeners: Vec<_> = statics.listeners.iter().map(pack).collect();
    rejected.push((
        ResourceType::Cluster,
        store.apply_sotw(ResourceType::Cluster, &clusters, &none, "static"),
    ));
    rejected.push((
        ResourceType::Listener,
        store.apply_sotw(ResourceType::Listener, &listeners, &none, "static"),
    ));
    let problems: Vec<String> = rejected
        .iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(t, r)| nack_message(*t, r))
        .collect();
    if !problems.is_empty() {
        return Err(BootstrapError::Rejected(problems.join("; ")));
    }
    Ok(Source::Static(store.snapshot()))
}

/// A handle for a configuration that never changes.
pub fn fixed(snapshot: Arc<Snapshot>) -> Handle {
    let (snap_tx, snap_rx) = watch::channel(snapshot);
    let (ready_tx, ready_rx) = watch::channel(true);
    Handle {
        snapshot: snap_rx,
        ready: ready_rx,
        _fixed: Some(Arc::new((snap_tx, ready_tx))),
    }
}
