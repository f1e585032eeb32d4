//! The xDS istiod would send one sidecar, built from the mesh: listeners, routes, clusters and
//! endpoints, named and shaped as istiod names and shapes them.

mod clusters;
mod endpoints;
mod listeners;
mod locality;
mod routes;
pub mod tracing;
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
    /// Metadata `IDLE_TIMEOUT` (`ISTIO_META_IDLE_TIMEOUT`): the idle timeout of the proxy's
    /// connection managers and TCP proxies.
    pub idle_timeout: Option<std::time::Duration>,
    /// `region/zone/subzone`: the node's locality, else its pod's (for locality load
    /// balancing).
    pub locality: Option<String>,
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

/// The mesh config (the `istio` ConfigMap), if the directory has one.
fn mesh_config_of(mesh: &Mesh) -> Option<&crate::resources::MeshConfig> {
    mesh.objects.iter().find_map(|o| match &o.spec {
        Spec::MeshConfig(m) => Some(m),
        _ => None,
    })
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
    /// Where this proxy reports spans (mesh-wide; computed once).
    pub collector: Option<tracing::Collector>,
}

impl<'a> Ctx<'a> {
    /// The mesh config (the `istio` ConfigMap), if the directory has one.
    pub fn mesh_config(&self) -> Option<&'a crate::resources::MeshConfig> {
        mesh_config_of(self.mesh)
    }

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
            collector: tracing::active(mesh_config_of(mesh), &mesh.registry),
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

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::route::v3::{
        RouteConfiguration, route::Action, route_action::ClusterSpecifier,
    };
    use prost::Message;

    use super::*;

    /// The mesh of one YAML text.
    fn mesh_of(yaml: &str) -> Mesh {
        let objects = crate::load::parse_file(std::path::Path::new("m.yaml"), yaml).objects;
        Mesh {
            registry: crate::registry::Registry::build(&objects),
            objects,
        }
    }

    fn bill_mesh(extra_vs: Option<&str>) -> Mesh {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bill-service");
        let mut objects = Vec::new();
        for f in crate::load::list_files(&dir).unwrap() {
            if extra_vs.is_some() && f.ends_with("virtual-service.yaml") {
                continue;
            }
            objects
                .extend(crate::load::parse_file(&f, &std::fs::read_to_string(&f).unwrap()).objects);
        }
        if let Some(vs) = extra_vs {
            objects.extend(crate::load::parse_file(std::path::Path::new("vs.yaml"), vs).objects);
        }
        Mesh {
            registry: crate::registry::Registry::build(&objects),
            objects,
        }
    }

    fn client() -> ProxyNode {
        ProxyNode {
            id: "sidecar~10.30.0.10~client.default~default.svc.cluster.local".into(),
            namespace: "default".into(),
            ips: vec!["10.30.0.10".into()],
            labels: Labels::new(),
            idle_timeout: None,
            locality: None,
        }
    }

    #[test]
    fn the_client_gets_istiod_names_and_shapes() {
        let x = generate(&bill_mesh(None), &client());
        let names = |m: &BTreeMap<String, Any>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            names(&x.listeners),
            [
                "0.0.0.0_8080",
                "10.96.0.10_9000",
                "virtualInbound",
                "virtualOutbound"
            ]
        );
        assert_eq!(
            names(&x.clusters),
            [
                "BlackHoleCluster",
                "InboundPassthroughCluster",
                "PassthroughCluster",
                "outbound|8080|v1|bill-service.default.svc.cluster.local",
                "outbound|8080|v2|bill-service.default.svc.cluster.local",
                "outbound|8080||bill-service.default.svc.cluster.local",
                "outbound|9000|v1|bill-service.default.svc.cluster.local",
                "outbound|9000|v2|bill-service.default.svc.cluster.local",
                "outbound|9000||bill-service.default.svc.cluster.local",
            ]
        );
        let rc = RouteConfiguration::decode(x.routes["8080"].value.as_slice()).unwrap();
        assert!(rc.ignore_port_in_host_matching);
        let vh = &rc.virtual_hosts[0];
        assert_eq!(vh.name, "bill-service.default.svc.cluster.local:8080");
        assert_eq!(
            vh.domains,
            [
                "bill-service.default.svc.cluster.local",
                "bill-service",
                "bill-service.default",
                "bill-service.default.svc",
                "10.96.0.10"
            ]
        );
        assert_eq!(rc.virtual_hosts.last().unwrap().name, "allow_any");
        let Some(Action::Route(ra)) = &vh.routes[0].action else {
            panic!("not a route")
        };
        let Some(ClusterSpecifier::WeightedClusters(w)) = &ra.cluster_specifier else {
            panic!("not weighted")
        };
        let split: Vec<(String, u32)> = w
            .clusters
            .iter()
            .map(|c| (c.name.clone(), c.weight.unwrap().value))
            .collect();
        assert_eq!(
            split,
            [
                (
                    "outbound|8080|v1|bill-service.default.svc.cluster.local".to_string(),
                    90
                ),
                (
                    "outbound|8080|v2|bill-service.default.svc.cluster.local".to_string(),
                    10
                )
            ]
        );
        assert_eq!(
            ra.retry_policy.as_ref().unwrap().num_retries.unwrap().value,
            2,
            "istiod's default retry policy"
        );
        let v1 = ClusterLoadAssignment::decode(
            x.endpoints["outbound|8080|v1|bill-service.default.svc.cluster.local"]
                .value
                .as_slice(),
        )
        .unwrap();
        let eps: Vec<_> = v1.endpoints.iter().flat_map(|l| &l.lb_endpoints).collect();
        assert_eq!(eps.len(), 1, "the v1 subset selects only the v1 pod");
        // The client serves no service: no inbound cluster.
        assert!(!x.clusters.keys().any(|k| k.starts_with("inbound|")));
    }

    #[test]
    fn a_server_gets_its_inbound_side() {
        let node = ProxyNode {
            ips: vec!["10.30.0.11".into()],
            ..client()
        };
        let x = generate(&bill_mesh(None), &node);
        assert!(x.clusters.contains_key("inbound|8080||"));
        assert!(x.clusters.contains_key("inbound|9000||"));
    }

    #[test]
    fn matches_rewrites_and_faults_are_translated() {
        let vs = concat!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bill-service}\n",
            "spec:\n  hosts: [bill-service]\n  http:\n",
            "  - match: [{headers: {end-user: {exact: jason}}, uri: {prefix: /api/}, ignoreUriCase: true}]\n",
            "    rewrite: {uri: /, authority: bills}\n",
            "    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}\n",
            "    route: [{destination: {host: bill-service, port: {number: 8080}, subset: v2}}]\n",
        );
        let x = generate(&bill_mesh(Some(vs)), &client());
        let rc = RouteConfiguration::decode(x.routes["8080"].value.as_slice()).unwrap();
        let r = &rc.virtual_hosts[0].routes[0];
        let m = r.r#match.as_ref().unwrap();
        assert!(!m.case_sensitive.unwrap().value);
        assert_eq!(m.headers[0].name, "end-user");
        let Some(Action::Route(ra)) = &r.action else {
            panic!("not a route")
        };
        assert_eq!(ra.prefix_rewrite, "/");
        let fault =
            envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault::decode(
                r.typed_per_filter_config["envoy.filters.http.fault"]
                    .value
                    .as_slice(),
            )
            .unwrap();
        let p = fault.abort.unwrap().percentage.unwrap();
        assert_eq!(
            (p.numerator, p.denominator),
            (500_000, 2),
            "50% in millionths"
        );
    }

    #[test]
    fn connection_pools_become_circuit_breakers() {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        let yaml = concat!(
            "apiVersion: v1\nkind: Service\nmetadata: {name: bill}\n",
            "spec: {clusterIP: 10.96.0.5, ports: [{name: http, port: 80}]}\n---\n",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bill}\n",
            "spec:\n  host: bill\n  trafficPolicy:\n    connectionPool:\n",
            "      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1, maxRetries: 2}\n",
            "    retryBudget: {percent: 25, minRetryConcurrency: 5}\n",
        );
        let mesh = mesh_of(yaml);
        let x = generate(&mesh, &client());
        let c = Cluster::decode(
            x.clusters["outbound|80||bill.default.svc.cluster.local"]
                .value
                .as_slice(),
        )
        .unwrap();
        let t = &c.circuit_breakers.unwrap().thresholds[0];
        assert_eq!(t.max_connections.unwrap().value, 1);
        assert_eq!(t.max_pending_requests.unwrap().value, 1);
        assert_eq!(t.max_retries.unwrap().value, 2);
        let budget = t.retry_budget.as_ref().unwrap();
        assert_eq!(budget.budget_percent.as_ref().unwrap().value, 25.0);
        assert_eq!(budget.min_retry_concurrency.unwrap().value, 5);
        assert_eq!(
            t.max_requests.unwrap().value,
            u32::MAX,
            "unset: unlimited, as istiod"
        );
    }

    #[test]
    fn outlier_detection_sets_local_origin_splitting_and_the_panic_threshold() {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        let yaml = concat!(
            "apiVersion: v1\nkind: Service\nmetadata: {name: bill}\n",
            "spec: {clusterIP: 10.96.0.5, ports: [{name: http, port: 80}]}\n---\n",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bill}\n",
            "spec:\n  host: bill\n  trafficPolicy:\n    outlierDetection:\n",
            "      consecutive5xxErrors: 3\n      splitExternalLocalOriginErrors: true\n",
            "      consecutiveLocalOriginFailures: 2\n      baseEjectionTime: 10s\n",
            "  subsets:\n  - name: v1\n    labels: {version: v1}\n    trafficPolicy:\n",
            "      outlierDetection: {consecutiveGatewayErrors: 1, minHealthPercent: 30}\n",
        );
        let mesh = mesh_of(yaml);
        let x = generate(&mesh, &client());
        let cluster = |name: &str| Cluster::decode(x.clusters[name].value.as_slice()).unwrap();
        let top = cluster("outbound|80||bill.default.svc.cluster.local");
        let o = top.outlier_detection.as_ref().unwrap();
        assert_eq!(o.consecutive_5xx.unwrap().value, 3);
        assert!(o.split_external_local_origin_errors);
        assert_eq!(o.consecutive_local_origin_failure.unwrap().value, 2);
        assert_eq!(
            o.enforcing_consecutive_local_origin_failure.unwrap().value,
            100
        );
        let panic = |c: &Cluster| {
            c.common_lb_config
                .as_ref()
                .and_then(|l| l.healthy_panic_threshold.as_ref())
                .map(|p| p.value)
        };
        assert_eq!(
            panic(&top),
            Some(0.0),
            "minHealthPercent 0 by default: no panic"
        );
        let v1 = cluster("outbound|80|v1|bill.default.svc.cluster.local");
        assert_eq!(panic(&v1), Some(30.0));
        assert!(
            !v1.outlier_detection
                .unwrap()
                .split_external_local_origin_errors
        );
    }

    #[test]
    fn consistent_hash_sets_the_cluster_policy_and_the_route_hash() {
        use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster::LbConfig};
        use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier as P;
        let yaml = concat!(
            "apiVersion: v1\nkind: Service\nmetadata: {name: cart}\n",
            "spec: {clusterIP: 10.96.0.5, ports: [{name: http, port: 80}, {name: tcp-db, port: 5432}]}\n---\n",
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: cart}\n",
            "spec:\n  host: cart\n  trafficPolicy:\n    loadBalancer:\n",
            "      consistentHash: {httpCookie: {name: session, ttl: 1h, path: /}, ringHash: {minimumRingSize: 2048}}\n",
            "  subsets:\n  - name: ip\n    labels: {v: x}\n    trafficPolicy:\n      loadBalancer:\n",
            "        consistentHash: {useSourceIp: true, maglev: {tableSize: 1031}}\n",
        );
        let mesh = mesh_of(yaml);
        let x = generate(&mesh, &client());
        let cluster = |name: &str| Cluster::decode(x.clusters[name].value.as_slice()).unwrap();
        let top = cluster("outbound|80||cart.default.svc.cluster.local");
        assert_eq!(top.lb_policy, 2, "RING_HASH");
        match top.lb_config {
            Some(LbConfig::RingHashLbConfig(r)) => {
                assert_eq!(r.minimum_ring_size.unwrap().value, 2048)
            }
            other => panic!("{other:?}"),
        }
        let sub = cluster("outbound|80|ip|cart.default.svc.cluster.local");
        assert_eq!(sub.lb_policy, 5, "MAGLEV");
        match sub.lb_config {
            Some(LbConfig::MaglevLbConfig(m)) => assert_eq!(m.table_size.unwrap().value, 1031),
            other => panic!("{other:?}"),
        }
        // The default route of the service carries the cookie hash policy.
        let rc = RouteConfiguration::decode(x.routes["80"].value.as_slice()).unwrap();
        let Some(Action::Route(ra)) = &rc.virtual_hosts[0].routes[0].action else {
            panic!("{rc:?}")
        };
        match &ra.hash_policy[..] {
            [h] => match &h.policy_specifier {
                Some(P::Cookie(c)) => {
                    assert_eq!((c.name.as_str(), c.path.as_str()), ("session", "/"));
                    assert_eq!(c.ttl.as_ref().unwrap().seconds, 3600);
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
}
