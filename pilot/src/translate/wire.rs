//! Small builders of Envoy wire messages, shared by the translators.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::google::protobuf::{self as pb, Any};
use prost::{Message, Name};

pub fn pack<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

pub fn socket(ip: &str, port: u32) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(socket_address(
            ip, port,
        ))),
    }
}

pub fn socket_address(ip: &str, port: u32) -> core::SocketAddress {
    core::SocketAddress {
        address: ip.into(),
        port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
        ..Default::default()
    }
}

pub fn duration(d: Duration) -> pb::Duration {
    pb::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn bool_value(value: bool) -> Option<pb::BoolValue> {
    Some(pb::BoolValue { value })
}

pub fn u32_value(value: u32) -> Option<pb::UInt32Value> {
    Some(pb::UInt32Value { value })
}

pub fn network_filter(name: &str, config: Any) -> listener::Filter {
    listener::Filter {
        name: name.into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(config)),
    }
}

pub fn listener_filter(name: &str, config: Any) -> listener::ListenerFilter {
    listener::ListenerFilter {
        name: name.into(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// tcp_proxy to one cluster, or to weighted clusters.
pub fn tcp_proxy(stat_prefix: &str, clusters: &[(String, u32)]) -> listener::Filter {
    tcp_proxy_hashed(stat_prefix, clusters, false, None)
}

/// tcp_proxy, with `hash_policy: [{source_ip}]` when `source_ip_hash` (Istio's
/// `maybeSetHashPolicy` for `consistentHash.useSourceIp`).
pub fn tcp_proxy_hashed(
    stat_prefix: &str,
    clusters: &[(String, u32)],
    source_ip_hash: bool,
    idle_timeout: Option<Duration>,
) -> listener::Filter {
    use envoy_types::pb::envoy::r#type::v3::{HashPolicy, hash_policy};
    use tcp::tcp_proxy::ClusterSpecifier as C;
    let spec = match clusters {
        [(one, _)] => C::Cluster(one.clone()),
        many => C::WeightedClusters(tcp::tcp_proxy::WeightedCluster {
            clusters: many
                .iter()
                .map(
                    |(name, weight)| tcp::tcp_proxy::weighted_cluster::ClusterWeight {
                        name: name.clone(),
                        weight: *weight,
                        ..Default::default()
                    },
                )
                .collect(),
        }),
    };
    let t = tcp::TcpProxy {
        stat_prefix: stat_prefix.into(),
        cluster_specifier: Some(spec),
        idle_timeout: idle_timeout.map(duration),
        hash_policy: if source_ip_hash {
            vec![HashPolicy {
                policy_specifier: Some(hash_policy::PolicySpecifier::SourceIp(
                    hash_policy::SourceIp {},
                )),
            }]
        } else {
            vec![]
        },
        ..Default::default()
    };
    network_filter("envoy.filters.network.tcp_proxy", pack(&t))
}

/// `udpa.type.v1.TypedStruct`: a config by type URL with its fields as a Struct.
#[derive(Clone, PartialEq, prost::Message)]
struct TypedStruct {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(message, optional, tag = "2")]
    value: Option<pb::Struct>,
}

/// Istio's `istio.metadata_exchange` HTTP filter (`io.istio.http.peer_metadata.Config`):
/// discovery and propagation of the peer's identity by `istio_headers`, both directions.
fn peer_metadata() -> Any {
    let headers = || list_value(vec![struct_value(&[("istio_headers", struct_value(&[]))])]);
    let config = TypedStruct {
        type_url: "type.googleapis.com/io.istio.http.peer_metadata.Config".into(),
        value: match struct_value(&[
            ("upstream_discovery", headers()),
            ("upstream_propagation", headers()),
            ("downstream_discovery", headers()),
            ("downstream_propagation", headers()),
        ])
        .kind
        {
            Some(pb::value::Kind::StructValue(s)) => Some(s),
            _ => None,
        },
    };
    Any {
        type_url: "type.googleapis.com/udpa.type.v1.TypedStruct".into(),
        value: config.encode_to_vec(),
    }
}

fn http_filter(name: &str, config: Any) -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: name.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// An HTTP connection manager as istiod builds it for a sidecar (the telemetry and
/// metadata-exchange filters aside), with its routes from RDS or inline.
pub fn http_connection_manager(
    stat_prefix: &str,
    routes: hcm::http_connection_manager::RouteSpecifier,
    telemetry: &Telemetry,
) -> listener::Filter {
    use envoy_types::pb::envoy::extensions::filters::http::{cors::v3::Cors, fault::v3::HttpFault};
    let mut filters = vec![
        http_filter("istio.metadata_exchange", peer_metadata()),
        http_filter("envoy.filters.http.fault", pack(&HttpFault::default())),
        http_filter("envoy.filters.http.cors", pack(&Cors::default())),
    ];
    filters.push(http_filter(
        "envoy.filters.http.router",
        pack(&Router::default()),
    ));
    let h = hcm::HttpConnectionManager {
        stat_prefix: stat_prefix.into(),
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(routes),
        http_filters: filters,
        use_remote_address: bool_value(false),
        normalize_path: bool_value(true),
        stream_idle_timeout: Some(duration(Duration::ZERO)),
        common_http_protocol_options: telemetry.idle_timeout.map(|t| {
            envoy_types::pb::envoy::config::core::v3::HttpProtocolOptions {
                idle_timeout: Some(duration(t)),
                ..Default::default()
            }
        }),
        upgrade_configs: vec![hcm::http_connection_manager::UpgradeConfig {
            upgrade_type: "websocket".into(),
            ..Default::default()
        }],
        access_log: telemetry.access_log.clone(),
        tracing: telemetry
            .sampling
            .map(|value| hcm::http_connection_manager::Tracing {
                provider: telemetry
                    .collector
                    .as_ref()
                    .map(|c| tracer_provider(c, &telemetry.service_name)),
                client_sampling: Some(envoy_types::pb::envoy::r#type::v3::Percent { value: 100.0 }),
                random_sampling: Some(envoy_types::pb::envoy::r#type::v3::Percent { value }),
                overall_sampling: Some(envoy_types::pb::envoy::r#type::v3::Percent {
                    value: 100.0,
                }),
                ..Default::default()
            }),
        ..Default::default()
    };
    network_filter("envoy.filters.network.http_connection_manager", pack(&h))
}

pub fn rds(name: &str) -> hcm::http_connection_manager::RouteSpecifier {
    hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
        route_config_name: name.into(),
        config_source: Some(ads_source()),
    })
}

pub fn ads_source() -> core::ConfigSource {
    core::ConfigSource {
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        initial_fetch_timeout: Some(duration(Duration::ZERO)),
        resource_api_version: core::ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// `metadata.filter_metadata.istio = {key: value}`.
pub fn istio_metadata(fields: &[(&str, pb::Value)]) -> core::Metadata {
    let s = pb::Struct {
        fields: fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    };
    core::Metadata {
        filter_metadata: [("istio".to_string(), s)].into_iter().collect(),
        ..Default::default()
    }
}

pub fn string_value(s: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::StringValue(s.into())),
    }
}

pub fn struct_value(fields: &[(&str, pb::Value)]) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::StructValue(pb::Struct {
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        })),
    }
}

pub fn list_value(values: Vec<pb::Value>) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::ListValue(pb::ListValue { values })),
    }
}

pub use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;

/// What every HTTP connection manager of a proxy gets from the mesh config.
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    pub access_log: Vec<AccessLog>,
    /// `tracing.random_sampling` in percent; `None`: no tracing block.
    pub sampling: Option<f64>,
    /// The proxy's `IDLE_TIMEOUT` metadata: the connection managers' connection idle timeout.
    pub idle_timeout: Option<Duration>,
    /// Where spans are reported (`tracing.provider`); `None`: headers only.
    pub collector: Option<super::tracing::Collector>,
    /// The proxy's trace service name (`<app>.<namespace>`), for OpenTelemetry's resource.
    pub service_name: String,
}

/// The tracer as istiod configures it: `envoy.tracers.zipkin` (`shared_span_context: false`:
/// each sidecar reports its own span), or `envoy.tracers.opentelemetry` to the collector's
/// cluster over gRPC, or over HTTP.
fn tracer_provider(
    c: &super::tracing::Collector,
    service_name: &str,
) -> envoy_types::pb::envoy::config::trace::v3::tracing::Http {
    use super::tracing::Kind;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::config::trace::v3::{
        OpenTelemetryConfig, ZipkinConfig, tracing, zipkin_config,
    };
    let (name, config) = match &c.kind {
        Kind::Zipkin {
            path,
            trace_id_128bit,
        } => (
            "envoy.tracers.zipkin",
            pack(&ZipkinConfig {
                collector_cluster: c.cluster.clone(),
                collector_endpoint: path.clone(),
                collector_hostname: c.hostname.clone(),
                collector_endpoint_version: zipkin_config::CollectorEndpointVersion::HttpJson
                    as i32,
                trace_id_128bit: *trace_id_128bit,
                shared_span_context: bool_value(false),
                ..Default::default()
            }),
        ),
        Kind::OpenTelemetry { http_path: None } => (
            "envoy.tracers.opentelemetry",
            pack(&OpenTelemetryConfig {
                grpc_service: Some(core::GrpcService {
                    target_specifier: Some(core::grpc_service::TargetSpecifier::EnvoyGrpc(
                        core::grpc_service::EnvoyGrpc {
                            cluster_name: c.cluster.clone(),
                            authority: c.hostname.clone(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }),
                service_name: service_name.into(),
                ..Default::default()
            }),
        ),
        Kind::OpenTelemetry {
            http_path: Some(path),
        } => (
            "envoy.tracers.opentelemetry",
            pack(&OpenTelemetryConfig {
                http_service: Some(core::HttpService {
                    http_uri: Some(core::HttpUri {
                        uri: format!("{}{path}", c.hostname),
                        http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster(
                            c.cluster.clone(),
                        )),
                        timeout: Some(duration(Duration::from_secs(5))),
                    }),
                    ..Default::default()
                }),
                service_name: service_name.into(),
                ..Default::default()
            }),
        ),
    };
    tracing::Http {
        name: name.into(),
        config_type: Some(tracing::http::ConfigType::TypedConfig(config)),
    }
}

/// The mesh config's access log and tracing settings, with Istio's defaults when there is no
/// mesh config.
pub fn telemetry(
    mesh: Option<&crate::resources::MeshConfig>,
    collector: Option<super::tracing::Collector>,
) -> Telemetry {
    let default = crate::resources::MeshConfig::default();
    Telemetry {
        access_log: access_logs(mesh),
        sampling: mesh.unwrap_or(&default).trace_sampling(),
        idle_timeout: None,
        service_name: String::new(),
        collector,
    }
}

/// Istio's TEXT access log format (pilot/pkg/model/telemetry_logging.go).
pub const ISTIO_TEXT_LOG: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's JSON access log fields.
pub const ISTIO_JSON_LOG: [(&str, &str); 24] = [
    ("start_time", "%START_TIME%"),
    ("route_name", "%ROUTE_NAME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    (
        "connection_termination_details",
        "%CONNECTION_TERMINATION_DETAILS%",
    ),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    (
        "upstream_service_time",
        "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    ),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER_RAW%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    (
        "upstream_transport_failure_reason",
        "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    ),
];

/// The file access log istiod adds to every HTTP connection manager when the mesh config sets
/// `accessLogFile`: Istio's TEXT or JSON format, or `accessLogFormat`.
pub fn access_logs(mesh: Option<&crate::resources::MeshConfig>) -> Vec<AccessLog> {
    use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
    use envoy_types::pb::envoy::config::core::v3::{
        DataSource, SubstitutionFormatString, data_source::Specifier,
        substitution_format_string::Format,
    };
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
        FileAccessLog, file_access_log::AccessLogFormat,
    };
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let Some(mesh) = mesh.filter(|m| !m.access_log_file.is_empty()) else {
        return Vec::new();
    };
    let format = match mesh.access_log_encoding {
        crate::resources::AccessLogEncoding::Text => {
            let text = if mesh.access_log_format.is_empty() {
                ISTIO_TEXT_LOG.to_string()
            } else {
                mesh.access_log_format.clone()
            };
            Format::TextFormatSource(DataSource {
                specifier: Some(Specifier::InlineString(text)),
                ..Default::default()
            })
        }
        crate::resources::AccessLogEncoding::Json => {
            // A custom JSON format is a JSON object of key → format string.
            let custom: Option<std::collections::BTreeMap<String, String>> =
                serde_json::from_str(&mesh.access_log_format).ok();
            let fields: Vec<(String, String)> = match custom {
                Some(c) => c.into_iter().collect(),
                None => ISTIO_JSON_LOG
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            };
            Format::JsonFormat(Struct {
                fields: fields
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k,
                            Value {
                                kind: Some(Kind::StringValue(v)),
                            },
                        )
                    })
                    .collect(),
            })
        }
    };
    let file = FileAccessLog {
        path: mesh.access_log_file.clone(),
        access_log_format: Some(AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(format),
            ..Default::default()
        })),
    };
    vec![AccessLog {
        name: "envoy.access_loggers.file".into(),
        config_type: Some(ConfigType::TypedConfig(pack(&file))),
        ..Default::default()
    }]
}
