//! Binding the listeners of the current snapshot and handling accepted connections.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::http::manager::{ConnContext, Upstreams, serve_connection};
use super::relay::relay;
use super::select::{ConnMeta, filter_chain, listener_for};
use super::sniff::{MAX_PEEK, Sniffed, sniff};
use super::upstream::{Pick, cluster_of, endpoint};
use crate::config::Address;
use crate::config::listener::{Listener, ListenerFilter, NetworkFilter, TcpProxy};
use crate::xds::store::Snapshot;

/// How long the inspectors wait for a client's first bytes before treating it as opaque TCP
/// (a server-first protocol sends nothing).
const SNIFF_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum ConnError {
    #[error("the client went away before it could be served: {0}")]
    Peer(std::io::Error),
    #[error("no filter chain matches {0}")]
    NoChain(SocketAddr),
    #[error("cluster '{0}' is not known")]
    UnknownCluster(String),
    #[error("no healthy upstream in '{0}'")]
    NoHealthyUpstream(String),
    #[error("connecting to {addr} (cluster {cluster}): {source}")]
    Connect {
        cluster: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {addr} (cluster {cluster}): timed out")]
    ConnectTimeout { cluster: String, addr: SocketAddr },
}

/// The original destination of a redirected connection (SO_ORIGINAL_DST), else its local address
/// (TPROXY, or no capture at all).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let local = stream.local_addr().ok()?;
    let nat = match local {
        SocketAddr::V4(_) => getsockopt(stream, sockopt::OriginalDst).ok().map(|a| {
            SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))),
                u16::from_be(a.sin_port),
            )
        }),
        SocketAddr::V6(_) => getsockopt(stream, sockopt::Ip6tOriginalDst).ok().map(|a| {
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)),
                u16::from_be(a.sin6_port),
            )
        }),
    };
    Some(nat.unwrap_or(local))
}

async fn sniffed(stream: &TcpStream) -> Sniffed {
    let mut buf = vec![0u8; MAX_PEEK];
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return Sniffed::Opaque,
        };
        match sniff(&buf[..n]) {
            Sniffed::NeedMore if n > 0 && n < MAX_PEEK => {
                // Wait for more bytes to arrive before peeking again.
                tokio::time::sleep(Duration::from_millis(5)).await;
                if tokio::time::Instant::now() >= deadline {
                    return Sniffed::Opaque;
                }
            }
            Sniffed::NeedMore if n == 0 => return Sniffed::Opaque,
            other => return other,
        }
    }
}

/// Shared per-proxy counters for round robin and random choices.
#[derive(Debug, Default)]
pub struct Counters {
    rr: AtomicU64,
    http: Arc<AtomicU64>,
    loads: Arc<super::upstream::Loads>,
    hash_tables: Arc<super::hash_lb::HashTables>,
    telemetry: Arc<crate::stats::Telemetry>,
}

async fn connect(
    cluster: &str,
    addr: SocketAddr,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, ConnError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| ConnError::Connect {
        cluster: cluster.into(),
        addr,
        source,
    })?;
    if let Some(ip) = bind {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|source| ConnError::Connect {
                cluster: cluster.into(),
                addr,
                source,
            })?;
    }
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(ConnError::Connect {
            cluster: cluster.into(),
            addr,
            source,
        }),
        Err(_) => Err(ConnError::ConnectTimeout {
            cluster: cluster.into(),
            addr,
        }),
    }
}

async fn tcp_proxy(
    snap: &Snapshot,
    t: &TcpProxy,
    downstream: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    counters: &Counters,
    inbound: bool,
) -> Result<(), ConnError> {
    let name = cluster_of(&t.target, fastrand::u64(..), None)
        .unwrap_or_default()
        .to_string();
    let cluster = snap
        .clusters
        .get(&name)
        .ok_or_else(|| ConnError::UnknownCluster(name.clone()))?;
    let pick = Pick {
        counter: counters.rr.fetch_add(1, Ordering::Relaxed),
        roll: fastrand::u64(..),
        // tcp_proxy's source IP hash policy, as for HTTP (the address without the port).
        hash: t
            .hash_source_ip
            .then(|| xxhash_rust::xxh64::xxh64(src.ip().to_string().as_bytes(), 0)),
        attempt: 0,
        active: &|d| counters.loads.get(d),
        ejected: &|d| {
            cluster.outlier.is_some()
                && counters
                    .telemetry
                    .outliers
                    .is_ejected(&name, d, std::time::Instant::now())
        },
        tables: &counters.hash_tables,
    };
    let addr = endpoint(snap, cluster, dst, &pick)
        .map_err(|_| ConnError::NoHealthyUpstream(name.clone()))?;
    let _in_flight = (cluster.lb_policy == crate::config::cluster::LbPolicy::LeastRequest)
        .then(|| counters.loads.start(&addr));
    let addr = addr
        .resolve()
        .await
        .map_err(|_| ConnError::NoHealthyUpstream(name.clone()))?;
    let upstream = connect(&name, addr, cluster.bind_source, cluster.connect_timeout).await?;
    let _ = downstream.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    // Istio's TCP metrics: a series per (direction, cluster, endpoint).
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ("tcp", inbound, &name, addr).hash(&mut h);
        h.finish()
    };
    let metrics = &counters.telemetry.metrics;
    metrics.tcp_opened(key, || {
        let me = counters.telemetry.me.clone();
        let peer =
            super::upstream::endpoint_workload(snap, cluster, &super::upstream::Dest::Ip(addr))
                .map(|w| crate::stats::Workload::from_istio(&w))
                .unwrap_or_else(crate::stats::Workload::unknown);
        let service = match &cluster.service {
            Some(s) => (s.host.clone(), s.name.clone(), s.namespace.clone()),
            None => (name.clone(), name.clone(), "unknown".into()),
        };
        let (reporter, source, destination) = if inbound {
            ("destination", crate::stats::Workload::unknown(), me)
        } else {
            ("source", me, peer)
        };
        crate::stats::RequestLabels {
            reporter,
            source,
            destination,
            service,
            protocol: "tcp",
            response_code: 0,
            response_flags: "-".into(),
            grpc_status: String::new(),
        }
    });
    let moved = relay(downstream, upstream, t.idle_timeout).await;
    metrics.tcp_closed(
        key,
        moved.upstream_to_downstream,
        moved.downstream_to_upstream,
    );
    tracing::debug!(cluster = %name, upstream = %addr, sent = moved.downstream_to_upstream, received = moved.upstream_to_downstream, idle_timeout = moved.idle_timeout, "tcp connection closed");
    Ok(())
}

/// Handles one accepted connection: the listener and filter chain from the snapshot current at
/// accept time; HTTP routes and clusters from the latest one, request by request (as Envoy
/// applies RDS and CDS updates to open connections).
pub async fn handle(
    snap: Arc<Snapshot>,
    live: watch::Receiver<Arc<Snapshot>>,
    accepting: Arc<Listener>,
    stream: TcpStream,
    counters: Arc<Counters>,
    upstreams: Arc<Upstreams>,
) -> Result<(), ConnError> {
    let src = stream.peer_addr().map_err(ConnError::Peer)?;
    let dst = original_dst(&stream).unwrap_or(src);
    let listener = listener_for(&snap, &accepting, dst);
    // The inspectors of the accepting listener, and of the one it hands the connection to,
    // unless their `filter_disabled` covers the destination port.
    let inspects = |l: &Listener| {
        l.listener_filters.iter().any(|f| {
            matches!(
                f,
                ListenerFilter::HttpInspector | ListenerFilter::TlsInspector
            )
        }) && !l
            .sniff_disabled
            .as_ref()
            .is_some_and(|p| p.matches(dst.port()))
    };
    let inspect = inspects(&accepting) || inspects(listener);
    let detected = if inspect {
        sniffed(&stream).await
    } else {
        Sniffed::Opaque
    };
    let (transport, app_protocols) = detected.protocols();
    let meta = ConnMeta {
        dst,
        src,
        transport,
        app_protocols,
        sni: None,
    };
    let chain = filter_chain(listener, &meta).ok_or(ConnError::NoChain(dst))?;
    for filter in &chain.filters {
        match filter {
            NetworkFilter::TcpProxy(t) => {
                let inbound = accepting.name == "virtualInbound";
                return tcp_proxy(&snap, t, stream, src, dst, &counters, inbound).await;
            }
            NetworkFilter::Http(manager) => {
                let ctx = ConnContext {
                    live,
                    manager: manager.clone(),
                    original_dst: dst,
                    downstream: src,
                    upstreams: upstreams.clone(),
                    counter: counters.http.clone(),
                    loads: counters.loads.clone(),
                    hash_tables: counters.hash_tables.clone(),
                    breakers: counters.telemetry.breakers.clone(),
                    telemetry: counters.telemetry.clone(),
                    inbound: accepting.name == "virtualInbound",
                    affinity: Default::default(),
                    timer: None,
                };
                let h2 = match detected {
                    Sniffed::H2c => Some(true),
                    Sniffed::Http10 | Sniffed::Http11 => Some(false),
                    _ => None,
                };
                serve_connection(ctx, stream, h2).await;
                return Ok(());
            }
            NetworkFilter::Ignored(_) => {}
        }
    }
    Err(ConnError::NoChain(dst))
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
    telemetry: Arc<crate::stats::Telemetry>,
) {
    let counters = Arc::new(Counters {
        telemetry,
        ..Counters::default()
    });
    let upstreams = Arc::new(Upstreams::default());
    // Spans go to their collector in the background, through the same clients.
    let reporter = tokio::spawn(super::http::report::run(
        counters.telemetry.spans.clone(),
        Arc::new(super::http::manager::SpanPoster {
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
