//! `outrigger-proxy`: `run` connects to istiod (or pilot-agent) over ADS and serves the listeners
//! it sends; `validate` checks Envoy configuration offline (also as Envoy's `--mode validate`).
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use outrigger_proxy::admin::Role;
use outrigger_proxy::app;
use outrigger_proxy::config::bootstrap::{self, Source};
use outrigger_proxy::shared::DrainStrategy;
use outrigger_proxy::xds::client::XdsAddress;
use outrigger_proxy::xds::node::Identity;
use outrigger_proxy::{dump, validate};

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
/// effect here (hot restart, log formats) are accepted and logged.
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
        if let Some(s) = self.drain_time_s {
            argv.extend(["--drain-time-s".into(), s.to_string().into()]);
        }
        if let Some(s) = &self.drain_strategy {
            argv.extend(["--drain-strategy".into(), s.into()]);
        }
        if let Some(s) = self.parent_shutdown_time_s {
            argv.extend(["--parent-shutdown-time-s".into(), s.to_string().into()]);
        }
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
    /// How long open connections may take to finish after SIGTERM (Envoy's --drain-time-s):
    /// the listeners close at once, readiness turns 503, and the proxy exits when the last
    /// connection closes or this time is over.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    drain_time_s: u64,
    /// How connections are asked to close during the drain: `gradual` (a growing share of
    /// responses carry `Connection: close`, Envoy's default) or `immediate` (all of them).
    #[arg(long, value_name = "gradual|immediate", default_value = "gradual")]
    drain_strategy: String,
    /// The hard stop, counted from the drain's start (Envoy's --parent-shutdown-time-s).
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    parent_shutdown_time_s: u64,
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
    let opts = match options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("outrigger-proxy: error: {e}");
            return ExitCode::from(2);
        }
    };
    // Envoy's --concurrency: one worker runs everything on one thread (no work stealing); more
    // get a multi-threaded scheduler with that many workers.
    let built = match args.concurrency {
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
    let exit = runtime.block_on(app::run(opts));
    // What is still open (a TCP stream past the drain time) is closed with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match exit {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outrigger-proxy: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The run's options from its flags and environment; an error names the flag or file.
fn options(args: &RunArgs) -> Result<app::Options, String> {
    if args.concurrency == Some(0) {
        return Err("--concurrency must be at least 1".into());
    }
    let bootstrap = match &args.config_path {
        None => None,
        Some(path) => dump::load(path).map_err(|e| e.to_string())?.bootstrap,
    };
    let source = match bootstrap.as_ref().map(bootstrap::source) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            let path = args.config_path.as_deref().unwrap_or(Path::new(""));
            return Err(format!("{}: {e}", path.display()));
        }
        // Replaced by the embedded control plane's socket once it is listening.
        None if args.mesh_config.is_some() => Source::Xds(XdsAddress::Unix(PathBuf::new())),
        None => Source::Xds(
            args.xds_address
                .parse::<XdsAddress>()
                .map_err(|e| format!("invalid value for --xds-address: {e}"))?,
        ),
    };
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    for (k, v) in [
        ("POD_NAME", &args.pod_name),
        ("POD_NAMESPACE", &args.pod_namespace),
        ("INSTANCE_IP", &args.instance_ip),
        ("SERVICE_ACCOUNT", &args.service_account),
    ] {
        if let Some(v) = v {
            env.push((k.to_string(), v.clone()));
        }
    }
    let mut admin_ports: Vec<(SocketAddr, Role)> = Vec::new();
    if args.admin_address != "off" {
        let addr = args.admin_address.parse().map_err(|_| {
            format!(
                "invalid value '{}' for --admin-address: expected ip:port or off",
                args.admin_address
            )
        })?;
        admin_ports.push((addr, Role::Admin));
    }
    for port in [args.status_port, args.prometheus_port] {
        if port != 0 {
            admin_ports.push((SocketAddr::from(([0, 0, 0, 0], port)), Role::Status));
        }
    }
    let drain_strategy: DrainStrategy = args.drain_strategy.parse().map_err(|e| format!("{e}"))?;
    Ok(app::Options {
        source,
        mesh_config: args.mesh_config.clone(),
        delta: !args.sotw,
        identity: Identity::from_env(env),
        admin_ports,
        drain_strategy,
        drain_time: Duration::from_secs(args.drain_time_s),
        parent_shutdown_time: Duration::from_secs(args.parent_shutdown_time_s),
    })
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
                if cli.envoy.disable_hot_restart || cli.envoy.restart_epoch.is_some() {
                    eprintln!(
                        "outrigger-proxy: started with Envoy's flags; hot-restart flags have no effect (one process serves until it drains)"
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
