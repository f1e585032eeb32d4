//! Spans reported to a Zipkin collector, configured as Istio users configure it: first the
//! legacy `defaultConfig.tracing.zipkin.address`, then a Zipkin `extensionProviders` entry named
//! by `defaultProviders.tracing`, switched live. The collector is a Python HTTP server in a pod
//! of its own that records every report. Each request through the mesh gives two spans: the
//! client sidecar's CLIENT span and the server sidecar's SERVER span, its child.

use std::path::PathBuf;
use std::time::Duration;

use outrigger_testkit::mesh::{Mesh, wait_for};
use serde_json::Value;

const URL: &str = "http://bill-service:8080/bill?id=7";
const OPERATION: &str = "bill-service.default.svc.cluster.local:8080/*";

/// Appends one JSON line per report: path, Host, Content-Type and the spans.
const COLLECTOR: &str = r#"
import http.server, json, sys

out = sys.argv[1]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        record = {"path": self.path, "host": self.headers.get("host"),
                  "type": self.headers.get("content-type"), "spans": json.loads(body)}
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("0.0.0.0", 9411), Handler)
print("ready", flush=True)
server.serve_forever()
"#;

/// The collector as a registry service, for the extension provider.
const ZIPKIN_SERVICE: &str = concat!(
    "apiVersion: v1\nkind: Service\nmetadata: {name: zipkin, namespace: istio-system}\n",
    "spec:\n  clusterIP: 10.96.0.50\n  selector: {app: zipkin}\n",
    "  ports:\n  - {name: http-query, port: 9411, targetPort: 9411}\n",
    "---\napiVersion: v1\nkind: Pod\nmetadata: {name: zipkin, namespace: istio-system, labels: {app: zipkin}}\n",
    "status: {podIP: 10.30.0.20}\n",
);

fn mesh_config(tracing: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\ndata:\n  mesh: |-\n{}",
        tracing
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    )
}

struct Report {
    path: String,
    host: String,
    content_type: String,
    spans: Vec<Value>,
}

fn reports(file: &std::path::Path) -> Vec<Report> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| Report {
            path: v["path"].as_str().unwrap_or_default().into(),
            host: v["host"].as_str().unwrap_or_default().into(),
            content_type: v["type"].as_str().unwrap_or_default().into(),
            spans: v["spans"].as_array().cloned().unwrap_or_default(),
        })
        .collect()
}

fn spans(file: &std::path::Path) -> Vec<Value> {
    reports(file).into_iter().flat_map(|r| r.spans).collect()
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

/// Waits (up to 15 s: a partial batch goes on the 5 s timer) for `n` spans.
fn wait_spans(file: &std::path::Path, n: usize) -> Vec<Value> {
    wait_for(Duration::from_secs(15), || {
        let all = spans(file);
        (all.len() >= n).then_some(all)
    })
    .unwrap_or_else(|| panic!("expected {n} spans, got {:#?}", spans(file)))
}

#[test]
fn sidecars_report_spans_to_zipkin() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/bill-service");
    let mut m = Mesh::new("zipk", &example);
    m.write_config("zipkin.yaml", ZIPKIN_SERVICE);
    m.write_config(
        "mesh-config.yaml",
        &mesh_config(
            "defaultConfig:\n  tracing:\n    sampling: 100\n    zipkin:\n      address: 10.30.0.20:9411\n",
        ),
    );
    let hosts = "10.96.0.10 bill-service bill-service.default.svc.cluster.local\n";
    let client = m.add_pod("client", "10.30.0.10", hosts);
    let v1 = m.add_pod("bill-service-v1", "10.30.0.11", hosts);
    let v2 = m.add_pod("bill-service-v2", "10.30.0.12", hosts);
    let zipkin = m.add_pod("zipkin", "10.30.0.20", hosts);
    let file = m.dir.join("spans.jsonl");
    let script = m.dir.join("collector.py");
    std::fs::write(&script, COLLECTOR).unwrap();
    m.background(
        zipkin,
        "/usr/bin/python3",
        &[&script.display().to_string(), &file.display().to_string()],
    );
    for (pod, version) in [(v1, "v1"), (v2, "v2")] {
        m.app_http(pod, version, 8080);
    }
    m.sidecar(client, &[("app", "client")]);
    m.sidecar(v1, &[("app", "bill-service"), ("version", "v1")]);
    m.sidecar(v2, &[("app", "bill-service"), ("version", "v2")]);

    // 1. The legacy address: 10 requests, 20 spans.
    let replies = m.curl_many(client, URL, 10, &[]);
    assert_eq!(replies.iter().filter(|r| r.code == 200).count(), 10);
    let all = wait_spans(&file, 20);
    assert_eq!(all.len(), 20, "{all:#?}");
    for r in reports(&file) {
        assert_eq!(r.path, "/api/v2/spans");
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.host, "10.30.0.20");
    }
    let clients: Vec<&Value> = all.iter().filter(|v| s(v, "kind") == "CLIENT").collect();
    let servers: Vec<&Value> = all.iter().filter(|v| s(v, "kind") == "SERVER").collect();
    assert_eq!((clients.len(), servers.len()), (10, 10), "{all:#?}");
    for c in &clients {
        assert_eq!(s(c, "name"), OPERATION);
        assert_eq!(c["localEndpoint"]["serviceName"], "client.default");
        assert_eq!(c["localEndpoint"]["ipv4"], "10.30.0.10");
        assert_eq!(s(c, "traceId").len(), 32, "a new trace at the edge: {c}");
        assert!(c.get("parentId").is_none(), "the edge span is a root: {c}");
        let tags = &c["tags"];
        assert_eq!(tags["http.status_code"], "200");
        assert_eq!(tags["http.method"], "GET");
        assert_eq!(tags["http.url"], "http://bill-service:8080/bill?id=7");
        assert_eq!(tags["response_flags"], "-");
        assert_eq!(tags["istio.canonical_service"], "client");
        let upstream = tags["upstream_cluster"].as_str().unwrap_or_default();
        assert!(
            upstream.starts_with("outbound|8080|v1|") || upstream.starts_with("outbound|8080|v2|"),
            "{c}"
        );
        let remote = c["remoteEndpoint"]["ipv4"].as_str().unwrap_or_default();
        assert!(remote == "10.30.0.11" || remote == "10.30.0.12", "{c}");
        assert!(c["duration"].as_u64().unwrap_or(0) >= 1);
    }
    // Each server span is the child of one client span, in its trace.
    let mut parents: Vec<&str> = Vec::new();
    for sv in &servers {
        assert_eq!(s(sv, "name"), OPERATION);
        assert_eq!(sv["localEndpoint"]["serviceName"], "bill-service.default");
        let parent = clients
            .iter()
            .find(|c| s(c, "id") == s(sv, "parentId"))
            .unwrap_or_else(|| panic!("no client span is the parent of {sv}"));
        assert_eq!(s(parent, "traceId"), s(sv, "traceId"));
        assert_eq!(sv["tags"]["upstream_cluster"], "inbound|8080||");
        assert_eq!(sv["tags"]["istio.canonical_service"], "bill-service");
        parents.push(s(sv, "parentId"));
    }
    parents.sort();
    parents.dedup();
    assert_eq!(parents.len(), 10, "one server span per client span");
    let stats = m.admin(client, "/stats");
    assert!(
        stats.contains("tracing.zipkin.spans_sent: 10\n"),
        "the client sidecar's counters:\n{stats}"
    );

    // 2. The caller's decision stands: an unsampled trace is not reported, a sampled one is
    //    continued with its ids.
    let r = m.curl(
        client,
        URL,
        &[
            "-H",
            "x-b3-traceid: 0000000000000000000000000000000a",
            "-H",
            "x-b3-spanid: 000000000000000b",
            "-H",
            "x-b3-sampled: 0",
        ],
    );
    assert_eq!(r.code, 200);
    let trace = "463ac35c9f6413ad48485a3953bb6124";
    let r = m.curl(
        client,
        URL,
        &[
            "-H",
            &format!("x-b3-traceid: {trace}"),
            "-H",
            "x-b3-spanid: a2fb4a1d1a96d312",
            "-H",
            "x-b3-sampled: 1",
        ],
    );
    assert_eq!(r.code, 200);
    let all = wait_spans(&file, 22);
    let continued: Vec<&Value> = all.iter().filter(|v| s(v, "traceId") == trace).collect();
    assert_eq!(continued.len(), 2, "{all:#?}");
    let c = continued
        .iter()
        .find(|v| s(v, "kind") == "CLIENT")
        .expect("client span");
    assert_eq!(s(c, "parentId"), "a2fb4a1d1a96d312");
    assert!(
        !all.iter()
            .any(|v| s(v, "traceId") == "0000000000000000000000000000000a"),
        "an unsampled trace was reported: {all:#?}"
    );
    assert_eq!(all.len(), 22, "{all:#?}");

    // 3. A Zipkin extension provider, selected by defaultProviders: spans go to the service's
    //    outbound cluster, with its name as Host.
    m.write_config(
        "mesh-config.yaml",
        &mesh_config(
            "defaultConfig:\n  tracing:\n    sampling: 100\nextensionProviders:\n- name: zipkin\n  zipkin:\n    service: zipkin.istio-system.svc.cluster.local\n    port: 9411\ndefaultProviders:\n  tracing: [zipkin]\n",
        ),
    );
    let fqdn = "zipkin.istio-system.svc.cluster.local";
    let switched = wait_for(Duration::from_secs(30), || {
        // Five requests fill a client batch, which goes at once.
        let replies = m.curl_many(client, URL, 5, &[]);
        assert!(replies.iter().all(|r| r.code == 200));
        std::thread::sleep(Duration::from_millis(500));
        reports(&file).into_iter().find(|r| {
            r.host == fqdn
                && r.spans
                    .iter()
                    .all(|v| v["localEndpoint"]["serviceName"] == "client.default")
        })
    })
    .unwrap_or_else(|| panic!("no report reached the provider's service"));
    assert_eq!(switched.path, "/api/v2/spans");
    assert!(
        switched.spans.iter().all(|v| s(v, "kind") == "CLIENT"
            && v["tags"]["upstream_cluster"]
                .as_str()
                .is_some_and(|u| u.starts_with("outbound|8080|"))),
        "{:#?}",
        switched.spans
    );
}
