//! Consistent hashing as Istio users configure it: a DestinationRule `consistentHash` on a
//! service with three endpoints. outrigger-pilot sets the cluster's RING_HASH / MAGLEV policy
//! and the routes' hash policy; the client's sidecar keeps each key on one endpoint. Each
//! policy is applied live and checked with real curl requests through the mesh.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use outrigger_testkit::mesh::{Mesh, Reply, wait_for};

const URL: &str = "http://cart:8080/items";
const HOSTS: &str = "10.96.0.20 cart cart.default.svc.cluster.local\n";
const BACKENDS: [(&str, &str); 3] = [
    ("cart-a", "10.30.0.11"),
    ("cart-b", "10.30.0.12"),
    ("cart-c", "10.30.0.13"),
];

fn registry() -> String {
    let mut s = String::from(concat!(
        "apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: default}\n",
        "spec:\n  clusterIP: 10.96.0.20\n  selector: {app: cart}\n",
        "  ports:\n  - {name: http, port: 8080, targetPort: 8080}\n",
        "  - {name: tcp-cart, port: 9000, targetPort: 9000}\n",
        "---\napiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: default, labels: {app: client}}\n",
        "status: {podIP: 10.30.0.10}\n",
    ));
    for (name, ip) in BACKENDS {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: cart}}}}\nstatus: {{podIP: {ip}}}\n"
        ));
    }
    s
}

/// One request from the client with its cookie jar (`-c` writes it, `-b` sends it); the
/// response's head, lower-cased.
fn response_head(m: &Mesh, jar_flag: &str, jar: &Path) -> String {
    let out = m.pods[0]
        .ns
        .command("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", jar_flag])
        .arg(jar)
        .arg(URL)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
}

fn destination_rule(load_balancer: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: cart, namespace: default}}\nspec:\n  host: cart\n  trafficPolicy:\n    loadBalancer:\n      {load_balancer}\n"
    )
}

/// The cart mesh: a client and three cart pods, each with a sidecar.
fn cart_mesh(tag: &str) -> Mesh {
    let config =
        std::env::temp_dir().join(format!("outrigger-{tag}-config-{}", std::process::id()));
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("registry.yaml"), registry()).unwrap();
    let mut m = Mesh::new(tag, &config);
    let _ = std::fs::remove_dir_all(&config);
    let client = m.add_pod("client", "10.30.0.10", HOSTS);
    m.sidecar(client, &[("app", "client")]);
    for (name, ip) in BACKENDS {
        let pod = m.add_pod(name, ip, HOSTS);
        m.app_http(pod, name, 8080);
        m.app_echo(pod, name, 9000);
        m.sidecar(pod, &[("app", "cart")]);
    }
    m
}

/// The servers that answered, requiring every reply to be a 200 from a backend.
fn servers(replies: &[Reply], count: usize, what: &str) -> BTreeSet<String> {
    assert_eq!(replies.len(), count, "{what}: {:?}", Mesh::tally(replies));
    replies
        .iter()
        .map(|r| {
            assert_eq!(r.code, 200, "{what}: {}", r.body);
            r.server().unwrap_or_else(|| panic!("{what}: {}", r.body))
        })
        .collect()
}

/// For each key: the servers its `per_key` requests reached.
fn by_key(
    m: &Mesh,
    keys: usize,
    per_key: usize,
    request: impl Fn(usize) -> (String, Vec<String>),
) -> BTreeMap<usize, BTreeSet<String>> {
    (0..keys)
        .map(|k| {
            let (url, extra) = request(k);
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let replies = m.curl_many(0, &url, per_key, &extra);
            (k, servers(&replies, per_key, &format!("key {k}")))
        })
        .collect()
}

fn sticky(spread: &BTreeMap<usize, BTreeSet<String>>) -> bool {
    spread.values().all(|s| s.len() == 1)
}

fn distinct(spread: &BTreeMap<usize, BTreeSet<String>>) -> usize {
    spread.values().flatten().collect::<BTreeSet<_>>().len()
}

/// Waits until the client's sidecar holds the cluster with `policy` and a route whose hash
/// policy mentions `key` (the DestinationRule is pushed, CDS and RDS).
fn wait_policy(m: &Mesh, policy: &str, key: &str) {
    let ok = wait_for(Duration::from_secs(10), || {
        let dump: String = m
            .admin(0, "/config_dump")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        (dump.contains(&format!("\"lb_policy\":\"{policy}\""))
            && dump.contains("\"hash_policy\":[{")
            && dump.contains(key))
        .then_some(())
    });
    assert!(
        ok.is_some(),
        "the {policy} cluster and its route never arrived"
    );
}

fn header_request(k: usize) -> (String, Vec<String>) {
    (URL.into(), vec!["-H".into(), format!("x-user: user-{k}")])
}

#[test]
fn consistent_hash_keeps_each_key_on_one_endpoint() {
    let m = cart_mesh("chash");
    // Without a DestinationRule (LEAST_REQUEST), a user's requests spread over the endpoints:
    // the checks below would fail without hashing.
    let before = by_key(&m, 6, 12, header_request);
    eprintln!("least request: {before:?}");
    assert!(
        !sticky(&before),
        "requests spread without hashing: {before:?}"
    );

    // Ring hash on a header.
    m.write_config(
        "destination-rule.yaml",
        &destination_rule("consistentHash: {httpHeaderName: x-user}"),
    );
    wait_policy(&m, "RING_HASH", "\"header_name\":\"x-user\"");
    let ring = by_key(&m, 24, 8, header_request);
    eprintln!("ring hash by x-user: {ring:?}");
    assert!(sticky(&ring), "each user stays on one endpoint: {ring:?}");
    assert_eq!(
        distinct(&ring),
        3,
        "24 users reach all three endpoints: {ring:?}"
    );
    // The mapping is stable: the same users land where they did.
    let again = by_key(&m, 24, 2, header_request);
    assert_eq!(again, ring);

    // Maglev on a query parameter.
    m.write_config(
        "destination-rule.yaml",
        &destination_rule(
            "consistentHash: {httpQueryParameterName: user, maglev: {tableSize: 1031}}",
        ),
    );
    wait_policy(&m, "MAGLEV", "\"query_parameter\":{\"name\":\"user\"}");
    let maglev = by_key(&m, 24, 8, |k| (format!("{URL}?user={k}&page=1"), vec![]));
    eprintln!("maglev by ?user: {maglev:?}");
    assert!(sticky(&maglev), "{maglev:?}");
    assert_eq!(distinct(&maglev), 3, "{maglev:?}");

    // Source IP: the one client pod always reaches the same endpoint, over HTTP and TCP.
    m.write_config(
        "destination-rule.yaml",
        &destination_rule("consistentHash: {useSourceIp: true}"),
    );
    wait_policy(&m, "RING_HASH", "\"source_ip\":true");
    let http = servers(&m.curl_many(0, URL, 30, &[]), 30, "source ip");
    assert_eq!(
        http.len(),
        1,
        "every request from one source IP, one endpoint: {http:?}"
    );
    let tcp: BTreeSet<String> = (0..30)
        .map(|_| {
            let (hello, echoed) = outrigger_testkit::topology::connect_send_as(
                &m.pods[0].ns,
                1000,
                "10.96.0.20:9000",
                100,
            )
            .expect("tcp through the mesh");
            assert_eq!(echoed, 100);
            hello.server
        })
        .collect();
    eprintln!("tcp by source ip: {tcp:?}");
    assert_eq!(tcp.len(), 1, "30 TCP connections, one endpoint: {tcp:?}");
}

#[test]
fn cookie_hashing_sets_a_cookie_that_keeps_the_session() {
    let m = cart_mesh("cookie");
    m.write_config(
        "destination-rule.yaml",
        &destination_rule("consistentHash: {httpCookie: {name: cart-session, ttl: 600s, path: /}}"),
    );
    wait_policy(&m, "RING_HASH", "\"cookie\":{\"name\":\"cart-session\"");
    let dir = Path::new(&m.dir);
    let mut sessions = BTreeMap::new();
    for s in 0..12 {
        let jar = dir.join(format!("jar-{s}"));
        let _ = std::fs::remove_file(&jar);
        // The first request has no cookie: the sidecar makes one up and sets it.
        let head = response_head(&m, "-c", &jar);
        let cookie = head
            .lines()
            .find(|l| l.starts_with("set-cookie: cart-session="))
            .unwrap_or_else(|| panic!("no Set-Cookie on the first answer:\n{head}"))
            .to_string();
        assert!(
            cookie.contains("max-age=600")
                && cookie.contains("path=/")
                && cookie.contains("httponly"),
            "{cookie}"
        );
        // The session's next requests carry it and stay on one endpoint.
        let jar_arg = jar.display().to_string();
        let replies = m.curl_many(0, URL, 8, &["-b", &jar_arg]);
        sessions.insert(s, servers(&replies, 8, &format!("session {s}")));
        // An answer to a request with the cookie sets none.
        let head = response_head(&m, "-b", &jar);
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("set-cookie"), "{head}");
    }
    eprintln!("cookie sessions: {sessions:?}");
    assert!(sticky(&sessions), "{sessions:?}");
    assert!(
        distinct(&sessions) >= 2,
        "sessions from different connections get different cookies: {sessions:?}"
    );
}
