//! Listeners (LDS): addresses, listener filters, filter chains and their network filters.

use std::time::Duration;

use envoy_types::pb::envoy::config::listener::v3 as wire;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::google::protobuf::Any;

use super::route::{RouteConfig, Target};
use super::{Address, Cidr, ConfigError, Ignored, duration, type_name, unpack};

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: Address,
    /// `false` for Istio's per-service listeners, reached through `virtualOutbound`.
    pub bind_to_port: bool,
    /// Dispatch accepted connections to the listener of their original destination.
    pub use_original_dst: bool,
    pub listener_filters: Vec<ListenerFilter>,
    /// Destination ports on which the inspectors are all disabled (`filter_disabled`): no
    /// protocol sniffing there, so server-first protocols are not delayed.
    pub sniff_disabled: Option<PortPredicate>,
    pub filter_chains: Vec<FilterChain>,
    pub default_filter_chain: Option<FilterChain>,
    pub ignored: Vec<Ignored>,
}

/// A listener filter's `filter_disabled` predicate, on the destination port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortPredicate {
    Any,
    /// `[start, end)`.
    Range(u32, u32),
    Or(Vec<PortPredicate>),
    And(Vec<PortPredicate>),
    Not(Box<PortPredicate>),
}

impl PortPredicate {
    pub fn matches(&self, port: u16) -> bool {
        let port = u32::from(port);
        match self {
            PortPredicate::Any => true,
            PortPredicate::Range(start, end) => port >= *start && port < *end,
            PortPredicate::Or(v) => v.iter().any(|p| p.matches(port as u16)),
            PortPredicate::And(v) => v.iter().all(|p| p.matches(port as u16)),
            PortPredicate::Not(p) => !p.matches(port as u16),
        }
    }

    /// `None` for rules on something else than the destination port.
    fn from_wire(p: &wire::ListenerFilterChainMatchPredicate) -> Option<PortPredicate> {
        use wire::listener_filter_chain_match_predicate::Rule as R;
        Some(match p.rule.as_ref()? {
            R::AnyMatch(true) => PortPredicate::Any,
            R::AnyMatch(false) => return None,
            R::DestinationPortRange(r) => {
                PortPredicate::Range(u32::try_from(r.start).ok()?, u32::try_from(r.end).ok()?)
            }
            R::OrMatch(set) => PortPredicate::Or(
                set.rules
                    .iter()
                    .map(PortPredicate::from_wire)
                    .collect::<Option<_>>()?,
            ),
            R::AndMatch(set) => PortPredicate::And(
                set.rules
                    .iter()
                    .map(PortPredicate::from_wire)
                    .collect::<Option<_>>()?,
            ),
            R::NotMatch(inner) => PortPredicate::Not(Box::new(PortPredicate::from_wire(inner)?)),
        })
    }
}

/// Where every inspector of the listener is disabled, if anywhere: `filters` pairs each parsed
/// listener filter with its wire form.
fn sniff_disabled(filters: &[(ListenerFilter, &wire::ListenerFilter)]) -> Option<PortPredicate> {
    let each = filters
        .iter()
        .filter(|(f, _)| {
            matches!(
                f,
                ListenerFilter::HttpInspector | ListenerFilter::TlsInspector
            )
        })
        .map(|(_, w)| {
            w.filter_disabled
                .as_ref()
                .and_then(PortPredicate::from_wire)
        })
        .collect::<Option<Vec<_>>>()?;
    (!each.is_empty()).then_some(PortPredicate::And(each))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerFilter {
    OriginalDst,
    TlsInspector,
    HttpInspector,
    OriginalSrc,
    ProxyProtocol,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    pub prefix_ranges: Vec<Cidr>,
    pub source_prefix_ranges: Vec<Cidr>,
    pub source_ports: Vec<u16>,
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct FilterChain {
    pub name: String,
    pub matcher: ChainMatch,
    pub filters: Vec<NetworkFilter>,
    /// A TLS transport socket terminates TLS on this chain.
    pub tls: bool,
}

#[derive(Debug, Clone)]
pub enum NetworkFilter {
    TcpProxy(TcpProxy),
    Http(std::sync::Arc<HttpManager>),
    Ignored(Ignored),
}

#[derive(Debug, Clone)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub target: Target,
    pub idle_timeout: Option<Duration>,
    /// `hash_policy: [{source_ip}]`: RING_HASH / MAGLEV clusters hash the client's IP.
    pub hash_source_ip: bool,
}

#[derive(Debug, Clone)]
pub enum RouteSource {
    Rds(String),
    Inline(RouteConfig),
}

#[derive(Debug, Clone)]
pub enum HttpFilter {
    Router,
    /// `istio.metadata_exchange`: peer workload identity in `x-envoy-peer-metadata` headers.
    PeerMetadata,
    /// `envoy.filters.http.fault`: applies the routes' fault configurations.
    Fault,
    Ignored(Ignored),
}

#[derive(Debug, Clone)]
pub struct HttpManager {
    pub stat_prefix: String,
    pub routes: RouteSource,
    pub http_filters: Vec<HttpFilter>,
    /// `access_log`: file (and stdout/stderr) loggers, written once per request.
    pub access_logs: Vec<crate::telemetry::access_log::AccessLog>,
    /// `tracing`: trace headers propagated, new traces sampled, spans reported.
    pub tracing: Option<Tracing>,
    /// `common_http_protocol_options.idle_timeout`: a downstream connection with no request in
    /// flight for this long is closed (Envoy's default 1 h; `None`: never).
    pub idle_timeout: Option<Duration>,
    /// `stream_idle_timeout`: a request whose response has not started after this long without
    /// activity gets 408 with flag SI (Envoy's default 5 min; `None`: never, Istio's `0s`).
    pub stream_idle_timeout: Option<Duration>,
    /// The chain has Istio's metadata exchange filter.
    pub peer_metadata: bool,
}

/// A connection manager's `tracing` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// `random_sampling`: the percentage of new traces sampled (Envoy's default 100).
    pub sampling: f64,
    /// `provider`: where sampled spans are reported. `None`: the trace headers are propagated
    /// and no span is reported.
    pub collector: Option<std::sync::Arc<Collector>>,
}

/// A tracer that reports spans.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Collector {
    /// `envoy.tracers.zipkin`.
    Zipkin(ZipkinCollector),
    /// `envoy.tracers.opentelemetry`.
    OpenTelemetry(OtlpCollector),
}

impl Collector {
    /// The cluster the reports go to.
    pub fn cluster(&self) -> &str {
        match self {
            Collector::Zipkin(z) => &z.cluster,
            Collector::OpenTelemetry(o) => &o.cluster,
        }
    }

    /// New traces get 128-bit ids (always with OpenTelemetry).
    pub fn trace_id_128bit(&self) -> bool {
        match self {
            Collector::Zipkin(z) => z.trace_id_128bit,
            Collector::OpenTelemetry(_) => true,
        }
    }
}

/// `envoy.config.trace.v3.ZipkinConfig`: spans POSTed as Zipkin v2 JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ZipkinCollector {
    /// `collector_cluster`: a cluster of the configuration (CDS or bootstrap).
    pub cluster: String,
    /// `collector_endpoint`: the path spans are POSTed to (`/api/v2/spans`).
    pub endpoint: String,
    /// `collector_hostname`: the Host header, by default the cluster's name.
    pub hostname: String,
    /// `trace_id_128bit`: new traces get 128-bit ids (else 64-bit).
    pub trace_id_128bit: bool,
}

/// `envoy.config.trace.v3.OpenTelemetryConfig`: spans exported as OTLP protobuf.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OtlpCollector {
    /// `grpc_service.envoy_grpc.cluster_name`, or `http_service.http_uri.cluster`.
    pub cluster: String,
    /// The `:authority` / Host of the reports.
    pub authority: String,
    /// `service_name`: the resource's `service.name` (empty: the sidecar's own name).
    pub service_name: String,
    /// `http_service`: OTLP/HTTP POSTs to this path; `None`: gRPC `TraceService/Export`.
    pub http_path: Option<String>,
}

/// The `tracing` block: the sampling percentage and the span collector. A tracer other than
/// Zipkin or OpenTelemetry (or one in a form not served: Zipkin other than JSON, Google gRPC)
/// still gets the trace headers; its spans are not reported, which is logged.
fn tracing_config(t: &hcm::http_connection_manager::Tracing) -> Result<Tracing, ConfigError> {
    use envoy_types::pb::envoy::config::trace::v3::tracing::http::ConfigType;
    let sampling = t
        .random_sampling
        .as_ref()
        .map_or(100.0, |p| p.value.clamp(0.0, 100.0));
    let collector = match &t.provider {
        None => None,
        Some(p) => match &p.config_type {
            Some(ConfigType::TypedConfig(any))
                if type_name(any) == "envoy.config.trace.v3.ZipkinConfig" =>
            {
                zipkin_collector(unpack(any, "tracing.provider.typed_config")?)?
            }
            Some(ConfigType::TypedConfig(any))
                if type_name(any) == "envoy.config.trace.v3.OpenTelemetryConfig" =>
            {
                otlp_collector(unpack(any, "tracing.provider.typed_config")?)?
            }
            _ => {
                tracing::warn!(tracer = %p.name, "tracer not supported: trace headers are propagated, spans are not reported");
                None
            }
        },
    };
    Ok(Tracing {
        sampling,
        collector: collector.map(std::sync::Arc::new),
    })
}

/// A collector's host name, by default its cluster's name (Envoy's rule for both tracers).
fn or_cluster(name: String, cluster: &str) -> String {
    if name.is_empty() {
        cluster.to_string()
    } else {
        name
    }
}

fn zipkin_collector(
    z: envoy_types::pb::envoy::config::trace::v3::ZipkinConfig,
) -> Result<Option<Collector>, ConfigError> {
    if z.collector_cluster.is_empty() {
        return Err(ConfigError::new(
            "tracing.provider.collector_cluster",
            "required",
        ));
    }
    // HTTP_JSON is 1; 0 is the removed v1 API.
    if z.collector_endpoint_version != 1 {
        tracing::warn!(
            version = z.collector_endpoint_version,
            "Zipkin collector_endpoint_version other than HTTP_JSON: spans are not reported"
        );
        return Ok(None);
    }
    if !z.collector_endpoint.starts_with('/') {
        return Err(ConfigError::new(
            "tracing.provider.collector_endpoint",
            format!("{:?} is not a path", z.collector_endpoint),
        ));
    }
    Ok(Some(Collector::Zipkin(ZipkinCollector {
        hostname: or_cluster(z.collector_hostname, &z.collector_cluster),
        cluster: z.collector_cluster,
        endpoint: z.collector_endpoint,
        trace_id_128bit: z.trace_id_128bit,
    })))
}

fn otlp_collector(
    o: envoy_types::pb::envoy::config::trace::v3::OpenTelemetryConfig,
) -> Result<Option<Collector>, ConfigError> {
    use envoy_types::pb::envoy::config::core::v3::{
        grpc_service::TargetSpecifier, http_uri::HttpUpstreamType,
    };
    if let Some(h) = &o.http_service {
        let uri = h
            .http_uri
            .as_ref()
            .ok_or_else(|| ConfigError::new("tracing.provider.http_service.http_uri", "missing"))?;
        let Some(HttpUpstreamType::Cluster(cluster)) = &uri.http_upstream_type else {
            return Err(ConfigError::new(
                "tracing.provider.http_service.http_uri.cluster",
                "missing",
            ));
        };
        // `http://host:port/path` or `host:port/path`: the authority and the path.
        let rest = uri
            .uri
            .split_once("://")
            .map_or(uri.uri.as_str(), |(_, r)| r);
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/v1/traces"),
        };
        return Ok(Some(Collector::OpenTelemetry(OtlpCollector {
            cluster: cluster.clone(),
            authority: authority.to_string(),
            service_name: o.service_name,
            http_path: Some(path.to_string()),
        })));
    }
    match o.grpc_service.and_then(|g| g.target_specifier) {
        Some(TargetSpecifier::EnvoyGrpc(g)) if !g.cluster_name.is_empty() => {
            Ok(Some(Collector::OpenTelemetry(OtlpCollector {
                authority: or_cluster(g.authority, &g.cluster_name),
                cluster: g.cluster_name,
                service_name: o.service_name,
                http_path: None,
            })))
        }
        Some(TargetSpecifier::EnvoyGrpc(_)) => Err(ConfigError::new(
            "tracing.provider.grpc_service.envoy_grpc.cluster_name",
            "required",
        )),
        _ => {
            tracing::warn!(
                "OpenTelemetry tracer without an envoy_grpc or http service: spans are not reported"
            );
            Ok(None)
        }
    }
}

/// Envoy's default connection idle timeout (downstream, upstream and tcp_proxy).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Envoy's default stream idle timeout.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// An optional timeout field: unset gives `default`, `0s` disables it.
pub fn timeout_or(
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
    default: Duration,
    field: &str,
) -> Result<Option<Duration>, ConfigError> {
    Ok(match d {
        None => Some(default),
        Some(d) => Some(duration(d, field)?).filter(|d| !d.is_zero()),
    })
}

/// The config of a filter: its `typed_config`, or the inner type of a `TypedStruct`.
fn config_type(any: &Any) -> String {
    let name = type_name(any);
    if name == "udpa.type.v1.TypedStruct" || name == "xds.type.v3.TypedStruct" {
        #[derive(Clone, PartialEq, prost::Message)]
        struct TypedStruct {
            #[prost(string, tag = "1")]
            type_url: String,
        }
        if let Ok(ts) = <TypedStruct as prost::Message>::decode(any.value.as_slice()) {
            return ts
                .type_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
        }
    }
    name.to_string()
}

/// Filters the proxy recognises but does not act on yet, with the reason.
fn known_ignored(config: &str) -> Option<&'static str> {
    Some(match config {
        "envoy.tcp.metadataexchange.config.MetadataExchange" => {
            "Istio TCP metadata exchange: needs the istio-peer-exchange ALPN of mTLS, not implemented yet"
        }
        "stats.PluginConfig" | "io.istio.stats.PluginConfig" => {
            "Istio standard metrics: not implemented yet"
        }
        "io.istio.network.authn.Config" | "io.istio.http.authn.Config" => {
            "Istio authn: peer identity for telemetry and policy, not implemented yet"
        }
        "io.istio.http.connect_baggage.Config" | "io.istio.http.connect_authority.Config" => {
            "Istio CONNECT baggage: HBONE tunnelling, not implemented yet"
        }
        "envoy.extensions.filters.http.compressor.v3.Compressor" => {
            "response compression: responses are sent uncompressed"
        }
        "istio.envoy.config.filter.http.alpn.v2alpha1.FilterConfig" => {
            "Istio ALPN override: only matters for mTLS upstreams, not implemented yet"
        }
        "envoy.extensions.filters.network.rbac.v3.RBAC"
        | "envoy.extensions.filters.http.rbac.v3.RBAC" => {
            "authorization policy (RBAC) is not enforced yet"
        }
        "envoy.extensions.filters.http.cors.v3.Cors" => "CORS: not implemented yet",
        "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig" => {
            "gRPC stats: not implemented yet"
        }
        "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb" => "gRPC-Web: not implemented yet",
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
        | "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz" => {
            "external authorization: not enforced yet"
        }
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication" => {
            "JWT authentication: not enforced yet"
        }
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit" => {
            "local rate limit: not implemented yet"
        }
        "envoy.extensions.filters.http.wasm.v3.Wasm"
        | "envoy.extensions.filters.network.wasm.v3.Wasm" => "Wasm extensions are not supported",
        "envoy.extensions.filters.http.set_filter_state.v3.Config"
        | "envoy.extensions.filters.network.set_filter_state.v3.Config" => {
            "filter state: only used by ambient/waypoint tunnelling"
        }
        _ => return None,
    })
}

fn typed(name: &str, any: Option<&Any>, field: &str) -> Result<(String, Any), ConfigError> {
    let any = any.ok_or_else(|| {
        ConfigError::new(
            field,
            format!("filter '{name}' has no typed_config (config discovery is not supported)"),
        )
    })?;
    Ok((config_type(any), any.clone()))
}

fn network_filter(f: &wire::Filter, field: &str) -> Result<NetworkFilter, ConfigError> {
    let any = match &f.config_type {
        Some(wire::filter::ConfigType::TypedConfig(a)) => Some(a),
        _ => None,
    };
    let (config, any) = typed(&f.name, any, field)?;
    match config.as_str() {
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" => {
            let t: tcp::TcpProxy = unpack(&any, field)?;
            let target = match &t.cluster_specifier {
                Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(c)) => Target::Cluster(c.clone()),
                Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
                    let clusters: Vec<(String, u32)> = w
                        .clusters
                        .iter()
                        .map(|c| (c.name.clone(), c.weight))
                        .collect();
                    if clusters.iter().map(|(_, w)| u64::from(*w)).sum::<u64>() == 0 {
                        return Err(ConfigError::new(
                            format!("{field}.weighted_clusters"),
                            "the weights add up to 0",
                        ));
                    }
                    Target::Weighted(clusters)
                }
                None => return Err(ConfigError::new(field, "tcp_proxy has no cluster")),
            };
            // Envoy: unset is 1 h, 0s disables.
            let idle_timeout = timeout_or(
                t.idle_timeout.as_ref(),
                DEFAULT_IDLE_TIMEOUT,
                &format!("{field}.idle_timeout"),
            )?;
            use envoy_types::pb::envoy::r#type::v3::hash_policy::PolicySpecifier as H;
            let hash_source_ip = t
                .hash_policy
                .iter()
                .any(|h| matches!(h.policy_specifier, Some(H::SourceIp(_))));
            Ok(NetworkFilter::TcpProxy(TcpProxy {
                stat_prefix: t.stat_prefix,
                target,
                idle_timeout,
                hash_source_ip,
            }))
        }
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => {
            let h: hcm::HttpConnectionManager = unpack(&any, field)?;
            http_manager(&h)
                .map(|m| NetworkFilter::Http(std::sync::Arc::new(m)))
                .map_err(|e| e.at(field))
        }
        other => match known_ignored(other) {
            Some(reason) => Ok(NetworkFilter::Ignored(Ignored {
                what: format!("network filter {} ({other})", f.name),
                reason,
            })),
            None => Err(ConfigError::new(
                field,
                format!("unsupported network filter '{}' ({other})", f.name),
            )),
        },
    }
}

fn http_manager(h: &hcm::HttpConnectionManager) -> Result<HttpManager, ConfigError> {
    use hcm::http_connection_manager::RouteSpecifier as R;
    let routes = match &h.route_specifier {
        Some(R::Rds(rds)) => RouteSource::Rds(rds.route_config_name.clone()),
        Some(R::RouteConfig(rc)) => {
            RouteSource::Inline(RouteConfig::try_from(rc).map_err(|e| e.at("route_config"))?)
        }
        Some(R::ScopedRoutes(_)) => {
            return Err(ConfigError::new(
                "scoped_routes",
                "scoped routes are not supported",
            ));
        }
        None => return Err(ConfigError::new("route_specifier", "missing")),
    };
    let mut http_filters = Vec::new();
    for (i, f) in h.http_filters.iter().enumerate() {
        let field = format!("http_filters[{i}]");
        let any = match &f.config_type {
            Some(hcm::http_filter::ConfigType::TypedConfig(a)) => Some(a),
            _ => None,
        };
        let (config, _) = typed(&f.name, any, &field)?;
        let filter = if config == "envoy.extensions.filters.http.router.v3.Router" {
            HttpFilter::Router
        } else if config == "envoy.extensions.filters.http.fault.v3.HTTPFault" {
            HttpFilter::Fault
        } else if matches!(
            config.as_str(),
            "io.istio.http.peer_metadata.Config"
                | "envoy.extensions.filters.http.peer_metadata.v3.Config"
        ) || (f.name == "istio.metadata_exchange"
            && config == "envoy.extensions.filters.http.wasm.v3.Wasm")
        {
            // The header-based exchange, whatever the filter's build (native or Wasm).
            HttpFilter::PeerMetadata
        } else if let Some(reason) = known_ignored(&config) {
            HttpFilter::Ignored(Ignored {
                what: format!("http filter {} ({config})", f.name),
                reason,
            })
        } else if f.is_optional {
            HttpFilter::Ignored(Ignored {
                what: format!("http filter {} ({config})", f.name),
                reason: "optional and not supported",
            })
        } else {
            return Err(ConfigError::new(
                field,
                format!("unsupported http filter '{}' ({config})", f.name),
            ));
        };
        http_filters.push(filter);
    }
    if !matches!(http_filters.last(), Some(HttpFilter::Router)) {
        return Err(ConfigError::new(
            "http_filters",
            "the last http filter must be the router",
        ));
    }
    let mut access_logs = Vec::new();
    for (i, log) in h.access_log.iter().enumerate() {
        if let Some(l) = access_log(log).map_err(|e| e.at(format!("access_log[{i}]")))? {
            access_logs.push(l);
        }
    }
    let tracing = h.tracing.as_ref().map(tracing_config).transpose()?;
    let peer_metadata = http_filters
        .iter()
        .any(|f| matches!(f, HttpFilter::PeerMetadata));
    Ok(HttpManager {
        peer_metadata,
        stat_prefix: h.stat_prefix.clone(),
        routes,
        http_filters,
        access_logs,
        tracing,
        idle_timeout: timeout_or(
            h.common_http_protocol_options
                .as_ref()
                .and_then(|o| o.idle_timeout.as_ref()),
            DEFAULT_IDLE_TIMEOUT,
            "common_http_protocol_options.idle_timeout",
        )?,
        stream_idle_timeout: timeout_or(
            h.stream_idle_timeout.as_ref(),
            DEFAULT_STREAM_IDLE_TIMEOUT,
            "stream_idle_timeout",
        )?,
    })
}

/// One `access_log` entry. File, stdout and stderr loggers are honoured; any other logger (gRPC
/// ALS, OpenTelemetry) is skipped with a log line, as are logger filters (the logger then logs
/// every request).
fn access_log(
    log: &envoy_types::pb::envoy::config::accesslog::v3::AccessLog,
) -> Result<Option<crate::telemetry::access_log::AccessLog>, ConfigError> {
    use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
    use envoy_types::pb::envoy::extensions::access_loggers::{
        file::v3 as file, stream::v3 as stream,
    };
    let Some(ConfigType::TypedConfig(any)) = &log.config_type else {
        return Err(ConfigError::new("typed_config", "missing"));
    };
    if log.filter.is_some() {
        tracing::warn!(logger = %log.name, "access log filters are not applied: every request is logged");
    }
    let (path, format) = match type_name(any) {
        "envoy.extensions.access_loggers.file.v3.FileAccessLog" => {
            let f: file::FileAccessLog = unpack(any, "typed_config")?;
            #[allow(deprecated)]
            let format = match f.access_log_format {
                None => None,
                Some(file::file_access_log::AccessLogFormat::LogFormat(sfs)) => Some(sfs),
                Some(file::file_access_log::AccessLogFormat::Format(s)) => Some(text_format(s)),
                Some(
                    file::file_access_log::AccessLogFormat::JsonFormat(st)
                    | file::file_access_log::AccessLogFormat::TypedJsonFormat(st),
                ) => Some(json_format(st)),
            };
            (f.path, format)
        }
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" => {
            let f: stream::StdoutAccessLog = unpack(any, "typed_config")?;
            let format = f
                .access_log_format
                .map(|stream::stdout_access_log::AccessLogFormat::LogFormat(s)| s);
            ("/dev/stdout".to_string(), format)
        }
        "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => {
            let f: stream::StderrAccessLog = unpack(any, "typed_config")?;
            let format = f
                .access_log_format
                .map(|stream::stderr_access_log::AccessLogFormat::LogFormat(s)| s);
            ("/dev/stderr".to_string(), format)
        }
        other => {
            tracing::warn!(logger = %log.name, kind = other, "access logger not supported: skipped");
            return Ok(None);
        }
    };
    let format = match format {
        None => crate::telemetry::access_log::LogFormat::Text(
            crate::telemetry::access_log::parse(crate::telemetry::access_log::ENVOY_DEFAULT)
                .map_err(|e| ConfigError::new("log_format", e.to_string()))?,
        ),
        Some(sfs) => log_format(&sfs)?,
    };
    Ok(Some(crate::telemetry::access_log::AccessLog {
        path,
        format,
    }))
}

#[allow(deprecated)]
fn text_format(s: String) -> envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString {
    use envoy_types::pb::envoy::config::core::v3::{
        SubstitutionFormatString, substitution_format_string::Format,
    };
    SubstitutionFormatString {
        format: Some(Format::TextFormat(s)),
        ..Default::default()
    }
}

fn json_format(
    st: envoy_types::pb::google::protobuf::Struct,
) -> envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString {
    use envoy_types::pb::envoy::config::core::v3::{
        SubstitutionFormatString, substitution_format_string::Format,
    };
    SubstitutionFormatString {
        format: Some(Format::JsonFormat(st)),
        ..Default::default()
    }
}

fn log_format(
    sfs: &envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString,
) -> Result<crate::telemetry::access_log::LogFormat, ConfigError> {
    use crate::telemetry::access_log::{LogFormat, parse};
    use envoy_types::pb::envoy::config::core::v3::{
        data_source::Specifier, substitution_format_string::Format,
    };
    use envoy_types::pb::google::protobuf::value::Kind;
    let perr = |field: &str| {
        let field = field.to_string();
        move |e: crate::telemetry::access_log::AccessLogError| {
            ConfigError::new(&field, e.to_string())
        }
    };
    #[allow(deprecated)]
    match &sfs.format {
        Some(Format::TextFormat(s)) => Ok(LogFormat::Text(
            parse(s).map_err(perr("log_format.text_format"))?,
        )),
        Some(Format::TextFormatSource(ds)) => match &ds.specifier {
            Some(Specifier::InlineString(s)) => Ok(LogFormat::Text(
                parse(s).map_err(perr("log_format.text_format_source.inline_string"))?,
            )),
            Some(Specifier::InlineBytes(b)) => Ok(LogFormat::Text(
                parse(&String::from_utf8_lossy(b))
                    .map_err(perr("log_format.text_format_source.inline_bytes"))?,
            )),
            _ => Err(ConfigError::new(
                "log_format.text_format_source",
                "only inline_string and inline_bytes are supported",
            )),
        },
        Some(Format::JsonFormat(st)) => {
            let mut fields = Vec::new();
            let mut keys: Vec<&String> = st.fields.keys().collect();
            keys.sort();
            for k in keys {
                let field = format!("log_format.json_format.{k}");
                match st.fields[k].kind.as_ref() {
                    Some(Kind::StringValue(s)) => {
                        fields.push((k.clone(), parse(s).map_err(perr(&field))?))
                    }
                    _ => return Err(ConfigError::new(&field, "only string values are supported")),
                }
            }
            Ok(LogFormat::Json(fields))
        }
        None => Ok(LogFormat::Text(
            parse(crate::telemetry::access_log::ENVOY_DEFAULT).map_err(perr("log_format"))?,
        )),
    }
}

fn ports(values: &[u32], field: &str) -> Result<Vec<u16>, ConfigError> {
    values
        .iter()
        .map(|p| {
            u16::try_from(*p).map_err(|_| ConfigError::new(field, format!("{p} is not a port")))
        })
        .collect()
}

fn cidrs(
    ranges: &[envoy_types::pb::envoy::config::core::v3::CidrRange],
    field: &str,
) -> Result<Vec<Cidr>, ConfigError> {
    ranges
        .iter()
        .enumerate()
        .map(|(i, r)| Cidr::try_from(r).map_err(|e| e.at(format!("{field}[{i}]"))))
        .collect()
}

impl TryFrom<&wire::FilterChainMatch> for ChainMatch {
    type Error = ConfigError;
    fn try_from(m: &wire::FilterChainMatch) -> Result<ChainMatch, ConfigError> {
        let destination_port = m
            .destination_port
            .map(|p| {
                u16::try_from(p.value).map_err(|_| {
                    ConfigError::new("destination_port", format!("{} is not a port", p.value))
                })
            })
            .transpose()?;
        Ok(ChainMatch {
            destination_port,
            prefix_ranges: cidrs(&m.prefix_ranges, "prefix_ranges")?,
            source_prefix_ranges: cidrs(&m.source_prefix_ranges, "source_prefix_ranges")?,
            source_ports: ports(&m.source_ports, "source_ports")?,
            transport_protocol: Some(m.transport_protocol.clone()).filter(|t| !t.is_empty()),
            application_protocols: m.application_protocols.clone(),
            server_names: m
                .server_names
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
        })
    }
}

fn filter_chain(c: &wire::FilterChain) -> Result<FilterChain, ConfigError> {
    let matcher = c
        .filter_chain_match
        .as_ref()
        .map(ChainMatch::try_from)
        .transpose()
        .map_err(|e| e.at("filter_chain_match"))?
        .unwrap_or_default();
    let filters = c
        .filters
        .iter()
        .enumerate()
        .map(|(i, f)| network_filter(f, &format!("filters[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    if !filters
        .iter()
        .any(|f| matches!(f, NetworkFilter::TcpProxy(_) | NetworkFilter::Http(_)))
    {
        return Err(ConfigError::new(
            "filters",
            "no terminal filter (tcp_proxy or http_connection_manager)",
        ));
    }
    Ok(FilterChain {
        name: c.name.clone(),
        matcher,
        filters,
        tls: c.transport_socket.is_some(),
    })
}

fn listener_filter(f: &wire::ListenerFilter, ignored: &mut Vec<Ignored>) -> Option<ListenerFilter> {
    let config = match &f.config_type {
        Some(wire::listener_filter::ConfigType::TypedConfig(a)) => config_type(a),
        _ => f.name.clone(),
    };
    Some(match config.as_str() {
        "envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
        | "envoy.filters.listener.original_dst" => ListenerFilter::OriginalDst,
        "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
        | "envoy.filters.listener.tls_inspector" => ListenerFilter::TlsInspector,
        "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
        | "envoy.filters.listener.http_inspector" => ListenerFilter::HttpInspector,
        "envoy.extensions.filters.listener.original_src.v3.OriginalSrc" => {
            ListenerFilter::OriginalSrc
        }
        "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol" => {
            ListenerFilter::ProxyProtocol
        }
        other => {
            ignored.push(Ignored {
                what: format!("listener filter {} ({other})", f.name),
                reason: "not supported",
            });
            return None;
        }
    })
}

impl TryFrom<&wire::Listener> for Listener {
    type Error = ConfigError;
    fn try_from(l: &wire::Listener) -> Result<Listener, ConfigError> {
        let internal = matches!(
            l.listener_specifier,
            Some(wire::listener::ListenerSpecifier::InternalListener(_))
        );
        let address = match &l.address {
            Some(a) => Address::try_from(a).map_err(|e| e.at("address"))?,
            // Internal listeners (waypoints, HBONE) are addressed by name.
            None if internal => Address::Internal(l.name.clone()),
            None => {
                return Err(ConfigError::new(
                    "address",
                    "missing (and not an internal listener)",
                ));
            }
        };
        let mut ignored = Vec::new();
        let parsed: Vec<(ListenerFilter, &wire::ListenerFilter)> = l
            .listener_filters
            .iter()
            .filter_map(|w| listener_filter(w, &mut ignored).map(|f| (f, w)))
            .collect();
        let sniff_disabled = sniff_disabled(&parsed);
        let listener_filters = parsed.into_iter().map(|(f, _)| f).collect();
        let filter_chains = l
            .filter_chains
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let at = if c.name.is_empty() {
                    format!("filter_chains[{i}]")
                } else {
                    format!("filter_chains[{i}]({})", c.name)
                };
                filter_chain(c).map_err(|e| e.at(at))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let default_filter_chain = l
            .default_filter_chain
            .as_ref()
            .map(filter_chain)
            .transpose()
            .map_err(|e| e.at("default_filter_chain"))?;
        if l.filter_chain_matcher.is_some() {
            ignored.push(Ignored {
                what: "filter_chain_matcher".into(),
                reason: "the matcher API is not supported; filter_chain_match is used",
            });
        }
        for chain in filter_chains.iter().chain(default_filter_chain.iter()) {
            for f in &chain.filters {
                if let NetworkFilter::Ignored(i) = f {
                    ignored.push(i.clone());
                }
                if let NetworkFilter::Http(h) = f {
                    ignored.extend(h.http_filters.iter().filter_map(|f| match f {
                        HttpFilter::Ignored(i) => Some(i.clone()),
                        HttpFilter::Router | HttpFilter::Fault | HttpFilter::PeerMetadata => None,
                    }));
                }
            }
        }
        ignored.sort_by(|a, b| a.what.cmp(&b.what));
        ignored.dedup();
        Ok(Listener {
            name: l.name.clone(),
            address,
            bind_to_port: l.bind_to_port.map(|b| b.value).unwrap_or(true),
            use_original_dst: l.use_original_dst.map(|b| b.value).unwrap_or(false),
            listener_filters,
            sniff_disabled,
            filter_chains,
            default_filter_chain,
            ignored,
        })
    }
}

#[cfg(test)]
mod sniff_tests {
    use envoy_types::pb::envoy::config::listener::v3::listener_filter_chain_match_predicate::Rule;
    use envoy_types::pb::envoy::extensions::filters::listener::{
        http_inspector::v3::HttpInspector, tls_inspector::v3::TlsInspector,
    };
    use envoy_types::pb::envoy::r#type::v3::Int32Range;

    use super::*;

    fn inspector<M: prost::Message + prost::Name>(
        m: M,
        disabled_port: Option<i32>,
    ) -> wire::ListenerFilter {
        wire::ListenerFilter {
            name: M::NAME.into(),
            config_type: Some(wire::listener_filter::ConfigType::TypedConfig(Any {
                type_url: M::type_url(),
                value: m.encode_to_vec(),
            })),
            filter_disabled: disabled_port.map(|p| wire::ListenerFilterChainMatchPredicate {
                rule: Some(Rule::DestinationPortRange(Int32Range {
                    start: p,
                    end: p + 1,
                })),
            }),
        }
    }

    fn listener(filters: Vec<wire::ListenerFilter>) -> Listener {
        let mut l = crate::testing::tcp_listener("in", 15006, "c");
        l.listener_filters = filters;
        Listener::try_from(&l).unwrap()
    }

    #[test]
    fn sniffing_is_off_only_where_every_inspector_is_disabled() {
        let both = listener(vec![
            inspector(TlsInspector::default(), Some(9000)),
            inspector(HttpInspector::default(), Some(9000)),
        ]);
        let p = both.sniff_disabled.expect("a predicate");
        assert!(p.matches(9000) && !p.matches(8080));
        // One inspector still active everywhere: no port skips sniffing.
        let one = listener(vec![
            inspector(TlsInspector::default(), None),
            inspector(HttpInspector::default(), Some(9000)),
        ]);
        assert!(one.sniff_disabled.is_none());
        assert!(listener(vec![]).sniff_disabled.is_none());
    }

    #[test]
    fn idle_timeouts_default_like_envoy_and_zero_disables() {
        use envoy_types::pb::google::protobuf::Duration as Pb;
        let secs = |seconds| Pb { seconds, nanos: 0 };
        assert_eq!(
            timeout_or(None, DEFAULT_IDLE_TIMEOUT, "f").unwrap(),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            timeout_or(Some(&secs(0)), DEFAULT_IDLE_TIMEOUT, "f").unwrap(),
            None
        );
        assert_eq!(
            timeout_or(Some(&secs(2)), DEFAULT_IDLE_TIMEOUT, "f").unwrap(),
            Some(Duration::from_secs(2))
        );
        let bad = timeout_or(Some(&secs(-1)), DEFAULT_IDLE_TIMEOUT, "x.idle_timeout");
        assert!(bad.unwrap_err().to_string().contains("x.idle_timeout"));
        // A tcp_proxy without one gets Envoy's hour.
        let l = Listener::try_from(&crate::testing::tcp_listener("in", 15006, "c")).unwrap();
        let NetworkFilter::TcpProxy(t) = &l.filter_chains[0].filters[0] else {
            panic!("{l:?}")
        };
        assert_eq!(t.idle_timeout, Some(DEFAULT_IDLE_TIMEOUT));
    }
}
