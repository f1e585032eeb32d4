//! Where sidecars report spans, from the mesh config, as istiod decides it:
//!
//! - `defaultProviders.tracing` naming a Zipkin or OpenTelemetry `extensionProviders` entry: the
//!   collector is the outbound cluster of its service
//!   (`outbound|9411||zipkin.istio-system.svc.cluster.local`); Zipkin with 128-bit trace ids
//!   unless `enable64bitTraceId`, OpenTelemetry over gRPC, or OTLP/HTTP with `http`.
//! - Otherwise the legacy `defaultConfig.tracing.zipkin.address` (Istio's default
//!   `zipkin.istio-system:9411`): a registry service by that name gives its outbound cluster.
//!   An explicit address outside the registry gets a cluster named `zipkin`, as pilot-agent's
//!   bootstrap has one; outrigger-proxy is not bootstrapped by pilot-agent, so it comes by CDS.
//!   Istio's default address with no such service reports nowhere: Envoy would send every
//!   report to a name that does not resolve.
//!
//! Pure: the mesh config and the registry in, the decision out.

use crate::registry::{DOMAIN_SUFFIX, Registry, Service};
use crate::resources::MeshConfig;

use super::outbound_name;

/// The cluster of a legacy collector address outside the registry.
pub const ZIPKIN_CLUSTER: &str = "zipkin";
/// `ProxyConfig.tracing.zipkin.address` when unset.
pub const DEFAULT_ZIPKIN_ADDRESS: &str = "zipkin.istio-system:9411";
/// Zipkin's v2 API.
pub const SPANS_PATH: &str = "/api/v2/spans";

/// Where spans go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collector {
    pub cluster: String,
    /// The Host header of the reports.
    pub hostname: String,
    pub kind: Kind,
    /// A collector outside the registry: host (name or IP) and port of the `zipkin` cluster.
    pub own_cluster: Option<(String, u16)>,
}

/// The tracer and how it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Zipkin v2 JSON POSTed to `path`.
    Zipkin { path: String, trace_id_128bit: bool },
    /// OTLP over gRPC, or OTLP/HTTP to `http_path`.
    OpenTelemetry { http_path: Option<String> },
}

/// Zipkin's v2 API with 128-bit trace ids.
fn zipkin_v2() -> Kind {
    Kind::Zipkin {
        path: SPANS_PATH.into(),
        trace_id_128bit: true,
    }
}

/// A problem with the tracing settings: the field and what is wrong. Spans are then not
/// reported; the trace headers still are propagated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
    }
}

/// A service by the DNS name a pod would use: `name.namespace`, `name.namespace.svc` or the FQDN.
fn by_dns_name<'a>(registry: &'a Registry, host: &str) -> Option<&'a Service> {
    let host = host.to_ascii_lowercase();
    [
        host.clone(),
        format!("{host}.{DOMAIN_SUFFIX}"),
        format!("{host}.cluster.local"),
    ]
    .iter()
    .find_map(|h| registry.services.get(h))
}

/// An extension provider's `service` (`[namespace/]host`) with `port`.
fn service<'a>(registry: &'a Registry, service: &str, port: u32) -> Option<&'a Service> {
    let (namespace, host) = match service.split_once('/') {
        Some((ns, h)) => (Some(ns), h),
        None => (None, service),
    };
    by_dns_name(registry, host)
        .filter(|s| namespace.is_none_or(|ns| s.namespace == ns))
        .filter(|s| s.port(port).is_some())
}

/// The collector in effect: tracing on and a collector without problems (a problem is the
/// analyzer's to report; the trace headers still flow).
pub fn active(mesh: Option<&MeshConfig>, registry: &Registry) -> Option<Collector> {
    let default = MeshConfig::default();
    let mesh = mesh.unwrap_or(&default);
    mesh.trace_sampling()?;
    collector(mesh, registry).ok().flatten()
}

/// The collector sidecars report to; `Ok(None)`: spans are not reported.
pub fn collector(mesh: &MeshConfig, registry: &Registry) -> Result<Option<Collector>, Problem> {
    if mesh.enable_tracing == Some(false) {
        return Ok(None);
    }
    if let Some(name) = mesh.default_providers.tracing.first() {
        let Some((i, p)) = mesh
            .extension_providers
            .iter()
            .enumerate()
            .find(|(_, p)| &p.name == name)
        else {
            return Err(problem(
                "defaultProviders.tracing",
                format!("no extension provider named '{name}'"),
            ));
        };
        if let Some(o) = &p.opentelemetry {
            let svc = service(registry, &o.service, o.port).ok_or_else(|| {
                problem(
                    format!("extensionProviders[{i}].opentelemetry.service"),
                    format!(
                        "no service '{}' with port {} in the registry",
                        o.service, o.port
                    ),
                )
            })?;
            return Ok(Some(Collector {
                cluster: outbound_name(o.port, "", &svc.hostname),
                hostname: svc.hostname.clone(),
                kind: Kind::OpenTelemetry {
                    // Istio's default path is `/v1/traces`; a relative one is made absolute.
                    http_path: o.http.as_ref().map(|h| {
                        match h.path.as_deref().map(|p| p.trim_start_matches('/')) {
                            Some(p) if !p.is_empty() => format!("/{p}"),
                            _ => "/v1/traces".into(),
                        }
                    }),
                },
                own_cluster: None,
            }));
        }
        let Some(z) = &p.zipkin else {
            return Err(problem(
                format!("extensionProviders[{i}]"),
                match p.other_tracer() {
                    Some(kind) => format!(
                        "'{name}' is a {kind} tracer: spans are reported to Zipkin and OpenTelemetry collectors only (trace headers are still propagated)"
                    ),
                    None => format!("'{name}' is not a tracer"),
                },
            ));
        };
        let Some(svc) = service(registry, &z.service, z.port) else {
            return Err(problem(
                format!("extensionProviders[{i}].zipkin.service"),
                format!(
                    "no service '{}' with port {} in the registry",
                    z.service, z.port
                ),
            ));
        };
        return Ok(Some(Collector {
            cluster: outbound_name(z.port, "", &svc.hostname),
            hostname: svc.hostname.clone(),
            kind: Kind::Zipkin {
                path: z.path.clone().unwrap_or_else(|| SPANS_PATH.into()),
                trace_id_128bit: !z.enable_64bit_trace_id,
            },
            own_cluster: None,
        }));
    }
    let explicit = mesh
        .default_config
        .tracing
        .as_ref()
        .and_then(|t| t.zipkin.as_ref())
        .map(|z| z.address.trim())
        .filter(|a| !a.is_empty());
    let address = explicit.unwrap_or(DEFAULT_ZIPKIN_ADDRESS);
    let parsed = address.rsplit_once(':').and_then(|(h, p)| {
        let host = h.trim_start_matches('[').trim_end_matches(']');
        (!host.is_empty()).then_some((host, p.parse::<u16>().ok()?))
    });
    let Some((host, port)) = parsed.filter(|(_, p)| *p != 0) else {
        return Err(problem(
            "defaultConfig.tracing.zipkin.address",
            format!("'{address}' is not host:port"),
        ));
    };
    if let Some(svc) = by_dns_name(registry, host).filter(|s| s.port(u32::from(port)).is_some()) {
        return Ok(Some(Collector {
            cluster: outbound_name(u32::from(port), "", &svc.hostname),
            hostname: svc.hostname.clone(),
            kind: zipkin_v2(),
            own_cluster: None,
        }));
    }
    Ok(explicit.map(|_| Collector {
        cluster: ZIPKIN_CLUSTER.into(),
        hostname: host.to_string(),
        kind: zipkin_v2(),
        own_cluster: Some((host.to_string(), port)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(yaml: &str) -> MeshConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn registry() -> Registry {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata:\n  name: zipkin\n  namespace: istio-system\nspec:\n  clusterIP: 10.96.0.50\n  ports:\n  - name: http-query\n    port: 9411\n";
        let f = crate::load::parse_file(std::path::Path::new("svc.yaml"), yaml);
        Registry::build(&f.objects)
    }

    #[test]
    fn a_zipkin_extension_provider_reports_to_its_service() {
        let m = mesh(
            "extensionProviders:\n- name: zipkin\n  zipkin:\n    service: zipkin.istio-system.svc.cluster.local\n    port: 9411\ndefaultProviders:\n  tracing: [zipkin]\n",
        );
        let c = collector(&m, &registry()).unwrap().unwrap();
        assert_eq!(
            c.cluster,
            "outbound|9411||zipkin.istio-system.svc.cluster.local"
        );
        assert_eq!(c.hostname, "zipkin.istio-system.svc.cluster.local");
        assert_eq!(c.kind, zipkin_v2());
        assert_eq!(c.own_cluster, None);
        // With the namespace prefix, and 64-bit ids.
        let m = mesh(
            "extensionProviders:\n- name: z\n  zipkin:\n    service: istio-system/zipkin.istio-system.svc.cluster.local\n    port: 9411\n    enable64bitTraceId: true\ndefaultProviders:\n  tracing: [z]\n",
        );
        assert_eq!(
            collector(&m, &registry()).unwrap().unwrap().kind,
            Kind::Zipkin {
                path: SPANS_PATH.into(),
                trace_id_128bit: false
            }
        );
    }

    #[test]
    fn an_opentelemetry_provider_exports_over_grpc_or_http() {
        let m = mesh(
            "extensionProviders:\n- name: otel\n  opentelemetry:\n    service: zipkin.istio-system.svc.cluster.local\n    port: 9411\ndefaultProviders:\n  tracing: [otel]\n",
        );
        let c = collector(&m, &registry()).unwrap().unwrap();
        assert_eq!(
            c.cluster,
            "outbound|9411||zipkin.istio-system.svc.cluster.local"
        );
        assert_eq!(c.kind, Kind::OpenTelemetry { http_path: None });
        let m = mesh(
            "extensionProviders:\n- name: otel\n  opentelemetry:\n    service: zipkin.istio-system.svc.cluster.local\n    port: 9411\n    http: {path: v1/traces, timeout: 5s}\ndefaultProviders:\n  tracing: [otel]\n",
        );
        let c = collector(&m, &registry()).unwrap().unwrap();
        assert_eq!(
            c.kind,
            Kind::OpenTelemetry {
                http_path: Some("/v1/traces".into())
            }
        );
    }

    #[test]
    fn provider_problems_name_the_field() {
        let cases = [
            (
                "defaultProviders:\n  tracing: [missing]\n",
                "defaultProviders.tracing",
            ),
            (
                "extensionProviders:\n- name: sky\n  skywalking:\n    service: sky.x\n    port: 11800\ndefaultProviders:\n  tracing: [sky]\n",
                "extensionProviders[0]",
            ),
            (
                "extensionProviders:\n- name: otel\n  opentelemetry:\n    service: otel.x\n    port: 4317\ndefaultProviders:\n  tracing: [otel]\n",
                "extensionProviders[0].opentelemetry.service",
            ),
            (
                "extensionProviders:\n- name: z\n  zipkin:\n    service: zipkin.istio-system.svc.cluster.local\n    port: 9999\ndefaultProviders:\n  tracing: [z]\n",
                "extensionProviders[0].zipkin.service",
            ),
            (
                "defaultConfig:\n  tracing:\n    zipkin:\n      address: nowhere\n",
                "defaultConfig.tracing.zipkin.address",
            ),
        ];
        for (yaml, field) in cases {
            let e = collector(&mesh(yaml), &registry()).unwrap_err();
            assert_eq!(e.field, field, "{yaml}: {}", e.message);
        }
    }

    #[test]
    fn the_legacy_address() {
        // Istio's default address names a service of the registry: its outbound cluster.
        let c = collector(&MeshConfig::default(), &registry())
            .unwrap()
            .unwrap();
        assert_eq!(
            c.cluster,
            "outbound|9411||zipkin.istio-system.svc.cluster.local"
        );
        // The default address and no such service: nothing to report to.
        assert_eq!(
            collector(&MeshConfig::default(), &Registry::default()),
            Ok(None)
        );
        // An explicit address outside the registry: a cluster of its own.
        let m = mesh("defaultConfig:\n  tracing:\n    zipkin:\n      address: 10.30.0.20:9411\n");
        let c = collector(&m, &registry()).unwrap().unwrap();
        assert_eq!(c.cluster, "zipkin");
        assert_eq!(c.own_cluster, Some(("10.30.0.20".to_string(), 9411)));
        // Tracing off: nothing.
        let m = mesh(
            "enableTracing: false\ndefaultConfig:\n  tracing:\n    zipkin:\n      address: 10.30.0.20:9411\n",
        );
        assert_eq!(collector(&m, &registry()), Ok(None));
    }
}
