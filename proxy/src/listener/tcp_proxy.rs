//! Envoy's `tcp_proxy` filter: a connection relayed to an endpoint of the target cluster, with
//! Istio's TCP metrics.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::connection::ConnError;
use super::relay::relay;
use crate::config::Snapshot;
use crate::config::listener::TcpProxy;
use crate::shared::Shared;
use crate::upstream::connect::connect;
use crate::upstream::{Pick, cluster_of, endpoint};

pub(super) async fn tcp_proxy(
    snap: &Snapshot,
    t: &TcpProxy,
    downstream: TcpStream,
    src: SocketAddr,
    dst: SocketAddr,
    shared: &Shared,
    inbound: bool,
) -> Result<(), ConnError> {
    let name = cluster_of(&t.target, fastrand::u64(..), None)
        .unwrap_or_default()
        .to_string();
    let cluster = snap
        .clusters
        .get(&name)
        .ok_or_else(|| ConnError::UnknownCluster(name.clone()))?;
    let state = shared.upstreams.clusters.get(cluster);
    let pick = Pick {
        counter: shared.upstreams.next(),
        roll: fastrand::u64(..),
        // tcp_proxy's source IP hash policy, as for HTTP (the address without the port).
        hash: t
            .hash_source_ip
            .then(|| xxhash_rust::xxh64::xxh64(src.ip().to_string().as_bytes(), 0)),
        attempt: 0,
        active: &|d| shared.upstreams.loads.get(d),
        ejected: &|d| {
            cluster.outlier.is_some() && state.outliers.is_ejected(d, std::time::Instant::now())
        },
        tables: &state.hash_table,
    };
    let addr = endpoint(snap, cluster, dst, &pick)
        .map_err(|_| ConnError::NoHealthyUpstream(name.clone()))?;
    let _in_flight = (cluster.lb_policy == crate::config::cluster::LbPolicy::LeastRequest)
        .then(|| shared.upstreams.loads.start(&addr));
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
    let metrics = &shared.telemetry.metrics;
    metrics.tcp_opened(key, || {
        let me = shared.telemetry.me.clone();
        let peer =
            crate::upstream::endpoint_workload(snap, cluster, &crate::upstream::Dest::Ip(addr))
                .map(|w| crate::telemetry::metrics::Workload::from_istio(&w))
                .unwrap_or_else(crate::telemetry::metrics::Workload::unknown);
        let service = match &cluster.service {
            Some(s) => (s.host.clone(), s.name.clone(), s.namespace.clone()),
            None => (name.clone(), name.clone(), "unknown".into()),
        };
        let (reporter, source, destination) = if inbound {
            (
                "destination",
                crate::telemetry::metrics::Workload::unknown(),
                me,
            )
        } else {
            ("source", me, peer)
        };
        crate::telemetry::metrics::RequestLabels {
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
