//! One accepted connection: its original destination, the listener and filter chain that
//! serve it (after sniffing its first bytes where the listener inspects), and the filter that
//! runs it: `tcp_proxy` or the HTTP connection manager.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpStream;

use super::original_dst::original_dst;
use super::select::{ConnMeta, filter_chain, listener_for};
use super::sniff::{MAX_PEEK, Sniffed, sniff};
use super::tcp_proxy::tcp_proxy;
use crate::config::Snapshot;
use crate::config::listener::{Listener, ListenerFilter, NetworkFilter};
use crate::http::{ConnContext, serve_connection};
use crate::shared::Shared;

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

/// Handles one accepted connection: the listener and filter chain from the snapshot current at
/// accept time; HTTP routes and clusters from the latest one, request by request (as Envoy
/// applies RDS and CDS updates to open connections).
pub async fn handle(
    snap: Arc<Snapshot>,
    accepting: Arc<Listener>,
    stream: TcpStream,
    shared: Arc<Shared>,
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
                return tcp_proxy(&snap, t, stream, src, dst, &shared, inbound).await;
            }
            NetworkFilter::Http(manager) => {
                let inbound = accepting.name == "virtualInbound";
                let ctx = ConnContext::new(shared, manager.clone(), dst, src, inbound);
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
