//! `cargo xtask demo --policies`: Istio's traffic-policy tasks on the bill-service mesh, each
//! applied live by rewriting the YAML outrigger-pilot watches, with the counters that show it:
//! a route timeout against a slow backend (504 UT), retries of a failing backend (attempts seen
//! by the server's sidecar), mirroring to v2 (the client sees only v1), and a circuit breaker
//! tripping (503 UO and `upstream_rq_pending_overflow`).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use outrigger_testkit::mesh::{Mesh, Reply, wait_for};
use outrigger_testkit::netns;

use crate::{cargo, deps, step};

const URL: &str = "http://bill-service:8080/bill";
const HOSTS: &str = "10.96.0.10 bill-service bill-service.default.svc.cluster.local\n";
const VS_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bill-service\n  namespace: default\nspec:\n  hosts: [bill-service]\n  http:\n";
const V1: &str = "[{destination: {host: bill-service, port: {number: 8080}, subset: v1}}]";

/// Requests the server's sidecar has seen inbound (Istio's `reporter="destination"` series).
fn inbound(m: &Mesh, pod: usize) -> u64 {
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
            l.starts_with("istio_requests_total{") && l.contains("reporter=\"destination\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn codes(replies: &[Reply]) -> String {
    let t = Mesh::tally(replies);
    t.iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rewrites the VirtualService and waits until `check` says the new rule answers.
fn apply(m: &Mesh, file: &str, yaml: &str, what: &str, check: impl Fn() -> bool) -> Result<()> {
    m.write_config(file, yaml);
    if wait_for(Duration::from_secs(15), || check().then_some(())).is_none() {
        bail!("{what} was not applied within 15 s");
    }
    Ok(())
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    deps::ensure(deps::TEST)?;
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: stopping the mesh and deleting its network namespaces");
        netns::delete_all();
        std::process::exit(130);
    })?;
    step("building outrigger-pilot, outrigger-proxy, outrigger-init and outrigger-probe");
    cargo(&[
        "build",
        "--quiet",
        "-p",
        "outrigger-pilot",
        "-p",
        "outrigger-proxy",
        "-p",
        "outrigger-init",
        "-p",
        "outrigger-testkit",
    ])?;
    let example =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/bill-service");
    step("the bill-service mesh: client, bill-service v1 and v2, each with its sidecar");
    let mut m = Mesh::new("pol", &example);
    let client = m.add_pod("client", "10.30.0.10", HOSTS);
    let v1 = m.add_pod("bill-service-v1", "10.30.0.11", HOSTS);
    let v2 = m.add_pod("bill-service-v2", "10.30.0.12", HOSTS);
    for (pod, version) in [(v1, "v1"), (v2, "v2")] {
        m.app_http(pod, version, 8080);
    }
    m.sidecar(client, &[("app", "client")]);
    m.sidecar(v1, &[("app", "bill-service"), ("version", "v1")]);
    m.sidecar(v2, &[("app", "bill-service"), ("version", "v2")]);
    let mut summary: Vec<(String, String)> = Vec::new();

    // 1. Timeout.
    step("timeout: route timeout 0.5 s; the backend takes 2 s (x-probe-delay-ms: 2000)");
    apply(
        &m,
        "virtual-service.yaml",
        &format!("{VS_HEAD}  - timeout: 0.5s\n    route: {V1}\n"),
        "the timeout rule",
        || m.curl(client, URL, &["-H", "x-probe-delay-ms: 2000"]).code == 504,
    )?;
    let t = Instant::now();
    let slow = m.curl_many(client, URL, 5, &["-H", "x-probe-delay-ms: 2000"]);
    let per = t.elapsed().as_millis() / 5;
    eprintln!(
        "    5 requests: {} in {per} ms each (flag UT)",
        codes(&slow)
    );
    if slow.iter().any(|r| r.code != 504) {
        bail!("timeout: expected 5 × 504, got {}", codes(&slow));
    }
    summary.push((
        "timeout 0.5 s, backend 2 s".into(),
        format!("{}, {per} ms each", codes(&slow)),
    ));

    // 2. Retries.
    step("retries: attempts 3 on 5xx; the backend answers 503 (x-probe-status: 503)");
    apply(
        &m,
        "virtual-service.yaml",
        &format!(
            "{VS_HEAD}  - retries: {{attempts: 3, perTryTimeout: 1s, retryOn: 5xx}}\n    route: {V1}\n"
        ),
        "the retry rule",
        || {
            let before = inbound(&m, v1);
            m.curl(client, URL, &["-H", "x-probe-status: 503"]);
            inbound(&m, v1) - before == 4
        },
    )?;
    let before = inbound(&m, v1);
    let failing = m.curl_many(client, URL, 10, &["-H", "x-probe-status: 503"]);
    let attempts = inbound(&m, v1) - before;
    eprintln!(
        "    10 requests: {}; bill-service-v1's sidecar saw {attempts} attempts (1 + 3 retries each)",
        codes(&failing)
    );
    if attempts != 40 || failing.iter().any(|r| r.code != 503) {
        bail!(
            "retries: expected 10 × 503 from 40 attempts, got {} from {attempts}",
            codes(&failing)
        );
    }
    summary.push((
        "retries attempts 3, backend 503".into(),
        format!(
            "{}, {attempts} upstream attempts for 10 requests",
            codes(&failing)
        ),
    ));

    // 3. Mirroring.
    step("mirror: everything to v1, mirrored 100% to v2 (fire and forget)");
    let v2_before = inbound(&m, v2);
    apply(
        &m,
        "virtual-service.yaml",
        &format!(
            "{VS_HEAD}  - mirror: {{host: bill-service, port: {{number: 8080}}, subset: v2}}\n    mirrorPercentage: {{value: 100}}\n    route: {V1}\n"
        ),
        "the mirror rule",
        || {
            m.curl(client, URL, &[]);
            std::thread::sleep(Duration::from_millis(100));
            inbound(&m, v2) > v2_before
        },
    )?;
    let v2_start = inbound(&m, v2);
    let mirrored = m.curl_many(client, URL, 50, &[]);
    let seen = wait_for(Duration::from_secs(5), || {
        let n = inbound(&m, v2) - v2_start;
        (n >= 50).then_some(n)
    })
    .unwrap_or_else(|| inbound(&m, v2) - v2_start);
    eprintln!(
        "    50 requests: the client saw {}; bill-service-v2's sidecar received {seen} mirrored copies",
        codes(&mirrored)
    );
    if seen < 50 || mirrored.iter().any(|r| r.server().as_deref() != Some("v1")) {
        bail!(
            "mirror: expected the client to see v1 only and v2 to get 50 copies, got {} and {seen}",
            codes(&mirrored)
        );
    }
    summary.push((
        "mirror 100% to v2".into(),
        format!("client: {}; v2 received {seen} copies", codes(&mirrored)),
    ));

    // 4. Circuit breaking.
    step(
        "circuit breaker: connectionPool maxConnections 1, http1MaxPendingRequests 1; 10 parallel slow requests",
    );
    m.write_config(
        "destination-rule.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bill-service, namespace: default}\nspec:\n  host: bill-service\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n",
    );
    apply(
        &m,
        "virtual-service.yaml",
        &format!("{VS_HEAD}  - route: {V1}\n"),
        "the plain route",
        || m.curl(client, URL, &[]).code == 200,
    )?;
    let stats_line = |m: &Mesh| -> u64 {
        m.admin(client, "/stats")
            .lines()
            .filter(|l| {
                l.starts_with("cluster.outbound|8080|v1|")
                    && l.contains(".upstream_rq_pending_overflow: ")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let tripped = wait_for(Duration::from_secs(15), || {
        let r = m.curl_many(
            client,
            URL,
            10,
            &[
                "--parallel",
                "--parallel-immediate",
                "--parallel-max",
                "10",
                "-H",
                "x-probe-delay-ms: 300",
            ],
        );
        r.iter().any(|r| r.code == 503).then_some(r)
    });
    let Some(burst) = tripped else {
        bail!("the circuit breaker never tripped");
    };
    let overflow = stats_line(&m);
    let rejected = burst.iter().filter(|r| r.code == 503).count() as u64;
    if overflow < rejected {
        bail!("circuit breaker: {rejected} × 503 but upstream_rq_pending_overflow {overflow}");
    }
    eprintln!(
        "    10 parallel requests: {}; /stats: upstream_rq_pending_overflow {overflow}",
        codes(&burst)
    );
    summary.push((
        "circuit breaker 1 connection, 1 pending".into(),
        format!("{}; pending overflow counter {overflow}", codes(&burst)),
    ));

    step("client sidecar: istio_requests_total by code and flags");
    let text = m.pods[client].ns.ok(
        "curl",
        &[
            "-s",
            "--max-time",
            "3",
            "http://127.0.0.1:15090/stats/prometheus",
        ],
    );
    let label = |line: &str, key: &str| -> String {
        line.split(&format!("{key}=\"")[..])
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_string()
    };
    eprintln!(
        "    {:<20} {:>5} {:>6} {:>9}",
        "destination", "code", "flags", "requests"
    );
    for line in text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
    {
        eprintln!(
            "    {:<20} {:>5} {:>6} {:>9}",
            label(line, "destination_workload"),
            label(line, "response_code"),
            label(line, "response_flags"),
            line.rsplit(' ').next().unwrap_or("")
        );
    }

    step("summary");
    let width = summary.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in &summary {
        eprintln!("    {k:<width$}  {v}");
    }
    drop(m);
    step(&format!(
        "done in {:.1} s; every namespace, process and file the demo created is gone",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
