//! The xDS istiod would send one sidecar, built from the mesh: listeners, routes, clusters and
//! endpoints, named and shaped as istiod names and shapes them.

mod clusters;
mod endpoints;
mod listeners;
mod routes;
pub mod wire;

use std::collections::BTreeMap;

use envoy_types::pb::google::protobuf::Any;

use crate::load::Spec;
use crate::mesh::{Mesh, mesh_virtual_services};
use crate::registry::{Service, ServicePort};
use crate::resources::{DestinationRule, Labels, Sidecar, VirtualService};

pub use clusters::{BLACKHOLE, INBOUND_PASSTHROUGH, PASSTHROUGH};

/// The proxy asking, as its node tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyNode {
    pub id: String,
    pub namespace: String,
    pub ips: Vec<String>,
    pub labels: Labels,
}

/// Generated resources per xDS type, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Xds {
    pub listeners: BTreeMap<String, Any>,
    pub routes: BTreeMap<String, Any>,
    pub clusters: BTreeMap<String, Any>,
    pub endpoints: BTreeMap<String, Any>,
}

/// `outbound|PORT|SUBSET|HOST` (`model.BuildSubsetKey`).
pub fn outbound_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|PORT||`.
pub fn inbound_name(port: u32) -> String {
    format!("inbound|{port}||")
}

/// What the translators share for one proxy.
pub(crate) struct Ctx<'a> {
    pub mesh: &'a Mesh,
    pub proxy: &'a ProxyNode,
    /// The services this proxy sees (its Sidecar's egress hosts), by hostname.
    pub services: Vec<&'a Service>,
    pub virtual_services: BTreeMap<String, (&'a crate::load::Object, &'a VirtualService)>,
    pub destination_rules: BTreeMap<String, &'a DestinationRule>,
    pub allow_any: bool,
}

impl<'a> Ctx<'a> {
    fn new(mesh: &'a Mesh, proxy: &'a ProxyNode) -> Ctx<'a> {
        let sidecar = sidecar_for(mesh, proxy);
        let services = mesh
            .registry
            .services
            .values()
            .filter(|s| sidecar.is_none_or(|(ns, sc)| egress_allows(sc, ns, s)))
            .collect();
        let mut virtual_services = BTreeMap::new();
        for (o, vs) in mesh_virtual_services(mesh) {
            for h in &vs.hosts {
                virtual_services
                    .entry(crate::registry::fqdn(h, &o.namespace))
                    .or_insert((o, vs));
            }
        }
        let mut destination_rules = BTreeMap::new();
        for o in &mesh.objects {
            if let Spec::DestinationRule(dr) = &o.spec {
                destination_rules
                    .entry(crate::registry::fqdn(&dr.host, &o.namespace))
                    .or_insert(dr);
            }
        }
        let allow_any = sidecar
            .and_then(|(_, sc)| sc.outbound_traffic_policy.as_ref())
            .and_then(|p| p.mode.as_deref())
            != Some("REGISTRY_ONLY");
        Ctx {
            mesh,
            proxy,
            services,
            virtual_services,
            destination_rules,
            allow_any,
        }
    }

    /// The service ports the proxy itself serves: (service, port, target port).
    pub fn inbound(&self) -> Vec<(&'a Service, &'a ServicePort, u32)> {
        let mut out = Vec::new();
        for i in &self.mesh.registry.instances {
            if !self.proxy.ips.contains(&i.address) {
                continue;
            }
            if let Some(s) = self.mesh.registry.services.get(&i.hostname)
                && let Some(p) = s.port(i.service_port)
                && !out.iter().any(|(_, _, t)| *t == i.port)
            {
                out.push((s, p, i.port));
            }
        }
        out
    }
}

/// The Sidecar resource that applies to the proxy: one selecting it in its namespace, else its
/// namespace's default, else the root namespace's (istio-system).
fn sidecar_for<'a>(mesh: &'a Mesh, proxy: &ProxyNode) -> Option<(&'a str, &'a Sidecar)> {
    let sidecars: Vec<(&str, &Sidecar)> = mesh
        .objects
        .iter()
        .filter_map(|o| match &o.spec {
            Spec::Sidecar(s) => Some((o.namespace.as_str(), s)),
            _ => None,
        })
        .collect();
    sidecars
        .iter()
        .find(|(ns, s)| {
            *ns == proxy.namespace
                && s.workload_selector
                    .as_ref()
                    .is_some_and(|w| w.selects(&proxy.labels))
        })
        .or_else(|| {
            sidecars
                .iter()
                .find(|(ns, s)| *ns == proxy.namespace && s.workload_selector.is_none())
        })
        .or_else(|| {
            sidecars
                .iter()
                .find(|(ns, s)| *ns == "istio-system" && s.workload_selector.is_none())
        })
        .copied()
}

/// Sidecar egress `hosts` (`ns/host`, `*/host`, `./host`, `~/host`, `*` or `*.suffix` hosts).
fn egress_allows(sc: &Sidecar, sidecar_ns: &str, s: &Service) -> bool {
    sc.egress.iter().flat_map(|e| &e.hosts).any(|h| {
        let (ns, host) = h.split_once('/').unwrap_or(("*", h));
        let ns_ok = match ns {
            "*" => true,
            "~" => false,
            "." => s.namespace == sidecar_ns,
            other => s.namespace == other,
        };
        let host_ok = host == "*"
            || host
                .strip_prefix('*')
                .is_some_and(|suffix| s.hostname.ends_with(suffix))
            || crate::registry::fqdn(host, &s.namespace) == s.hostname;
        ns_ok && host_ok
    })
}

/// Everything one proxy gets.
pub fn generate(mesh: &Mesh, proxy: &ProxyNode) -> Xds {
    let ctx = Ctx::new(mesh, proxy);
    let mut clusters = clusters::build(&ctx);
    let endpoints = endpoints::build(&ctx, &mut clusters);
    Xds {
        listeners: listeners::build(&ctx),
        routes: routes::build(&ctx),
        clusters: clusters
            .into_iter()
            .map(|(n, (c, _))| (n, wire::pack(&c)))
            .collect(),
        endpoints,
    }
}
