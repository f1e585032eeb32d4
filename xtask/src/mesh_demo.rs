//! `cargo xtask demo`: the bill-service scenario of Istio's docs on one machine. A client pod and
//! two versions of bill-service in throw-away network namespaces on a bridge, each with
//! outrigger-init's rules and an outrigger-proxy sidecar, configured by outrigger-pilot from
//! examples/bill-service. Shows the 90/10 split, then a header rule and a fault rule applied live.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use outrigger_testkit::mesh::{Mesh, Reply, wait_for};
use outrigger_testkit::netns;

use crate::{cargo, deps, step};

const URL: &str = "http://bill-service:8080/bill";
const HOSTS: &str = "10.96.0.10 bill-service bill-service.default.svc.cluster.local\n";

const VS_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bill-service\n  namespace: default\nspec:\n  hosts: [bill-service]\n  http:\n";

fn dest(subset: &str) -> String {
    format!("[{{destination: {{host: bill-service, port: {{number: 8080}}, subset: {subset}}}}}]")
}

fn table(title: &str, replies: &[Reply]) -> String {
    let t = Mesh::tally(replies);
    let total = replies.len().max(1);
    let mut out = format!(
        "    {title}\n    {:<14} {:>8} {:>7}\n",
        "answered by", "requests", "share"
    );
    for (k, n) in &t {
        let bar = "█".repeat(n * 30 / total);
        out.push_str(&format!(
            "    {k:<14} {n:>8} {:>6.1}%  {bar}\n",
            *n as f64 * 100.0 / total as f64
        ));
    }
    out
}

fn share(replies: &[Reply], key: &str) -> f64 {
    *Mesh::tally(replies).get(key).unwrap_or(&0) as f64 * 100.0 / replies.len().max(1) as f64
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    deps::ensure(deps::TEST)?;
    let dir_for_cleanup =
        std::env::temp_dir().join(format!("outrigger-mesh-demo-{}", std::process::id()));
    ctrlc::set_handler(move || {
        eprintln!("\ninterrupted: stopping the mesh and deleting its network namespaces");
        netns::delete_all();
        let _ = std::fs::remove_dir_all(&dir_for_cleanup);
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
        "--bins",
    ])?;
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/bill-service");

    step(
        "outrigger-pilot: serving examples/bill-service (Service, Pods, DestinationRule v1/v2, VirtualService 90/10)",
    );
    let mut m = Mesh::new("demo", &example);
    step(
        "pods on bridge 10.30.0.0/24: client 10.30.0.10, bill-service-v1 10.30.0.11, bill-service-v2 10.30.0.12",
    );
    let client = m.add_pod("client", "10.30.0.10", HOSTS);
    let v1 = m.add_pod("bill-service-v1", "10.30.0.11", HOSTS);
    let v2 = m.add_pod("bill-service-v2", "10.30.0.12", HOSTS);
    m.app_http(v1, "v1", 8080);
    m.app_http(v2, "v2", 8080);
    for (pod, labels) in [
        (client, vec![("app", "client")]),
        (v1, vec![("app", "bill-service"), ("version", "v1")]),
        (v2, vec![("app", "bill-service"), ("version", "v2")]),
    ] {
        step(&format!(
            "{}: outrigger-init (Istio's default sidecar rules) + outrigger-proxy (uid 1337) — waiting for its first configuration",
            m.pods[pod].name
        ));
        m.sidecar(pod, &labels);
    }
    let mut summary: Vec<(String, String)> = Vec::new();

    step(&format!("client: 1000 × curl {URL}"));
    let r = m.curl_many(client, URL, 1000, &[]);
    eprint!("{}", table("VirtualService weights 90/10", &r));
    summary.push((
        "weighted split 90/10".into(),
        format!("v1 {:.1}%, v2 {:.1}%", share(&r, "v1"), share(&r, "v2")),
    ));

    step("applying live: requests with header end-user: jason go to v2, the rest to v1");
    let t0 = Instant::now();
    m.write_config("virtual-service.yaml", &format!("{VS_HEAD}  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]\n    route: {}\n  - route: {}\n", dest("v2"), dest("v1")));
    let applied = wait_for(Duration::from_secs(15), || {
        let a = m.curl_many(client, URL, 20, &[]);
        let b = m.curl_many(client, URL, 20, &["-H", "end-user: jason"]);
        (share(&a, "v1") == 100.0 && share(&b, "v2") == 100.0).then_some(())
    });
    if applied.is_none() {
        bail!("the header rule was not applied within 15 s");
    }
    eprintln!(
        "    applied in {} ms (file change → pilot → xDS push → proxies)",
        t0.elapsed().as_millis()
    );
    let jason = m.curl_many(client, URL, 100, &["-H", "end-user: jason"]);
    let others = m.curl_many(client, URL, 100, &[]);
    eprint!("{}", table("end-user: jason", &jason));
    eprint!("{}", table("no end-user header", &others));
    summary.push((
        "header match end-user: jason".into(),
        format!(
            "jason → v2 {:.0}%, others → v1 {:.0}%",
            share(&jason, "v2"),
            share(&others, "v1")
        ),
    ));

    step(
        "applying live: a fault rule aborts 50% of the requests with 503, delays the rest by 100 ms",
    );
    m.write_config("virtual-service.yaml", &format!("{VS_HEAD}  - fault: {{abort: {{httpStatus: 503, percentage: {{value: 50}}}}, delay: {{fixedDelay: 100ms, percentage: {{value: 100}}}}}}\n    route: {}\n", dest("v1")));
    let applied = wait_for(Duration::from_secs(15), || {
        let a = m.curl_many(client, URL, 10, &[]);
        a.iter().any(|r| r.code == 503).then_some(())
    });
    if applied.is_none() {
        bail!("the fault rule was not applied within 15 s");
    }
    let t1 = Instant::now();
    let faulted = m.curl_many(client, URL, 100, &[]);
    let per_request = t1.elapsed().as_millis() / 100;
    eprint!(
        "{}",
        table("fault: abort 503 for 50%, delay 100 ms", &faulted)
    );
    eprintln!(
        "    {per_request} ms per request on average (the delay is injected before the abort decision)"
    );
    summary.push((
        "fault abort 50% + delay 100 ms".into(),
        format!(
            "503 {:.0}%, v1 {:.0}%, {per_request} ms/request",
            share(&faulted, "status 503"),
            share(&faulted, "v1")
        ),
    ));

    step(
        "client pod: iptables -t nat -vnL (outrigger-init's rules, with the packet counters of this run)",
    );
    eprint!(
        "{}",
        m.pods[client].ns.ok("iptables", &["-t", "nat", "-vnL"])
    );

    step(
        "client sidecar: istio_requests_total on :15090/stats/prometheus (what Prometheus scrapes)",
    );
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
        "    {:<10} {:<18} {:<18} {:>5} {:>6} {:>9}",
        "reporter", "source", "destination", "code", "flags", "requests"
    );
    for line in text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
    {
        eprintln!(
            "    {:<10} {:<18} {:<18} {:>5} {:>6} {:>9}",
            label(line, "reporter"),
            label(line, "source_workload"),
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
