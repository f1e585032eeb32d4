//! Listeners: binding those of the current snapshot, accepting, and handing each connection to
//! [`connection::handle`].

pub mod connection;
mod original_dst;
pub mod relay;
pub mod select;
pub mod sniff;
mod tcp_proxy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Address, Snapshot};
use crate::http::manager::Upstreams;
pub use connection::{ConnError, handle};
pub use original_dst::original_dst;

/// Shared per-proxy counters for round robin and random choices.
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) rr: AtomicU64,
    pub(crate) http: Arc<AtomicU64>,
    pub(crate) loads: Arc<crate::upstream::Loads>,
    pub(crate) hash_tables: Arc<crate::upstream::hash_lb::HashTables>,
    pub(crate) telemetry: Arc<crate::telemetry::metrics::Telemetry>,
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

struct Bound {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// Keeps one accept loop per bound listener of the current snapshot: binds new ones, closes
/// removed ones, and hands every connection the snapshot of its accept time.
pub async fn serve(snapshots: watch::Receiver<Arc<Snapshot>>) {
    serve_with(snapshots, Arc::default()).await
}

/// The same, reporting Istio's request metrics through `telemetry`.
pub async fn serve_with(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    telemetry: Arc<crate::telemetry::metrics::Telemetry>,
) {
    let counters = Arc::new(Counters {
        telemetry,
        ..Counters::default()
    });
    let upstreams = Arc::new(Upstreams::default());
    // Spans go to their collector in the background, through the same clients.
    let reporter = tokio::spawn(crate::telemetry::report::run(
        counters.telemetry.spans.clone(),
        Arc::new(crate::http::manager::SpanPoster {
            live: snapshots.clone(),
            upstreams: upstreams.clone(),
            hash_tables: counters.hash_tables.clone(),
        }),
    ));
    let _reporter = AbortOnDrop(reporter);
    let mut bound: BTreeMap<String, Bound> = BTreeMap::new();
    loop {
        let snap = snapshots.borrow_and_update().clone();
        let wanted: BTreeMap<String, SocketAddr> = snap
            .listeners
            .values()
            .filter(|l| l.bind_to_port)
            .filter_map(|l| match l.address {
                Address::Socket(a) => Some((l.name.clone(), a)),
                _ => None,
            })
            .collect();
        bound.retain(|name, b| {
            let keep = wanted.get(name) == Some(&b.addr);
            if !keep {
                tracing::info!(listener = %name, address = %b.addr, "listener removed");
                b.task.abort();
            }
            keep
        });
        for (name, addr) in wanted {
            if bound.contains_key(&name) {
                continue;
            }
            match bind(addr) {
                Ok(listener) => {
                    tracing::info!(listener = %name, address = %addr, "listening");
                    let task = tokio::spawn(accept_loop(
                        name.clone(),
                        listener,
                        snapshots.clone(),
                        counters.clone(),
                        upstreams.clone(),
                    ));
                    bound.insert(name, Bound { addr, task });
                }
                Err(e) => {
                    tracing::error!(listener = %name, address = %addr, error = %e, "cannot bind listener")
                }
            }
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}

/// Stops a background task with the function that started it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn accept_loop(
    name: String,
    listener: TcpListener,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    counters: Arc<Counters>,
    upstreams: Arc<Upstreams>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // As Envoy: no Nagle delay on proxied connections.
        let _ = stream.set_nodelay(true);
        let snap = snapshots.borrow().clone();
        let Some(accepting) = snap.listeners.get(&name).cloned() else {
            continue;
        };
        let (counters, upstreams, live) = (counters.clone(), upstreams.clone(), snapshots.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(snap, live, accepting, stream, counters, upstreams).await {
                tracing::info!(%peer, error = %e, "connection closed");
            }
        });
    }
}
