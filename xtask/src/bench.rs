//! `cargo xtask bench`: HTTP/1.1 keep-alive against the same origin directly and through
//! outrigger-proxy, nginx and haproxy, each configured for the same single route, run back to
//! back on this machine, in two scenarios:
//!
//! - closed loop at saturation (wrk): requests/s, latency percentiles, requests per CPU second;
//! - a fixed rate (Istio's method: 1000 requests/s over 16 connections, open loop, with
//!   coordinated-omission correction; `loadgen`): added latency p50/p90/p99/p99.9 and the
//!   proxy's CPU per 1000 requests/s.
//!
//! As in `shared/reference/performance.md` §5.4, the load generator runs on CPU 0 and the origin
//! and proxies on CPU 1, each proxy with one worker. Each writes a Markdown table (with ratios)
//! and a PNG plot in bench/results/.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{cargo, deps, loadgen, step};

pub(crate) const ORIGIN: u16 = 18080;
pub(crate) const OUTRIGGER: u16 = 18081;
const NGINX: u16 = 18082;
const HAPROXY: u16 = 18083;

pub const NEEDS: deps::Needs = &[
    ("wrk", "wrk"),
    ("nginx", "nginx-light"),
    ("haproxy", "haproxy"),
    ("gnuplot", "gnuplot-nox"),
];

pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        // Ask politely first (nginx's master stops its workers on SIGTERM), then make sure:
        // workers outlive a killed master and would keep the port.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..20 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        for child in children(self.0.id()) {
            let _ = Command::new("kill")
                .args(["-9", &child.to_string()])
                .status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (pid, ppid, utime + stime ticks) of every process.
fn processes() -> Vec<(u32, u32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the command name (in parentheses): state, ppid, …, utime (12th), stime (13th).
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ppid = f.get(1)?.parse().ok()?;
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some((pid, ppid, ticks))
        })
        .collect()
}

fn children(pid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, ppid, _)| *ppid == pid)
        .map(|(p, _, _)| p)
        .collect()
}

pub(crate) fn spawn(cmd: &mut Command) -> Result<Proc> {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    Ok(Proc(child))
}

pub(crate) fn wait_port(port: u16) -> Result<()> {
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port}")
}

/// CPU seconds used so far by a process and its children: the time their threads have run, to
/// the nanosecond (`/proc/PID/task/TID/schedstat`), or the 100 Hz tick counts where schedstat
/// is missing.
fn cpu_seconds(pid: u32) -> f64 {
    processes()
        .into_iter()
        .filter(|(p, ppid, _)| *p == pid || *ppid == pid)
        .map(|(p, _, ticks)| run_ns(p).map_or(ticks as f64 / 100.0, |ns| ns as f64 / 1e9))
        .sum()
}

/// Nanoseconds the threads of `pid` have run on a CPU.
fn run_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// `cmd` pinned to `cpu` with taskset (util-linux).
pub(crate) fn pinned(cpu: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", &cpu.to_string()]).arg(program);
    c
}

/// outrigger-proxy's flags after `run -c BOOTSTRAP`: one worker, nothing but the listener.
pub(crate) const PROXY_ARGS: [&str; 10] = [
    "--concurrency",
    "1",
    "--admin-address",
    "off",
    "--status-port",
    "0",
    "--prometheus-port",
    "0",
    "--log",
    "warn",
];

/// The CPU the load generators run on; the origin and the proxies run on the other.
pub(crate) const CLIENT_CPU: u32 = 0;
pub(crate) const SERVER_CPU: u32 = 1;

#[derive(Debug, Default, Clone)]
struct Result1 {
    name: &'static str,
    rps: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    cpu: Option<f64>,
    requests: f64,
}

/// wrk's durations ("812.00us", "1.20ms", "2.00s") in milliseconds.
pub fn ms(s: &str) -> f64 {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("us") {
        v.parse::<f64>().unwrap_or(0.0) / 1000.0
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse().unwrap_or(0.0)
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().unwrap_or(0.0) * 1000.0
    } else {
        0.0
    }
}

pub(crate) fn wrk(port: u16, seconds: u32, connections: u32) -> Result<(f64, f64, f64, f64, f64)> {
    let out = pinned(CLIENT_CPU, "wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = (0.0, 0.0, 0.0, 0.0, 0.0);
    for line in text.lines().map(str::trim) {
        let mut w = line.split_whitespace();
        match (w.next(), w.next()) {
            (Some("Requests/sec:"), Some(v)) => r.0 = v.parse().unwrap_or(0.0),
            (Some("50%"), Some(v)) => r.1 = ms(v),
            (Some("90%"), Some(v)) => r.2 = ms(v),
            (Some("99%"), Some(v)) => r.3 = ms(v),
            _ => {}
        }
        if line.contains("requests in") {
            r.4 = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
        }
        if line.starts_with("Non-2xx") {
            bail!("port {port}: {line}");
        }
    }
    if r.0 == 0.0 {
        bail!(
            "wrk on port {port} reported nothing:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(r)
}

pub(crate) fn write_configs(dir: &Path) -> Result<()> {
    let nginx = |name: &str, server: &str| {
        format!(
            "worker_processes 1;\ndaemon off;\npid {d}/{name}.pid;\nerror_log {d}/{name}.err;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/{name}-tmp;\n  proxy_temp_path {d}/{name}-tmp;\n  fastcgi_temp_path {d}/{name}-tmp;\n  uwsgi_temp_path {d}/{name}-tmp;\n  scgi_temp_path {d}/{name}-tmp;\n{server}\n}}\n",
            d = dir.display()
        )
    };
    std::fs::write(
        dir.join("origin.conf"),
        nginx(
            "origin",
            &format!(
                "  server {{ listen 127.0.0.1:{ORIGIN}; location / {{ return 200 \"ok\\n\"; }} }}"
            ),
        ),
    )?;
    std::fs::write(
        dir.join("nginx.conf"),
        nginx(
            "proxy",
            &format!(
                "  upstream origin {{ server 127.0.0.1:{ORIGIN}; keepalive 64; }}\n  server {{ listen 127.0.0.1:{NGINX}; location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
            ),
        ),
    )?;
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!(
            "global\n  nbthread 1\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\nfrontend fe\n  bind 127.0.0.1:{HAPROXY}\n  default_backend be\nbackend be\n  server origin 127.0.0.1:{ORIGIN}\n"
        ),
    )?;
    let bootstrap = serde_json::json!({
        "static_resources": {
            "listeners": [{
                "name": "bench", "address": {"socket_address": {"address": "127.0.0.1", "port_value": OUTRIGGER}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "bench",
                    "route_config": {"name": "bench", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "origin"}}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }}]}]
            }],
            "clusters": [{"name": "origin", "type": "STATIC", "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "origin", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ORIGIN}}}}]}]}}]
        }
    });
    std::fs::write(
        dir.join("outrigger.json"),
        serde_json::to_string_pretty(&bootstrap)?,
    )?;
    Ok(())
}

/// A proxied or direct path under test: its name, port and the process whose CPU is measured.
type Target = (&'static str, u16, Option<u32>);

pub fn run(seconds: u32, connections: u32, rounds_wanted: u32, rate: u32, pgo: bool) -> Result<()> {
    let rounds_wanted = rounds_wanted.max(1);
    deps::ensure(NEEDS)?;
    // A server left on one of these ports would be measured in place of the one started here.
    for port in [ORIGIN, OUTRIGGER, NGINX, HAPROXY] {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("port {port} is taken by another process: stop it before benchmarking");
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let proxy_bin = if pgo {
        crate::pgo::build()?
    } else {
        step("building outrigger-proxy (release)");
        cargo(&["build", "--release", "--quiet", "-p", "outrigger-proxy"])?;
        root.join("target/release/outrigger-proxy")
    };
    let build = if pgo {
        "outrigger-proxy built with profile-guided optimisation (`cargo xtask build-pgo`)"
    } else {
        "outrigger-proxy from the plain release build (`--no-pgo`)"
    };
    let dir = std::env::temp_dir().join(format!("outrigger-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    write_configs(&dir)?;

    step(&format!(
        "starting the origin (nginx, 1 worker) on :{ORIGIN} and the proxies, each with one worker, on CPU {SERVER_CPU}; load from CPU {CLIENT_CPU}"
    ));
    let _origin = spawn(
        pinned(SERVER_CPU, "nginx")
            .arg("-c")
            .arg(dir.join("origin.conf")),
    )?;
    let outrigger = spawn(
        pinned(SERVER_CPU, &proxy_bin)
            .args(["run", "-c"])
            .arg(dir.join("outrigger.json"))
            .args(PROXY_ARGS),
    )?;
    let nginx = spawn(
        pinned(SERVER_CPU, "nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf")),
    )?;
    let haproxy = spawn(
        pinned(SERVER_CPU, "haproxy")
            .arg("-f")
            .arg(dir.join("haproxy.cfg")),
    )?;
    for port in [ORIGIN, OUTRIGGER, NGINX, HAPROXY] {
        wait_port(port)?;
    }
    // taskset runs each server in its own process, so these are the servers' pids.
    let targets: [Target; 4] = [
        ("no proxy", ORIGIN, None),
        ("outrigger-proxy", OUTRIGGER, Some(outrigger.0.id())),
        ("nginx", NGINX, Some(nginx.0.id())),
        ("haproxy", HAPROXY, Some(haproxy.0.id())),
    ];
    let out_dir = root.join("bench/results");
    std::fs::create_dir_all(&out_dir)?;

    let rounds = closed_loop(&targets, seconds, connections, rounds_wanted)?;
    let spread = per_round_ratios(&rounds);
    let results: Vec<Result1> = rounds.iter().map(|r| median(r)).collect();
    let mut report = report(&results, seconds, connections, rounds_wanted, build);
    report.push_str(&spread);
    std::fs::write(out_dir.join("http1-keepalive.md"), &report)?;
    plot(&results, &dir, &out_dir.join("http1-keepalive.png"))?;
    println!("\n{report}");
    println!("written: bench/results/http1-keepalive.md, bench/results/http1-keepalive.png");

    if rate > 0 {
        let fixed_seconds = 10;
        let fixed_connections = 16;
        let rounds = fixed_rate(
            &targets,
            rate,
            fixed_connections,
            fixed_seconds,
            rounds_wanted,
        )?;
        let report = fixed_report(&rounds, rate, fixed_connections, fixed_seconds, build);
        std::fs::write(out_dir.join("http1-fixed-rate.md"), &report)?;
        fixed_plot(
            &rounds,
            fixed_seconds,
            &dir,
            &out_dir.join("http1-fixed-rate.png"),
        )?;
        println!("\n{report}");
        println!("written: bench/results/http1-fixed-rate.md, bench/results/http1-fixed-rate.png");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One round's result and the CPU seconds the target's proxy used during it.
type Measured<T> = (T, Option<f64>);

/// Runs `load` on every target, `rounds` times, alternating the targets so that a noisy moment
/// on this shared machine hits them alike; the first round warms each target up first
/// (`load(port, true)`, not kept). Each round's figures are printed as `line` shows them. Each
/// target's rounds, with the CPU seconds its proxy used during each (None for the direct path,
/// or when its processes were not found).
fn alternate<T>(
    targets: &[Target],
    rounds: u32,
    what: &str,
    mut load: impl FnMut(u16, bool) -> Result<T>,
    line: impl Fn(&T) -> String,
) -> Result<Vec<Vec<Measured<T>>>> {
    let mut out: Vec<Vec<Measured<T>>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (i, (name, port, pid)) in targets.iter().copied().enumerate() {
            step(&format!(
                "{what}, round {round}/{rounds}, {name}{}",
                if round == 1 { ": warm-up, then" } else { "" }
            ));
            if round == 1 {
                load(port, true)?;
            }
            let before = pid.map(cpu_seconds);
            let result = load(port, false)?;
            // A reading of zero means the process tree was not found: report it as unavailable.
            let cpu = pid
                .zip(before)
                .map(|(p, b)| cpu_seconds(p) - b)
                .filter(|c| *c > 0.0);
            let cpu_text = cpu
                .map(|c| format!("{c:.3} s"))
                .unwrap_or_else(|| "-".into());
            println!("  {name:<16} {}   proxy CPU {cpu_text}", line(&result));
            out[i].push((result, cpu));
        }
    }
    Ok(out)
}

/// wrk at saturation; each target's rounds.
fn closed_loop(
    targets: &[Target],
    seconds: u32,
    connections: u32,
    rounds: u32,
) -> Result<Vec<Vec<Result1>>> {
    let what = format!("closed loop (wrk -t1 -c{connections} -d{seconds}s)");
    let runs = alternate(
        targets,
        rounds,
        &what,
        |port, warm_up| wrk(port, if warm_up { 2 } else { seconds }, connections),
        |(rps, p50, p90, p99, _)| {
            format!("{rps:>10.0} req/s   p50 {p50:.3} ms   p90 {p90:.3} ms   p99 {p99:.3} ms")
        },
    )?;
    Ok(runs
        .into_iter()
        .zip(targets)
        .map(|(runs, (name, _, _))| {
            runs.into_iter()
                .map(|((rps, p50, p90, p99, requests), cpu)| Result1 {
                    name,
                    rps,
                    p50,
                    p90,
                    p99,
                    cpu,
                    requests,
                })
                .collect()
        })
        .collect())
}

/// A target's median round: the median of each latency and of req/s, and the CPU reading of
/// the round whose requests per CPU second is the median.
fn median(rounds: &[Result1]) -> Result1 {
    let mut by_efficiency: Vec<&Result1> = rounds.iter().collect();
    by_efficiency.sort_by(|a, b| efficiency(a).total_cmp(&efficiency(b)));
    let central = by_efficiency[by_efficiency.len() / 2];
    Result1 {
        name: central.name,
        rps: middle(rounds.iter().map(|r| r.rps).collect()),
        p50: middle(rounds.iter().map(|r| r.p50).collect()),
        p90: middle(rounds.iter().map(|r| r.p90).collect()),
        p99: middle(rounds.iter().map(|r| r.p99).collect()),
        cpu: central.cpu,
        requests: central.requests,
    }
}

/// Requests per CPU second of the proxy, 0 when its CPU could not be read.
fn efficiency(r: &Result1) -> f64 {
    r.cpu
        .filter(|c| *c > 0.0)
        .map(|c| r.requests / c)
        .unwrap_or(0.0)
}

/// outrigger-proxy's requests per CPU second over nginx's and haproxy's, round by round.
fn per_round_ratios(rounds: &[Vec<Result1>]) -> String {
    let of = |name: &str| {
        rounds
            .iter()
            .find(|r| r.first().is_some_and(|x| x.name == name))
    };
    let (Some(o), Some(n), Some(h)) = (of("outrigger-proxy"), of("nginx"), of("haproxy")) else {
        return String::new();
    };
    let line = |other: &[Result1]| {
        o.iter()
            .zip(other)
            .map(|(a, b)| {
                format!(
                    "{:.2}",
                    efficiency(a) / efficiency(b).max(f64::MIN_POSITIVE)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "\nRequests per CPU second of outrigger-proxy over the other, round by round: vs nginx {}; vs haproxy {}.\n",
        line(n),
        line(h)
    )
}

fn report(results: &[Result1], seconds: u32, connections: u32, rounds: u32, build: &str) -> String {
    let base = &results[0];
    let mut s = String::new();
    let _ = writeln!(s, "# HTTP/1.1 keep-alive, one route\n");
    let _ = writeln!(
        s,
        "wrk -t1 -c{connections} -d{seconds}s against an nginx origin answering `200 ok`, directly and through each proxy (one worker each), wrk on CPU {CLIENT_CPU}, the origin and the proxies on CPU {SERVER_CPU} of a 2-core machine; {rounds} rounds that alternate the targets, each target's median round shown; {build}. Added latency is the proxy's percentile minus the direct one; requests per CPU second divide the requests served by the CPU time of the proxy's processes during the round.\n"
    );
    let _ = writeln!(
        s,
        "| path | req/s | p50 ms | p90 ms | p99 ms | added p50 ms | added p99 ms | proxy CPU s | req per CPU s |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let per_cpu = r
            .cpu
            .filter(|c| *c > 0.0)
            .map(|c| format!("{:.0}", r.requests / c))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
            r.name,
            r.rps,
            r.p50,
            r.p90,
            r.p99,
            r.p50 - base.p50,
            r.p99 - base.p99,
            r.cpu
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "-".into()),
            per_cpu
        );
    }
    let find = |n: &str| results.iter().find(|r| r.name == n);
    if let (Some(o), Some(n), Some(h)) = (find("outrigger-proxy"), find("nginx"), find("haproxy")) {
        let per = |r: &Result1| {
            r.cpu
                .filter(|c| *c > 0.0)
                .map(|c| r.requests / c)
                .unwrap_or(0.0)
        };
        // "n/a" where a side could not be measured.
        let ratio = |a: f64, b: f64| {
            if a > 0.0 && b > 0.0 {
                format!("{:.2}", a / b)
            } else {
                "n/a".to_string()
            }
        };
        let _ = writeln!(
            s,
            "\nRatios (outrigger-proxy / other): req/s vs nginx {}, vs haproxy {}; added p50 vs nginx {}, vs haproxy {}; req per CPU s vs nginx {}, vs haproxy {}.",
            ratio(o.rps, n.rps),
            ratio(o.rps, h.rps),
            ratio(o.p50 - base.p50, n.p50 - base.p50),
            ratio(o.p50 - base.p50, h.p50 - base.p50),
            ratio(per(o), per(n)),
            ratio(per(o), per(h))
        );
    }
    s
}

fn plot(results: &[Result1], dir: &Path, png: &Path) -> Result<()> {
    let base = &results[0];
    let mut data = String::new();
    for r in &results[1..] {
        let per = r
            .cpu
            .filter(|c| *c > 0.0)
            .map(|c| r.requests / c / 1000.0)
            .unwrap_or(0.0);
        let _ = writeln!(
            data,
            "\"{}\" {:.4} {:.4} {:.2}",
            r.name,
            r.p50 - base.p50,
            r.p99 - base.p99,
            per
        );
    }
    let dat = dir.join("bench.dat");
    std::fs::write(&dat, data)?;
    let script = format!(
        "set terminal png size 1000,420\nset output '{png}'\nset multiplot layout 1,2 title 'HTTP/1.1 keep-alive through one route (lower latency, higher throughput is better)'\nset style data histograms\nset style fill solid 0.8 border -1\nset boxwidth 0.8\nset grid ytics\nset key outside top center horizontal\nset ylabel 'added latency (ms)'\nset yrange [0:*]\nplot '{dat}' using 2:xtic(1) title 'p50', '' using 3 title 'p99'\nset ylabel 'thousand requests per CPU second'\nplot '{dat}' using 4:xtic(1) title 'req per proxy CPU s' lc rgb '#2a9d8f'\nunset multiplot\n",
        png = png.display(),
        dat = dat.display()
    );
    gnuplot(dir, "plot.gp", &script)
}

/// Writes `script` to `dir/name` and runs gnuplot on it.
pub fn gnuplot(dir: &Path, name: &str, script: &str) -> Result<()> {
    let script_file = dir.join(name);
    std::fs::write(&script_file, script)?;
    let status = Command::new("gnuplot")
        .arg(&script_file)
        .status()
        .context("running gnuplot")?;
    if !status.success() {
        bail!("gnuplot failed");
    }
    Ok(())
}

/// One target's fixed-rate round.
#[derive(Debug, Clone)]
struct FixedRound {
    name: &'static str,
    load: loadgen::Summary,
    /// CPU seconds of the proxy during the round.
    cpu: Option<f64>,
}

/// `cargo xtask loadgen` on the client CPU against `port`.
pub(crate) fn loadgen(
    port: u16,
    rate: u32,
    connections: u32,
    seconds: u32,
) -> Result<loadgen::Summary> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let out = pinned(CLIENT_CPU, exe)
        .args([
            "loadgen",
            "--port",
            &port.to_string(),
            "--rate",
            &rate.to_string(),
            "--connections",
            &connections.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running the load generator")?;
    if !out.status.success() {
        bail!("the load generator failed on port {port}");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(text.trim())
        .with_context(|| format!("the load generator's output: {text}"))?;
    let load = loadgen::Summary::from_json(&json)?;
    if load.errors > 0 {
        bail!("port {port}: {} requests failed", load.errors);
    }
    Ok(load)
}

/// The fixed-rate load; each target's rounds.
fn fixed_rate(
    targets: &[Target],
    rate: u32,
    connections: u32,
    seconds: u32,
    rounds: u32,
) -> Result<Vec<Vec<FixedRound>>> {
    let what = format!("fixed rate ({rate} req/s over {connections} connections, {seconds} s)");
    let runs = alternate(
        targets,
        rounds,
        &what,
        |port, warm_up| loadgen(port, rate, connections, if warm_up { 2 } else { seconds }),
        |l: &loadgen::Summary| {
            format!(
                "{:>7.0} req/s   p50 {:.0} µs   p90 {:.0} µs   p99 {:.0} µs   p99.9 {:.0} µs",
                l.rps, l.p50, l.p90, l.p99, l.p999
            )
        },
    )?;
    Ok(runs
        .into_iter()
        .zip(targets)
        .map(|(runs, (name, _, _))| {
            runs.into_iter()
                .map(|(load, cpu)| FixedRound { name, load, cpu })
                .collect()
        })
        .collect())
}

/// A target's fixed-rate figures: the median over rounds of each percentile, and of its vCPU
/// per 1000 requests/s (None without a CPU reading).
#[derive(Debug, Clone, Copy, PartialEq)]
struct FixedMedian {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    rps: f64,
    vcpu_per_k: Option<f64>,
}

/// The median of `v` (the upper one of an even count), 0 for none.
fn middle(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// vCPU per 1000 requests/s of one round.
fn vcpu_per_k(r: &FixedRound, seconds: u32) -> Option<f64> {
    r.cpu
        .filter(|_| r.load.rps > 0.0)
        .map(|c| c / f64::from(seconds) / (r.load.rps / 1000.0))
}

fn fixed_median(rounds: &[FixedRound], seconds: u32) -> FixedMedian {
    let of = |f: fn(&loadgen::Summary) -> f64| middle(rounds.iter().map(|r| f(&r.load)).collect());
    let cpus: Vec<f64> = rounds
        .iter()
        .filter_map(|r| vcpu_per_k(r, seconds))
        .collect();
    FixedMedian {
        p50: of(|l| l.p50),
        p90: of(|l| l.p90),
        p99: of(|l| l.p99),
        p999: of(|l| l.p999),
        rps: of(|l| l.rps),
        vcpu_per_k: (!cpus.is_empty()).then(|| middle(cpus)),
    }
}

fn fixed_report(
    rounds: &[Vec<FixedRound>],
    rate: u32,
    connections: u32,
    seconds: u32,
    build: &str,
) -> String {
    let names: Vec<&str> = rounds
        .iter()
        .map(|r| r.first().map_or("?", |x| x.name))
        .collect();
    let medians: Vec<FixedMedian> = rounds.iter().map(|r| fixed_median(r, seconds)).collect();
    let base = medians[0];
    let mut s = String::new();
    let _ = writeln!(s, "# HTTP/1.1 keep-alive at a fixed rate, one route\n");
    let _ = writeln!(
        s,
        "{rate} requests/s over {connections} keep-alive connections for {seconds} s (open loop, timed from when each request was due if its connection was still busy: coordinated-omission correction; `cargo xtask loadgen` on CPU {CLIENT_CPU}) against an nginx origin answering `200 ok`, directly and through each proxy (one worker each; origin and proxies on CPU {SERVER_CPU}); {} rounds that alternate the targets, the median of each figure over the rounds shown; {build}. This is the shape of Istio's own benchmark (fortio, 1000 requests/s, 16 connections). Added latency is the proxy's percentile minus the direct one; vCPU per 1000 req/s is the proxy's CPU time over the round, per second and per 1000 requests/s.\n",
        rounds[0].len()
    );
    let _ = writeln!(
        s,
        "| path | req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | added p50 µs | added p90 µs | added p99 µs | vCPU per 1000 req/s |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, m) in names.iter().zip(&medians) {
        let _ = writeln!(
            s,
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            m.rps,
            m.p50,
            m.p90,
            m.p99,
            m.p999,
            m.p50 - base.p50,
            m.p90 - base.p90,
            m.p99 - base.p99,
            m.vcpu_per_k
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "-".into())
        );
    }
    let find = |n: &str| names.iter().position(|x| *x == n).map(|i| medians[i]);
    let ratio = |a: f64, b: f64| {
        if a > 0.0 && b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "n/a".to_string()
        }
    };
    if let (Some(o), Some(n), Some(h)) = (find("outrigger-proxy"), find("nginx"), find("haproxy")) {
        let added = |m: FixedMedian| (m.p50 - base.p50, m.p90 - base.p90, m.p99 - base.p99);
        let (o, on, oh) = (added(o), added(n), added(h));
        let _ = writeln!(
            s,
            "\nAdded latency of outrigger-proxy over the other's: p50 vs nginx {}, vs haproxy {}; p90 vs nginx {}, vs haproxy {}; p99 vs nginx {}, vs haproxy {}.",
            ratio(o.0, on.0),
            ratio(o.0, oh.0),
            ratio(o.1, on.1),
            ratio(o.1, oh.1),
            ratio(o.2, on.2),
            ratio(o.2, oh.2),
        );
    }
    let cpu = |n: &str| find(n).and_then(|m| m.vcpu_per_k).unwrap_or(0.0);
    let _ = writeln!(
        s,
        "CPU per request of outrigger-proxy over the other's: vs nginx {}, vs haproxy {}. For scale, Istio publishes 0.20 vCPU per 1000 req/s for its Envoy sidecar (1.24, 2 workers, 1 KB bodies, mTLS: other conditions).",
        ratio(cpu("outrigger-proxy"), cpu("nginx")),
        ratio(cpu("outrigger-proxy"), cpu("haproxy")),
    );
    s
}

fn fixed_plot(rounds: &[Vec<FixedRound>], seconds: u32, dir: &Path, png: &Path) -> Result<()> {
    let base = fixed_median(&rounds[0], seconds);
    let mut data = String::new();
    for r in &rounds[1..] {
        let m = fixed_median(r, seconds);
        let _ = writeln!(
            data,
            "\"{}\" {:.1} {:.1} {:.1} {:.4}",
            r.first().map_or("?", |x| x.name),
            m.p50 - base.p50,
            m.p90 - base.p90,
            m.p99 - base.p99,
            m.vcpu_per_k.unwrap_or(0.0)
        );
    }
    let dat = dir.join("fixed.dat");
    std::fs::write(&dat, data)?;
    let script = format!(
        "set terminal png size 1000,420\nset output '{png}'\nset multiplot layout 1,2 title 'HTTP/1.1 keep-alive at a fixed rate through one route (lower is better)'\nset style data histograms\nset style fill solid 0.8 border -1\nset boxwidth 0.8\nset grid ytics\nset key outside top center horizontal\nset ylabel 'added latency (µs)'\nset yrange [0:*]\nplot '{dat}' using 2:xtic(1) title 'p50', '' using 3 title 'p90', '' using 4 title 'p99'\nset ylabel 'vCPU per 1000 req/s'\nplot '{dat}' using 5:xtic(1) title 'proxy CPU' lc rgb '#2a9d8f'\nunset multiplot\n",
        png = png.display(),
        dat = dat.display()
    );
    gnuplot(dir, "fixed.gp", &script)
}
