//! `outrigger-pilot`: `serve` turns a directory of Istio YAML into xDS and serves it over ADS;
//! `check` reports what is wrong with the directory, like `istioctl analyze`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use outrigger_pilot::findings::{Level, has_errors};
use outrigger_pilot::mesh::{Loader, sort_findings};
use outrigger_pilot::server::{self, ListenAddr};
use outrigger_pilot::watch;

#[derive(Parser)]
#[command(
    name = "outrigger-pilot",
    version,
    about = "Istio traffic configuration without Kubernetes: Istio YAML in, istiod-shaped xDS out"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the directory's configuration over ADS (state of the world and Delta), reloading on
    /// every change. Reads VirtualService, DestinationRule, Gateway, ServiceEntry, WorkloadEntry,
    /// Sidecar, and Kubernetes Service, EndpointSlice and Pod.
    Serve {
        /// Directory of YAML files (searched recursively).
        dir: PathBuf,
        /// Where to serve ADS: host:port or unix:/path; repeat for several.
        #[arg(long, default_value = "127.0.0.1:15010")]
        listen: Vec<String>,
        /// How often to look for changes, in milliseconds.
        #[arg(long, default_value_t = 200)]
        poll_ms: u64,
        /// How long a change must settle before it is loaded, in milliseconds.
        #[arg(long, default_value_t = 100)]
        debounce_ms: u64,
        /// Log level filter (RUST_LOG syntax).
        #[arg(long, default_value = "info")]
        log: String,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
    /// Check the directory and print every finding: file#document, resource, field and reason.
    /// Exit 0 when there are no errors (warnings allowed), 1 with errors, 2 if the directory
    /// cannot be read.
    Check {
        dir: PathBuf,
        /// Print the findings as a JSON array.
        #[arg(long)]
        json: bool,
    },
}

fn init_logs(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn check(dir: PathBuf, json: bool) -> ExitCode {
    let (mesh, mut findings) = match Loader::default().load(&dir) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("outrigger-pilot: {e}");
            return ExitCode::from(2);
        }
    };
    sort_findings(&mut findings);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&findings).unwrap_or_default()
        );
    } else {
        for f in &findings {
            println!("{f}");
        }
        let errors = findings.iter().filter(|f| f.level == Level::Error).count();
        println!(
            "{} resources applied ({} services), {errors} errors, {} warnings",
            mesh.objects.len(),
            mesh.registry.services.len(),
            findings.len() - errors
        );
    }
    if has_errors(&findings) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

async fn serve(
    dir: PathBuf,
    listen: Vec<String>,
    poll: Duration,
    debounce: Duration,
) -> anyhow::Result<()> {
    let addrs: Vec<ListenAddr> = listen.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    let mut loader = Loader::default();
    let (first, findings) = watch::initial(&dir, &mut loader)?;
    watch::log_findings(&findings);
    tracing::info!(dir = %dir.display(), resources = first.mesh.objects.len(), services = first.mesh.registry.services.len(), "configuration loaded");
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(first));
    let mut tasks = Vec::new();
    for a in &addrs {
        tasks.push(server::serve(a, rx.clone()).await?);
        tracing::info!(address = ?a, "serving ADS");
    }
    tokio::spawn(watch::run(dir, loader, tx, poll, debounce));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    for a in &addrs {
        if let ListenAddr::Unix(p) = a {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { dir, json } => check(dir, json),
        Cmd::Serve {
            dir,
            listen,
            poll_ms,
            debounce_ms,
            log,
            log_json,
        } => {
            init_logs(&log, log_json);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("outrigger-pilot: {e}");
                    return ExitCode::from(2);
                }
            };
            match rt.block_on(serve(
                dir,
                listen,
                Duration::from_millis(poll_ms),
                Duration::from_millis(debounce_ms),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("outrigger-pilot: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
