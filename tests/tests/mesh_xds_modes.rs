//! The same mesh over the other ways a sidecar gets its configuration: state-of-the-world xDS
//! over TCP from outrigger-pilot, and the control plane embedded in the proxy
//! (`--mesh-config DIR`). Each serves the split and a live change.

use std::path::PathBuf;
use std::time::Duration;

use outrigger_testkit::mesh::{Mesh, PILOT_TCP, wait_for};

const URL: &str = "http://bill-service:8080/bill";
const HOSTS: &str = "10.96.0.10 bill-service bill-service.default.svc.cluster.local\n";
const ALL_TO_V2: &str = concat!(
    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bill-service}\n",
    "spec:\n  hosts: [bill-service]\n  http:\n",
    "  - route: [{destination: {host: bill-service, port: {number: 8080}, subset: v2}}]\n",
);

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/bill-service")
}

fn pods(m: &mut Mesh) -> (usize, usize, usize) {
    let client = m.add_pod("client", "10.30.0.10", HOSTS);
    let v1 = m.add_pod("bill-service-v1", "10.30.0.11", HOSTS);
    let v2 = m.add_pod("bill-service-v2", "10.30.0.12", HOSTS);
    m.app_http(v1, "v1", 8080);
    m.app_http(v2, "v2", 8080);
    (client, v1, v2)
}

fn split_then_live_change(m: &Mesh) {
    let t = Mesh::tally(&m.curl_many(0, URL, 400, &[]));
    eprintln!("split over 400: {t:?}");
    let v2 = *t.get("v2").unwrap_or(&0);
    assert_eq!(t.values().sum::<usize>(), 400, "{t:?}");
    assert!(
        (16..=80).contains(&v2),
        "about 10% to v2 (40 of 400): {t:?}"
    );
    m.write_config("virtual-service.yaml", ALL_TO_V2);
    let moved = wait_for(Duration::from_secs(10), || {
        let r = m.curl_many(0, URL, 20, &[]);
        (r.len() == 20 && r.iter().all(|r| r.server().as_deref() == Some("v2"))).then_some(())
    });
    assert!(
        moved.is_some(),
        "the change never reached the client's sidecar"
    );
}

#[test]
fn state_of_the_world_over_tcp() {
    let mut m = Mesh::new("sotw", &example());
    m.xds_address = PILOT_TCP.into();
    m.sotw = true;
    let (client, v1, v2) = pods(&mut m);
    m.sidecar(client, &[("app", "client")]);
    m.sidecar(v1, &[("app", "bill-service"), ("version", "v1")]);
    m.sidecar(v2, &[("app", "bill-service"), ("version", "v2")]);
    split_then_live_change(&m);
}

#[test]
fn control_plane_embedded_in_the_proxy() {
    let mut m = Mesh::new("embed", &example());
    let (client, v1, v2) = pods(&mut m);
    // Every sidecar reads the directory itself: no shared control plane needed.
    m.sidecar_embedded(client, &[("app", "client")]);
    m.sidecar_embedded(v1, &[("app", "bill-service"), ("version", "v1")]);
    m.sidecar_embedded(v2, &[("app", "bill-service"), ("version", "v2")]);
    split_then_live_change(&m);
    // The embedded pilot's configuration is what the admin API shows.
    let dump = m.admin(0, "/config_dump");
    assert!(
        dump.contains("outbound|8080|v2|bill-service.default.svc.cluster.local"),
        "config_dump lacks the subset cluster"
    );
}

#[test]
fn started_as_envoy_with_pilot_agents_bootstrap() {
    let mut m = Mesh::new("envoy", &example());
    // The bootstrap pilot-agent writes (upstream golden), its xds-grpc pipe pointed at our pilot.
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/istio-configdumps/bootstrap-default.json");
    let text = std::fs::read_to_string(&golden).expect("the upstream bootstrap golden");
    let text = text.replace("\"/tmp/XDS\"", &format!("\"{}\"", m.socket.display()));
    assert!(
        text.contains(&m.socket.display().to_string()),
        "the golden's xds-grpc pipe moved"
    );
    let bootstrap = m.dir.join(".envoy-rev.json");
    std::fs::write(&bootstrap, text).unwrap();
    let (client, v1, v2) = pods(&mut m);
    m.sidecar_envoy(client, &[("app", "client")], &bootstrap);
    m.sidecar(v1, &[("app", "bill-service"), ("version", "v1")]);
    m.sidecar(v2, &[("app", "bill-service"), ("version", "v2")]);
    split_then_live_change(&m);
}
