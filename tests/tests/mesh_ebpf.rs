//! The whole stack with eBPF capture and no iptables at all: outrigger-pilot, the bill-service
//! pods with outrigger-proxy sidecars, and outrigger-agent attached to a cgroup this test made.
//! The client's connection reaches its sidecar by connect4 + getsockopt, the client sidecar's
//! connection reaches the server sidecar's inbound port directly (same-node peer), and the
//! routing is the xDS routing of the iptables mesh: the same 90/10 split.

use std::path::PathBuf;

use outrigger_testkit::ebpf::{Agent, Bpffs, Cgroup};
use outrigger_testkit::mesh::Mesh;

const URL: &str = "http://bill-service:8080/bill";

#[test]
fn ebpf_captured_mesh_routes_by_xds_as_with_iptables() {
    let cg = Cgroup::new("mesh");
    let bpffs = Bpffs::new();
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/bill-service");
    let mut m = Mesh::new("ebpfm", &example);
    m.ebpf_cgroup = Some(cg.path.clone());
    let hosts = "10.96.0.10 bill-service bill-service.default.svc.cluster.local\n";
    let client = m.add_pod("client", "10.30.0.10", hosts);
    let v1 = m.add_pod("bill-service-v1", "10.30.0.11", hosts);
    let v2 = m.add_pod("bill-service-v2", "10.30.0.12", hosts);
    for (pod, version) in [(v1, "v1"), (v2, "v2")] {
        m.app_http(pod, version, 8080);
    }
    m.sidecar(client, &[("app", "client")]);
    m.sidecar(v1, &[("app", "bill-service"), ("version", "v1")]);
    m.sidecar(v2, &[("app", "bill-service"), ("version", "v2")]);
    let agent = Agent::start(
        &cg.path,
        &bpffs,
        &m.agent_pods(),
        &["--peer-inbound", "--sockmap"],
    );

    // No iptables rule anywhere: the capture is eBPF's alone.
    let nat = m.pods[client].ns.ok("iptables-save", &["-t", "nat"]);
    assert!(!nat.contains("ISTIO"), "{nat}");

    let replies = m.curl_many(client, URL, 1000, &[]);
    let t = Mesh::tally(&replies);
    assert_eq!(replies.len(), 1000, "{t:?}");
    let v1_share = *t.get("v1").unwrap_or(&0) as f64 / 10.0;
    let v2_share = *t.get("v2").unwrap_or(&0) as f64 / 10.0;
    eprintln!("eBPF capture, 1000 requests: v1 {v1_share:.1}%, v2 {v2_share:.1}% ({t:?})");
    assert_eq!(v1_share + v2_share, 100.0, "every request answered: {t:?}");
    assert!((v1_share - 90.0).abs() <= 4.0, "{t:?}");

    // Both sidecars were on the path: the client's (Envoy headers) and a server's (inbound
    // metrics with reporter="destination").
    let r = replies[0].json();
    assert_eq!(r["headers"]["x-forwarded-proto"], "http", "{r}");
    let inbound: u64 = [v1, v2]
        .iter()
        .map(|&pod| {
            let text = m.pods[pod].ns.ok(
                "curl",
                &[
                    "-s",
                    "--max-time",
                    "3",
                    "http://127.0.0.1:15090/stats/prometheus",
                ],
            );
            text.lines()
                .filter(|l| {
                    l.starts_with("istio_requests_total{")
                        && l.contains("reporter=\"destination\"")
                        && l.contains("response_code=\"200\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum();
    assert_eq!(inbound, 1000, "server sidecars saw every request inbound");

    // What did it: the app's connect went to its sidecar, the sidecar's connects went straight
    // to the servers' inbound port, and SO_ORIGINAL_DST was answered on both sides.
    let status = agent.status();
    assert!(agent.counter("redirected") >= 1, "{status}");
    assert!(agent.counter("peer_inbound") >= 2, "{status}");
    assert!(agent.counter("getsockopt_hit") >= 3, "{status}");
    assert!(agent.counter("msg_redirected") >= 1, "{status}");
}
