//! The ADS client: one gRPC stream to istiod (or pilot-agent's Unix socket), state of the world
//! or Delta, with ACK/NACK, warming requests and reconnects with jittered backoff.
//!
//! The resource store lives across reconnects, so the last good configuration keeps serving while
//! the control plane is away. Every change is published as a new [`Snapshot`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::store::{ResourceType, Store, nack_message};
use crate::config::Snapshot;

/// gRPC status code INVALID_ARGUMENT, used in NACKs as Envoy does.
const INVALID_ARGUMENT: i32 = 3;

/// Where the control plane is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdsAddress {
    /// `host:port` (plaintext gRPC).
    Tcp(String),
    /// `unix:/path`, as pilot-agent serves xDS to Envoy.
    Unix(PathBuf),
}

impl FromStr for XdsAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<XdsAddress, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            return Ok(XdsAddress::Unix(PathBuf::from(path)));
        }
        let hostport = s.strip_prefix("http://").unwrap_or(s);
        match hostport.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(XdsAddress::Tcp(hostport.to_string()))
            }
            _ => Err(format!("'{s}' is neither host:port nor unix:/path")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub address: XdsAddress,
    /// Delta xDS (Istio's default) instead of state of the world.
    pub delta: bool,
    pub node: Node,
    /// First reconnect delay; doubles up to `max_backoff`, with ±50 % jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Error)]
pub enum XdsError {
    #[error("connecting to {address:?}: {source}")]
    Connect {
        address: XdsAddress,
        source: tonic::transport::Error,
    },
    #[error("the xDS stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
    #[error("the request queue closed")]
    Queue,
}

/// What the rest of the proxy sees of the client.
#[derive(Debug, Clone)]
pub struct Handle {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    /// True once the first listeners and clusters are applied.
    pub ready: watch::Receiver<bool>,
    /// For a fixed configuration: the senders, kept alive as long as the handle (a closed
    /// channel would end serving). Only held, never read.
    pub(crate) _fixed: Option<Arc<FixedSenders>>,
}

/// The senders of a configuration that never changes.
pub(crate) type FixedSenders = (watch::Sender<Arc<Snapshot>>, watch::Sender<bool>);

async fn channel(address: &XdsAddress) -> Result<Channel, XdsError> {
    let err = |source| XdsError::Connect {
        address: address.clone(),
        source,
    };
    match address {
        XdsAddress::Tcp(hostport) => {
            let endpoint = Endpoint::from_shared(format!("http://{hostport}")).map_err(err)?;
            endpoint
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(err)
        }
        XdsAddress::Unix(path) => {
            let path = path.clone();
            let connector = tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            });
            // The URI is required by the API but unused by the connector.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(connector)
                .await
                .map_err(err)
        }
    }
}

/// Starts the client on the current tokio runtime.
pub fn spawn(config: ClientConfig) -> Handle {
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot::default()));
    let (ready_tx, ready_rx) = watch::channel(false);
    tokio::spawn(run(config, snap_tx, ready_tx));
    Handle {
        snapshot: snap_rx,
        ready: ready_rx,
        _fixed: None,
    }
}

/// Per type: what was last accepted and asked for.
#[derive(Debug, Default, Clone)]
struct TypeState {
    version: String,
    nonce: String,
    subscribed: BTreeSet<String>,
    /// Per-resource versions (Delta), sent as initial_resource_versions on reconnect.
    versions: BTreeMap<String, String>,
    received: bool,
}

struct Session<'a> {
    store: &'a mut Store,
    types: &'a mut BTreeMap<ResourceType, TypeState>,
    snapshot: &'a watch::Sender<Arc<Snapshot>>,
    ready: &'a watch::Sender<bool>,
}

impl Session<'_> {
    fn publish(&mut self) {
        let _ = self.snapshot.send(self.store.snapshot());
        let state = |t| self.types.get(&t).is_some_and(|s: &TypeState| s.received);
        if state(ResourceType::Listener) && state(ResourceType::Cluster) && !*self.ready.borrow() {
            tracing::info!("initial configuration applied: ready");
            let _ = self.ready.send(true);
        }
    }

    /// The names a dependent type must be subscribed to after `ty` changed.
    fn dependent(&self, ty: ResourceType) -> Option<(ResourceType, BTreeSet<String>)> {
        match ty {
            ResourceType::Cluster => Some((ResourceType::Endpoints, self.store.eds_names())),
            ResourceType::Listener => Some((ResourceType::Route, self.store.rds_names())),
            _ => None,
        }
    }
}

async fn run(
    config: ClientConfig,
    snapshot: watch::Sender<Arc<Snapshot>>,
    ready: watch::Sender<bool>,
) {
    let mut store = Store::default();
    let mut types: BTreeMap<ResourceType, TypeState> = BTreeMap::new();
    let mut attempt: u32 = 0;
    loop {
        let mut session = Session {
            store: &mut store,
            types: &mut types,
            snapshot: &snapshot,
            ready: &ready,
        };
        let result = if config.delta {
            run_delta(&config, &mut session).await
        } else {
            run_sotw(&config, &mut session).await
        };
        match result {
            Err(XdsError::Connect { .. }) => attempt = attempt.saturating_add(1),
            // A stream that worked resets the backoff.
            _ => attempt = 1,
        }
        if let Err(e) = result {
            tracing::warn!(error = %e, "xDS connection lost; the last good configuration keeps serving");
        }
        if snapshot.is_closed() {
            return;
        }
        let base = config
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)))
            .min(config.max_backoff);
        let jittered = base.mul_f64(0.5 + fastrand::f64());
        tokio::time::sleep(jittered).await;
    }
}

fn status(message: String) -> Status {
    Status {
        code: INVALID_ARGUMENT,
        message,
        details: vec![],
    }
}

async fn run_sotw(config: &ClientConfig, s: &mut Session<'_>) -> Result<(), XdsError> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel(&config.address).await?);
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
    let mut node = Some(config.node.clone());
    let mut request = |ty: ResourceType, st: &TypeState, error: Option<Status>| DiscoveryRequest {
        version_info: st.version.clone(),
        node: node.take(),
        resource_names: if ty.wildcard() {
            vec![]
        } else {
            st.subscribed.iter().cloned().collect()
        },
        type_url: ty.type_url().to_string(),
        response_nonce: st.nonce.clone(),
        error_detail: error,
        ..Default::default()
    };
    // Subscribe: clusters and listeners, plus what they need from a previous session.
    for ty in [
        ResourceType::Cluster,
        ResourceType::Listener,
        ResourceType::Endpoints,
        ResourceType::Route,
    ] {
        let st = s.types.entry(ty).or_default();
        st.nonce.clear();
        if ty.wildcard() || !st.subscribed.is_empty() {
            tx.send(request(ty, st, None))
                .await
                .map_err(|_| XdsError::Queue)?;
        }
    }
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(address = ?config.address, "xDS stream open (state of the world)");
    while let Some(resp) = stream.message().await? {
        let DiscoveryResponse {
            version_info,
            resources,
            type_url,
            nonce,
            ..
        } = resp;
        let Some(ty) = ResourceType::from_url(&type_url) else {
            tracing::debug!(%type_url, "ignoring an unrequested resource type");
            continue;
        };
        let st = s.types.entry(ty).or_default();
        let rejected = s
            .store
            .apply_sotw(ty, &resources, &st.subscribed, &version_info);
        st.nonce = nonce;
        st.received = true;
        let error = if rejected.is_empty() {
            st.version = version_info.clone();
            tracing::info!(kind = ty.short(), version = %version_info, resources = resources.len(), "ACK");
            None
        } else {
            let message = nack_message(ty, &rejected);
            tracing::warn!(kind = ty.short(), version = %version_info, "NACK: {message}");
            Some(status(message))
        };
        let st = st.clone();
        tx.send(request(ty, &st, error))
            .await
            .map_err(|_| XdsError::Queue)?;
        s.publish();
        // Warming: after clusters (listeners), ask for all endpoints (routes) they need.
        if let Some((dep, names)) = s.dependent(ty) {
            let dst = s.types.entry(dep).or_default();
            if dst.subscribed != names || ty == ResourceType::Cluster {
                dst.subscribed = names;
                let dst = dst.clone();
                tx.send(request(dep, &dst, None))
                    .await
                    .map_err(|_| XdsError::Queue)?;
            }
        }
    }
    Err(XdsError::Closed)
}

async fn run_delta(config: &ClientConfig, s: &mut Session<'_>) -> Result<(), XdsError> {
    let mut client = AggregatedDiscoveryServiceClient::new(channel(&config.address).await?);
    let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
    let mut node = Some(config.node.clone());
    for ty in [
        ResourceType::Cluster,
        ResourceType::Listener,
        ResourceType::Endpoints,
        ResourceType::Route,
    ] {
        let st = s.types.entry(ty).or_default();
        if !ty.wildcard() && st.subscribed.is_empty() {
            continue;
        }
        let req = DeltaDiscoveryRequest {
            node: node.take(),
            type_url: ty.type_url().to_string(),
            resource_names_subscribe: if ty.wildcard() {
                vec![]
            } else {
                st.subscribed.iter().cloned().collect()
            },
            initial_resource_versions: st.versions.clone().into_iter().collect(),
            ..Default::default()
        };
        tx.send(req).await.map_err(|_| XdsError::Queue)?;
    }
    let mut stream = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(address = ?config.address, "xDS stream open (delta)");
    while let Some(resp) = stream.message().await? {
        let DeltaDiscoveryResponse {
            resources,
            type_url,
            removed_resources,
            nonce,
            system_version_info,
            ..
        } = resp;
        let Some(ty) = ResourceType::from_url(&type_url) else {
            tracing::debug!(%type_url, "ignoring an unrequested resource type");
            continue;
        };
        let items: Vec<(String, envoy_types::pb::google::protobuf::Any)> = resources
            .iter()
            .filter_map(|r| r.resource.clone().map(|a| (r.name.clone(), a)))
            .collect();
        let rejected = s
            .store
            .apply_delta(ty, &items, &removed_resources, &system_version_info);
        let st = s.types.entry(ty).or_default();
        st.received = true;
        for r in &resources {
            if !rejected.iter().any(|x| x.name == r.name) {
                st.versions.insert(r.name.clone(), r.version.clone());
            }
        }
        for name in &removed_resources {
            st.versions.remove(name);
        }
        let error = if rejected.is_empty() {
            tracing::info!(kind = ty.short(), version = %system_version_info, resources = resources.len(), removed = removed_resources.len(), "ACK");
            None
        } else {
            let message = nack_message(ty, &rejected);
            tracing::warn!(kind = ty.short(), "NACK: {message}");
            Some(status(message))
        };
        let ack = DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            response_nonce: nonce,
            error_detail: error,
            ..Default::default()
        };
        tx.send(ack).await.map_err(|_| XdsError::Queue)?;
        s.publish();
        if let Some((dep, names)) = s.dependent(ty) {
            let dst = s.types.entry(dep).or_default();
            if dst.subscribed != names {
                let subscribe: Vec<String> = names.difference(&dst.subscribed).cloned().collect();
                let unsubscribe: Vec<String> = dst.subscribed.difference(&names).cloned().collect();
                dst.subscribed = names;
                let req = DeltaDiscoveryRequest {
                    type_url: dep.type_url().to_string(),
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    ..Default::default()
                };
                tx.send(req).await.map_err(|_| XdsError::Queue)?;
            }
        }
    }
    Err(XdsError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            "unix:./etc/istio/proxy/XDS".parse(),
            Ok(XdsAddress::Unix("./etc/istio/proxy/XDS".into()))
        );
        assert_eq!(
            "istiod.istio-system.svc:15010".parse(),
            Ok(XdsAddress::Tcp("istiod.istio-system.svc:15010".into()))
        );
        assert_eq!(
            "http://127.0.0.1:15010".parse(),
            Ok(XdsAddress::Tcp("127.0.0.1:15010".into()))
        );
        assert!("istiod".parse::<XdsAddress>().is_err());
        assert!("unix:".parse::<XdsAddress>().is_err());
    }
}
