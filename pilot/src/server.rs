//! The ADS server: state of the world and Delta, over TCP or a Unix socket. Each stream learns
//! its proxy from the node of the first request, generates that proxy's configuration, and pushes
//! what changed whenever a new version is published.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::{Any, value::Kind};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::resources::Labels;
use crate::translate::{self, ProxyNode, Xds};
use crate::watch::Published;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

    /// LDS and CDS are wildcard subscriptions; RDS, EDS and SDS name what they want.
    fn wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }
}

fn resources(xds: &Xds, ty: ResourceType) -> Option<&BTreeMap<String, Any>> {
    match ty {
        ResourceType::Cluster => Some(&xds.clusters),
        ResourceType::Endpoints => Some(&xds.endpoints),
        ResourceType::Listener => Some(&xds.listeners),
        ResourceType::Route => Some(&xds.routes),
        // Workload certificates come from the agent's SDS, not from here.
        ResourceType::Secret => None,
    }
}

/// The selected resources, owned (to remember what was sent).
fn owned(xds: &Xds, ty: ResourceType, names: &[String]) -> Vec<(String, Any)> {
    selected(xds, ty, names)
        .into_iter()
        .map(|(n, a)| (n.clone(), a.clone()))
        .collect()
}

fn selected<'a>(xds: &'a Xds, ty: ResourceType, names: &[String]) -> Vec<(&'a String, &'a Any)> {
    let Some(all) = resources(xds, ty) else {
        return vec![];
    };
    let wildcard = ty.wildcard() || names.is_empty() || names.iter().any(|n| n == "*");
    all.iter()
        .filter(|(n, _)| wildcard || names.contains(n))
        .collect()
}

/// The proxy a node describes: metadata NAMESPACE, LABELS and INSTANCE_IPS, or the node id
/// (`sidecar~IP~POD.NS~NS.svc.cluster.local`); labels missing from the metadata come from the
/// registry's pod or WorkloadEntry with the proxy's IP.
pub fn proxy_of(node: &Node, mesh: &crate::mesh::Mesh) -> ProxyNode {
    let meta = node.metadata.as_ref().map(|m| &m.fields);
    let string = |k: &str| match meta.and_then(|m| m.get(k)).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    };
    let parts: Vec<&str> = node.id.split('~').collect();
    let ips: Vec<String> = string("INSTANCE_IPS")
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .filter(|v: &Vec<String>| !v.is_empty())
        .unwrap_or_else(|| {
            parts
                .get(1)
                .map(|s| vec![s.to_string()])
                .unwrap_or_default()
        });
    let namespace = string("NAMESPACE")
        .or_else(|| {
            parts
                .get(2)
                .and_then(|p| p.split_once('.'))
                .map(|(_, ns)| ns.to_string())
        })
        .unwrap_or_else(|| "default".into());
    let mut labels = Labels::new();
    if let Some(Kind::StructValue(s)) = meta
        .and_then(|m| m.get("LABELS"))
        .and_then(|v| v.kind.as_ref())
    {
        for (k, v) in &s.fields {
            if let Some(Kind::StringValue(v)) = &v.kind {
                labels.insert(k.clone(), v.clone());
            }
        }
    }
    let workload = ips.iter().find_map(|ip| mesh.registry.workload_by_ip(ip));
    if labels.is_empty()
        && let Some(w) = workload
    {
        labels = w.labels.clone();
    }
    let locality = node
        .locality
        .as_ref()
        .filter(|l| !l.region.is_empty())
        .map(|l| {
            format!("{}/{}/{}", l.region, l.zone, l.sub_zone)
                .trim_end_matches('/')
                .to_string()
        })
        .or_else(|| workload.and_then(|w| w.locality.clone()));
    ProxyNode {
        id: node.id.clone(),
        namespace,
        ips,
        labels,
        idle_timeout: string("IDLE_TIMEOUT").and_then(|t| crate::duration::parse(&t).ok()),
        locality,
    }
}

#[derive(Clone)]
pub struct Server {
    state: watch::Receiver<Arc<Published>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

const PUSH_ORDER: [ResourceType; 4] = [
    ResourceType::Cluster,
    ResourceType::Endpoints,
    ResourceType::Listener,
    ResourceType::Route,
];

impl Server {
    pub fn new(state: watch::Receiver<Arc<Published>>) -> Server {
        Server { state }
    }

    pub fn service(self) -> AggregatedDiscoveryServiceServer<Server> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(64 << 20)
    }
}

/// One stream's proxy, and the configuration generated for it.
struct Connected {
    proxy: ProxyNode,
    node_id: String,
    xds: Xds,
    version: u64,
}

impl Connected {
    /// From the node of the stream's first request (which must carry one).
    fn new(
        node: Option<&Node>,
        state: &mut watch::Receiver<Arc<Published>>,
        mode: &str,
    ) -> Result<Connected, Status> {
        let node =
            node.ok_or_else(|| Status::invalid_argument("the first request must carry the node"))?;
        let s = state.borrow_and_update().clone();
        let proxy = proxy_of(node, &s.mesh);
        tracing::info!(node = %node.id, namespace = %proxy.namespace, mode, "proxy connected");
        Ok(Connected {
            xds: translate::generate(&s.mesh, &proxy),
            version: s.version,
            node_id: node.id.clone(),
            proxy,
        })
    }

    /// Generates again for the latest published version.
    fn refresh(&mut self, state: &mut watch::Receiver<Arc<Published>>) {
        let s = state.borrow_and_update().clone();
        self.xds = translate::generate(&s.mesh, &self.proxy);
        self.version = s.version;
    }
}

fn log_nack(node: &str, type_url: &str, message: &str) {
    tracing::warn!(
        node,
        type_url,
        error = message,
        "configuration rejected by the proxy (NACK)"
    );
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Server {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let mut state = self.state.clone();
        tokio::spawn(async move {
            let mut nonce = 0u64;
            let mut conn: Option<Connected> = None;
            // Per type: the names subscribed, and what was last sent.
            let mut subs: BTreeMap<ResourceType, Vec<String>> = BTreeMap::new();
            let mut sent: BTreeMap<ResourceType, Vec<(String, Any)>> = BTreeMap::new();
            loop {
                tokio::select! {
                    msg = incoming.next() => {
                        let Some(Ok(r)) = msg else { return };
                        if conn.is_none() {
                            match Connected::new(r.node.as_ref(), &mut state, "state of the world") {
                                Ok(c) => conn = Some(c),
                                Err(e) => { let _ = tx.send(Err(e)).await; return }
                            }
                        }
                        let Some(c) = conn.as_ref() else { return };
                        let Some(ty) = ResourceType::from_url(&r.type_url) else {
                            tracing::debug!(type_url = %r.type_url, "unknown type requested; ignored");
                            continue;
                        };
                        if let Some(e) = &r.error_detail {
                            log_nack(&c.node_id, &r.type_url, &e.message);
                        }
                        let changed = subs.get(&ty) != Some(&r.resource_names);
                        if !r.response_nonce.is_empty() && !changed {
                            continue;
                        }
                        subs.insert(ty, r.resource_names.clone());
                        nonce += 1;
                        let chosen = owned(&c.xds, ty, &r.resource_names);
                        sent.insert(ty, chosen.clone());
                        let resp = DiscoveryResponse { version_info: c.version.to_string(), resources: chosen.into_iter().map(|(_, a)| a).collect(), type_url: r.type_url.clone(), nonce: nonce.to_string(), ..Default::default() };
                        if tx.send(Ok(resp)).await.is_err() { return }
                    }
                    changed = state.changed() => {
                        if changed.is_err() { return }
                        let Some(c) = conn.as_mut() else { continue };
                        c.refresh(&mut state);
                        for ty in PUSH_ORDER {
                            let Some(names) = subs.get(&ty) else { continue };
                            let chosen = owned(&c.xds, ty, names);
                            if sent.get(&ty) == Some(&chosen) {
                                continue;
                            }
                            sent.insert(ty, chosen.clone());
                            nonce += 1;
                            let url = ty.type_url();
                            let resp = DiscoveryResponse { version_info: c.version.to_string(), resources: chosen.into_iter().map(|(_, a)| a).collect(), type_url: url.into(), nonce: nonce.to_string(), ..Default::default() };
                            if tx.send(Ok(resp)).await.is_err() { return }
                        }
                        tracing::debug!(version = c.version, node = %c.node_id, "pushed (state of the world)");
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let mut incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let mut state = self.state.clone();
        tokio::spawn(async move {
            let mut nonce = 0u64;
            let mut conn: Option<Connected> = None;
            let mut subs: BTreeMap<ResourceType, Vec<String>> = BTreeMap::new();
            let mut sent: BTreeMap<ResourceType, BTreeMap<String, Any>> = BTreeMap::new();
            loop {
                tokio::select! {
                    msg = incoming.next() => {
                        let Some(Ok(r)) = msg else { return };
                        if conn.is_none() {
                            match Connected::new(r.node.as_ref(), &mut state, "delta") {
                                Ok(c) => conn = Some(c),
                                Err(e) => { let _ = tx.send(Err(e)).await; return }
                            }
                        }
                        let Some(c) = conn.as_ref() else { return };
                        let Some(ty) = ResourceType::from_url(&r.type_url) else { continue };
                        if let Some(e) = &r.error_detail {
                            log_nack(&c.node_id, &r.type_url, &e.message);
                        }
                        let first = !subs.contains_key(&ty);
                        let s = subs.entry(ty).or_default();
                        s.extend(r.resource_names_subscribe.iter().cloned());
                        s.retain(|n| !r.resource_names_unsubscribe.contains(n));
                        s.sort();
                        s.dedup();
                        // Answer the first request of a type and new subscriptions; not ACKs.
                        if !first && r.resource_names_subscribe.is_empty() {
                            continue;
                        }
                        let names = s.clone();
                        let already = sent.entry(ty).or_default();
                        let wanted: Vec<(String, Any)> = selected(&c.xds, ty, &names).into_iter()
                            .filter(|(n, _)| first || r.resource_names_subscribe.contains(n) || !already.contains_key(*n))
                            .map(|(n, a)| (n.clone(), a.clone())).collect();
                        if wanted.is_empty() && !first && !ty.wildcard() {
                            // Subscribed to names that do not exist (yet): say nothing.
                            continue;
                        }
                        for (n, a) in &wanted {
                            already.insert(n.clone(), a.clone());
                        }
                        nonce += 1;
                        let resp = delta_response(&r.type_url, c.version, nonce, wanted, vec![]);
                        if tx.send(Ok(resp)).await.is_err() { return }
                    }
                    changed = state.changed() => {
                        if changed.is_err() { return }
                        let Some(c) = conn.as_mut() else { continue };
                        c.refresh(&mut state);
                        for ty in PUSH_ORDER {
                            let Some(names) = subs.get(&ty) else { continue };
                            let now: BTreeMap<String, Any> = owned(&c.xds, ty, names).into_iter().collect();
                            let before = sent.entry(ty).or_default();
                            let updated: Vec<(String, Any)> = now.iter().filter(|(n, a)| before.get(*n) != Some(*a)).map(|(n, a)| (n.clone(), a.clone())).collect();
                            let removed: Vec<String> = before.keys().filter(|n| !now.contains_key(*n)).cloned().collect();
                            if updated.is_empty() && removed.is_empty() {
                                continue;
                            }
                            *before = now;
                            nonce += 1;
                            let url = ty.type_url();
                            let resp = delta_response(url, c.version, nonce, updated, removed);
                            if tx.send(Ok(resp)).await.is_err() { return }
                        }
                        tracing::debug!(version = c.version, node = %c.node_id, "pushed (delta)");
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn delta_response(
    type_url: &str,
    version: u64,
    nonce: u64,
    resources: Vec<(String, Any)>,
    removed: Vec<String>,
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: version.to_string(),
        resources: resources
            .into_iter()
            .map(|(name, a)| Resource {
                name,
                version: version.to_string(),
                resource: Some(a),
                ..Default::default()
            })
            .collect(),
        type_url: type_url.into(),
        removed_resources: removed,
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

/// Where to serve: `host:port` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(std::net::SocketAddr),
    Unix(std::path::PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--listen '{0}': expected host:port or unix:/path")]
    BadAddress(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

impl std::str::FromStr for ListenAddr {
    type Err = ServeError;
    fn from_str(s: &str) -> Result<ListenAddr, ServeError> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(ListenAddr::Unix(p.into()));
        }
        s.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| ServeError::BadAddress(s.into()))
    }
}

/// Binds `addr` and serves ADS on it in a background task. A stale Unix socket file is replaced.
pub async fn serve(
    addr: &ListenAddr,
    state: watch::Receiver<Arc<Published>>,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let svc = Server::new(state).service();
    let router = tonic::transport::Server::builder().add_service(svc);
    Ok(match addr {
        ListenAddr::Tcp(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: a.to_string(),
                    source,
                })?;
            tokio::spawn(async move {
                if let Err(e) = router.serve_with_incoming(TcpListenerStream::new(l)).await {
                    tracing::error!(error = %e, "ADS server stopped");
                }
            })
        }
        ListenAddr::Unix(p) => {
            let _ = std::fs::remove_file(p);
            let l = tokio::net::UnixListener::bind(p).map_err(|source| ServeError::Bind {
                addr: format!("unix:{}", p.display()),
                source,
            })?;
            // Proxies run as another user (1337).
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777));
            tokio::spawn(async move {
                if let Err(e) = router.serve_with_incoming(UnixListenerStream::new(l)).await {
                    tracing::error!(error = %e, "ADS server stopped");
                }
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::{Struct, Value};

    use super::*;

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    #[test]
    fn the_proxy_is_known_by_its_node() {
        let labels = Struct {
            fields: [
                ("app".to_string(), s("bill")),
                ("version".to_string(), s("v2")),
            ]
            .into_iter()
            .collect(),
        };
        let node = Node {
            id: "sidecar~10.0.0.7~bill-v2-abc.shop~shop.svc.cluster.local".into(),
            metadata: Some(Struct {
                fields: [
                    ("NAMESPACE".to_string(), s("shop")),
                    ("INSTANCE_IPS".to_string(), s("10.0.0.7,fd00::7")),
                    (
                        "LABELS".to_string(),
                        Value {
                            kind: Some(Kind::StructValue(labels)),
                        },
                    ),
                ]
                .into_iter()
                .collect(),
            }),
            ..Default::default()
        };
        let p = proxy_of(&node, &crate::mesh::Mesh::default());
        assert_eq!(p.namespace, "shop");
        assert_eq!(p.ips, ["10.0.0.7", "fd00::7"]);
        assert_eq!(p.labels["version"], "v2");

        // Without metadata: the node id, and the registry's labels for the IP.
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: shop, labels: {app: bill}}\nstatus: {podIP: 10.0.0.7}\n";
        let objects = crate::load::parse_file(std::path::Path::new("p.yaml"), yaml).objects;
        let mesh = crate::mesh::Mesh {
            registry: crate::registry::Registry::build(&objects),
            objects,
        };
        let p = proxy_of(
            &Node {
                id: node.id.clone(),
                ..Default::default()
            },
            &mesh,
        );
        assert_eq!(
            (p.namespace.as_str(), p.ips.as_slice()),
            ("shop", ["10.0.0.7".to_string()].as_slice())
        );
        assert_eq!(p.labels["app"], "bill");
    }

    #[test]
    fn listen_addresses_parse_or_name_the_flag() {
        assert_eq!(
            "unix:/tmp/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/tmp/x.sock".into())
        );
        assert_eq!(
            "127.0.0.1:15010".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:15010".parse().unwrap())
        );
        let e = "localhost".parse::<ListenAddr>().unwrap_err().to_string();
        assert!(e.starts_with("--listen 'localhost'"), "{e}");
    }
}
