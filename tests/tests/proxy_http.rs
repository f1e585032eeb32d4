//! HTTP through the whole sidecar path: the app's curl is captured by outrigger-init's rules,
//! dispatched by outrigger-proxy from virtualOutbound to the service's HTTP listener, routed by
//! Host and header over RDS, and answered by real HTTP servers on the peer.

use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

use outrigger_proxy::testing::ads::{Config, next_seen, serve_unix};
use outrigger_proxy::testing::*;
use outrigger_proxy::xds::store::ResourceType;
use outrigger_testkit::bin;
use outrigger_testkit::init::{self, DEFAULT_SIDECAR};
use outrigger_testkit::topology::{PEER_V4, POD_V4, PROXY_UID, PodPair};

const V1: &str = "outbound|9080|v1|reviews.test.svc.cluster.local";
const V2: &str = "outbound|9080|v2|reviews.test.svc.cluster.local";

fn mesh() -> Config {
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
            (V1.into(), pack(&eds_cluster(V1))),
            (V2.into(), pack(&eds_cluster(V2))),
        ],
    );
    c.resources.insert(
        ResourceType::Endpoints,
        vec![
            (V1.into(), pack(&load_assignment(V1, &[(PEER_V4, 9081)]))),
            (V2.into(), pack(&load_assignment(V2, &[(PEER_V4, 9082)]))),
        ],
    );
    let svc = not_bound(http_listener("0.0.0.0_9080", 9080, "9080"));
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
            ("0.0.0.0_9080".into(), pack(&svc)),
        ],
    );
    let domains = [
        "reviews.test.svc.cluster.local",
        "reviews.test.svc.cluster.local:9080",
        "reviews",
        "reviews:9080",
        &format!("{PEER_V4}:9080"),
    ];
    c.resources.insert(
        ResourceType::Route,
        vec![(
            "9080".into(),
            pack(&header_route_config(
                "9080",
                &domains,
                ("end-user", "jason"),
                V2,
                V1,
            )),
        )],
    );
    c
}

fn curl(t: &PodPair, args: &[&str]) -> (String, String) {
    let out = t
        .pod
        .command_as(1000, "curl")
        .args(["-s", "-S", "--max-time", "5", "-w", " %{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (body, code) = text
        .rsplit_once(' ')
        .map(|(b, c)| (b.to_string(), c.to_string()))
        .unwrap_or((String::new(), text));
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_http_is_routed_by_host_and_header() {
    let t = PodPair::new("http", false);
    // Two versions of the service on the peer, each serving a file that names it.
    let root = std::env::temp_dir().join(format!("outrigger-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut servers = Vec::new();
    for (version, port) in [("v1", 9081), ("v2", 9082)] {
        let dir = root.join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("who"), version).unwrap();
        let mut cmd = t.peer.command("python3");
        cmd.args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            PEER_V4,
            "--directory",
        ])
        .arg(&dir);
        cmd.stderr(std::process::Stdio::null());
        servers.push(t.peer.spawn(cmd, false));
    }
    init::run_ok(&t.pod, DEFAULT_SIDECAR, &[]);
    let socket = root.join("XDS");
    let config = Arc::new(Mutex::new(mesh()));
    let mut xds = serve_unix(config, &socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = t.pod.command_as(PROXY_UID, bin("outrigger-proxy"));
    cmd.args([
        "run",
        "--xds-address",
        &format!("unix:{}", socket.display()),
    ])
    .env("POD_NAMESPACE", "test")
    .env("INSTANCE_IP", POD_V4)
    .env("OUTRIGGER_LOG", "warn");
    let _proxy = t.pod.spawn(cmd, false);
    next_seen(&mut xds.seen, "the RDS subscription", |s| {
        s.ty == ResourceType::Route && s.names == ["9080"]
    })
    .await;

    let url = format!("http://{PEER_V4}:9080/who");
    let mut answer = (String::new(), String::new());
    for _ in 0..50 {
        answer = curl(&t, &["-H", "Host: reviews:9080", &url]);
        if answer.0 == "200" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        answer,
        ("200".to_string(), "v1".to_string()),
        "default route: v1 (port 9081 by EDS)"
    );
    assert_eq!(
        curl(
            &t,
            &["-H", "Host: reviews:9080", "-H", "end-user: jason", &url]
        ),
        ("200".into(), "v2".into())
    );
    assert_eq!(
        curl(
            &t,
            &[
                "-H",
                "Host: reviews.test.svc.cluster.local",
                "-H",
                "end-user: jason",
                &url
            ]
        )
        .1,
        "v2"
    );
    assert_eq!(
        curl(
            &t,
            &["--http2-prior-knowledge", "-H", "Host: reviews", &url]
        ),
        ("200".into(), "v1".into()),
        "h2c from the app"
    );
    assert_eq!(
        curl(&t, &["-H", "Host: unknown.example", &url]).0,
        "404",
        "no virtual host: 404 NR"
    );
    drop(servers);
    let _ = std::fs::remove_dir_all(&root);
}
