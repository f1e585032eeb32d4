//! End to end: outrigger-pilot turns the bill-service YAML into xDS; every pod has outrigger-init's
//! rules and an outrigger-proxy sidecar; real curl in the client pod reaches the two versions
//! through the client's sidecar (captured by iptables) and the servers' sidecars (inbound).

use std::path::PathBuf;
use std::time::Duration;

use outrigger_testkit::mesh::{Mesh, wait_for};

const URL: &str = "http://bill-service:8080/bill";

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/bill-service")
}

/// The bill-service mesh: client (pod 0), v1 (pod 1) and v2 (pod 2), HTTP on 8080 and a
/// tcp-echo style server on 9000 in both versions.
fn bill_mesh(tag: &str) -> Mesh {
    let mut m = Mesh::new(tag, &example());
    let hosts = "10.96.0.10 bill-service bill-service.default.svc.cluster.local\n";
    let client = m.add_pod("client", "10.30.0.10", hosts);
    let v1 = m.add_pod("bill-service-v1", "10.30.0.11", hosts);
    let v2 = m.add_pod("bill-service-v2", "10.30.0.12", hosts);
    for (pod, version) in [(v1, "v1"), (v2, "v2")] {
        m.app_http(pod, version, 8080);
        m.app_echo(pod, version, 9000);
    }
    m.sidecar(client, &[("app", "client")]);
    m.sidecar(v1, &[("app", "bill-service"), ("version", "v1")]);
    m.sidecar(v2, &[("app", "bill-service"), ("version", "v2")]);
    m
}

const VS_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bill-service\n  namespace: default\nspec:\n  hosts: [bill-service]\n";

/// Waits until 20 requests in a row with `extra` are answered as `pred` says (configuration
/// pushed).
fn wait_until(
    m: &Mesh,
    extra: &[&str],
    what: &str,
    pred: impl Fn(&outrigger_testkit::mesh::Reply) -> bool,
) {
    let ok = wait_for(Duration::from_secs(10), || {
        let r = m.curl_many(0, URL, 20, extra);
        (r.len() == 20 && r.iter().all(&pred)).then_some(())
    });
    assert!(
        ok.is_some(),
        "the new configuration never took effect: {what}"
    );
}

#[test]
fn weighted_split_is_90_10_within_3_points() {
    let m = bill_mesh("split");
    let replies = m.curl_many(0, URL, 2000, &[]);
    let t = Mesh::tally(&replies);
    assert_eq!(replies.len(), 2000, "{t:?}");
    let v1 = *t.get("v1").unwrap_or(&0) as f64 / 20.0;
    let v2 = *t.get("v2").unwrap_or(&0) as f64 / 20.0;
    eprintln!("split over 2000 requests: v1 {v1:.1}%, v2 {v2:.1}% ({t:?})");
    assert!(
        (v1 - 90.0).abs() <= 3.0 && (v2 - 10.0).abs() <= 3.0,
        "{t:?}"
    );
    assert_eq!(v1 + v2, 100.0, "every request answered by a version: {t:?}");
    // The request went through both sidecars: the client's adds the Envoy headers, the
    // server's connects from 127.0.0.6.
    let r = &replies[0].json();
    assert_eq!(r["headers"]["x-forwarded-proto"], "http", "{r}");
    assert_eq!(
        r["headers"]["x-request-id"].as_str().map(str::len),
        Some(36),
        "{r}"
    );
    // Istio's request metrics on :15090, as Prometheus scrapes them: the client reports as the
    // source, each server as the destination.
    let metric = |pod: usize, reporter: &str, workload: &str| -> u64 {
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
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter(|l| l.contains(&format!("reporter=\"{reporter}\"")))
            .filter(|l| l.contains(&format!("destination_workload=\"{workload}\"")))
            .filter(|l| {
                l.contains("destination_service=\"bill-service.default.svc.cluster.local\"")
                    || reporter == "destination"
            })
            .filter(|l| l.contains("response_code=\"200\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let (v1_src, v2_src) = (
        metric(0, "source", "bill-service-v1"),
        metric(0, "source", "bill-service-v2"),
    );
    eprintln!("istio_requests_total at the client: v1 {v1_src}, v2 {v2_src}");
    assert_eq!(
        v1_src + v2_src,
        2000,
        "every request counted by the client's sidecar"
    );
    assert_eq!(
        metric(1, "destination", "bill-service-v1"),
        v1_src,
        "and by v1's"
    );
    assert_eq!(
        metric(2, "destination", "bill-service-v2"),
        v2_src,
        "and by v2's"
    );
    let client_metrics = m.pods[0]
        .ns
        .ok("curl", &["-s", "http://127.0.0.1:15090/stats/prometheus"]);
    assert!(
        client_metrics.contains("source_workload=\"client\""),
        "{client_metrics}"
    );
    assert!(client_metrics.contains("istio_request_duration_milliseconds_bucket{"));
    // Metadata exchange: v1's sidecar learned who called it from the client's sidecar, and
    // neither app saw the exchange headers.
    let server_metrics = m.pods[1]
        .ns
        .ok("curl", &["-s", "http://127.0.0.1:15090/stats/prometheus"]);
    let inbound: Vec<&str> = server_metrics
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{") && l.contains("reporter=\"destination\"")
        })
        .collect();
    assert!(
        !inbound.is_empty()
            && inbound
                .iter()
                .all(|l| l.contains("source_workload=\"client\"")
                    && l.contains("source_workload_namespace=\"default\"")
                    && l.contains("source_app=\"client\"")),
        "{inbound:#?}"
    );
    assert!(
        r["headers"].get("x-envoy-peer-metadata").is_none()
            && r["headers"].get("x-envoy-peer-metadata-id").is_none(),
        "{r}"
    );
    let out = m.pods[0]
        .ns
        .command_as(1000, "curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", URL])
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200") && !head.contains("x-envoy-peer-metadata"),
        "{head}"
    );

    // The proxy's own view names istiod's resources.
    let clusters = m.admin(0, "/clusters");
    assert!(
        clusters
            .contains("outbound|8080|v1|bill-service.default.svc.cluster.local::10.30.0.11:8080"),
        "{clusters}"
    );
    assert!(
        clusters
            .contains("outbound|8080|v2|bill-service.default.svc.cluster.local::10.30.0.12:8080"),
        "{clusters}"
    );
}

#[test]
fn header_uri_rewrite_and_subset_routes_apply_live_without_failed_requests() {
    let m = bill_mesh("routes");
    // Header match to v2, URI prefix with rewrite to v1, the rest to v2 by subset.
    m.write_config(
        "virtual-service.yaml",
        &format!(
            concat!(
                "{}  http:\n",
                "  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n",
                "    route: [{{destination: {{host: bill-service, port: {{number: 8080}}, subset: v2}}}}]\n",
                "    headers: {{response: {{set: {{x-route: jason}}}}}}\n",
                "  - match: [{{uri: {{prefix: /legacy/}}}}]\n",
                "    rewrite: {{uri: /v1/, authority: bills.internal}}\n",
                "    route: [{{destination: {{host: bill-service, port: {{number: 8080}}, subset: v1}}}}]\n",
                "  - route: [{{destination: {{host: bill-service, port: {{number: 8080}}, subset: v2}}}}]\n",
            ),
            VS_HEAD
        ),
    );
    wait_until(
        &m,
        &["-H", "end-user: nobody"],
        "default route to v2",
        |r| r.server().as_deref() == Some("v2"),
    );
    let r = m.curl(0, URL, &["-H", "end-user: jason"]);
    assert_eq!(r.server().as_deref(), Some("v2"));
    let r = m.curl(0, "http://bill-service:8080/legacy/invoice?id=7", &[]);
    let j = r.json();
    assert_eq!(j["server"], "v1", "{j}");
    assert_eq!(j["path"], "/v1/invoice?id=7", "prefix rewrite: {j}");
    assert_eq!(j["host"], "bills.internal", "authority rewrite: {j}");
    // Response headers set by the route.
    let out = m.pods[0]
        .ns
        .command_as(1000, "curl")
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            "end-user: jason",
            URL,
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .to_ascii_lowercase()
            .contains("x-route: jason")
    );

    // A change applied while traffic flows: no request fails.
    let m = std::sync::Arc::new(m);
    let traffic = {
        let m = m.clone();
        std::thread::spawn(move || m.curl_many(0, URL, 6000, &[]))
    };
    std::thread::sleep(Duration::from_millis(200));
    m.write_config("virtual-service.yaml", &format!("{VS_HEAD}  http:\n  - route: [{{destination: {{host: bill-service, port: {{number: 8080}}, subset: v1}}}}]\n"));
    let replies = traffic.join().unwrap();
    let t = Mesh::tally(&replies);
    eprintln!("during the change: {t:?}");
    assert_eq!(replies.len(), 6000, "{t:?}");
    assert!(
        t.contains_key("v1") && t.contains_key("v2"),
        "the change must land while the requests flow: {t:?}"
    );
    assert!(
        replies.iter().all(|r| r.code == 200),
        "a request failed during the change: {t:?}"
    );
    wait_until(&m, &[], "all to v1", |r| {
        r.server().as_deref() == Some("v1")
    });
}

#[test]
fn bad_yaml_is_rejected_and_the_old_routes_keep_serving() {
    let m = bill_mesh("bad");
    m.write_config("virtual-service.yaml", &format!("{VS_HEAD}  http:\n  - route: [{{destination: {{host: bill-service, port: {{number: 8080}}, subset: v2}}}}]\n"));
    wait_until(&m, &[], "all to v2", |r| {
        r.server().as_deref() == Some("v2")
    });
    // A syntax error, then an undefined subset, then weights adding up to 120: none applies.
    for bad in [
        format!("{VS_HEAD}  http: [\n"),
        format!(
            "{VS_HEAD}  http:\n  - route: [{{destination: {{host: bill-service, port: {{number: 8080}}, subset: v9}}}}]\n"
        ),
        format!(
            "{VS_HEAD}  http:\n  - route:\n    - {{destination: {{host: bill-service, subset: v1, port: {{number: 8080}}}}, weight: 60}}\n    - {{destination: {{host: bill-service, subset: v2, port: {{number: 8080}}}}, weight: 60}}\n"
        ),
    ] {
        m.write_config("virtual-service.yaml", &bad);
        std::thread::sleep(Duration::from_millis(600));
        let t = Mesh::tally(&m.curl_many(0, URL, 50, &[]));
        assert_eq!(
            t.get("v2"),
            Some(&50),
            "the old routes stopped serving after:\n{bad}\n{t:?}"
        );
    }
    // `check` names the problem.
    let out = std::process::Command::new(outrigger_testkit::bin("outrigger-pilot"))
        .arg("check")
        .arg(&m.dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("virtual-service.yaml#0 VirtualService default/bill-service spec.http[0].route: the destination weights add up to 120, not 100"), "{text}");
}

#[test]
fn tcp_traffic_shifts_by_weight() {
    let m = bill_mesh("tcp");
    m.write_config(
        "virtual-service.yaml",
        &format!(
            "{VS_HEAD}  tcp:\n  - match: [{{port: 9000}}]\n    route:\n    - {{destination: {{host: bill-service, port: {{number: 9000}}, subset: v1}}, weight: 80}}\n    - {{destination: {{host: bill-service, port: {{number: 9000}}, subset: v2}}, weight: 20}}\n"
        ),
    );
    std::thread::sleep(Duration::from_millis(800));
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let a = outrigger_testkit::topology::connect_send_as(
            &m.pods[0].ns,
            1000,
            "10.96.0.10:9000",
            1000,
        )
        .expect("tcp-echo through the mesh");
        assert_eq!(a.1, 1000, "every byte echoed");
        *counts.entry(a.0.server).or_insert(0) += 1;
    }
    eprintln!("tcp split over 200 connections: {counts:?}");
    // Istio's TCP metrics at the client's sidecar: every connection, and every byte it sent.
    let text = m.pods[0].ns.ok(
        "curl",
        &[
            "-s",
            "--max-time",
            "3",
            "http://127.0.0.1:15090/stats/prometheus",
        ],
    );
    let sum = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains("reporter=\"source\""))
            .filter(|l| {
                l.contains("destination_service=\"bill-service.default.svc.cluster.local\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert_eq!(sum("istio_tcp_connections_opened_total"), 200, "{text}");
    assert_eq!(
        sum("istio_tcp_received_bytes_total"),
        200 * 1000,
        "the bytes the client sent"
    );
    assert!(
        sum("istio_tcp_sent_bytes_total") >= 200 * 1000,
        "the echoes and the answer lines"
    );
    let v2 = *counts.get("v2").unwrap_or(&0);
    assert!(
        (25..=55).contains(&v2),
        "about 20% (40 of 200) to v2: {counts:?}"
    );
    assert_eq!(counts.values().sum::<usize>(), 200);
}
