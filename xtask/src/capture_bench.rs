//! `cargo xtask bench --capture`: the same HTTP load from an app through its outrigger-proxy
//! sidecar to an nginx origin in another pod, with the app's connections captured by iptables
//! (outrigger-init), by eBPF connect rewrite alone, and by eBPF with the sockmap fast path.
//! Two loads each: keep-alive, and a new connection per request (connection setup rate). All
//! modes run in one invocation, back to back; the report gives ratios to iptables.
//! Writes bench/results/capture.{md,png}.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use outrigger_testkit::ebpf::{Agent, Bpffs, Cgroup};
use outrigger_testkit::mesh::Mesh;
use outrigger_testkit::netns::Netns;

use crate::{cargo, deps, step};

const VIP: &str = "10.96.0.50";
const URL: &str = "http://origin/";

const REGISTRY: &str = "apiVersion: v1
kind: Service
metadata: {name: origin, namespace: default}
spec:
  clusterIP: 10.96.0.50
  selector: {app: origin}
  ports: [{name: http, port: 80, targetPort: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: origin, namespace: default, labels: {app: origin}}
status: {podIP: 10.30.0.20}
---
apiVersion: v1
kind: Pod
metadata: {name: client-iptables, namespace: default, labels: {app: client}}
status: {podIP: 10.30.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: client-ebpf, namespace: default, labels: {app: client}}
status: {podIP: 10.30.0.11}
";

#[derive(Debug, Clone, Default)]
struct Load {
    rps: f64,
    p50: f64,
    p99: f64,
}

struct Row {
    mode: &'static str,
    keepalive: Load,
    fresh: Load,
}

/// wrk from the pod (as uid 1000, in `cgroup` when given).
fn wrk(
    ns: &Netns,
    cgroup: Option<&Path>,
    seconds: u32,
    connections: u32,
    close: bool,
) -> Result<Load> {
    let mut cmd = match cgroup {
        Some(cg) => ns.command_in(cg, Some(1000), "wrk"),
        None => ns.command_as(1000, "wrk"),
    };
    cmd.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(URL).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut load = Load::default();
    for line in text.lines().map(str::trim) {
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("Requests/sec:"), Some(v)) => load.rps = v.parse().unwrap_or(0.0),
            (Some("50%"), Some(v)) => load.p50 = crate::bench::ms(v),
            (Some("99%"), Some(v)) => load.p99 = crate::bench::ms(v),
            (Some("Non-2xx"), _) => bail!("wrk: {line}"),
            _ => {}
        }
    }
    if load.rps == 0.0 {
        bail!(
            "wrk reported nothing:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(load)
}

pub fn run(seconds: u32, connections: u32) -> Result<()> {
    deps::ensure(crate::bench::NEEDS)?;
    deps::ensure(deps::TEST)?;
    step("building the binaries (release)");
    cargo(&[
        "build",
        "--release",
        "--quiet",
        "-p",
        "outrigger-proxy",
        "-p",
        "outrigger-pilot",
        "-p",
        "outrigger-init",
        "-p",
        "outrigger-agent",
        "-p",
        "outrigger-testkit",
    ])?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    outrigger_testkit::use_bin_dir(root.join("target/release"));
    ctrlc::set_handler(|| {
        outrigger_testkit::netns::delete_all();
        std::process::exit(130);
    })
    .ok();

    let config =
        std::env::temp_dir().join(format!("outrigger-capture-bench-{}", std::process::id()));
    std::fs::create_dir_all(&config)?;
    std::fs::write(config.join("registry.yaml"), REGISTRY)?;

    step("pods: origin (nginx), client-iptables and client-ebpf, each client with a sidecar");
    let cg = Cgroup::new("bench");
    let bpffs = Bpffs::new();
    let mut m = Mesh::new("cb", &config);
    let hosts = format!("{VIP} origin origin.default.svc.cluster.local\n");
    let origin = m.add_pod("origin", "10.30.0.20", &hosts);
    let nginx_conf = config.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\nevents {{ worker_connections 4096; }}\nhttp {{ access_log off; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n  server {{ listen 80 reuseport; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            d = config.display()
        ),
    )?;
    let mut nginx_cmd = m.pods[origin].ns.command("nginx");
    nginx_cmd
        .arg("-c")
        .arg(&nginx_conf)
        .stdout(std::process::Stdio::null());
    let _nginx = outrigger_testkit::netns::Background::new(nginx_cmd.spawn().context("nginx")?);

    let ipt = m.add_pod("client-iptables", "10.30.0.10", &hosts);
    m.sidecar(ipt, &[("app", "client")]);
    m.ebpf_cgroup = Some(cg.path.clone());
    let ebpf = m.add_pod("client-ebpf", "10.30.0.11", &hosts);
    m.sidecar(ebpf, &[("app", "client")]);
    let pods = format!(
        "pods:\n- name: client-ebpf\n  netns: /run/netns/{}\n  ips: [10.30.0.11]\n",
        m.pods[ebpf].ns.name()
    );
    let mut agent = Agent::start(&cg.path, &bpffs, &pods, &[]);
    // Every path answers before measuring.
    for (pod, cgroup) in [(ipt, None), (ebpf, Some(cg.path.as_path()))] {
        wrk(&m.pods[pod].ns, cgroup, 1, 2, false).context("warm-up")?;
    }

    let mut rows = Vec::new();
    let modes: [(&'static str, usize, bool, bool); 3] = [
        ("iptables", ipt, false, false),
        ("eBPF connect", ebpf, true, false),
        ("eBPF + sockmap", ebpf, true, true),
    ];
    for (mode, pod, in_cgroup, sockmap) in modes {
        if sockmap {
            agent.stop();
            agent.extra = vec!["--sockmap".into()];
            agent.restart();
        }
        let cgroup = in_cgroup.then_some(cg.path.as_path());
        let ns = &m.pods[pod].ns;
        step(&format!(
            "{mode}: wrk -t1 -c{connections} -d{seconds}s, keep-alive, then Connection: close"
        ));
        wrk(ns, cgroup, 1, connections, false)?;
        let keepalive = wrk(ns, cgroup, seconds, connections, false)?;
        let fresh = wrk(ns, cgroup, seconds, connections, true)?;
        println!(
            "  {mode:<16} keep-alive {:>8.0} req/s p50 {:.3} ms p99 {:.3} ms | new connections {:>8.0}/s p50 {:.3} ms p99 {:.3} ms",
            keepalive.rps, keepalive.p50, keepalive.p99, fresh.rps, fresh.p50, fresh.p99
        );
        rows.push(Row {
            mode,
            keepalive,
            fresh,
        });
    }
    let counters = [
        "redirected",
        "getsockopt_hit",
        "sockhash_inserted",
        "msg_redirected",
        "msg_passed",
    ]
    .map(|c| format!("{c} {}", agent.counter(c)))
    .join(", ");
    drop(agent);
    drop(m);

    let report = report(&rows, seconds, connections, &counters);
    let out_dir = root.join("bench/results");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(out_dir.join("capture.md"), &report)?;
    plot(&rows, &config, &out_dir.join("capture.png"))?;
    let _ = std::fs::remove_dir_all(&config);
    println!("\n{report}");
    println!("written: bench/results/capture.md, bench/results/capture.png");
    Ok(())
}

fn report(rows: &[Row], seconds: u32, connections: u32, counters: &str) -> String {
    let base = &rows[0];
    let mut s = String::new();
    let _ = writeln!(s, "# Capture: iptables vs eBPF\n");
    let _ = writeln!(
        s,
        "wrk -t1 -c{connections} -d{seconds}s from an app pod (uid 1000) to `http://origin/` (a service VIP), through the pod's outrigger-proxy sidecar (one worker) to an nginx origin in another pod over a veth bridge. Only the capture of the app's connections changes: outrigger-init's iptables REDIRECT, eBPF connect rewrite (connect4 + sockops + getsockopt), or eBPF with the sockmap fast path (sk_msg between app and sidecar). Keep-alive measures the data path; `Connection: close` opens a connection per request (setup rate). Run back to back on one 2-core machine shared with wrk and nginx.\n"
    );
    let _ = writeln!(
        s,
        "| capture | keep-alive req/s | p50 ms | p99 ms | new conn/s | p50 ms | p99 ms | keep-alive vs iptables | conn/s vs iptables |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.2} | {:.2} |",
            r.mode,
            r.keepalive.rps,
            r.keepalive.p50,
            r.keepalive.p99,
            r.fresh.rps,
            r.fresh.p50,
            r.fresh.p99,
            r.keepalive.rps / base.keepalive.rps,
            r.fresh.rps / base.fresh.rps,
        );
    }
    let _ = writeln!(s, "\nCapture counters after the run: {counters}.");
    s
}

fn plot(rows: &[Row], dir: &Path, png: &Path) -> Result<()> {
    let mut data = String::new();
    for r in rows {
        let _ = writeln!(
            data,
            "\"{}\" {:.1} {:.1} {:.4} {:.4}",
            r.mode,
            r.keepalive.rps / 1000.0,
            r.fresh.rps / 1000.0,
            r.keepalive.p50,
            r.keepalive.p99
        );
    }
    let dat = dir.join("capture.dat");
    std::fs::write(&dat, data)?;
    let script = format!(
        "set terminal png size 1000,420\nset output '{png}'\nset multiplot layout 1,2 title 'App to sidecar capture (higher throughput, lower latency is better)'\nset style data histograms\nset style fill solid 0.8 border -1\nset boxwidth 0.8\nset grid ytics\nset yrange [0:*]\nset ylabel 'thousand requests per second'\nplot '{dat}' using 2:xtic(1) title 'keep-alive', '' using 3 title 'new connection per request'\nset ylabel 'latency, keep-alive (ms)'\nplot '{dat}' using 4:xtic(1) title 'p50', '' using 5 title 'p99'\nunset multiplot\n",
        png = png.display(),
        dat = dat.display()
    );
    crate::bench::gnuplot(dir, "capture.gp", &script)
}
