//! The resources received over xDS, converted into the snapshot the data path reads.
//!
//! Pure: the client feeds responses in, gets back what was rejected (for the NACK), and publishes
//! [`Store::snapshot`]. A rejected resource never replaces the last good version of itself.

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as WireCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as WireListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::config::cluster::{Cluster, LoadAssignment};
use crate::config::listener::Listener;
use crate::config::route::RouteConfig;
use crate::config::{ConfigError, Raw, Snapshot, type_name};

/// The xDS resource types the proxy subscribes to, in istiod's push order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    Cluster,
    Endpoints,
    Listener,
    Route,
    Secret,
}

impl ResourceType {
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Cluster,
        ResourceType::Endpoints,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Secret,
    ];

    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoints => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ResourceType::Secret => {
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
            }
        }
    }

    pub fn from_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Listeners and clusters are subscribed as a whole; the others by name.
    pub fn wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    pub fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "CDS",
            ResourceType::Endpoints => "EDS",
            ResourceType::Listener => "LDS",
            ResourceType::Route => "RDS",
            ResourceType::Secret => "SDS",
        }
    }
}

/// A resource that was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub name: String,
    pub error: ConfigError,
}

/// Converted resources of one type, keyed by name.
enum Converted {
    Listener(Box<Listener>),
    Route(RouteConfig),
    Cluster(Box<Cluster>),
    Endpoints(LoadAssignment),
    Secret,
}

fn decode<M: Message + Default>(ty: ResourceType, any: &Any) -> Result<M, ConfigError> {
    if any.type_url != ty.type_url() {
        return Err(ConfigError::new(
            "@type",
            format!("expected {}, got {}", ty.type_url(), type_name(any)),
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| ConfigError::new("", format!("cannot decode: {e}")))
}

/// Decodes and converts one resource: (name, result). The name is empty if it could not be read.
fn convert(ty: ResourceType, any: &Any) -> (String, Result<Converted, ConfigError>) {
    match ty {
        ResourceType::Listener => match decode::<WireListener>(ty, any) {
            Ok(w) => (
                w.name.clone(),
                Listener::try_from(&w).map(|l| Converted::Listener(Box::new(l))),
            ),
            Err(e) => (String::new(), Err(e)),
        },
        ResourceType::Route => match decode::<RouteConfiguration>(ty, any) {
            Ok(w) => (
                w.name.clone(),
                RouteConfig::try_from(&w).map(Converted::Route),
            ),
            Err(e) => (String::new(), Err(e)),
        },
        ResourceType::Cluster => match decode::<WireCluster>(ty, any) {
            Ok(w) => (
                w.name.clone(),
                Cluster::try_from(&w).map(|c| Converted::Cluster(Box::new(c))),
            ),
            Err(e) => (String::new(), Err(e)),
        },
        ResourceType::Endpoints => match decode::<ClusterLoadAssignment>(ty, any) {
            Ok(w) => (
                w.cluster_name.clone(),
                LoadAssignment::try_from(&w).map(Converted::Endpoints),
            ),
            Err(e) => (String::new(), Err(e)),
        },
        ResourceType::Secret => match decode::<Secret>(ty, any) {
            Ok(w) => (w.name.clone(), Ok(Converted::Secret)),
            Err(e) => (String::new(), Err(e)),
        },
    }
}

#[derive(Debug, Default)]
pub struct Store {
    snapshot: Snapshot,
}

impl Store {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::new(self.snapshot.clone())
    }

    fn names(&self, ty: ResourceType) -> BTreeSet<String> {
        let s = &self.snapshot;
        match ty {
            ResourceType::Listener => s.listeners.keys().cloned().collect(),
            ResourceType::Route => s.routes.keys().cloned().collect(),
            ResourceType::Cluster => s.clusters.keys().cloned().collect(),
            ResourceType::Endpoints => s.endpoints.keys().cloned().collect(),
            ResourceType::Secret => s.secrets.clone(),
        }
    }

    fn remove(&mut self, ty: ResourceType, name: &str) {
        let s = &mut self.snapshot;
        s.raw.remove(&(ty, name.to_string()));
        match ty {
            ResourceType::Listener => drop(s.listeners.remove(name)),
            ResourceType::Route => drop(s.routes.remove(name)),
            ResourceType::Cluster => drop(s.clusters.remove(name)),
            ResourceType::Endpoints => drop(s.endpoints.remove(name)),
            ResourceType::Secret => drop(s.secrets.remove(name)),
        }
    }

    fn insert(&mut self, ty: ResourceType, name: String, c: Converted, raw: Raw) {
        let s = &mut self.snapshot;
        s.raw.insert((ty, name.clone()), raw);
        match c {
            Converted::Listener(l) => drop(s.listeners.insert(name, Arc::new(*l))),
            Converted::Route(r) => drop(s.routes.insert(name, Arc::new(r))),
            Converted::Cluster(c) => drop(s.clusters.insert(name, Arc::new(*c))),
            Converted::Endpoints(e) => drop(s.endpoints.insert(name, Arc::new(e))),
            Converted::Secret => drop(s.secrets.insert(name)),
        }
    }

    /// Converts a batch; returns the accepted ones (by name) and the rejections.
    fn convert_all<'a>(
        ty: ResourceType,
        resources: impl Iterator<Item = (Option<&'a str>, &'a Any)>,
    ) -> (Vec<(String, Converted, Any)>, Vec<Rejection>) {
        let mut ok = Vec::new();
        let mut rejected = Vec::new();
        for (i, (given, any)) in resources.enumerate() {
            let (decoded, result) = convert(ty, any);
            let name = match (given, decoded.is_empty()) {
                (Some(n), _) if !n.is_empty() => n.to_string(),
                (_, false) => decoded,
                _ => format!("{}[{i}]", ty.short()),
            };
            match result {
                Ok(c) => ok.push((name, c, any.clone())),
                Err(error) => rejected.push(Rejection { name, error }),
            }
        }
        (ok, rejected)
    }

    /// A state-of-the-world response. For listeners and clusters it is the complete set: names
    /// absent from it are removed (a rejected one keeps its last good version). For routes and
    /// endpoints it updates what it carries, and drops what is no longer `subscribed`.
    pub fn apply_sotw(
        &mut self,
        ty: ResourceType,
        resources: &[Any],
        subscribed: &BTreeSet<String>,
        version: &str,
    ) -> Vec<Rejection> {
        let (ok, rejected) = Self::convert_all(ty, resources.iter().map(|a| (None, a)));
        let keep: BTreeSet<String> = ok
            .iter()
            .map(|(n, _, _)| n.clone())
            .chain(rejected.iter().map(|r| r.name.clone()))
            .collect();
        for name in self.names(ty) {
            let gone = if ty.wildcard() {
                !keep.contains(&name)
            } else {
                !subscribed.contains(&name)
            };
            if gone {
                self.remove(ty, &name);
            }
        }
        for (name, c, any) in ok {
            let raw = Raw {
                version: version.to_string(),
                any,
            };
            self.insert(ty, name, c, raw);
        }
        rejected
    }

    /// A delta response: `resources` (name, resource) are added or updated, `removed` deleted.
    /// `version` is the response's system version (kept for `/config_dump`).
    pub fn apply_delta(
        &mut self,
        ty: ResourceType,
        resources: &[(String, Any)],
        removed: &[String],
        version: &str,
    ) -> Vec<Rejection> {
        let (ok, rejected) =
            Self::convert_all(ty, resources.iter().map(|(n, a)| (Some(n.as_str()), a)));
        for name in removed {
            self.remove(ty, name);
        }
        for (name, c, any) in ok {
            let raw = Raw {
                version: version.to_string(),
                any,
            };
            self.insert(ty, name, c, raw);
        }
        rejected
    }

    /// EDS names the current clusters need.
    pub fn eds_names(&self) -> BTreeSet<String> {
        self.snapshot.eds_names()
    }

    /// Route configurations the current listeners reference through RDS.
    pub fn rds_names(&self) -> BTreeSet<String> {
        self.snapshot.rds_names()
    }
}

/// The NACK message: every rejected resource with its reason.
pub fn nack_message(ty: ResourceType, rejected: &[Rejection]) -> String {
    let list: Vec<String> = rejected
        .iter()
        .map(|r| format!("{}: {}", r.name, r.error))
        .collect();
    format!(
        "{} rejected {} resource(s): {}",
        ty.short(),
        rejected.len(),
        list.join("; ")
    )
}

#[cfg(test)]
mod tests;
