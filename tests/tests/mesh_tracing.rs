//! Spans reported to a Zipkin collector, configured as Istio users configure it: first the
//! legacy `defaultConfig.tracing.zipkin.address`, then a Zipkin `extensionProviders` entry named
//! by `defaultProviders.tracing`, switched live. The collector is a Python HTTP server in a pod
//! of its own that records every report. Each request through the mesh gives two spans: the
//! client sidecar's CLIENT span and the server sidecar's SERVER span, its child. Then the same
//! with an OpenTelemetry provider: OTLP to a grpcio server, and OTLP/HTTP, switched live; the
//! collector decodes the protobuf wire format itself (field numbers from opentelemetry-proto).

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

/// The bill-service mesh with tracing: `registry` added to its configuration, `mesh` as the
/// mesh config, and a collector pod (name, IP, Python script) recording into the returned
/// file. The client is pod 0.
fn traced_mesh(
    tag: &str,
    registry: (&str, &str),
    mesh: &str,
    collector: (&str, &str, &str),
) -> (Mesh, PathBuf) {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/bill-service");
    let mut m = Mesh::new(tag, &example);
    m.write_config(registry.0, registry.1);
    m.write_config("mesh-config.yaml", mesh);
    let hosts = "10.96.0.10 bill-service bill-service.default.svc.cluster.local\n";
    let client = m.add_pod("client", "10.30.0.10", hosts);
    let v1 = m.add_pod("bill-service-v1", "10.30.0.11", hosts);
    let v2 = m.add_pod("bill-service-v2", "10.30.0.12", hosts);
    let pod = m.add_pod(collector.0, collector.1, hosts);
    let file = m.dir.join("reports.jsonl");
    let script = m.dir.join("collector.py");
    std::fs::write(&script, collector.2).unwrap();
    m.background(
        pod,
        "/usr/bin/python3",
        &[&script.display().to_string(), &file.display().to_string()],
    );
    for (pod, version) in [(v1, "v1"), (v2, "v2")] {
        m.app_http(pod, version, 8080);
    }
    m.sidecar(client, &[("app", "client")]);
    m.sidecar(v1, &[("app", "bill-service"), ("version", "v1")]);
    m.sidecar(v2, &[("app", "bill-service"), ("version", "v2")]);
    (m, file)
}

#[test]
fn sidecars_report_spans_to_zipkin() {
    let (m, file) = traced_mesh(
        "zipk",
        ("zipkin.yaml", ZIPKIN_SERVICE),
        &mesh_config(
            "defaultConfig:\n  tracing:\n    sampling: 100\n    zipkin:\n      address: 10.30.0.20:9411\n",
        ),
        ("zipkin", "10.30.0.20", COLLECTOR),
    );
    let client = 0;

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

/// An OTLP collector: grpcio's generic handler for `TraceService/Export` on 4317 and OTLP/HTTP
/// on 4318; each report becomes a JSON line with its spans decoded from the wire format.
const OTEL_COLLECTOR: &str = r#"
import http.server, json, sys, threading
from concurrent import futures
import grpc

out = sys.argv[1]
lock = threading.Lock()

def fields(buf):
    """Protobuf wire format → {field number: [values]}; length-delimited values stay bytes."""
    i, res = 0, {}
    def varint():
        nonlocal i
        shift = value = 0
        while True:
            b = buf[i]; i += 1
            value |= (b & 0x7f) << shift
            shift += 7
            if b < 0x80:
                return value
    while i < len(buf):
        key = varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            v = varint()
        elif wire == 1:
            v = int.from_bytes(buf[i:i + 8], "little"); i += 8
        elif wire == 2:
            n = varint(); v = buf[i:i + n]; i += n
        elif wire == 5:
            v = int.from_bytes(buf[i:i + 4], "little"); i += 4
        else:
            raise ValueError("wire type %d" % wire)
        res.setdefault(num, []).append(v)
    return res

def attrs(kvs):
    out = {}
    for kv in kvs:
        f = fields(kv)
        value = fields(f[2][0]).get(1, [b""])[0] if 2 in f else b""
        out[f[1][0].decode()] = value.decode()
    return out

def decode(body):
    """ExportTraceServiceRequest → [{service, traceId, id, parentId, name, kind, start, end, attributes}]."""
    spans = []
    for rs in fields(body).get(1, []):
        r = fields(rs)
        resource = attrs(fields(r[1][0]).get(1, [])) if 1 in r else {}
        for ss in r.get(2, []):
            for sp in fields(ss).get(2, []):
                s = fields(sp)
                spans.append({
                    "service": resource.get("service.name"),
                    "traceId": s[1][0].hex(), "id": s[2][0].hex(),
                    "parentId": s.get(4, [b""])[0].hex(),
                    "name": s[5][0].decode(), "kind": s.get(6, [0])[0],
                    "start": s[7][0], "end": s[8][0],
                    "attributes": attrs(s.get(9, [])),
                })
    return spans

def record(transport, meta, body):
    with lock, open(out, "a") as f:
        f.write(json.dumps({"transport": transport, "meta": meta, "spans": decode(body)}) + "\n")

def export(request, context):
    meta = {k: v for k, v in context.invocation_metadata()}
    record("grpc", meta, request)
    return b""

server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "opentelemetry.proto.collector.trace.v1.TraceService",
    {"Export": grpc.unary_unary_rpc_method_handler(export)}),))
server.add_insecure_port("0.0.0.0:4317")
server.start()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        record("http", {"path": self.path, "content-type": self.headers.get("content-type"),
                        "host": self.headers.get("host")}, body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

http_server = http.server.ThreadingHTTPServer(("0.0.0.0", 4318), Handler)
print("ready", flush=True)
http_server.serve_forever()
"#;

const OTEL_SERVICE: &str = concat!(
    "apiVersion: v1\nkind: Service\nmetadata: {name: otel-collector, namespace: observability}\n",
    "spec:\n  clusterIP: 10.96.0.60\n  selector: {app: otel-collector}\n",
    "  ports:\n  - {name: grpc-otlp, port: 4317, targetPort: 4317}\n",
    "  - {name: http-otlp, port: 4318, targetPort: 4318}\n",
    "---\napiVersion: v1\nkind: Pod\nmetadata: {name: otel, namespace: observability, labels: {app: otel-collector}}\n",
    "status: {podIP: 10.30.0.21}\n",
);

fn otel_config(port: u16, http: &str) -> String {
    mesh_config(&format!(
        "defaultConfig:\n  tracing:\n    sampling: 100\nextensionProviders:\n- name: otel\n  opentelemetry:\n    service: otel-collector.observability.svc.cluster.local\n    port: {port}\n{http}defaultProviders:\n  tracing: [otel]\n"
    ))
}

fn otlp_reports(file: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn otlp_spans(file: &std::path::Path, transport: &str) -> Vec<Value> {
    otlp_reports(file)
        .into_iter()
        .filter(|r| r["transport"] == transport)
        .flat_map(|r| r["spans"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[test]
fn sidecars_export_spans_over_otlp() {
    let (m, file) = traced_mesh(
        "otel",
        ("otel.yaml", OTEL_SERVICE),
        &otel_config(4317, ""),
        ("otel", "10.30.0.21", OTEL_COLLECTOR),
    );
    let client = 0;

    // 1. gRPC: 10 requests, 20 spans.
    let replies = m.curl_many(client, URL, 10, &[]);
    assert_eq!(replies.iter().filter(|r| r.code == 200).count(), 10);
    let all = wait_for(Duration::from_secs(15), || {
        let all = otlp_spans(&file, "grpc");
        (all.len() >= 20).then_some(all)
    })
    .unwrap_or_else(|| panic!("expected 20 spans over gRPC: {:#?}", otlp_reports(&file)));
    assert_eq!(all.len(), 20, "{all:#?}");
    // SPAN_KIND_CLIENT is 3, SPAN_KIND_SERVER 2.
    let clients: Vec<&Value> = all.iter().filter(|v| v["kind"] == 3).collect();
    let servers: Vec<&Value> = all.iter().filter(|v| v["kind"] == 2).collect();
    assert_eq!((clients.len(), servers.len()), (10, 10), "{all:#?}");
    for c in &clients {
        assert_eq!(c["service"], "client.default");
        assert_eq!(s(c, "name"), OPERATION);
        assert_eq!(s(c, "traceId").len(), 32);
        assert_eq!(s(c, "id").len(), 16);
        assert_eq!(s(c, "parentId"), "", "a root span: {c}");
        assert_eq!(c["attributes"]["http.status_code"], "200");
        assert_eq!(c["attributes"]["http.method"], "GET");
        assert!(c["end"].as_u64() > c["start"].as_u64(), "{c}");
    }
    for sv in &servers {
        assert_eq!(sv["service"], "bill-service.default");
        let parent = clients
            .iter()
            .find(|c| s(c, "id") == s(sv, "parentId"))
            .unwrap_or_else(|| panic!("no client span is the parent of {sv}"));
        assert_eq!(s(parent, "traceId"), s(sv, "traceId"));
    }
    // Only grpcio's TraceService/Export handler records "grpc": these came as gRPC calls.
    assert!(otlp_reports(&file).iter().all(|r| r["transport"] == "grpc"));
    let stats = m.admin(client, "/stats");
    assert!(
        stats.contains("tracing.opentelemetry.spans_sent: 10\n"),
        "the client sidecar's counters:\n{stats}"
    );

    // 2. OTLP/HTTP, switched live.
    m.write_config(
        "mesh-config.yaml",
        &otel_config(
            4318,
            "    http:\n      path: /v1/traces\n      timeout: 5s\n",
        ),
    );
    let over_http = wait_for(Duration::from_secs(30), || {
        let replies = m.curl_many(client, URL, 5, &[]);
        assert!(replies.iter().all(|r| r.code == 200));
        std::thread::sleep(Duration::from_millis(500));
        otlp_reports(&file).into_iter().find(|r| {
            r["transport"] == "http"
                && r["spans"]
                    .as_array()
                    .is_some_and(|s| s.iter().all(|v| v["service"] == "client.default"))
        })
    })
    .unwrap_or_else(|| panic!("no OTLP/HTTP report: {:#?}", otlp_reports(&file)));
    assert_eq!(over_http["meta"]["path"], "/v1/traces");
    assert_eq!(over_http["meta"]["content-type"], "application/x-protobuf");
    assert_eq!(
        over_http["meta"]["host"],
        "otel-collector.observability.svc.cluster.local"
    );
    assert!(
        over_http["spans"]
            .as_array()
            .is_some_and(|s| s.iter().all(|v| v["kind"] == 3 && v["name"] == OPERATION)),
        "{over_http}"
    );
}
