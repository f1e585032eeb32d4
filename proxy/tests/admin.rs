//! The admin API against a live ADS-fed snapshot: readiness, `/config_dump` (which must load back
//! through `validate` with every resource accepted), `/clusters`, health check fail/ok, quit.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outrigger_proxy::admin::{self, AdminState, Role};
use outrigger_proxy::testing::ads::{WAIT, sample_mesh, serve_tcp};
use outrigger_proxy::validate::{self, Kind};
use outrigger_proxy::xds::client::{self, ClientConfig, XdsAddress};
use outrigger_proxy::xds::node::Identity;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _xds = serve_tcp(Arc::new(Mutex::new(sample_mesh(7))), listener).await;
    let identity = Identity::from_env([
        ("POD_NAME".to_string(), "p".to_string()),
        ("POD_NAMESPACE".to_string(), "ns".to_string()),
    ]);
    let handle = client::spawn(ClientConfig {
        address: XdsAddress::Tcp(addr.to_string()),
        delta: true,
        node: identity.node(),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    });
    let (quit, mut quit_rx) = tokio::sync::watch::channel(false);
    let telemetry = outrigger_proxy::telemetry::Telemetry {
        node_id: identity.node_id(),
        ..Default::default()
    };
    let (shared, _background) =
        outrigger_proxy::app::shared_for(handle.snapshot.clone(), telemetry);
    let state = Arc::new(AdminState {
        shared,
        started: Instant::now(),
        quit,
    });
    let (admin_port, status_port) = (free_port(), free_port());
    tokio::spawn(admin::serve(
        ([127, 0, 0, 1], admin_port).into(),
        Role::Admin,
        state.clone(),
    ));
    tokio::spawn(admin::serve(
        ([127, 0, 0, 1], status_port).into(),
        Role::Status,
        state.clone(),
    ));
    let admin_url = |p: &str| format!("http://127.0.0.1:{admin_port}{p}");
    let status_url = format!("http://127.0.0.1:{status_port}/healthz/ready");

    let mut ready = handle.ready.clone();
    tokio::time::timeout(WAIT, ready.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    // Endpoints arrive after clusters: wait for them too.
    let mut snap = handle.snapshot.clone();
    tokio::time::timeout(
        WAIT,
        snap.wait_for(|s| s.endpoints.contains_key("svc") && s.routes.contains_key("r1")),
    )
    .await
    .unwrap()
    .unwrap();

    assert_eq!(curl(&[&admin_url("/ready")]), (200, "LIVE\n".into()));
    assert_eq!(curl(&[&status_url]).0, 200);
    let (_, info) = curl(&[&admin_url("/server_info")]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["state"], "LIVE");
    assert_eq!(
        info["node"]["id"],
        "sidecar~127.0.0.1~p.ns~ns.svc.cluster.local"
    );

    // The config dump loads back through our own validator with everything accepted.
    let (code, dump) = curl(&[&admin_url("/config_dump?include_eds")]);
    assert_eq!(code, 200);
    let file =
        std::env::temp_dir().join(format!("outrigger-admin-dump-{}.json", std::process::id()));
    std::fs::write(&file, &dump).unwrap();
    let report = validate::validate(&outrigger_proxy::dump::load(&file).unwrap());
    let _ = std::fs::remove_file(&file);
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    for (kind, n) in [
        (Kind::Listener, 2),
        (Kind::Cluster, 1),
        (Kind::RouteConfig, 1),
        (Kind::Endpoints, 1),
    ] {
        assert_eq!(
            report.accepted.get(&kind).map(Vec::len),
            Some(n),
            "{}",
            kind.plural()
        );
    }
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        v["configs"][2]["dynamic_listeners"][0]["active_state"]["version_info"],
        "v7"
    );
    assert_eq!(
        v["configs"][2]["dynamic_listeners"][0]["active_state"]["listener"]["@type"],
        "type.googleapis.com/envoy.config.listener.v3.Listener"
    );
    let (_, only) = curl(&[&admin_url("/config_dump?resource=dynamic_active_clusters")]);
    let only: serde_json::Value = serde_json::from_str(&only).unwrap();
    assert_eq!(only["configs"].as_array().unwrap().len(), 1);
    assert_eq!(only["configs"][0]["cluster"]["name"], "svc");
    let (_, names) = curl(&[&admin_url(
        "/config_dump?resource=dynamic_active_clusters&mask=cluster.name",
    )]);
    let names: serde_json::Value = serde_json::from_str(&names).unwrap();
    assert_eq!(
        names["configs"][0],
        serde_json::json!({"cluster": {"name": "svc"}}),
        "?mask keeps only the masked fields"
    );

    let (_, clusters) = curl(&[&admin_url("/clusters")]);
    assert!(
        clusters.contains("svc::10.0.0.1:8080::health_flags::healthy"),
        "{clusters}"
    );
    let (_, listeners) = curl(&[&admin_url("/listeners")]);
    assert!(listeners.contains("tcp::0.0.0.0:9000"), "{listeners}");
    let (_, prom) = curl(&[&format!("http://127.0.0.1:{status_port}/stats/prometheus")]);
    assert!(
        prom.contains("envoy_cluster_manager_active_clusters{} 1"),
        "{prom}"
    );

    // Drain: /healthcheck/fail makes readiness fail, /healthcheck/ok restores it.
    assert_eq!(
        curl(&["-X", "POST", &admin_url("/healthcheck/fail")]).0,
        200
    );
    assert_eq!(curl(&[&status_url]).0, 503);
    assert_eq!(curl(&["-X", "POST", &admin_url("/healthcheck/ok")]).0, 200);
    assert_eq!(curl(&[&status_url]).0, 200);
    assert_eq!(
        curl(&[&admin_url("/quitquitquit")]).0,
        405,
        "GET is refused"
    );
    assert_eq!(curl(&["-X", "POST", &admin_url("/quitquitquit")]).0, 200);
    tokio::time::timeout(WAIT, quit_rx.wait_for(|q| *q))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(curl(&[&admin_url("/nope")]).0, 404);
}
