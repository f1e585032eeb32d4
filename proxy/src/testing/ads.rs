//! A scripted ADS server (state of the world and Delta) for tests: serves a configuration,
//! records every request, pushes updates on demand, and can end all streams like a restart.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::xds::store::ResourceType;

/// How long the helpers wait for something to happen.
pub const WAIT: Duration = Duration::from_secs(10);

/// What a request said, for assertions.
#[derive(Debug, Clone)]
pub struct Seen {
    pub ty: ResourceType,
    pub version: String,
    pub nonce: String,
    pub names: Vec<String>,
    pub error: Option<String>,
    pub node_id: Option<String>,
}

/// The resources the server serves: per type, (name, resource), and a version.
#[derive(Default)]
pub struct Config {
    pub version: u32,
    pub resources: BTreeMap<ResourceType, Vec<(String, Any)>>,
}

#[derive(Clone)]
pub struct Server {
    pub config: Arc<Mutex<Config>>,
    pub seen: mpsc::UnboundedSender<Seen>,
    /// `Some(type)`: push that type now; `None`: end every stream (a restart).
    pub push: broadcast::Sender<Option<ResourceType>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Server {
    fn sotw_response(&self, ty: ResourceType, names: &[String], nonce: u32) -> DiscoveryResponse {
        let c = self.config.lock().unwrap();
        let resources = c.resources.get(&ty).cloned().unwrap_or_default();
        let resources = resources
            .into_iter()
            .filter(|(n, _)| ty.wildcard() || names.contains(n))
            .map(|(_, a)| a)
            .collect();
        DiscoveryResponse {
            version_info: format!("v{}", c.version),
            resources,
            type_url: ty.type_url().into(),
            nonce: nonce.to_string(),
            ..Default::default()
        }
    }

    fn delta_response(
        &self,
        ty: ResourceType,
        names: &[String],
        removed: Vec<String>,
        nonce: u32,
    ) -> DeltaDiscoveryResponse {
        let c = self.config.lock().unwrap();
        let resources = c.resources.get(&ty).cloned().unwrap_or_default();
        let resources = resources
            .into_iter()
            .filter(|(n, _)| ty.wildcard() || names.contains(n))
            .map(|(name, a)| Resource {
                name,
                version: format!("v{}", c.version),
                resource: Some(a),
                ..Default::default()
            })
            .collect();
        DeltaDiscoveryResponse {
            system_version_info: format!("v{}", c.version),
            resources,
            type_url: ty.type_url().into(),
            removed_resources: removed,
            nonce: nonce.to_string(),
            ..Default::default()
        }
    }
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
        let server = self.clone();
        let mut pushes = self.push.subscribe();
        tokio::spawn(async move {
            let mut nonce = 0;
            let mut subs: BTreeMap<ResourceType, Vec<String>> = BTreeMap::new();
            loop {
                tokio::select! {
                    msg = incoming.next() => {
                        let Some(Ok(r)) = msg else { return };
                        let ty = ResourceType::from_url(&r.type_url).unwrap();
                        let _ = server.seen.send(Seen { ty, version: r.version_info.clone(), nonce: r.response_nonce.clone(), names: r.resource_names.clone(), error: r.error_detail.as_ref().map(|e| e.message.clone()), node_id: r.node.as_ref().map(|n| n.id.clone()) });
                        // Respond to new subscriptions, not to ACKs/NACKs of what we sent.
                        let changed = subs.get(&ty) != Some(&r.resource_names);
                        if r.response_nonce.is_empty() || changed {
                            subs.insert(ty, r.resource_names.clone());
                            nonce += 1;
                            if tx.send(Ok(server.sotw_response(ty, &r.resource_names, nonce))).await.is_err() { return }
                        }
                    }
                    ty = pushes.recv() => {
                        let Ok(Some(ty)) = ty else { return };
                        nonce += 1;
                        let names = subs.get(&ty).cloned().unwrap_or_default();
                        if tx.send(Ok(server.sotw_response(ty, &names, nonce))).await.is_err() { return }
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
        let server = self.clone();
        let mut pushes = self.push.subscribe();
        tokio::spawn(async move {
            let mut nonce = 0;
            let mut subs: BTreeMap<ResourceType, Vec<String>> = BTreeMap::new();
            let mut sent: BTreeMap<ResourceType, Vec<String>> = BTreeMap::new();
            // Which version each nonce carried, so an ACK can be reported with its version.
            let mut nonce_versions: BTreeMap<String, String> = BTreeMap::new();
            loop {
                tokio::select! {
                    msg = incoming.next() => {
                        let Some(Ok(r)) = msg else { return };
                        let ty = ResourceType::from_url(&r.type_url).unwrap();
                        let _ = server.seen.send(Seen { ty, version: nonce_versions.get(&r.response_nonce).cloned().unwrap_or_default(), nonce: r.response_nonce.clone(), names: r.resource_names_subscribe.clone(), error: r.error_detail.as_ref().map(|e| e.message.clone()), node_id: r.node.as_ref().map(|n| n.id.clone()) });
                        if r.response_nonce.is_empty() {
                            let s = subs.entry(ty).or_default();
                            s.extend(r.resource_names_subscribe.iter().cloned());
                            s.retain(|n| !r.resource_names_unsubscribe.contains(n));
                            let names = s.clone();
                            nonce += 1;
                            let resp = server.delta_response(ty, &names, vec![], nonce);
                            nonce_versions.insert(resp.nonce.clone(), resp.system_version_info.clone());
                            sent.insert(ty, resp.resources.iter().map(|r| r.name.clone()).collect());
                            if tx.send(Ok(resp)).await.is_err() { return }
                        }
                    }
                    ty = pushes.recv() => {
                        let Ok(Some(ty)) = ty else { return };
                        nonce += 1;
                        let names = subs.get(&ty).cloned().unwrap_or_default();
                        let mut resp = server.delta_response(ty, &names, vec![], nonce);
                        let now: Vec<String> = resp.resources.iter().map(|r| r.name.clone()).collect();
                        nonce_versions.insert(resp.nonce.clone(), resp.system_version_info.clone());
                        resp.removed_resources = sent.get(&ty).cloned().unwrap_or_default().into_iter().filter(|n| !now.contains(n)).collect();
                        sent.insert(ty, now);
                        if tx.send(Ok(resp)).await.is_err() { return }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

pub struct Running {
    pub server: Server,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    pub task: tokio::task::JoinHandle<()>,
}

pub fn new_server(config: Arc<Mutex<Config>>) -> (Server, mpsc::UnboundedReceiver<Seen>) {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (push, _) = broadcast::channel(16);
    (
        Server {
            config,
            seen: seen_tx,
            push,
        },
        seen,
    )
}

pub async fn serve_tcp(config: Arc<Mutex<Config>>, listener: tokio::net::TcpListener) -> Running {
    let (server, seen) = new_server(config);
    let svc = AggregatedDiscoveryServiceServer::new(server.clone());
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    Running { server, seen, task }
}

/// Serves on a Unix socket at `path`.
pub fn serve_unix(config: Arc<Mutex<Config>>, path: &std::path::Path) -> std::io::Result<Running> {
    let (server, seen) = new_server(config);
    let svc = AggregatedDiscoveryServiceServer::new(server.clone());
    let uds = tokio::net::UnixListener::bind(path)?;
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(UnixListenerStream::new(uds))
            .await;
    });
    Ok(Running { server, seen, task })
}

/// Waits for a request matching `pred`.
pub async fn next_seen(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    what: &str,
    pred: impl Fn(&Seen) -> bool,
) -> Seen {
    tokio::time::timeout(WAIT, async {
        loop {
            let s = seen.recv().await.expect("server alive");
            if pred(&s) {
                return s;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A small mesh: EDS cluster `svc` (10.0.0.1:8080, 10.0.0.2:8080), an HTTP listener `http` on
/// :8080 using route config `r1` (everything to `svc`), a TCP listener `tcp` on :9000.
pub fn sample_mesh(version: u32) -> Config {
    use crate::testing::{
        eds_cluster, http_listener, load_assignment, pack, route_config, tcp_listener,
    };
    let mut c = Config {
        version,
        ..Config::default()
    };
    c.resources.insert(
        ResourceType::Cluster,
        vec![("svc".into(), pack(&eds_cluster("svc")))],
    );
    c.resources.insert(
        ResourceType::Endpoints,
        vec![(
            "svc".into(),
            pack(&load_assignment(
                "svc",
                &[("10.0.0.1", 8080), ("10.0.0.2", 8080)],
            )),
        )],
    );
    c.resources.insert(
        ResourceType::Listener,
        vec![
            ("http".into(), pack(&http_listener("http", 8080, "r1"))),
            ("tcp".into(), pack(&tcp_listener("tcp", 9000, "svc"))),
        ],
    );
    c.resources.insert(
        ResourceType::Route,
        vec![("r1".into(), pack(&route_config("r1", "svc")))],
    );
    c
}
