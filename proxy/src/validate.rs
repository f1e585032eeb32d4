//! Offline validation of a config dump or bootstrap: every resource converted as if it came over
//! xDS, and a report of what was accepted, what was rejected (and why) and what was ignored.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as WireCluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as WireListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::config::cluster::{Cluster, LoadAssignment};
use crate::config::listener::Listener;
use crate::config::route::RouteConfig;
use crate::config::{ConfigError, Ignored, type_name};
use crate::dump::{Dump, Packed};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Listener,
    RouteConfig,
    Cluster,
    Endpoints,
    Secret,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Listener => "listener",
            Kind::RouteConfig => "route config",
            Kind::Cluster => "cluster",
            Kind::Endpoints => "endpoints",
            Kind::Secret => "secret",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Listener => "listeners",
            Kind::RouteConfig => "route configs",
            Kind::Cluster => "clusters",
            Kind::Endpoints => "cluster load assignments",
            Kind::Secret => "secrets",
        }
    }

    fn type_name(self) -> &'static str {
        match self {
            Kind::Listener => "envoy.config.listener.v3.Listener",
            Kind::RouteConfig => "envoy.config.route.v3.RouteConfiguration",
            Kind::Cluster => "envoy.config.cluster.v3.Cluster",
            Kind::Endpoints => "envoy.config.endpoint.v3.ClusterLoadAssignment",
            Kind::Secret => "envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub kind: Kind,
    pub name: String,
    pub error: ConfigError,
}

#[derive(Debug, Default)]
pub struct Report {
    /// Accepted resources per kind.
    pub accepted: BTreeMap<Kind, Vec<String>>,
    pub rejected: Vec<Rejected>,
    /// Recognised-but-ignored parts: (kind, resource, note).
    pub ignored: Vec<(Kind, String, Ignored)>,
    /// Config dump sections that were not read.
    pub skipped_sections: Vec<String>,
}

impl Report {
    pub fn accepted_count(&self) -> usize {
        self.accepted.values().map(Vec::len).sum()
    }
}

fn decode<M: Message + Default>(kind: Kind, any: &Any) -> Result<M, ConfigError> {
    if type_name(any) != kind.type_name() {
        return Err(ConfigError::new(
            "@type",
            format!("expected {}, got {}", kind.type_name(), any.type_url),
        ));
    }
    M::decode(any.value.as_slice()).map_err(|e| ConfigError::new("", format!("cannot decode: {e}")))
}

/// Converts one resource; returns its name and what it ignored.
fn convert(kind: Kind, any: &Any) -> (String, Result<Vec<Ignored>, ConfigError>) {
    match kind {
        Kind::Listener => match decode::<WireListener>(kind, any) {
            Ok(w) => {
                let converted = Listener::try_from(&w);
                // Static listeners of a bootstrap may have no name: show their address.
                let name = match (&converted, w.name.is_empty()) {
                    (Ok(l), true) => l.address.to_string(),
                    _ => w.name.clone(),
                };
                (name, converted.map(|l| l.ignored))
            }
            Err(e) => (String::new(), Err(e)),
        },
        Kind::RouteConfig => match decode::<RouteConfiguration>(kind, any) {
            Ok(w) => (w.name.clone(), RouteConfig::try_from(&w).map(|r| r.ignored)),
            Err(e) => (String::new(), Err(e)),
        },
        Kind::Cluster => match decode::<WireCluster>(kind, any) {
            Ok(w) => (w.name.clone(), Cluster::try_from(&w).map(|c| c.ignored)),
            Err(e) => (String::new(), Err(e)),
        },
        Kind::Endpoints => match decode::<ClusterLoadAssignment>(kind, any) {
            Ok(w) => (
                w.cluster_name.clone(),
                LoadAssignment::try_from(&w).map(|_| Vec::new()),
            ),
            Err(e) => (String::new(), Err(e)),
        },
        // Secrets are read for TLS later; their type is accepted now.
        Kind::Secret => (
            String::new(),
            decode::<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret>(
                kind, any,
            )
            .map(|_| Vec::new()),
        ),
    }
}

fn pack<M: prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// Validates every resource of a dump.
pub fn validate(dump: &Dump) -> Report {
    let mut report = Report {
        skipped_sections: dump.skipped.clone(),
        ..Report::default()
    };
    let mut items: Vec<(Kind, Packed)> = Vec::new();
    if let Some(b) = &dump.bootstrap
        && let Some(s) = &b.static_resources
    {
        items.extend(s.listeners.iter().map(|l| {
            (
                Kind::Listener,
                Packed {
                    name: l.name.clone(),
                    any: pack(l),
                },
            )
        }));
        items.extend(s.clusters.iter().map(|c| {
            (
                Kind::Cluster,
                Packed {
                    name: c.name.clone(),
                    any: pack(c),
                },
            )
        }));
        items.extend(s.secrets.iter().map(|x| {
            (
                Kind::Secret,
                Packed {
                    name: x.name.clone(),
                    any: pack(x),
                },
            )
        }));
    }
    let groups = [
        (Kind::Listener, &dump.listeners),
        (Kind::RouteConfig, &dump.route_configs),
        (Kind::Cluster, &dump.clusters),
        (Kind::Endpoints, &dump.endpoints),
        (Kind::Secret, &dump.secrets),
    ];
    for (kind, list) in groups {
        items.extend(list.iter().map(|p| (kind, p.clone())));
    }
    for (kind, packed) in items {
        let (decoded_name, result) = convert(kind, &packed.any);
        let name = if decoded_name.is_empty() {
            packed.name.clone()
        } else {
            decoded_name
        };
        match result {
            Ok(ignored) => {
                report
                    .ignored
                    .extend(ignored.into_iter().map(|i| (kind, name.clone(), i)));
                report.accepted.entry(kind).or_default().push(name);
            }
            Err(error) => report.rejected.push(Rejected { kind, name, error }),
        }
    }
    report
}

/// A human-readable report.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for (kind, names) in &report.accepted {
        out.push_str(&format!("accepted {:>4} {}\n", names.len(), kind.plural()));
    }
    for r in &report.rejected {
        out.push_str(&format!(
            "REJECTED {} '{}': {}\n",
            r.kind.name(),
            r.name,
            r.error
        ));
    }
    let mut reasons: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (_, _, i) in &report.ignored {
        let what = i
            .what
            .split(" (")
            .nth(1)
            .map(|s| s.trim_end_matches(')'))
            .unwrap_or(&i.what);
        *reasons.entry((what, i.reason)).or_default() += 1;
    }
    for ((what, reason), n) in reasons {
        out.push_str(&format!("ignored  {n:>4}× {what}: {reason}\n"));
    }
    for s in &report.skipped_sections {
        out.push_str(&format!("skipped  section {s}\n"));
    }
    out.push_str(&format!(
        "{} accepted, {} rejected\n",
        report.accepted_count(),
        report.rejected.len()
    ));
    out
}

/// The report as JSON (for tools).
pub fn to_json(report: &Report) -> serde_json::Value {
    serde_json::json!({
        "accepted": report.accepted.iter().map(|(k, v)| (k.name().to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        "rejected": report.rejected.iter().map(|r| serde_json::json!({"kind": r.kind.name(), "name": r.name, "field": r.error.field, "reason": r.error.reason})).collect::<Vec<_>>(),
        "ignored": report.ignored.iter().map(|(k, n, i)| serde_json::json!({"kind": k.name(), "name": n, "what": i.what, "reason": i.reason})).collect::<Vec<_>>(),
        "skipped_sections": report.skipped_sections,
    })
}
