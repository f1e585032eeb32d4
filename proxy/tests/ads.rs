//! The ADS client against a real gRPC xDS server (tonic, envoy-types' service): initial sync with
//! ACKs and warming requests, NACK with the last good config kept, reconnect after a server
//! restart, and Delta over a Unix socket.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use outrigger_proxy::config::Snapshot;
use outrigger_proxy::testing::ads::{Running, WAIT, next_seen, sample_mesh, serve_tcp, serve_unix};
use outrigger_proxy::testing::*;
use outrigger_proxy::xds::client::{self, ClientConfig, Handle, XdsAddress};
use outrigger_proxy::xds::node::Identity;
use outrigger_proxy::xds::store::ResourceType;

fn client(address: XdsAddress, delta: bool) -> Handle {
    let env = [
        ("POD_NAME", "app-7d9f-x1"),
        ("POD_NAMESPACE", "test"),
        ("INSTANCE_IP", "10.1.1.1"),
    ];
    let node = Identity::from_env(env.iter().map(|(k, v)| (k.to_string(), v.to_string()))).node();
    client::spawn(ClientConfig {
        address,
        delta,
        node,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
    })
}

async fn until(handle: &mut Handle, what: &str, pred: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
    tokio::time::timeout(WAIT, async {
        loop {
            let snap = handle.snapshot.borrow_and_update().clone();
            if pred(&snap) {
                return snap;
            }
            handle.snapshot.changed().await.expect("client alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn complete(s: &Snapshot) -> bool {
    s.listeners.len() == 2
        && s.clusters.contains_key("svc")
        && s.endpoints.contains_key("svc")
        && s.routes.contains_key("r1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_sync_nack_and_reconnect() {
    let config = Arc::new(Mutex::new(sample_mesh(1)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut running = serve_tcp(config.clone(), listener).await;
    let mut handle = client(XdsAddress::Tcp(addr.to_string()), false);

    // Initial sync: node on the first request, ACKs, and warming requests for EDS and RDS.
    let first = next_seen(&mut running.seen, "first request", |_| true).await;
    assert_eq!(
        first.node_id.as_deref(),
        Some("sidecar~10.1.1.1~app-7d9f-x1.test~test.svc.cluster.local")
    );
    let snap = until(&mut handle, "the full config", complete).await;
    assert_eq!(snap.endpoints["svc"].localities[0].endpoints.len(), 2);
    tokio::time::timeout(WAIT, handle.ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    next_seen(&mut running.seen, "EDS request for svc", |s| {
        s.ty == ResourceType::Endpoints && s.names == ["svc"]
    })
    .await;
    next_seen(&mut running.seen, "RDS ACK", |s| {
        s.ty == ResourceType::Route && s.version == "v1" && !s.nonce.is_empty() && s.error.is_none()
    })
    .await;

    // A bad listener: NACK naming it, the previous version stays in force, the good change applies.
    {
        let mut c = config.lock().unwrap();
        c.version = 2;
        c.resources.insert(
            ResourceType::Listener,
            vec![
                ("http".into(), pack(&bad_listener("http", 8080))),
                ("tcp".into(), pack(&tcp_listener("tcp", 9100, "svc"))),
            ],
        );
    }
    running
        .server
        .push
        .send(Some(ResourceType::Listener))
        .unwrap();
    let nack = next_seen(&mut running.seen, "LDS NACK", |s| {
        s.ty == ResourceType::Listener && s.error.is_some()
    })
    .await;
    assert_eq!(
        nack.version, "v1",
        "a NACK carries the last accepted version"
    );
    assert!(
        nack.error
            .as_deref()
            .unwrap()
            .contains("http: filter_chains[0].filters[0]: unsupported network filter 'mystery'"),
        "{nack:?}"
    );
    let snap = until(&mut handle, "the tcp listener update", |s| {
        s.listeners
            .get("tcp")
            .is_some_and(|l| l.address.to_string() == "0.0.0.0:9100")
    })
    .await;
    assert!(
        snap.listeners.contains_key("http"),
        "the last good http listener keeps serving"
    );
    assert_eq!(snap.routes.len(), 1);

    // The server goes away and comes back on the same port: the client reconnects and resyncs.
    let Running { task, server, .. } = running;
    server.push.send(None).unwrap();
    task.abort();
    let _ = task.await;
    *config.lock().unwrap() = sample_mesh(1);
    config.lock().unwrap().version = 3;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut running = serve_tcp(config.clone(), listener).await;
    let again = next_seen(&mut running.seen, "a new stream", |s| s.node_id.is_some()).await;
    assert_eq!(again.ty, ResourceType::Cluster);
    until(&mut handle, "the resynced listener", |s| {
        s.listeners
            .get("tcp")
            .is_some_and(|l| l.address.to_string() == "0.0.0.0:9000")
            && complete(s)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_over_a_unix_socket_with_removal() {
    let dir = std::env::temp_dir().join(format!("outrigger-ads-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("XDS");
    let config = Arc::new(Mutex::new(sample_mesh(1)));
    let Running {
        server,
        mut seen,
        task,
    } = serve_unix(config.clone(), &path).unwrap();
    let mut handle = client(format!("unix:{}", path.display()).parse().unwrap(), true);

    until(&mut handle, "the full config over delta", complete).await;
    next_seen(&mut seen, "EDS subscription", |s| {
        s.ty == ResourceType::Endpoints && s.names == ["svc"]
    })
    .await;

    // Remove the tcp listener and add a cluster: delta removal and addition.
    {
        let mut c = config.lock().unwrap();
        c.version = 2;
        c.resources.insert(
            ResourceType::Listener,
            vec![("http".into(), pack(&http_listener("http", 8080, "r1")))],
        );
        c.resources
            .get_mut(&ResourceType::Cluster)
            .unwrap()
            .push(("extra".into(), pack(&eds_cluster("extra"))));
    }
    server.push.send(Some(ResourceType::Listener)).unwrap();
    server.push.send(Some(ResourceType::Cluster)).unwrap();
    let snap = until(&mut handle, "removal and addition", |s| {
        !s.listeners.contains_key("tcp") && s.clusters.contains_key("extra")
    })
    .await;
    assert!(snap.listeners.contains_key("http"));
    next_seen(&mut seen, "EDS subscription to the new cluster", |s| {
        s.ty == ResourceType::Endpoints && s.names == ["extra"]
    })
    .await;

    // A NACK in delta names the resource.
    config.lock().unwrap().resources.insert(
        ResourceType::Listener,
        vec![("http".into(), pack(&bad_listener("http", 8080)))],
    );
    server.push.send(Some(ResourceType::Listener)).unwrap();
    let nack = next_seen(&mut seen, "delta NACK", |s| s.error.is_some()).await;
    assert!(nack.error.unwrap().contains("http:"));
    assert!(
        handle.snapshot.borrow().listeners.contains_key("http"),
        "last good kept"
    );
    task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
