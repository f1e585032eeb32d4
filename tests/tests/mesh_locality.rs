//! Locality load balancing as Istio applies it: the client in `us-east/a`, one `cart` endpoint
//! in its zone (`a`), one in another zone of its region (`b`), one in another region (`c`).
//! With outlier detection, outrigger-pilot gives the client's endpoints failover priorities by
//! proximity; each endpoint cut off (every packet from the client reset) is ejected and the
//! traffic moves one level out, until none is left: 503 UH, Istio turning panic mode off. With
//! `distribute`, the traffic is split by locality weight.

use std::collections::BTreeMap;
use std::time::Duration;

use outrigger_testkit::mesh::{Mesh, wait_for};

const URL: &str = "http://cart:8080/items";
const HOSTS: &str = "10.96.0.20 cart cart.default.svc.cluster.local\n";

fn pod(name: &str, app: &str, ip: &str, region: &str, zone: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {{app: {app}, topology.kubernetes.io/region: {region}, topology.kubernetes.io/zone: {zone}}}\nstatus: {{podIP: {ip}}}\n"
    )
}

fn registry() -> String {
    let mut r = String::from(concat!(
        "apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: default}\n",
        "spec:\n  clusterIP: 10.96.0.20\n  selector: {app: cart}\n",
        "  ports:\n  - {name: http, port: 8080, targetPort: 8080}\n",
    ));
    r += &pod("client", "client", "10.30.0.10", "us-east", "a");
    r += &pod("cart-a", "cart", "10.30.0.11", "us-east", "a");
    r += &pod("cart-b", "cart", "10.30.0.12", "us-east", "b");
    r += &pod("cart-c", "cart", "10.30.0.13", "us-west", "c");
    r
}

fn destination_rule(traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: cart, namespace: default}}\nspec:\n  host: cart\n  trafficPolicy:\n{}",
        traffic_policy
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    )
}

const OUTLIER: &str = "outlierDetection:\n  consecutiveGatewayErrors: 1\n  consecutive5xxErrors: 1\n  interval: 1s\n  baseEjectionTime: 60s\n  maxEjectionPercent: 100\n";

/// The client and the three endpoints (pods 1, 2, 3), each app named for its zone.
fn mesh(tag: &str, rule: Option<&str>) -> Mesh {
    let config =
        std::env::temp_dir().join(format!("outrigger-{tag}-config-{}", std::process::id()));
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("registry.yaml"), registry()).unwrap();
    if let Some(rule) = rule {
        std::fs::write(config.join("rule.yaml"), destination_rule(rule)).unwrap();
    }
    let mut m = Mesh::new(tag, &config);
    let _ = std::fs::remove_dir_all(&config);
    let client = m.add_pod("client", "10.30.0.10", HOSTS);
    for (name, ip) in [
        ("cart-a", "10.30.0.11"),
        ("cart-b", "10.30.0.12"),
        ("cart-c", "10.30.0.13"),
    ] {
        let p = m.add_pod(name, ip, HOSTS);
        m.app_http(p, &name[5..], 8080);
        m.sidecar(p, &[("app", "cart")]);
    }
    m.sidecar(client, &[("app", "client")]);
    m
}

fn tally(m: &Mesh, n: usize) -> BTreeMap<String, usize> {
    Mesh::tally(&m.curl_many(0, URL, n, &[]))
}

/// Resets every packet from the client: the endpoint is gone for it.
fn cut_off(m: &Mesh, pod: usize) {
    m.pods[pod].ns.ok(
        "iptables",
        &[
            "-I",
            "INPUT",
            "-s",
            "10.30.0.10",
            "-p",
            "tcp",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
    );
}

/// Sends batches of 5 until one is answered by `server` alone (bounded), then 20 more.
fn moved_to(m: &Mesh, server: &str) -> BTreeMap<String, usize> {
    let only = |t: &BTreeMap<String, usize>| t.len() == 1 && t.contains_key(server);
    let settled = wait_for(Duration::from_secs(20), || {
        let t = tally(m, 5);
        eprintln!("moving to {server}: {t:?}");
        only(&t).then_some(())
    });
    assert!(settled.is_some(), "the traffic did not move to {server}");
    tally(m, 20)
}

#[test]
fn failover_goes_one_locality_level_out_at_a_time() {
    let m = mesh("locf", Some(OUTLIER));
    // The client's own zone first: priority 0 is cart-a alone.
    let t = tally(&m, 30);
    assert_eq!(t, BTreeMap::from([("a".to_string(), 30)]), "{t:?}");
    let dump = m.admin(0, "/config_dump?include_eds");
    assert!(
        dump.contains("\"priority\": 2"),
        "three priorities in the EDS"
    );

    // cart-a gone: ejected, the traffic goes to the same region's other zone, not to us-west.
    cut_off(&m, 1);
    let t = moved_to(&m, "b");
    assert_eq!(t, BTreeMap::from([("b".to_string(), 20)]), "{t:?}");
    // cart-b gone too: the other region.
    cut_off(&m, 2);
    let t = moved_to(&m, "c");
    assert_eq!(t, BTreeMap::from([("c".to_string(), 20)]), "{t:?}");
    // cart-c gone as well. Istio's default minHealthPercent 0 turns panic mode off: with
    // every endpoint ejected, the client gets Envoy's 503 "no healthy upstream" (UH) at once.
    cut_off(&m, 3);
    let all_out = wait_for(Duration::from_secs(20), || {
        let r = m.curl_many(0, URL, 5, &[]);
        r.iter()
            .all(|r| r.code == 503 && r.body.contains("no healthy upstream"))
            .then_some(())
    });
    assert!(
        all_out.is_some(),
        "every endpoint ejected: no healthy upstream"
    );
    let prom = m.pods[0]
        .ns
        .ok("curl", &["-s", "http://127.0.0.1:15090/stats/prometheus"]);
    assert!(
        prom.lines()
            .any(|l| l.starts_with("istio_requests_total{") && l.contains("response_flags=\"UH\"")),
        "UH counted"
    );
    let clusters = m.admin(0, "/clusters");
    assert!(
        clusters.contains("outbound|8080||cart.default.svc.cluster.local::10.30.0.11:8080::health_flags::/failed_outlier_check"),
        "cart-a is ejected:\n{clusters}"
    );
}

#[test]
fn distribute_splits_by_locality_weight() {
    let m = mesh("locd", None);
    // No outlier detection, no setting: one priority, all three endpoints.
    let t = tally(&m, 90);
    for zone in ["a", "b", "c"] {
        assert!(t.get(zone).copied().unwrap_or(0) >= 10, "{t:?}");
    }
    m.write_config(
        "rule.yaml",
        &destination_rule(
            "loadBalancer:\n  localityLbSetting:\n    enabled: true\n    distribute:\n    - from: us-east/a/*\n      to:\n        \"us-east/a/*\": 25\n        \"us-west/*\": 75\n",
        ),
    );
    // Applied once a batch avoids cart-b (dropped: no `to` entry names its locality).
    let applied = wait_for(Duration::from_secs(20), || {
        let t = tally(&m, 20);
        (!t.contains_key("b") && t.values().sum::<usize>() == 20).then_some(())
    });
    assert!(applied.is_some(), "the distribute setting was not applied");
    let t = tally(&m, 200);
    let (a, b, c) = (
        t.get("a").copied().unwrap_or(0),
        t.get("b").copied().unwrap_or(0),
        t.get("c").copied().unwrap_or(0),
    );
    eprintln!("distribute 25/75: {t:?}");
    assert_eq!((a + c, b), (200, 0), "{t:?}");
    // Binomial(200, 0.25): 50 ± 6; these bounds are ±4 standard deviations.
    assert!((25..=75).contains(&a), "{t:?}");
}
