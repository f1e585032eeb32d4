//! `outrigger-agent`: the node agent of Outrigger's eBPF capture.
//!
//! Exit codes: 0 success; 1 runtime failure; 2 bad arguments or pod source (clap and `check`);
//! 3 `probe` found a missing kernel feature.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use outrigger_agent::capture::{self, Start};
use outrigger_agent::http::{self, Shared};
use outrigger_agent::layout::{SET_DNS, SET_PEER_INBOUND, SET_SOCKMAP, Settings};
use outrigger_agent::maps::Maps;
use outrigger_agent::pods::{self, MeshedPod};
use outrigger_agent::{probe, reconcile, status, sys};

#[derive(Parser)]
#[command(
    name = "outrigger-agent",
    version,
    about = "Hands meshed pods' connections to their sidecar with eBPF instead of iptables",
    long_about = "Loads Outrigger's eBPF capture, attaches it to a cgroup v2 directory (the node's \
root cgroup in a DaemonSet), pins it under bpffs so that it outlives the agent, and keeps its \
list of meshed pods in step with a pod source. Where the kernel cannot, the agent stays in \
\"iptables only\" mode and outrigger-init's rules capture everything."
)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Location {
    /// Where bpffs is (mounted there if it is not).
    #[arg(long, default_value = "/sys/fs/bpf", value_name = "DIR")]
    bpffs: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PodsFrom {
    File,
    Kubernetes,
}

/// The pod source in use.
enum Source {
    File(PathBuf),
    Kubernetes(outrigger_agent::kube::KubeSource),
}

impl Source {
    fn open(args: &RunArgs) -> Result<Source> {
        match (args.pods_from, &args.pods) {
            (PodsFrom::File, Some(path)) => Ok(Source::File(path.clone())),
            (PodsFrom::File, None) => anyhow::bail!("--pods is required with --pods-from file"),
            (PodsFrom::Kubernetes, _) => Ok(Source::Kubernetes(
                outrigger_agent::kube::KubeSource::start(&args.node_name, &args.proc_root)?,
            )),
        }
    }

    fn fingerprint(&self) -> String {
        match self {
            Source::File(path) => pods::fingerprint(path),
            Source::Kubernetes(k) => k.fingerprint(),
        }
    }

    fn snapshot(&self) -> pods::Snapshot {
        match self {
            Source::File(path) => pods::read(path),
            Source::Kubernetes(k) => k.snapshot(),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach (or adopt) the capture and keep the meshed pods up to date until stopped. The
    /// capture stays attached after the agent exits; `detach` removes it.
    Run(RunArgs),
    /// Remove everything the agent attached and pinned.
    Detach {
        #[command(flatten)]
        loc: Location,
    },
    /// Attached programs, map fill levels, meshed pods and counters.
    Status {
        #[command(flatten)]
        loc: Location,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check which capture hooks this kernel offers (exit 3 if one is missing).
    Probe {
        /// Also check that this directory is cgroup v2.
        #[arg(long, value_name = "DIR")]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Read a pod source and report every pod it meshes and every error (exit 2 on errors).
    Check {
        /// A pod file or a directory of them.
        pods: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    loc: Location,
    /// The cgroup v2 directory to attach to: the node's root cgroup for a DaemonSet.
    #[arg(long, value_name = "DIR")]
    cgroup: PathBuf,
    /// Meshed pods: a YAML file, or a directory of them, re-read when it changes
    /// (with `--pods-from file`).
    #[arg(long, value_name = "PATH")]
    pods: Option<PathBuf>,
    /// Where meshed pods come from: a pod file (VMs, one-machine meshes, tests) or a watch of
    /// this node's pods on the Kubernetes API (a DaemonSet).
    #[arg(long, value_enum, default_value_t = PodsFrom::File)]
    pods_from: PodsFrom,
    /// This node's name, for `--pods-from kubernetes`.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    /// The node's /proc, where pods' network namespaces are found (`--pods-from kubernetes`;
    /// the DaemonSet runs in the host PID namespace).
    #[arg(long = "proc", value_name = "DIR", default_value = "/proc")]
    proc_root: PathBuf,
    /// Experimental: splice app<->sidecar bytes socket to socket (sockops + sk_msg). Off by
    /// default: on Linux 6.18 a blocking read on a spliced socket can fail with EAGAIN, and the
    /// benchmark shows worse tail latency and connection setup (see agent/README.md).
    #[arg(long)]
    sockmap: bool,
    /// Send the app's DNS (port 53) to the sidecar's DNS proxy.
    #[arg(long)]
    dns_capture: bool,
    /// Send the sidecar's connections to another meshed pod on this node straight to that pod's
    /// inbound port.
    #[arg(long)]
    peer_inbound: bool,
    /// The sidecar's user id: its own connections are never redirected.
    #[arg(long, default_value_t = 1337)]
    proxy_uid: u32,
    #[arg(long, default_value_t = 1337)]
    proxy_gid: u32,
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    #[arg(long, default_value_t = 15053)]
    dns_port: u16,
    /// Capacity of the per-connection maps (LRU: the oldest entries go first when full).
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1024..=4_194_304))]
    max_connections: u32,
    /// Where `/healthz` and `/metrics` are served.
    #[arg(long, default_value = "127.0.0.1:15030", value_name = "ADDR")]
    http: SocketAddr,
    /// How often the pod source is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    resync_ms: u64,
    /// Detach everything when stopped (for tests and trials; a DaemonSet keeps it attached).
    #[arg(long)]
    detach_on_exit: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_json);
    let result = match cli.cmd {
        Cmd::Run(args) => run(args).map(|()| ExitCode::SUCCESS),
        Cmd::Detach { loc } => detach(&loc.bpffs).map(|()| ExitCode::SUCCESS),
        Cmd::Status { loc, json } => {
            let s = status::read(&loc.bpffs);
            if json {
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
            } else {
                print!("{}", status::render(&s));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe { cgroup, json } => Ok(probe_cmd(cgroup.as_deref(), json)),
        Cmd::Check { pods } => Ok(check(&pods)),
    };
    result.unwrap_or_else(|e| {
        tracing::error!("{e:#}");
        ExitCode::from(1)
    })
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTRIGGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn probe_cmd(cgroup: Option<&Path>, json: bool) -> ExitCode {
    let report = probe::run(cgroup);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!("kernel {}", report.kernel);
        for f in &report.features {
            let mark = if f.available { "yes" } else { "NO " };
            println!("  {mark}  {:<48} {}", f.name, f.detail);
        }
    }
    if report.missing().is_some() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

fn check(path: &Path) -> ExitCode {
    let snap = pods::read(path);
    for p in &snap.pods {
        let ips: Vec<String> = p
            .ip4
            .map(|i| i.to_string())
            .into_iter()
            .chain(p.ip6.map(|i| i.to_string()))
            .collect();
        println!(
            "meshed {} netns {} ips [{}]",
            p.id,
            p.netns.display(),
            ips.join(", ")
        );
    }
    for e in &snap.errors {
        println!("error {e}");
    }
    if snap.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn detach(bpffs: &Path) -> Result<()> {
    let removed = capture::detach(bpffs).context("detaching")?;
    if removed.is_empty() {
        tracing::info!(bpffs = %bpffs.display(), "nothing was attached");
    }
    for set in removed {
        tracing::info!(set = %set.display(), "detached and unpinned");
    }
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the signal handler")?;
    }
    let source = Source::open(&args)?;
    let shared = Shared::new(args.loc.bpffs.clone());
    let local = http::serve(args.http, shared.clone())
        .with_context(|| format!("--http {}: cannot listen", args.http))?;
    tracing::info!(addr = %local, "serving /healthz and /metrics");

    let Some(mut maps) = start_capture(&args, &shared) else {
        // iptables-only: stay up for health checks and metrics until stopped.
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
        return Ok(());
    };

    let mut last_print = String::new();
    let mut last_errors: Vec<String> = Vec::new();
    let mut next_full = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let print = source.fingerprint();
        // Re-read on change, and every few seconds for namespaces that were not there yet.
        if print != last_print || Instant::now() >= next_full {
            last_print = print;
            next_full = Instant::now() + Duration::from_secs(5);
            let errors = sync_pods(source.snapshot(), &mut maps);
            shared.pod_errors.store(errors.len(), Ordering::Relaxed);
            for e in errors.iter().filter(|e| !last_errors.contains(e)) {
                tracing::warn!(error = %e, "pod left to iptables");
            }
            last_errors = errors;
        }
        std::thread::sleep(Duration::from_millis(args.resync_ms.clamp(50, 10_000)));
    }
    if args.detach_on_exit {
        detach(&args.loc.bpffs)?;
    } else {
        tracing::info!(
            "stopping; the capture stays attached (`outrigger-agent detach` removes it)"
        );
    }
    Ok(())
}

/// Probes, mounts bpffs, attaches. `None` (with the reason logged) means iptables-only.
fn start_capture(args: &RunArgs, shared: &Shared) -> Option<Maps> {
    let fallback = |reason: String| {
        tracing::warn!(%reason, "eBPF capture unavailable: iptables only");
        shared.set_mode("iptables-only", &reason);
        None
    };
    let report = probe::run(Some(&args.cgroup));
    if let Some(missing) = report.missing() {
        return fallback(format!("{}: {}", missing.name, missing.detail));
    }
    match sys::ensure_bpffs(&args.loc.bpffs) {
        Ok(true) => tracing::info!(path = %args.loc.bpffs.display(), "mounted bpffs"),
        Ok(false) => {}
        Err(e) => return fallback(e.to_string()),
    }
    let mut flags = 0;
    if args.sockmap {
        flags |= SET_SOCKMAP;
    }
    if args.dns_capture {
        flags |= SET_DNS;
    }
    if args.peer_inbound {
        flags |= SET_PEER_INBOUND;
    }
    let settings = Settings {
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid,
        out_port: args.outbound_port,
        in_port: args.inbound_port,
        dns_port: args.dns_port,
        flags,
    };
    match capture::attach(
        &args.cgroup,
        &args.loc.bpffs,
        settings,
        args.max_connections,
    ) {
        Ok(a) => {
            let how = match a.start {
                Start::Attached => "attached",
                Start::Adopted => "adopted the pinned capture",
            };
            tracing::info!(
                cgroup = %args.cgroup.display(),
                pins = %a.dir.display(),
                sockmap = args.sockmap,
                dns_capture = args.dns_capture,
                peer_inbound = args.peer_inbound,
                "{how}"
            );
            shared.set_mode("ebpf", "");
            Some(a.maps)
        }
        Err(e) => fallback(format!("{e}")),
    }
}

/// Reads the pod source and writes the difference. Returns one line per pod left out.
fn sync_pods(snap: pods::Snapshot, maps: &mut Maps) -> Vec<String> {
    let mut errors: Vec<String> = snap.errors.iter().map(ToString::to_string).collect();
    let mut resolved: Vec<(MeshedPod, u64)> = Vec::new();
    for pod in snap.pods {
        match sys::netns_cookie(&pod.netns) {
            Ok(cookie) => resolved.push((pod, cookie)),
            Err(e) => errors.push(format!("pod {}: {e}", pod.id)),
        }
    }
    let want = reconcile::desired(&resolved);
    let (cur_pods, cur_ips) = maps.current();
    let plan = reconcile::plan(&cur_pods, &cur_ips, &want);
    if plan.is_empty() {
        return errors;
    }
    let names: BTreeMap<u64, &str> = resolved.iter().map(|(p, c)| (*c, p.id.as_str())).collect();
    match reconcile::apply(maps, &want, &plan) {
        Ok(()) => {
            for c in &plan.put_pods {
                tracing::info!(
                    pod = names.get(c).copied().unwrap_or("?"),
                    netns_cookie = c,
                    "meshed"
                );
            }
            for c in &plan.remove_pods {
                tracing::info!(netns_cookie = c, "no longer meshed");
            }
        }
        Err(e) => errors.push(format!("writing the pod maps: {e}")),
    }
    errors
}
