//! Listeners: binding those of the current snapshot, accepting, and handing each connection to
//! [`connection::handle`]. A drain closes every listening socket: new connections are refused
//! while the open ones finish.

pub mod connection;
mod original_dst;
pub mod relay;
pub mod select;
pub mod sniff;
mod tcp_proxy;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::Address;
use crate::shared::Shared;
pub use connection::{ConnError, handle};
pub use original_dst::original_dst;

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

/// A bound listener's accept loop; dropping it closes the listening socket.
struct Bound {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps one accept loop per bound listener of the current snapshot: binds new ones, closes
/// removed ones, and hands every connection the snapshot of its accept time. Returns when the
/// drain starts, with every listening socket closed.
pub async fn serve(shared: Arc<Shared>) {
    let mut snapshots = shared.snapshots.clone();
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
                    let task = tokio::spawn(accept_loop(name.clone(), listener, shared.clone()));
                    bound.insert(name, Bound { addr, task });
                }
                Err(e) => {
                    tracing::error!(listener = %name, address = %addr, error = %e, "cannot bind listener")
                }
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            () = shared.lifecycle.drain_started() => {
                tracing::info!(listeners = bound.len(), "draining: listeners closed, open connections may finish");
                break;
            }
        }
    }
}

async fn accept_loop(name: String, listener: TcpListener, shared: Arc<Shared>) {
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
        let snap = shared.snapshot();
        let Some(accepting) = snap.listeners.get(&name).cloned() else {
            continue;
        };
        let open = shared.lifecycle.open_connection();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _open = open;
            if let Err(e) = handle(snap, accepting, stream, shared).await {
                tracing::info!(%peer, error = %e, "connection closed");
            }
        });
    }
}
