//! The composition root: builds what the proxy shares once ([`Shared`]: configuration,
//! telemetry, upstream state, lifecycle) and owns the lifecycle: start, readiness (once the
//! initial listeners are warmed), drain, shutdown. `main.rs` only turns flags into [`Options`].

#[cfg(feature = "mesh")]
mod embedded;
mod warming;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::watch;

use crate::admin::{self, AdminState, Role};
use crate::config::bootstrap::{self, Source};
use crate::http::collector::SpanPoster;
use crate::shared::{DrainStrategy, Lifecycle, Shared};
use crate::telemetry::Telemetry;
use crate::telemetry::peer::OwnHeaders;
use crate::telemetry::report::Reporter;
use crate::telemetry::span::Local;
use crate::xds::client::{self, ClientConfig, XdsAddress};
use crate::xds::node::Identity;

pub use warming::warmed;
pub use workload::own_workload;

/// Everything `run` needs, decided from the command line.
pub struct Options {
    pub source: Source,
    /// Run the embedded control plane on this directory of Istio YAML.
    pub mesh_config: Option<PathBuf>,
    /// Delta xDS (Istio's default) rather than state of the world.
    pub delta: bool,
    pub identity: Identity,
    pub admin_ports: Vec<(SocketAddr, Role)>,
    pub drain_strategy: DrainStrategy,
    /// Envoy's `--drain-time-s`: how long open connections may take to finish.
    pub drain_time: Duration,
    /// Envoy's `--parent-shutdown-time-s`: the hard stop, counted from the drain's start.
    pub parent_shutdown_time: Duration,
}

#[derive(Debug, Error)]
pub enum AppError {
    #[error("--mesh-config: {0}")]
    Mesh(String),
    #[error(
        "--mesh-config needs the embedded control plane, which this build leaves out (cargo feature `mesh`)"
    )]
    NoMesh,
}

/// How the proxy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `/quitquitquit`.
    Quit,
    /// SIGTERM or SIGINT, after the drain.
    Drained {
        /// Connections still open when the drain time ended (closed then).
        cut: usize,
    },
}

/// Runs the proxy until `/quitquitquit` or a signal (drained first).
pub async fn run(opts: Options) -> Result<Exit, AppError> {
    let embedded = opts.mesh_config.is_some();
    let exit = serve(opts).await;
    #[cfg(feature = "mesh")]
    if embedded {
        embedded::cleanup();
    }
    #[cfg(not(feature = "mesh"))]
    let _ = embedded;
    exit
}

async fn serve(opts: Options) -> Result<Exit, AppError> {
    let source = match &opts.mesh_config {
        None => opts.source,
        Some(dir) => Source::Xds(embedded_pilot(dir).await?),
    };
    let identity = opts.identity;
    let handle = match source {
        Source::Xds(address) => {
            tracing::info!(node = %identity.node_id(), xds = ?address, delta = opts.delta, "starting");
            client::spawn(ClientConfig {
                address,
                delta: opts.delta,
                node: identity.node(),
                initial_backoff: Duration::from_millis(500),
                max_backoff: Duration::from_secs(30),
            })
        }
        Source::Static(snapshot) => {
            tracing::info!(
                listeners = snapshot.listeners.len(),
                clusters = snapshot.clusters.len(),
                "starting with the bootstrap's static resources"
            );
            bootstrap::fixed(snapshot)
        }
    };
    let telemetry = telemetry(&identity);
    let shared = Arc::new(Shared {
        lifecycle: Lifecycle::new(opts.drain_strategy, opts.drain_time),
        ..Shared::new(handle.snapshot.clone(), telemetry)
    });
    let (quit_tx, mut quit_rx) = watch::channel(false);
    let admin_state = Arc::new(AdminState {
        shared: shared.clone(),
        started: Instant::now(),
        quit: quit_tx,
    });
    for (addr, role) in opts.admin_ports {
        let state = admin_state.clone();
        tokio::spawn(async move {
            if let Err(e) = admin::serve(addr, role, state).await {
                tracing::error!(%addr, error = %e, "admin port failed");
            }
        });
    }
    let _background = start_background(&shared);
    let mut ready = handle.ready.clone();
    let serving = async {
        // Serve nothing until the first listeners and clusters are in; ready once their routes
        // and endpoints are too.
        let _ = ready.wait_for(|r| *r).await;
        let warm = shared.clone();
        tokio::spawn(async move {
            warming::wait(&warm.snapshots, warming::INITIAL_FETCH_TIMEOUT).await;
            warm.lifecycle.set_warmed();
            tracing::info!("initial configuration warmed: ready");
        });
        crate::listener::serve(shared.clone()).await;
        // The listeners are closed (a drain); the process goes on until told to stop.
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = quit_rx.wait_for(|q| *q) => {
            tracing::info!("/quitquitquit: exiting");
            return Ok(Exit::Quit);
        }
        () = serving => {}
        () = signal() => {}
    }
    Ok(drain(&shared, opts.parent_shutdown_time).await)
}

/// SIGTERM's drain: readiness turns 503, the listeners close, connections are asked to close,
/// and the proxy exits once none is open or at the drain time (capped by the parent shutdown
/// time), whichever comes first.
async fn drain(shared: &Shared, parent_shutdown: Duration) -> Exit {
    let limit = shared.lifecycle.drain_time().min(parent_shutdown);
    shared.lifecycle.start_drain();
    tracing::info!(
        open = shared.lifecycle.open_connections(),
        limit_s = limit.as_secs_f64(),
        "shutting down: draining"
    );
    let closed = tokio::time::timeout(limit, shared.lifecycle.all_closed()).await;
    let cut = shared.lifecycle.open_connections();
    match closed {
        Ok(()) => tracing::info!("drained: every connection closed"),
        Err(_) => tracing::warn!(open = cut, "drain time over: closing what is left"),
    }
    Exit::Drained { cut }
}

/// The tasks that follow the configuration: per-cluster state pruned with each snapshot, and
/// spans reported to their collectors. Stopped when the handle drops.
fn start_background(shared: &Arc<Shared>) -> [AbortOnDrop; 2] {
    let clusters = {
        let shared = shared.clone();
        let mut snapshots = shared.snapshots.clone();
        tokio::spawn(async move {
            loop {
                let snap = snapshots.borrow_and_update().clone();
                shared.upstreams.clusters.sync(&snap);
                if snapshots.changed().await.is_err() {
                    return;
                }
            }
        })
    };
    let spans = tokio::spawn(crate::telemetry::report::run(
        shared.telemetry.spans.clone(),
        Arc::new(SpanPoster(shared.clone())),
    ));
    [AbortOnDrop(clusters), AbortOnDrop(spans)]
}

/// Builds the shared context for tests and embedders: the configuration from `snapshots`, the
/// background tasks started. Serve it with [`crate::listener::serve`].
pub fn shared_for(
    snapshots: watch::Receiver<Arc<crate::config::Snapshot>>,
    telemetry: Telemetry,
) -> (Arc<Shared>, Background) {
    let shared = Arc::new(Shared::new(snapshots, telemetry));
    shared.lifecycle.set_warmed();
    let tasks = start_background(&shared);
    (shared, Background { _tasks: tasks })
}

/// The background tasks of [`shared_for`]: they stop when this drops.
pub struct Background {
    _tasks: [AbortOnDrop; 2],
}

/// Stops a background task with what started it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// This proxy's telemetry: its workload from the node identity, metadata exchange headers, and
/// a span reporter named as Istio names the service (`<app>.<namespace>`).
fn telemetry(identity: &Identity) -> Telemetry {
    let me = own_workload(identity);
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
    let own_headers = OwnHeaders::new(&identity.node().id, &me, &identity.pod_name, &labels);
    Telemetry {
        metrics: Default::default(),
        own_headers,
        spans: Arc::new(Reporter::new(Local {
            service_name: format!("{}.{}", me.app, me.namespace),
            ip: identity.instance_ips.first().and_then(|ip| ip.parse().ok()),
        })),
        node_id: identity.node_id(),
        me,
    }
}

#[cfg(feature = "mesh")]
async fn embedded_pilot(dir: &std::path::Path) -> Result<XdsAddress, AppError> {
    embedded::start(dir).await
}

#[cfg(not(feature = "mesh"))]
async fn embedded_pilot(_dir: &std::path::Path) -> Result<XdsAddress, AppError> {
    Err(AppError::NoMesh)
}

/// SIGTERM or SIGINT.
async fn signal() {
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
