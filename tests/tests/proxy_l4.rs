//! outrigger-proxy in a pod network namespace behind outrigger-init's rules, configured over xDS
//! by a real gRPC server on a Unix socket: captured TCP is routed by the pushed listeners,
//! clusters and endpoints, large transfers and half-close survive the relay, the inbound
//! passthrough comes from 127.0.0.6, and an endpoint change applies to new connections.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outrigger_proxy::testing::ads::{Config, next_seen, serve_unix};
use outrigger_proxy::testing::*;
use outrigger_proxy::xds::store::ResourceType;
use outrigger_testkit::bin;
use outrigger_testkit::init::{self, DEFAULT_SIDECAR};
use outrigger_testkit::probe::Answer;
use outrigger_testkit::topology::{
    PEER_V4, POD_V4, PROXY_UID, PodPair, connect, connect_as, connect_send_as,
};

const SVC: &str = "outbound|7777||peer.test.svc.cluster.local";

fn mesh(endpoint_port: u32) -> Config {
    let mut c = Config {
        version: 1,
        ..Config::default()
    };
    c.resources.insert(
        ResourceType::Cluster,
        vec![
            (
                "PassthroughCluster".into(),
                pack(&original_dst_cluster("PassthroughCluster", None)),
            ),
            (
                "InboundPassthroughCluster".into(),
                pack(&original_dst_cluster(
                    "InboundPassthroughCluster",
                    Some("127.0.0.6"),
                )),
            ),
            (SVC.into(), pack(&eds_cluster(SVC))),
        ],
    );
    c.resources.insert(
        ResourceType::Endpoints,
        vec![(
            SVC.into(),
            pack(&load_assignment(SVC, &[(PEER_V4, endpoint_port)])),
        )],
    );
    c.resources.insert(
        ResourceType::Listener,
        vec![
            (
                "virtualOutbound".into(),
                pack(&virtual_listener(
                    "virtualOutbound",
                    15001,
                    "PassthroughCluster",
                )),
            ),
            (
                "virtualInbound".into(),
                pack(&tcp_listener(
                    "virtualInbound",
                    15006,
                    "InboundPassthroughCluster",
                )),
            ),
            (
                format!("{PEER_V4}_7777"),
                pack(&service_listener(PEER_V4, 7777, SVC)),
            ),
        ],
    );
    c
}

/// Retries until the proxy answers (it binds once its first configuration is in), bounded.
/// The probes block: the test body runs on the runtime's own thread while the xDS server runs on
/// its workers, so blocking here is fine.
fn first_answer(pod: &outrigger_testkit::netns::Netns, target: &str) -> Answer {
    let mut last = String::new();
    for _ in 0..60 {
        match connect_as(pod, 1000, target, None) {
            Ok(a) => return a,
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the proxy never answered for {target}: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_tcp_is_routed_by_xds() {
    let mut t = PodPair::new("l4", false);
    t.serve(false, "app", false, &["0.0.0.0:8080".into()]);
    t.serve_echo(true, "peer", &["0.0.0.0:80".into(), "0.0.0.0:7777".into()]);
    init::run_ok(&t.pod, DEFAULT_SIDECAR, &[]);

    let dir = std::env::temp_dir().join(format!("outrigger-l4-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("XDS");
    let config = Arc::new(Mutex::new(mesh(80)));
    let mut xds = serve_unix(config.clone(), &socket).unwrap();
    // The proxy runs as uid 1337: let it reach the socket.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();

    let mut cmd = t.pod.command_as(PROXY_UID, bin("outrigger-proxy"));
    cmd.args([
        "run",
        "--xds-address",
        &format!("unix:{}", socket.display()),
    ])
    .env("POD_NAME", "app-5d8f-x1")
    .env("POD_NAMESPACE", "test")
    .env("INSTANCE_IP", POD_V4)
    .env("OUTRIGGER_LOG", "warn");
    let _proxy = t.pod.spawn(cmd, false);
    let first = next_seen(&mut xds.seen, "the proxy's first request", |s| {
        s.node_id.is_some()
    })
    .await;
    assert_eq!(
        first.node_id.as_deref(),
        Some(&*format!(
            "sidecar~{POD_V4}~app-5d8f-x1.test~test.svc.cluster.local"
        ))
    );
    next_seen(&mut xds.seen, "the EDS subscription", |s| {
        s.ty == ResourceType::Endpoints && s.names == [SVC]
    })
    .await;

    // The app calls peer:7777; the service listener's EDS endpoint is peer:80.
    let a = first_answer(&t.pod, &format!("{PEER_V4}:7777"));
    assert_eq!(
        (a.server.as_str(), a.listen_port),
        ("peer", 80),
        "routed by the xDS endpoint, not the dialled port"
    );
    // A port without a listener passes through to the original destination.
    let a = connect_as(&t.pod, 1000, &format!("{PEER_V4}:80"), None).unwrap();
    assert_eq!((a.server.as_str(), a.listen_port), ("peer", 80));

    // 8 MiB both ways through the proxy, with the client's half-close carried to the server.
    let (a, echoed) = connect_send_as(&t.pod, 1000, &format!("{PEER_V4}:7777"), 8 << 20).unwrap();
    assert_eq!((a.server.as_str(), echoed), ("peer", 8 << 20));

    // Inbound: the peer calls the app; the proxy forwards from 127.0.0.6 to the app.
    let a = connect(&t.peer, &format!("{POD_V4}:8080"), None).unwrap();
    assert_eq!(a.server, "app");
    assert_eq!(
        a.peer.map(|p| p.ip().to_string()).as_deref(),
        Some("127.0.0.6"),
        "inbound passthrough source"
    );

    // A new endpoint applies to new connections.
    {
        let mut c = config.lock().unwrap();
        c.version = 2;
        c.resources.insert(
            ResourceType::Endpoints,
            vec![(SVC.into(), pack(&load_assignment(SVC, &[(PEER_V4, 7777)])))],
        );
    }
    xds.server.push.send(Some(ResourceType::Endpoints)).unwrap();
    next_seen(&mut xds.seen, "the EDS ACK of v2", |s| {
        s.ty == ResourceType::Endpoints && s.version == "v2"
    })
    .await;
    let a = connect_as(&t.pod, 1000, &format!("{PEER_V4}:7777"), None).unwrap();
    assert_eq!(a.listen_port, 7777);
    let _ = std::fs::remove_dir_all(&dir);
}
