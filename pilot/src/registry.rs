//! The service registry: services and their endpoints, from Kubernetes `Service` +
//! `EndpointSlice` (or `Pod`s), and from `ServiceEntry` + `WorkloadEntry`. Istio calls an endpoint
//! of a service port an *instance*.

use std::collections::BTreeMap;

use crate::findings::Origin;
use crate::load::{Kind, Object, Spec};
use crate::resources::{IntOrString, Labels};

/// The cluster's DNS suffix.
pub const DOMAIN_SUFFIX: &str = "svc.cluster.local";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    Tls,
    Https,
    Udp,
    /// Not declared: Istio sniffs it. Outrigger treats it as HTTP (see `is_http`).
    Auto,
}

impl Protocol {
    /// Istio's rule: the port name's prefix before `-` (or the appProtocol) names the protocol.
    pub fn parse(name_or_protocol: &str) -> Protocol {
        let p = name_or_protocol.to_ascii_lowercase();
        let prefix = p.split('-').next().unwrap_or("");
        match prefix {
            "http" | "http1" | "http/1.1" => Protocol::Http,
            "http2" | "h2c" | "kubernetes.io/h2c" => Protocol::Http2,
            "grpc" | "grpc-web" => Protocol::Grpc,
            "tcp" | "mongo" | "mysql" | "redis" => Protocol::Tcp,
            "tls" => Protocol::Tls,
            "https" => Protocol::Https,
            "udp" => Protocol::Udp,
            _ => Protocol::Auto,
        }
    }

    /// Served by an HTTP connection manager on `0.0.0.0_<port>`. Deviation: istiod sniffs
    /// undeclared (auto) ports and falls back to TCP for the service's VIP; outrigger routes them
    /// as HTTP and non-HTTP bytes take the passthrough chain.
    pub fn is_http(self) -> bool {
        matches!(
            self,
            Protocol::Http | Protocol::Http2 | Protocol::Grpc | Protocol::Auto
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Endpoints are known (EDS).
    Static,
    /// Connect to the original destination (ServiceEntry `resolution: NONE`).
    Passthrough,
    /// Endpoints are DNS names resolved by the proxy (`resolution: DNS`).
    Dns,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u32,
    pub protocol: Protocol,
}

#[derive(Debug, Clone)]
pub struct Service {
    /// The FQDN: `name.ns.svc.cluster.local`, or the ServiceEntry host.
    pub hostname: String,
    pub name: String,
    pub namespace: String,
    pub vips: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub resolution: Resolution,
    pub from: Kind,
    pub origin: Origin,
}

impl Service {
    pub fn port(&self, port: u32) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// An endpoint of one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub hostname: String,
    pub service_port: u32,
    pub address: String,
    pub port: u32,
    pub labels: Labels,
    pub workload: String,
    pub namespace: String,
    pub healthy: bool,
    pub weight: u32,
    pub locality: Option<String>,
}

/// A pod or a WorkloadEntry.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub ips: Vec<String>,
    pub labels: Labels,
    pub service_account: String,
    /// Named ports (container ports, or a WorkloadEntry's port map).
    pub ports: BTreeMap<String, u32>,
    pub locality: Option<String>,
    pub weight: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub services: BTreeMap<String, Service>,
    pub instances: Vec<Instance>,
    pub workloads: Vec<Workload>,
}

/// Istio's short-name resolution: a name without dots is relative to `namespace`.
pub fn fqdn(host: &str, namespace: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_ascii_lowercase()
    } else {
        format!("{}.{namespace}.{DOMAIN_SUFFIX}", host.to_ascii_lowercase())
    }
}

fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `region/zone[/subzone]`: Istio's `istio-locality` label (`region.zone.subzone`), else the
/// topology labels.
fn locality_of(labels: &Labels) -> Option<String> {
    if let Some(l) = labels.get("istio-locality").filter(|l| !l.is_empty()) {
        return Some(l.replace('.', "/"));
    }
    let region = labels.get("topology.kubernetes.io/region");
    let zone = labels.get("topology.kubernetes.io/zone");
    let subzone = labels.get("topology.istio.io/subzone");
    match (region, zone) {
        (None, None) => None,
        (r, z) => {
            let mut l = format!(
                "{}/{}",
                r.map(String::as_str).unwrap_or(""),
                z.map(String::as_str).unwrap_or("")
            );
            if let Some(s) = subzone {
                l.push('/');
                l.push_str(s);
            }
            Some(l)
        }
    }
}

impl Registry {
    pub fn workload_by_ip(&self, ip: &str) -> Option<&Workload> {
        self.workloads
            .iter()
            .find(|w| w.ips.iter().any(|i| i == ip))
    }

    /// Builds the registry from valid objects.
    pub fn build(objects: &[Object]) -> Registry {
        let mut reg = Registry::default();
        for o in objects {
            match &o.spec {
                Spec::Pod(p) => reg.workloads.push(Workload {
                    name: o.name.clone(),
                    namespace: o.namespace.clone(),
                    ips: p.ips(),
                    labels: o.labels.clone(),
                    service_account: p
                        .spec
                        .service_account_name
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    ports: p
                        .spec
                        .containers
                        .iter()
                        .flat_map(|c| &c.ports)
                        .filter_map(|cp| Some((cp.name.clone()?, cp.container_port)))
                        .collect(),
                    locality: locality_of(&o.labels),
                    weight: 1,
                }),
                Spec::WorkloadEntry(w) => reg.workloads.push(Workload {
                    name: o.name.clone(),
                    namespace: o.namespace.clone(),
                    ips: vec![w.address.clone()],
                    labels: w.labels.clone(),
                    service_account: w
                        .service_account
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    ports: w.ports.clone(),
                    locality: w.locality.clone(),
                    weight: w.weight.unwrap_or(1).max(1),
                }),
                _ => {}
            }
        }
        for o in objects {
            match &o.spec {
                Spec::Service(s) => reg.add_kubernetes_service(o, s, objects),
                Spec::ServiceEntry(se) => reg.add_service_entry(o, se),
                _ => {}
            }
        }
        reg
    }

    fn instance(
        &self,
        svc: &Service,
        port: &ServicePort,
        address: &str,
        target: u32,
        w: Option<&Workload>,
        healthy: bool,
    ) -> Instance {
        Instance {
            hostname: svc.hostname.clone(),
            service_port: port.port,
            address: address.to_string(),
            port: target,
            labels: w.map(|w| w.labels.clone()).unwrap_or_default(),
            workload: w.map(|w| w.name.clone()).unwrap_or_default(),
            namespace: w
                .map(|w| w.namespace.clone())
                .unwrap_or_else(|| svc.namespace.clone()),
            healthy,
            weight: w.map(|w| w.weight).unwrap_or(1),
            locality: w.and_then(|w| w.locality.clone()),
        }
    }

    fn add_kubernetes_service(
        &mut self,
        o: &Object,
        s: &crate::resources::ServiceSpec,
        objects: &[Object],
    ) {
        let mut vips: Vec<String> = s.cluster_ips.clone();
        if let Some(ip) = &s.cluster_ip
            && ip != "None"
            && !ip.is_empty()
            && !vips.contains(ip)
        {
            vips.insert(0, ip.clone());
        }
        vips.retain(|v| v != "None");
        let ports: Vec<ServicePort> = s
            .ports
            .iter()
            .map(|p| ServicePort {
                name: p.name.clone(),
                port: p.port,
                protocol: match (&p.app_protocol, p.protocol.as_deref()) {
                    (_, Some("UDP")) => Protocol::Udp,
                    (Some(a), _) => Protocol::parse(a),
                    _ => Protocol::parse(&p.name),
                },
            })
            .collect();
        let svc = Service {
            hostname: fqdn(&o.name, &o.namespace),
            name: o.name.clone(),
            namespace: o.namespace.clone(),
            resolution: if vips.is_empty() {
                Resolution::Passthrough
            } else {
                Resolution::Static
            },
            vips,
            ports,
            from: Kind::Service,
            origin: o.origin.clone(),
        };
        let slices: Vec<&crate::resources::EndpointSlice> = objects
            .iter()
            .filter(|x| {
                x.namespace == o.namespace
                    && x.labels.get("kubernetes.io/service-name") == Some(&o.name)
            })
            .filter_map(|x| match &x.spec {
                Spec::EndpointSlice(e) => Some(e),
                _ => None,
            })
            .collect();
        let mut instances = Vec::new();
        for (sp, spec_port) in svc.ports.iter().zip(&s.ports) {
            if !slices.is_empty() {
                for slice in &slices {
                    let Some(target) = slice
                        .ports
                        .iter()
                        .find(|p| {
                            p.name.as_deref().unwrap_or("") == sp.name
                                || slice.ports.len() == 1 && svc.ports.len() == 1
                        })
                        .and_then(|p| p.port)
                    else {
                        continue;
                    };
                    for ep in &slice.endpoints {
                        let healthy = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                        for addr in &ep.addresses {
                            let w = self.workload_by_ip(addr);
                            instances.push(self.instance(&svc, sp, addr, target, w, healthy));
                        }
                    }
                }
            } else if let Some(selector) = &s.selector {
                for w in self
                    .workloads
                    .iter()
                    .filter(|w| w.namespace == o.namespace && selects(selector, &w.labels))
                {
                    let target = match &spec_port.target_port {
                        Some(IntOrString::Int(n)) => Some(*n),
                        Some(IntOrString::String(name)) => w.ports.get(name).copied(),
                        None => Some(sp.port),
                    };
                    // A WorkloadEntry's port map overrides by service port name.
                    let target = w.ports.get(&sp.name).copied().or(target);
                    let Some(target) = target else { continue };
                    for ip in w.ips.iter().take(1) {
                        instances.push(self.instance(&svc, sp, ip, target, Some(w), true));
                    }
                }
            }
        }
        self.instances.extend(instances);
        self.services.insert(svc.hostname.clone(), svc);
    }

    fn add_service_entry(&mut self, o: &Object, se: &crate::resources::ServiceEntry) {
        let resolution = match se.resolution.as_deref().unwrap_or("NONE") {
            "STATIC" => Resolution::Static,
            "DNS" | "DNS_ROUND_ROBIN" => Resolution::Dns,
            _ => Resolution::Passthrough,
        };
        let ports: Vec<ServicePort> = se
            .ports
            .iter()
            .map(|p| ServicePort {
                name: p.name.clone(),
                port: p.number,
                protocol: Protocol::parse(p.protocol.as_deref().unwrap_or(&p.name)),
            })
            .collect();
        for host in &se.hosts {
            let svc = Service {
                hostname: host.to_ascii_lowercase(),
                name: host.split('.').next().unwrap_or(host).to_string(),
                namespace: o.namespace.clone(),
                vips: se.addresses.clone(),
                ports: ports.clone(),
                resolution,
                from: Kind::ServiceEntry,
                origin: o.origin.clone(),
            };
            let mut instances = Vec::new();
            for (sp, p) in svc.ports.iter().zip(&se.ports) {
                let default_target = p.target_port.unwrap_or(p.number);
                for ep in &se.endpoints {
                    let target = ep.ports.get(&sp.name).copied().unwrap_or(default_target);
                    let w = Workload {
                        name: String::new(),
                        namespace: o.namespace.clone(),
                        ips: vec![ep.address.clone()],
                        labels: ep.labels.clone(),
                        service_account: String::new(),
                        ports: ep.ports.clone(),
                        locality: ep.locality.clone(),
                        weight: ep.weight.unwrap_or(1).max(1),
                    };
                    instances.push(self.instance(&svc, sp, &ep.address, target, Some(&w), true));
                }
                if let Some(sel) = &se.workload_selector {
                    for w in self
                        .workloads
                        .iter()
                        .filter(|w| w.namespace == o.namespace && sel.selects(&w.labels))
                    {
                        let target = w.ports.get(&sp.name).copied().unwrap_or(default_target);
                        if let Some(ip) = w.ips.first() {
                            instances.push(self.instance(&svc, sp, ip, target, Some(w), true));
                        }
                    }
                }
                if resolution == Resolution::Dns
                    && se.endpoints.is_empty()
                    && se.workload_selector.is_none()
                {
                    instances.push(self.instance(&svc, sp, host, default_target, None, true));
                }
            }
            self.instances.extend(instances);
            self.services.insert(svc.hostname.clone(), svc);
        }
    }

    /// The instances of `hostname:port` whose labels carry `subset_labels`.
    pub fn instances_of(
        &self,
        hostname: &str,
        port: u32,
        subset_labels: &Labels,
    ) -> Vec<&Instance> {
        self.instances
            .iter()
            .filter(|i| {
                i.hostname == hostname
                    && i.service_port == port
                    && selects(subset_labels, &i.labels)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::parse_file;

    fn registry(yaml: &str) -> Registry {
        let f = parse_file(std::path::Path::new("r.yaml"), yaml);
        assert!(f.findings.is_empty(), "{:?}", f.findings);
        Registry::build(&f.objects)
    }

    #[test]
    fn services_take_endpoints_from_pods_by_selector_and_named_target_ports() {
        let r = registry(
            "apiVersion: v1\nkind: Service\nmetadata: {name: bill, namespace: shop}\n\
             spec: {clusterIP: 10.96.0.5, selector: {app: bill}, ports: [{name: http, port: 8080, targetPort: web}]}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: bill-v1, namespace: shop, labels: {app: bill, version: v1}}\n\
             spec: {containers: [{name: c, ports: [{name: web, containerPort: 9000}]}]}\nstatus: {podIP: 10.0.0.11}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: other, namespace: shop, labels: {app: other}}\nstatus: {podIP: 10.0.0.12}\n",
        );
        let s = &r.services["bill.shop.svc.cluster.local"];
        assert_eq!(s.vips, ["10.96.0.5"]);
        assert_eq!(s.ports[0].protocol, Protocol::Http);
        let all: Vec<_> = r.instances_of(&s.hostname, 8080, &Labels::new());
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].address.as_str(), all[0].port), ("10.0.0.11", 9000));
        assert_eq!(all[0].labels["version"], "v1");
    }

    #[test]
    fn endpoint_slices_win_over_selectors_and_carry_pod_labels() {
        let r = registry(
            "apiVersion: v1\nkind: Service\nmetadata: {name: bill}\n\
             spec: {clusterIP: 10.96.0.5, selector: {app: bill}, ports: [{name: http, port: 80}]}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: bill-x, labels: {kubernetes.io/service-name: bill}}\n\
             addressType: IPv4\nports: [{name: http, port: 8080}]\n\
             endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2], conditions: {ready: false}}]\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: p1, labels: {app: bill, version: v2}}\nstatus: {podIP: 10.0.0.1}\n",
        );
        let v: Vec<_> = r.instances_of("bill.default.svc.cluster.local", 80, &Labels::new());
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].port, v[0].labels["version"].as_str(), v[0].healthy),
            (8080, "v2", true)
        );
        assert!(!v[1].healthy);
    }

    #[test]
    fn service_entries_select_workload_entries() {
        let r = registry(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: vm}\n\
             spec: {hosts: [vm.example.com], addresses: [240.0.0.1], resolution: STATIC, ports: [{number: 80, name: http, protocol: HTTP}], workloadSelector: {labels: {app: vm}}}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: vm1}\n\
             spec: {address: 192.168.1.5, labels: {app: vm}, ports: {http: 8081}}\n",
        );
        let v: Vec<_> = r.instances_of("vm.example.com", 80, &Labels::new());
        assert_eq!((v[0].address.as_str(), v[0].port), ("192.168.1.5", 8081));
        assert_eq!(fqdn("reviews", "shop"), "reviews.shop.svc.cluster.local");
        assert_eq!(fqdn("a.example.com", "shop"), "a.example.com");
    }
}
