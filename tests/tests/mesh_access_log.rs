//! Access logs as Istio users turn them on: `accessLogFile` in the `istio` ConfigMap's mesh
//! config. outrigger-pilot adds the file logger with Istio's format to every HTTP connection
//! manager; each sidecar writes a line per request (the client's outbound, the server's
//! inbound). Then the encoding is switched to JSON live.

use std::path::PathBuf;
use std::time::Duration;

use outrigger_testkit::mesh::{Mesh, wait_for};

const URL: &str = "http://bill-service:8080/bill?id=7";

fn mesh_config(file: &str, encoding: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\ndata:\n  mesh: |-\n    accessLogFile: {file}\n    accessLogEncoding: {encoding}\n    defaultConfig:\n      discoveryAddress: istiod.istio-system.svc:15012\n"
    )
}

#[test]
fn access_logs_follow_the_mesh_config() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/bill-service");
    let mut m = Mesh::new("alog", &example);
    let log = m.dir.join("access.log");
    // The sidecars run as uid 1337: the file is theirs to append to.
    std::fs::write(&log, "").unwrap();
    std::process::Command::new("chmod")
        .arg("666")
        .arg(&log)
        .status()
        .unwrap();
    m.write_config(
        "mesh-config.yaml",
        &mesh_config(&log.display().to_string(), "TEXT"),
    );
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

    let replies = m.curl_many(
        client,
        URL,
        10,
        &["-H", "x-request-id: req-0001", "-A", "test-agent/1.0"],
    );
    assert_eq!(replies.iter().filter(|r| r.code == 200).count(), 10);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let text = wait_for(Duration::from_secs(5), || {
        let t = read();
        (t.lines().count() >= 20).then_some(t)
    })
    .unwrap_or_else(|| panic!("expected 20 lines (10 outbound, 10 inbound):\n{}", read()));
    let outbound: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" outbound|8080|"))
        .collect();
    let inbound: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" inbound|8080||"))
        .collect();
    assert_eq!((outbound.len(), inbound.len()), (10, 10), "{text}");
    // One outbound line, field by field as Istio's TEXT format has them.
    let line = outbound[0];
    assert!(line.starts_with("[20") && line.contains("Z] "), "{line}");
    assert!(
        line.contains("\"GET /bill?id=7 HTTP/1.1\" 200 - via_upstream - \"-\" 0 "),
        "{line}"
    );
    assert!(
        line.contains("\"test-agent/1.0\" \"req-0001\" \"bill-service:8080\" \"10.30.0.1"),
        "{line}"
    );
    assert!(line.contains(" 10.96.0.10:8080 10.30.0.10:"), "{line}");
    // The server side logs the same request id, coming from the client's sidecar.
    assert!(inbound.iter().all(|l| l.contains("\"req-0001\"")), "{text}");

    // Istio's byte histograms: the responses' sizes, and a 5-byte POST body.
    let posted = m.curl(client, URL, &["-d", "hello"]);
    assert_eq!(posted.code, 200);
    let metrics = m.pods[client].ns.ok(
        "curl",
        &[
            "-s",
            "--max-time",
            "3",
            "http://127.0.0.1:15090/stats/prometheus",
        ],
    );
    let sum = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_sum{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let body_len: usize = replies.iter().map(|r| r.body.len()).sum();
    assert_eq!(sum("istio_request_bytes"), 5.0, "{metrics}");
    assert!(
        sum("istio_response_bytes") >= body_len as f64,
        "{} < {body_len}",
        sum("istio_response_bytes")
    );

    // Switched to JSON while running: new lines are JSON objects with typed values.
    m.write_config(
        "mesh-config.yaml",
        &mesh_config(&log.display().to_string(), "JSON"),
    );
    let json = wait_for(Duration::from_secs(10), || {
        m.curl(client, URL, &[]);
        read()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["upstream_cluster"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("outbound|8080|"))
            })
    })
    .unwrap_or_else(|| panic!("no JSON line:\n{}", read()));
    assert_eq!(json["response_code"], 200, "{json}");
    assert_eq!(json["method"], "GET", "{json}");
    assert_eq!(json["path"], "/bill?id=7", "{json}");
    assert_eq!(json["response_flags"], "-", "{json}");
    assert_eq!(
        json["upstream_transport_failure_reason"],
        serde_json::Value::Null
    );
    assert!(json["duration"].is_u64(), "{json}");
    assert_eq!(
        json["request_id"].as_str().map(str::len),
        Some(36),
        "{json}"
    );
}

/// Tracing as Istio configures it (`enableTracing`, `defaultConfig.tracing.sampling`): the
/// client's sidecar starts a B3 trace, the server's sidecar continues it with a child span, and
/// the app sees both; an incoming W3C `traceparent` or B3 context is continued, not replaced.
#[test]
fn trace_headers_are_started_at_the_edge_and_continued() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/bill-service");
    let mut m = Mesh::new("trace", &example);
    let tracing = |sampling: u32| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |-\n    enableTracing: true\n    defaultConfig:\n      tracing:\n        sampling: {sampling}\n"
        )
    };
    m.write_config("mesh-config.yaml", &tracing(100));
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
    let hex = |v: &serde_json::Value, len: usize| {
        v.as_str()
            .is_some_and(|s| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()))
    };

    // No context: a new 128-bit trace, sampled (100%), two spans deep by the time it arrives.
    let r = m.curl(client, URL, &[]).json();
    let h = &r["headers"];
    assert!(hex(&h["x-b3-traceid"], 32), "{r}");
    assert!(hex(&h["x-b3-spanid"], 16), "{r}");
    assert!(hex(&h["x-b3-parentspanid"], 16), "{r}");
    assert_ne!(h["x-b3-spanid"], h["x-b3-parentspanid"]);
    assert_eq!(h["x-b3-sampled"], "1", "{r}");
    assert!(h.get("traceparent").is_none(), "{r}");

    // W3C context from the app: same trace, new spans, the sampling decision kept.
    let r = m
        .curl(
            client,
            URL,
            &[
                "-H",
                "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            ],
        )
        .json();
    let h = &r["headers"];
    assert_eq!(h["x-b3-traceid"], "0af7651916cd43dd8448eb211c80319c", "{r}");
    let tp = h["traceparent"].as_str().unwrap_or_default();
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{r}"
    );
    assert!(
        tp.ends_with("-00") && !tp.contains("b7ad6b7169203331"),
        "{r}"
    );
    assert_eq!(h["x-b3-sampled"], "0", "{r}");

    // B3 from the app: continued.
    let r = m
        .curl(
            client,
            URL,
            &[
                "-H",
                "x-b3-traceid: 463ac35c9f6413ad48485a3953bb6124",
                "-H",
                "x-b3-spanid: a2fb4a1d1a96d312",
                "-H",
                "x-b3-sampled: 1",
            ],
        )
        .json();
    assert_eq!(
        r["headers"]["x-b3-traceid"],
        "463ac35c9f6413ad48485a3953bb6124"
    );
    assert_eq!(r["headers"]["x-b3-sampled"], "1");

    // Sampling 0: traces still get ids, none sampled.
    m.write_config("mesh-config.yaml", &tracing(0));
    let unsampled = wait_for(Duration::from_secs(10), || {
        let r = m.curl_many(client, URL, 20, &[]);
        r.iter()
            .all(|r| r.json()["headers"]["x-b3-sampled"] == "0")
            .then_some(())
    });
    assert!(unsampled.is_some(), "sampling 0 never took effect");
}

/// Fault injection as telemetry shows it: a delayed request carries the DI flag, a gRPC abort
/// (VirtualService `grpcStatus`) answers 200 with `grpc-status` and the FI flag.
#[test]
fn fault_flags_and_grpc_aborts() {
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/bill-service");
    let mut m = Mesh::new("gfault", &example);
    m.write_config(
        "virtual-service.yaml",
        concat!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bill-service, namespace: default}\n",
            "spec:\n  hosts: [bill-service]\n  http:\n",
            "  - match: [{headers: {x-grpc: {exact: \"1\"}}}]\n",
            "    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}\n",
            "    route: [{destination: {host: bill-service, port: {number: 8080}, subset: v1}}]\n",
            "  - fault: {delay: {fixedDelay: 20ms, percentage: {value: 100}}}\n",
            "    route: [{destination: {host: bill-service, port: {number: 8080}, subset: v1}}]\n",
        ),
    );
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

    let delayed = m.curl_many(client, URL, 10, &[]);
    assert!(
        delayed
            .iter()
            .all(|r| r.code == 200 && r.server().as_deref() == Some("v1"))
    );
    let out = m.pods[client]
        .ns
        .command_as(1000, "curl")
        .args(["-s", "-i", "--max-time", "5", "-H", "x-grpc: 1", URL])
        .output()
        .expect("run curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("grpc-status: 14\r\n"), "{head}");
    assert!(head.contains("content-type: application/grpc"), "{head}");

    let metrics = m.pods[client].ns.ok(
        "curl",
        &[
            "-s",
            "--max-time",
            "3",
            "http://127.0.0.1:15090/stats/prometheus",
        ],
    );
    let count = |needles: &[&str]| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{") && needles.iter().all(|n| l.contains(n))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    // The admin `/stats` lists the circuit-breaking counters istioctl users grep for.
    let stats = m.admin(client, "/stats");
    assert!(
        stats.contains(
            "cluster.outbound|8080|v1|bill-service.default.svc.cluster.local.upstream_rq_pending_overflow: 0\n"
        ),
        "{stats}"
    );
    assert_eq!(
        count(&["response_flags=\"DI\"", "response_code=\"200\""]),
        10,
        "{metrics}"
    );
    assert_eq!(
        count(&[
            "response_flags=\"FI\"",
            "grpc_response_status=\"14\"",
            "request_protocol=\"grpc\""
        ]),
        1,
        "{metrics}"
    );
}
