//! Idle timeouts as Istio sets them: the proxy's `ISTIO_META_IDLE_TIMEOUT` (connection managers
//! and TCP proxies) and a DestinationRule's `connectionPool.http.idleTimeout` (upstream
//! connections). A Python client in the client pod holds real connections open through the
//! mesh and watches when they close.

use std::time::Duration;

use outrigger_testkit::mesh::{Mesh, wait_for};

const HOSTS: &str = "10.96.0.20 cart cart.default.svc.cluster.local\n";

const REGISTRY: &str = concat!(
    "apiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: default}\n",
    "spec:\n  clusterIP: 10.96.0.20\n  selector: {app: cart}\n",
    "  ports:\n  - {name: http, port: 8080, targetPort: 8080}\n",
    "  - {name: tcp-cart, port: 9000, targetPort: 9000}\n",
    "---\napiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: default, labels: {app: client}}\n",
    "status: {podIP: 10.30.0.10}\n",
    "---\napiVersion: v1\nkind: Pod\nmetadata: {name: cart-a, namespace: default, labels: {app: cart}}\n",
    "status: {podIP: 10.30.0.11}\n",
);

/// The client's side of each check; prints one JSON line.
const CLIENT: &str = r#"
import json, socket, subprocess, sys, time

mode = sys.argv[1]

def upstream_conns():
    out = subprocess.run(["ss", "-Htn", "state", "established", "dst", "10.30.0.11:8080"],
                         capture_output=True, text=True).stdout
    return len([l for l in out.splitlines() if l.strip()])

def request(s):
    s.sendall(b"GET /items HTTP/1.1\r\nHost: cart:8080\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            return "closed"
        buf += d
    head, _, body = buf.partition(b"\r\n\r\n")
    length = [l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
    n = int(length[0]) if length else 0
    while len(body) < n:
        body += s.recv(65536)
    return head.split(b" ")[1].decode()

def seconds_to_close(s, t, limit=10.0):
    """Seconds from the last activity `t` until the peer closes `s`."""
    s.settimeout(limit)
    try:
        d = s.recv(1)
    except socket.timeout:
        return None
    return round(time.time() - t, 2) if d == b"" else -1

if mode == "http":
    s = socket.create_connection(("10.96.0.20", 8080), timeout=5)
    # Requests 0.5 s apart keep the connection open past the 1 s idle timeout.
    codes = []
    for _ in range(5):
        time.sleep(0.5)
        codes.append(request(s))
    last = time.time()
    print(json.dumps({"codes": codes, "closed_after": seconds_to_close(s, last)}))
elif mode == "tcp":
    s = socket.create_connection(("10.96.0.20", 9000), timeout=5)
    got = b""
    for _ in range(5):
        time.sleep(0.5)
        s.sendall(b"ping\n")
        while got.count(b"ping") < _ + 1:
            got += s.recv(65536)
    last = time.time()
    print(json.dumps({"echoed": got.count(b"ping"), "closed_after": seconds_to_close(s, last)}))
elif mode == "upstream":
    s = socket.create_connection(("10.96.0.20", 8080), timeout=5)
    first = request(s)
    time.sleep(0.3)
    during = upstream_conns()
    time.sleep(2.2)
    after = upstream_conns()
    second = request(s)
    print(json.dumps({"codes": [first, second], "during": during, "after": after}))
"#;

fn mesh(tag: &str, env: &[(&str, &str)]) -> Mesh {
    let config =
        std::env::temp_dir().join(format!("outrigger-{tag}-config-{}", std::process::id()));
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("registry.yaml"), REGISTRY).unwrap();
    let mut m = Mesh::new(tag, &config);
    let _ = std::fs::remove_dir_all(&config);
    m.sidecar_env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let client = m.add_pod("client", "10.30.0.10", HOSTS);
    m.sidecar(client, &[("app", "client")]);
    m.sidecar_env.clear();
    let server = m.add_pod("cart-a", "10.30.0.11", HOSTS);
    m.app_http(server, "cart-a", 8080);
    m.app_echo(server, "cart-a", 9000);
    m.sidecar(server, &[("app", "cart")]);
    m
}

fn client(m: &Mesh, mode: &str) -> serde_json::Value {
    let out = m.pods[0]
        .ns
        .command_as(1000, "/usr/bin/python3")
        .args(["-c", CLIENT, mode])
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|_| panic!("{mode}: {text}\n{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_proxy_idle_timeout_closes_idle_http_and_tcp_connections() {
    let m = mesh("idle", &[("ISTIO_META_IDLE_TIMEOUT", "1s")]);
    let dump = m.admin(0, "/config_dump");
    assert!(
        dump.contains("\"idle_timeout\": \"1s\""),
        "the metadata reached istiod's translation"
    );
    let http = client(&m, "http");
    eprintln!("http: {http}");
    assert_eq!(
        http["codes"],
        serde_json::json!(["200", "200", "200", "200", "200"]),
        "{http}"
    );
    let closed = http["closed_after"].as_f64().expect("closed by the proxy");
    assert!((0.9..8.0).contains(&closed), "{http}");

    let tcp = client(&m, "tcp");
    eprintln!("tcp: {tcp}");
    assert_eq!(tcp["echoed"], 5, "traffic every 0.5 s keeps it open: {tcp}");
    let closed = tcp["closed_after"].as_f64().expect("closed by the proxy");
    assert!((0.9..8.0).contains(&closed), "{tcp}");
}

#[test]
fn a_destination_rule_idle_timeout_closes_idle_upstream_connections() {
    let m = mesh("upidle", &[]);
    // Envoy's default (1 h): the upstream connection stays while the client holds its own.
    let kept = client(&m, "upstream");
    eprintln!("default: {kept}");
    assert_eq!(kept["codes"], serde_json::json!(["200", "200"]), "{kept}");
    assert_eq!(
        (kept["during"].as_u64(), kept["after"].as_u64()),
        (Some(1), Some(1)),
        "{kept}"
    );

    m.write_config(
        "destination-rule.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: cart, namespace: default}\nspec:\n  host: cart\n  trafficPolicy:\n    connectionPool:\n      http: {idleTimeout: 1s}\n",
    );
    wait_for(Duration::from_secs(10), || {
        m.admin(0, "/config_dump")
            .contains("\"idle_timeout\": \"1s\"")
            .then_some(())
    })
    .expect("the DestinationRule reached the client's sidecar");
    let closed = client(&m, "upstream");
    eprintln!("idleTimeout 1s: {closed}");
    assert_eq!(
        closed["codes"],
        serde_json::json!(["200", "200"]),
        "{closed}"
    );
    assert_eq!(
        (closed["during"].as_u64(), closed["after"].as_u64()),
        (Some(1), Some(0)),
        "the idle upstream connection is closed, the client's is not: {closed}"
    );
}
