//! The admin side, shaped like Envoy's so that `istioctl proxy-config`, pilot-agent and kubelet
//! can read it: admin on 127.0.0.1:15000, readiness on :15021, Prometheus on :15090.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::config::Address;
use crate::config::{Raw, Snapshot};
use crate::dump::pool;
use crate::shared::Shared;
use crate::upstream::breaker::BreakerStats;
use crate::upstream::state::Clusters;
use crate::xds::ResourceType;

/// What the admin endpoints read and change: the proxy's shared context, its start time, and
/// `/quitquitquit`.
pub struct AdminState {
    pub shared: Arc<Shared>,
    pub started: Instant,
    /// Signalled by `/quitquitquit`.
    pub quit: watch::Sender<bool>,
}

/// An `Any` rendered as Envoy renders it in a config dump (`@type`, proto field names).
pub fn any_json(any: &Any) -> Value {
    let Some(desc) = pool().get_message_by_name("google.protobuf.Any") else {
        return Value::Null;
    };
    let Ok(msg) = DynamicMessage::decode(desc, any.encode_to_vec().as_slice()) else {
        return Value::Null;
    };
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    msg.serialize_with_options(serde_json::value::Serializer, &opts)
        .unwrap_or(Value::Null)
}

fn section(kind: &str, fields: BTreeMap<&str, Value>) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(
        "@type".into(),
        Value::String(format!("type.googleapis.com/envoy.admin.v3.{kind}")),
    );
    for (k, v) in fields {
        m.insert(k.into(), v);
    }
    Value::Object(m)
}

fn raws(snap: &Snapshot, ty: ResourceType) -> impl Iterator<Item = (&String, &Raw)> {
    snap.raw
        .iter()
        .filter(move |((t, _), _)| *t == ty)
        .map(|((_, n), r)| (n, r))
}

/// `/config_dump`: listeners, clusters, routes (and endpoints with `include_eds`), as Envoy's
/// admin API returns them. `resource` keeps only the entries of one field (e.g.
/// `dynamic_listeners`), as Envoy's `?resource=` does.
pub fn config_dump(
    snap: &Snapshot,
    node_id: &str,
    include_eds: bool,
    resource: Option<&str>,
    mask: Option<&str>,
) -> Value {
    // One descriptor pool for every resource of the dump.
    let _pool = crate::dump::hold();
    let dump = config_dump_unmasked(snap, node_id, include_eds, resource);
    match mask {
        None => dump,
        Some(m) => {
            let paths: Vec<&str> = m
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect();
            let configs = dump["configs"].as_array().cloned().unwrap_or_default();
            json!({"configs": configs.iter().map(|c| masked(c, &paths)).collect::<Vec<_>>()})
        }
    }
}

/// Envoy's `?mask=`: a field mask (comma-separated dotted paths) applied to each entry; the
/// entry's `@type` stays. A path through a list applies to each element.
pub fn masked(v: &Value, paths: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(t) = v.get("@type") {
        out.insert("@type".into(), t.clone());
    }
    for p in paths {
        let parts: Vec<&str> = p.split('.').collect();
        if let Some(picked) = pick(v, &parts) {
            merge(&mut out, &parts, picked);
        }
    }
    Value::Object(out)
}

fn pick(v: &Value, parts: &[&str]) -> Option<Value> {
    let Some((first, rest)) = parts.split_first() else {
        return Some(v.clone());
    };
    match v {
        Value::Object(o) => pick(o.get(*first)?, rest),
        Value::Array(a) => Some(Value::Array(
            a.iter().filter_map(|e| pick(e, parts)).collect(),
        )),
        _ => None,
    }
}

fn merge(out: &mut serde_json::Map<String, Value>, parts: &[&str], value: Value) {
    match parts {
        [] => {}
        [last] => {
            out.insert(last.to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = out.entry(first.to_string()).or_insert_with(|| json!({}));
            if let (Value::Object(inner), Value::Object(_)) = (entry, &value) {
                let mut nested = serde_json::Map::new();
                merge(&mut nested, rest, value);
                for (k, v) in nested {
                    inner.insert(k, v);
                }
            } else if let Some(e) = out.get_mut(*first) {
                // A path through a list: the picked list replaces it.
                *e = rebuild(rest, value);
            }
        }
    }
}

fn rebuild(parts: &[&str], value: Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.into_iter().map(|i| rebuild(parts, i)).collect()),
        other => {
            let mut m = serde_json::Map::new();
            merge(&mut m, parts, other);
            Value::Object(m)
        }
    }
}

fn config_dump_unmasked(
    snap: &Snapshot,
    node_id: &str,
    include_eds: bool,
    resource: Option<&str>,
) -> Value {
    let listeners: Vec<Value> = raws(snap, ResourceType::Listener)
        .map(|(n, r)| json!({"name": n, "active_state": {"version_info": r.version, "listener": any_json(&r.any)}}))
        .collect();
    let clusters: Vec<Value> = raws(snap, ResourceType::Cluster)
        .map(|(_, r)| json!({"version_info": r.version, "cluster": any_json(&r.any)}))
        .collect();
    let routes: Vec<Value> = raws(snap, ResourceType::Route)
        .map(|(_, r)| json!({"version_info": r.version, "route_config": any_json(&r.any)}))
        .collect();
    let endpoints: Vec<Value> = raws(snap, ResourceType::Endpoints)
        .map(|(_, r)| json!({"version_info": r.version, "endpoint_config": any_json(&r.any)}))
        .collect();
    let mut configs = vec![
        section(
            "BootstrapConfigDump",
            BTreeMap::from([(
                "bootstrap",
                json!({"node": {"id": node_id, "user_agent_name": "outrigger"}}),
            )]),
        ),
        section(
            "ClustersConfigDump",
            BTreeMap::from([("dynamic_active_clusters", Value::Array(clusters))]),
        ),
        section(
            "ListenersConfigDump",
            BTreeMap::from([("dynamic_listeners", Value::Array(listeners))]),
        ),
        section(
            "RoutesConfigDump",
            BTreeMap::from([("dynamic_route_configs", Value::Array(routes))]),
        ),
    ];
    if include_eds {
        configs.push(section(
            "EndpointsConfigDump",
            BTreeMap::from([("dynamic_endpoint_configs", Value::Array(endpoints))]),
        ));
    }
    if let Some(field) = resource {
        let entries: Vec<Value> = configs
            .iter()
            .filter_map(|c| c.get(field))
            .filter_map(Value::as_array)
            .flatten()
            .cloned()
            .collect();
        return json!({"configs": entries});
    }
    json!({"configs": configs})
}

/// `/clusters` in Envoy's text form: one `cluster::host::stat::value` line per host property;
/// hosts ejected by outlier detection show `/failed_outlier_check`.
pub fn clusters_text(snap: &Snapshot, states: &Clusters) -> String {
    let now = std::time::Instant::now();
    let mut out = String::new();
    for (name, c) in &snap.clusters {
        out.push_str(&format!("{name}::observability_name::{name}\n"));
        let ejected: Vec<String> = states
            .find(name)
            .map(|s| s.outliers.ejected(now))
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect();
        let assignment = match &c.discovery {
            crate::config::cluster::Discovery::Eds { service_name } => {
                snap.endpoints.get(service_name).map(|a| a.as_ref())
            }
            _ => c.load_assignment.as_ref(),
        };
        for l in assignment.iter().flat_map(|a| a.localities.iter()) {
            for e in &l.endpoints {
                let host = e.address.to_string();
                let ejected = ejected.contains(&host);
                let health = if ejected {
                    "/failed_outlier_check".to_string()
                } else if e.health.routable() {
                    "healthy".to_string()
                } else {
                    format!("/failed_eds_health ({:?})", e.health).to_lowercase()
                };
                for (k, v) in [
                    ("health_flags", health),
                    ("weight", e.weight.to_string()),
                    ("region", l.locality.region.clone()),
                    ("zone", l.locality.zone.clone()),
                    ("sub_zone", l.locality.sub_zone.clone()),
                    ("priority", l.priority.to_string()),
                ] {
                    out.push_str(&format!("{name}::{host}::{k}::{v}\n"));
                }
            }
        }
    }
    out
}

fn listeners_text(snap: &Snapshot) -> String {
    snap.listeners
        .values()
        .map(|l| format!("{}::{}\n", l.name, l.address))
        .collect()
}

/// Envoy's circuit-breaking counters per cluster, as `/stats` lists them
/// (`cluster.NAME.upstream_rq_pending_overflow: N`).
pub fn breaker_stats_text(stats: &[BreakerStats]) -> String {
    let mut out = String::new();
    for s in stats {
        out.push_str(&format!(
            "cluster.{0}.upstream_rq_pending_overflow: {1}\ncluster.{0}.upstream_rq_retry_overflow: {2}\n",
            s.cluster, s.pending_overflow, s.retry_overflow
        ));
    }
    out
}

/// The same for Prometheus, as Istio's Envoy exports them.
fn breaker_prometheus(stats: &[BreakerStats]) -> String {
    if stats.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    for (name, pick) in [
        ("envoy_cluster_upstream_rq_pending_overflow", 0),
        ("envoy_cluster_upstream_rq_retry_overflow", 1),
    ] {
        out.push_str(&format!("# TYPE {name} counter\n"));
        for s in stats {
            let v = if pick == 0 {
                s.pending_overflow
            } else {
                s.retry_overflow
            };
            out.push_str(&format!("{name}{{cluster_name=\"{}\"}} {v}\n", s.cluster));
        }
    }
    out
}

fn prometheus(
    snap: &Snapshot,
    ready: bool,
    metrics: &crate::telemetry::metrics::Metrics,
    breakers: &[BreakerStats],
) -> String {
    let active = snap
        .listeners
        .values()
        .filter(|l| l.bind_to_port && matches!(l.address, Address::Socket(_)))
        .count();
    format!(
        "# TYPE envoy_server_live gauge\nenvoy_server_live{{}} {}\n# TYPE envoy_cluster_manager_active_clusters gauge\nenvoy_cluster_manager_active_clusters{{}} {}\n# TYPE envoy_listener_manager_total_listeners_active gauge\nenvoy_listener_manager_total_listeners_active{{}} {}\n",
        u8::from(ready),
        snap.clusters.len(),
        active
    ) + &breaker_prometheus(breakers)
        + &metrics.prometheus()
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Routes one admin request.
pub fn admin(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let shared = &state.shared;
    let lifecycle = &shared.lifecycle;
    let snap = shared.snapshot();
    let ready = lifecycle.is_ready();
    let server_state = server_state(lifecycle);
    let q = query(req);
    let json_format = q.get("format").is_some_and(|f| f == "json");
    match (req.method(), req.uri().path()) {
        (_, "/ready") if ready => reply(StatusCode::OK, "text/plain", "LIVE\n"),
        (_, "/ready") => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{server_state}\n"),
        ),
        (_, "/server_info") => {
            let body = json!({
                "version": format!("outrigger/{}", env!("CARGO_PKG_VERSION")),
                "state": server_state,
                "uptime_current_epoch": format!("{}s", state.started.elapsed().as_secs()),
                "node": {"id": shared.telemetry.node_id},
                "command_line_options": {},
            });
            reply(StatusCode::OK, "application/json", body.to_string())
        }
        (_, "/config_dump") => {
            let dump = config_dump(
                &snap,
                &shared.telemetry.node_id,
                q.contains_key("include_eds"),
                q.get("resource").map(String::as_str),
                q.get("mask").map(String::as_str),
            );
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&dump).unwrap_or_default(),
            )
        }
        (_, "/clusters") if json_format => {
            let statuses: Vec<Value> = snap.clusters.keys().map(|n| json!({"name": n})).collect();
            reply(
                StatusCode::OK,
                "application/json",
                json!({"cluster_statuses": statuses}).to_string(),
            )
        }
        (_, "/clusters") => reply(
            StatusCode::OK,
            "text/plain",
            clusters_text(&snap, &shared.upstreams.clusters),
        ),
        (_, "/listeners") if json_format => {
            let statuses: Vec<Value> = snap
                .listeners
                .values()
                .map(|l| json!({"name": l.name, "local_address": l.address.to_string()}))
                .collect();
            reply(
                StatusCode::OK,
                "application/json",
                json!({"listener_statuses": statuses}).to_string(),
            )
        }
        (_, "/listeners") => reply(StatusCode::OK, "text/plain", listeners_text(&snap)),
        (_, "/stats/prometheus") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            prometheus(
                &snap,
                ready,
                &shared.telemetry.metrics,
                &shared.upstreams.clusters.breaker_stats(),
            ),
        ),
        (_, "/stats") => reply(
            StatusCode::OK,
            "text/plain",
            format!(
                "server.live: {}\ncluster_manager.active_clusters: {}\n{}{}",
                u8::from(ready),
                snap.clusters.len(),
                breaker_stats_text(&shared.upstreams.clusters.breaker_stats()),
                shared.telemetry.spans.stats_text()
            ),
        ),
        (&Method::POST, "/healthcheck/fail") => {
            lifecycle.set_failing(true);
            tracing::info!(
                "health check failed by /healthcheck/fail: not ready, connections asked to close"
            );
            reply(StatusCode::OK, "text/plain", "OK\n")
        }
        (&Method::POST, "/healthcheck/ok") => {
            lifecycle.set_failing(false);
            reply(StatusCode::OK, "text/plain", "OK\n")
        }
        // Envoy's `graceful` waits out the drain time before closing the listeners and
        // `inboundonly` drains only inbound ones; here every listener stops accepting at once
        // and open connections are drained as the drain strategy says (pilot-agent sends both
        // before it stops the proxy, which ends it either way).
        (&Method::POST, "/drain_listeners") => {
            if lifecycle.start_drain() {
                tracing::info!("draining: started by /drain_listeners");
            }
            reply(StatusCode::OK, "text/plain", "OK\n")
        }
        (&Method::POST, "/quitquitquit") => {
            let _ = state.quit.send(true);
            reply(StatusCode::OK, "text/plain", "OK\n")
        }
        (_, "/healthcheck/fail" | "/healthcheck/ok" | "/quitquitquit" | "/drain_listeners") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST\n")
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// kubelet's readiness probe on :15021.
fn status(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let shared = &state.shared;
    match req.uri().path() {
        "/healthz/ready" if shared.lifecycle.is_ready() => reply(StatusCode::OK, "text/plain", ""),
        "/healthz/ready" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", ""),
        "/stats/prometheus" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            prometheus(
                &shared.snapshot(),
                shared.lifecycle.is_ready(),
                &shared.telemetry.metrics,
                &shared.upstreams.clusters.breaker_stats(),
            ),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", ""),
    }
}

/// Envoy's server state, as `/ready` and `/server_info` name it.
fn server_state(lifecycle: &crate::shared::Lifecycle) -> &'static str {
    if lifecycle.is_ready() {
        "LIVE"
    } else if lifecycle.is_draining() || lifecycle.is_failing() {
        "DRAINING"
    } else {
        "PRE_INITIALIZING"
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Role {
    Admin,
    Status,
}

/// Serves one of the admin ports until the process ends.
pub async fn serve(addr: SocketAddr, role: Role, state: Arc<AdminState>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, ?role, "admin listening");
    loop {
        let (stream, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    Ok::<_, Infallible>(match role {
                        Role::Admin => admin(&state, &req),
                        Role::Status => status(&state, &req),
                    })
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod mask_tests {
    use serde_json::json;

    use super::masked;

    #[test]
    fn masks_keep_the_named_fields_and_the_type() {
        let entry = json!({
            "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.DynamicCluster",
            "version_info": "7",
            "cluster": {"name": "outbound|80||a", "type": "EDS", "lb_policy": "LEAST_REQUEST"}
        });
        assert_eq!(
            masked(&entry, &["cluster.name", "version_info"]),
            json!({"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump.DynamicCluster", "version_info": "7", "cluster": {"name": "outbound|80||a"}})
        );
        let dump = json!({"dynamic_listeners": [{"name": "a", "x": 1}, {"name": "b", "x": 2}]});
        assert_eq!(
            masked(&dump, &["dynamic_listeners.name"]),
            json!({"dynamic_listeners": [{"name": "a"}, {"name": "b"}]})
        );
        assert_eq!(
            masked(&entry, &["nothing.here"]),
            json!({"@type": entry["@type"]})
        );
    }
}
