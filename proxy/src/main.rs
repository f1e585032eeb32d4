//! `outrigger-proxy`: `run` connects to istiod (or pilot-agent) over ADS and serves the listeners
//! it sends; `validate` checks Envoy configuration offline (also as Envoy's `--mode validate`).
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outrigger_proxy::admin::{self, AdminState, Role};
use outrigger_proxy::xds::client::{self, ClientConfig, XdsAddress};
use outrigger_proxy::xds::node::Identity;
use outrigger_proxy::{dump, listener, validate};

#[allow(unsafe_code)]
mod alloc;

/// mimalloc instead of glibc's malloc: every request allocates about a dozen times; glibc spent
/// about 170 instructions per allocation and free, mimalloc about half as many.
#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "outrigger-proxy",
    version,
    about = "Envoy-compatible sidecar proxy for Istio",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Envoy compatibility: `--mode validate` checks the config given with -c and exits.
    #[arg(long, value_name = "serve|validate")]
    mode: Option<String>,
    /// Envoy compatibility: the bootstrap or config dump file.
    #[arg(short = 'c', long = "config-path", value_name = "FILE")]
    config_path: Option<PathBuf>,
    #[command(flatten)]
    envoy: EnvoyFlags,
}

/// The flags pilot-agent passes to Envoy, so that `outrigger-proxy` can be started in Envoy's
/// place unchanged (`outrigger-proxy -c envoy-rev.json --drain-time-s 45 …`). Those without an
/// effect here are accepted and logged.
#[derive(clap::Args, Debug, Default)]
#[command(next_help_heading = "Envoy compatibility (when run without a subcommand)")]
struct EnvoyFlags {
    /// Worker threads.
    #[arg(long)]
    concurrency: Option<usize>,
    /// trace, debug, info, warning, error, critical or off.
    #[arg(short = 'l', long = "log-level")]
    log_level: Option<String>,
    #[arg(long, hide = true)]
    component_log_level: Option<String>,
    #[arg(long, hide = true)]
    log_format: Option<String>,
    #[arg(long, hide = true)]
    drain_time_s: Option<u64>,
    #[arg(long, hide = true)]
    drain_strategy: Option<String>,
    #[arg(long, hide = true)]
    parent_shutdown_time_s: Option<u64>,
    #[arg(long, hide = true)]
    local_address_ip_version: Option<String>,
    #[arg(long, hide = true)]
    file_flush_interval_msec: Option<u64>,
    #[arg(long, hide = true)]
    disable_hot_restart: bool,
    #[arg(long, hide = true)]
    allow_unknown_static_fields: bool,
    #[arg(long, hide = true)]
    skip_deprecated_logs: bool,
    #[arg(long, hide = true)]
    service_cluster: Option<String>,
    #[arg(long, hide = true)]
    service_node: Option<String>,
    #[arg(long, hide = true)]
    base_id: Option<u32>,
    #[arg(long, hide = true)]
    restart_epoch: Option<u32>,
}

impl EnvoyFlags {
    /// Envoy's log level as a tracing filter.
    fn log_filter(&self) -> String {
        match self.log_level.as_deref() {
            Some("trace") => "trace",
            Some("debug") => "debug",
            Some("info") | None => "info",
            Some("warning" | "warn") => "warn",
            Some("error" | "critical") => "error",
            Some("off") => "off",
            Some(_) => "info",
        }
        .into()
    }

    /// The `run` arguments these flags mean, with `config` as the bootstrap.
    fn run_args(&self, config: &std::path::Path) -> Result<RunArgs, clap::Error> {
        let mut argv: Vec<std::ffi::OsString> = vec!["run".into(), "-c".into(), config.into()];
        if let Some(n) = self.concurrency {
            argv.extend(["--concurrency".into(), n.to_string().into()]);
        }
        argv.extend(["--log".into(), self.log_filter().into()]);
        if self
            .log_format
            .as_deref()
            .is_some_and(|f| f.starts_with('{'))
        {
            argv.push("--log-json".into());
        }
        <RunArgs as clap::FromArgMatches>::from_arg_matches(
            &<RunArgs as clap::Args>::augment_args(clap::Command::new("run"))
                .try_get_matches_from(argv)?,
        )
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Connect to the control plane and serve the listeners it sends. The proxy's identity comes
    /// from the same environment pilot-agent gives Envoy (POD_NAME, POD_NAMESPACE, INSTANCE_IP,
    /// SERVICE_ACCOUNT, ISTIO_META_*, ISTIO_METAJSON_*); flags override it. Run it as uid 1337 so
    /// that its own connections are not captured.
    Run(Box<RunArgs>),
    /// Load a config dump (admin /config_dump output) or a bootstrap, JSON or YAML, and report
    /// which resources would be accepted, rejected (with the reason) or partly ignored.
    /// Exit 0 if nothing is rejected, 1 if something is, 2 if the file cannot be read.
    Validate {
        file: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// An Envoy bootstrap (JSON or YAML). Its static listeners and clusters are served; with
    /// dynamic_resources, xDS comes from the `xds-grpc` cluster's address (pilot-agent's
    /// bootstrap), and its static 15090/15021 listeners are served natively instead.
    #[arg(short = 'c', long = "config-path", value_name = "FILE")]
    config_path: Option<PathBuf>,
    /// Worker threads (Envoy's --concurrency); default: one per core.
    #[arg(long)]
    concurrency: Option<usize>,
    /// ADS server: host:port, or unix:/path as pilot-agent serves it.
    #[arg(
        long,
        env = "OUTRIGGER_XDS_ADDRESS",
        default_value = "unix:./etc/istio/proxy/XDS"
    )]
    xds_address: String,
    /// Use state-of-the-world xDS instead of Delta (Istio's default).
    #[arg(long)]
    sotw: bool,
    /// Run without a control plane: read Istio YAML (VirtualService, DestinationRule,
    /// ServiceEntry, Service, EndpointSlice, Pod, …) from this directory, and serve this proxy the
    /// configuration istiod would send it (embedded outrigger-pilot, reloading on change).
    #[arg(long, value_name = "DIR", conflicts_with = "config_path")]
    mesh_config: Option<PathBuf>,
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Comma-separated pod IPs.
    #[arg(long, env = "INSTANCE_IP")]
    instance_ip: Option<String>,
    #[arg(long, env = "SERVICE_ACCOUNT")]
    service_account: Option<String>,
    /// Admin API address (Envoy's /config_dump, /clusters, /ready, …); "off" disables it.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_address: String,
    /// Readiness port (/healthz/ready); 0 disables it.
    #[arg(long, default_value_t = 15021)]
    status_port: u16,
    /// Prometheus port (/stats/prometheus); 0 disables it.
    #[arg(long, default_value_t = 15090)]
    prometheus_port: u16,
    /// Log level filter (e.g. info, debug, outrigger_proxy=debug).
    #[arg(long, env = "OUTRIGGER_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn run_proxy(args: RunArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    // Envoy's descriptors, decoded to read the bootstrap and for each /config_dump (about
    // 20 MB), go back to the system as soon as they are dropped.
    dump::on_release(alloc::release_free_memory);
    let bootstrap = match &args.config_path {
        None => None,
        Some(path) => match dump::load(path) {
            Ok(d) => d.bootstrap,
            Err(e) => {
                eprintln!("outrigger-proxy: error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let source = match bootstrap
        .as_ref()
        .map(outrigger_proxy::config::bootstrap::source)
    {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            eprintln!(
                "outrigger-proxy: error: {}: {e}",
                args.config_path
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            );
            return ExitCode::from(2);
        }
        None if args.mesh_config.is_some() => {
            // Replaced by the embedded control plane's socket once it is listening.
            outrigger_proxy::config::bootstrap::Source::Xds(XdsAddress::Unix(PathBuf::new()))
        }
        None => match args.xds_address.parse::<XdsAddress>() {
            Ok(a) => outrigger_proxy::config::bootstrap::Source::Xds(a),
            Err(e) => {
                eprintln!("outrigger-proxy: error: invalid value for --xds-address: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    for (k, v) in [
        ("POD_NAME", args.pod_name),
        ("POD_NAMESPACE", args.pod_namespace),
        ("INSTANCE_IP", args.instance_ip),
        ("SERVICE_ACCOUNT", args.service_account),
    ] {
        if let Some(v) = v {
            env.push((k.to_string(), v));
        }
    }
    let identity = Identity::from_env(env);
    let mut admin_ports: Vec<(std::net::SocketAddr, Role)> = Vec::new();
    if args.admin_address != "off" {
        match args.admin_address.parse() {
            Ok(a) => admin_ports.push((a, Role::Admin)),
            Err(_) => {
                eprintln!(
                    "outrigger-proxy: error: invalid value '{}' for --admin-address: expected ip:port or off",
                    args.admin_address
                );
                return ExitCode::from(2);
            }
        }
    }
    for port in [args.status_port, args.prometheus_port] {
        if port != 0 {
            admin_ports.push((
                std::net::SocketAddr::from(([0, 0, 0, 0], port)),
                Role::Status,
            ));
        }
    }
    // Envoy's --concurrency: one worker runs everything on one thread (no work stealing); more
    // get a multi-threaded scheduler with that many workers.
    let built = match args.concurrency {
        Some(0) => {
            eprintln!("outrigger-proxy: error: --concurrency must be at least 1");
            return ExitCode::from(2);
        }
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outrigger-proxy: error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mesh_config = args.mesh_config.clone();
    let embedded_socket =
        std::env::temp_dir().join(format!("outrigger-mesh-{}.sock", std::process::id()));
    let code = runtime.block_on(async {
        let source = match mesh_config {
            None => source,
            Some(dir) => match embedded_pilot(&dir, &embedded_socket).await {
                Ok(a) => outrigger_proxy::config::bootstrap::Source::Xds(a),
                Err(e) => {
                    eprintln!("outrigger-proxy: error: --mesh-config: {e:#}");
                    return ExitCode::from(2);
                }
            },
        };
        let mut handle = match source {
            outrigger_proxy::config::bootstrap::Source::Xds(address) => {
                tracing::info!(node = %identity.node_id(), xds = ?address, delta = !args.sotw, "starting");
                client::spawn(ClientConfig {
                    address,
                    delta: !args.sotw,
                    node: identity.node(),
                    initial_backoff: std::time::Duration::from_millis(500),
                    max_backoff: std::time::Duration::from_secs(30),
                })
            }
            outrigger_proxy::config::bootstrap::Source::Static(snapshot) => {
                tracing::info!(listeners = snapshot.listeners.len(), clusters = snapshot.clusters.len(), "starting with the bootstrap's static resources");
                outrigger_proxy::config::bootstrap::fixed(snapshot)
            }
        };
        let (quit_tx, mut quit_rx) = tokio::sync::watch::channel(false);
        let me = own_workload(&identity);
        let labels: std::collections::BTreeMap<String, String> = identity
            .extra
            .get("LABELS")
            .and_then(|l| l.as_object())
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let own_headers = outrigger_proxy::telemetry::peer::OwnHeaders::new(
            &identity.node().id,
            &me,
            &identity.pod_name,
            &labels,
        );
        let telemetry = std::sync::Arc::new(outrigger_proxy::telemetry::metrics::Telemetry {
            metrics: Default::default(),
            outliers: Default::default(),
            breakers: Default::default(),
            own_headers,
            spans: std::sync::Arc::new(outrigger_proxy::telemetry::report::Reporter::new(
                outrigger_proxy::telemetry::span::Local {
                    // Istio's trace service name: `<app>.<namespace>`.
                    service_name: format!("{}.{}", me.app, me.namespace),
                    ip: identity.instance_ips.first().and_then(|ip| ip.parse().ok()),
                },
            )),
            node_id: identity.node_id(),
            me,
        });
        let state = std::sync::Arc::new(AdminState {
            metrics: telemetry.metrics.clone(),
            outliers: telemetry.outliers.clone(),
            breakers: telemetry.breakers.clone(),
            spans: telemetry.spans.clone(),
            snapshot: handle.snapshot.clone(),
            ready: handle.ready.clone(),
            failing: std::sync::atomic::AtomicBool::new(false),
            started: std::time::Instant::now(),
            node_id: identity.node_id(),
            quit: quit_tx,
        });
        for (addr, role) in admin_ports {
            let state = state.clone();
            tokio::spawn(async move {
                if let Err(e) = admin::serve(addr, role, state).await {
                    tracing::error!(%addr, error = %e, "admin port failed");
                }
            });
        }
        tokio::select! {
            _ = quit_rx.wait_for(|q| *q) => tracing::info!("/quitquitquit: exiting"),
            _ = async {
                // Serve nothing until the first listeners and clusters are in.
                let _ = handle.ready.wait_for(|r| *r).await;
                listener::serve_with(handle.snapshot.clone(), telemetry.clone()).await;
            } => {}
            _ = shutdown() => tracing::info!("shutting down"),
        }
        ExitCode::SUCCESS
    });
    if args.mesh_config.is_some() {
        let _ = std::fs::remove_file(&embedded_socket);
    }
    code
}

/// This proxy's workload for the metrics: pilot-agent's WORKLOAD_NAME, else the pod's
/// Deployment name; app and version from its labels.
fn own_workload(id: &Identity) -> outrigger_proxy::telemetry::metrics::Workload {
    let label = |k: &str| {
        id.extra
            .get("LABELS")
            .and_then(|l| l.get(k))
            .and_then(|v| v.as_str())
            .map(String::from)
    };
    let name = id
        .extra
        .get("WORKLOAD_NAME")
        .and_then(|v| v.as_str())
        .map(String::from)
        .unwrap_or_else(|| {
            outrigger_proxy::telemetry::metrics::Workload::name_of_pod(&id.pod_name)
        });
    outrigger_proxy::telemetry::metrics::Workload {
        app: label("app")
            .or_else(|| label("app.kubernetes.io/name"))
            .unwrap_or_else(|| name.clone()),
        version: label("version")
            .or_else(|| label("app.kubernetes.io/version"))
            .unwrap_or_else(|| "unknown".into()),
        name,
        namespace: id.namespace.clone(),
        cluster: id.cluster_id.clone(),
    }
}

/// Starts outrigger-pilot in this process on a private Unix socket, watching `dir`.
async fn embedded_pilot(
    dir: &std::path::Path,
    socket: &std::path::Path,
) -> anyhow::Result<XdsAddress> {
    use outrigger_pilot::{mesh::Loader, server, watch};
    let mut loader = Loader::default();
    let (first, findings) = watch::initial(dir, &mut loader)?;
    watch::log_findings(&findings);
    tracing::info!(dir = %dir.display(), resources = first.mesh.objects.len(), services = first.mesh.registry.services.len(), "mesh configuration loaded");
    let (tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(first));
    let _server = server::serve(&server::ListenAddr::Unix(socket.to_path_buf()), rx).await?;
    tokio::spawn(watch::run(
        dir.to_path_buf(),
        loader,
        tx,
        std::time::Duration::from_millis(200),
        std::time::Duration::from_millis(100),
    ));
    Ok(XdsAddress::Unix(socket.to_path_buf()))
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn run_validate(file: &std::path::Path, json: bool) -> ExitCode {
    let dump = match dump::load(file) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("outrigger-proxy: error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = validate::validate(&dump);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&validate::to_json(&report)).unwrap_or_default()
        );
    } else {
        print!("{}", validate::render(&report));
    }
    if report.rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match (cli.cmd, cli.mode.as_deref(), cli.config_path) {
        (Some(Cmd::Validate { file, json }), _, _) => run_validate(&file, json),
        (Some(Cmd::Run(args)), _, _) => run_proxy(*args),
        (None, Some("validate"), Some(file)) => run_validate(&file, false),
        (None, Some("validate"), None) => {
            eprintln!("outrigger-proxy: error: --mode validate needs -c FILE");
            ExitCode::from(2)
        }
        // Started as Envoy: serve the bootstrap.
        (None, None | Some("serve"), Some(file)) => match cli.envoy.run_args(&file) {
            Ok(args) => {
                if cli.envoy.drain_time_s.is_some() || cli.envoy.disable_hot_restart {
                    eprintln!(
                        "outrigger-proxy: started with Envoy's flags; drain and hot-restart flags have no effect"
                    );
                }
                run_proxy(args)
            }
            Err(e) => {
                eprintln!("outrigger-proxy: error: {e}");
                ExitCode::from(2)
            }
        },
        (None, Some(other), _) => {
            eprintln!(
                "outrigger-proxy: error: invalid value '{other}' for --mode: expected serve or validate"
            );
            ExitCode::from(2)
        }
        (None, None, None) => {
            eprintln!(
                "outrigger-proxy: error: nothing to do: use `outrigger-proxy run`, `outrigger-proxy validate FILE`, or Envoy's `-c FILE` (see --help)"
            );
            ExitCode::from(2)
        }
    }
}
