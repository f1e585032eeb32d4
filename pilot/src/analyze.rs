//! Checks, like `istioctl analyze`: each resource on its own (`validate`), then against the
//! registry and the other resources (`cross_check`). Errors keep a resource out of the pushed
//! configuration; warnings say what is translated but not honoured by outrigger-proxy yet.

use std::collections::BTreeMap;

use crate::duration;
use crate::findings::Finding;
use crate::load::{Key, Object, Spec};
use crate::registry::{Registry, fqdn};
use crate::resources::{self as r, StringMatch};

/// Findings about `o` alone.
pub fn validate(o: &Object) -> Vec<Finding> {
    let mut c = Checker { o, out: Vec::new() };
    match &o.spec {
        Spec::VirtualService(vs) => c.virtual_service(vs),
        Spec::DestinationRule(dr) => c.destination_rule(dr),
        Spec::ServiceEntry(se) => c.service_entry(se),
        Spec::Sidecar(sc) => c.sidecar(sc),
        Spec::Service(s) => {
            if s.ports.is_empty() {
                c.error("spec.ports", "a Service needs at least one port");
            }
        }
        Spec::WorkloadEntry(w) => {
            if w.address.is_empty() {
                c.error("spec.address", "missing");
            }
        }
        Spec::Gateway(_) => c.warn(
            "spec",
            "Gateways are read but not served: outrigger-pilot configures sidecars only",
        ),
        Spec::MeshConfig(m) => {
            if let Some(l) = &m.locality_lb_setting {
                c.locality_lb("localityLbSetting", l);
            }
        }
        Spec::EndpointSlice(_) | Spec::Pod(_) => {}
    }
    c.out
}

struct Checker<'a> {
    o: &'a Object,
    out: Vec<Finding>,
}

const NOT_YET: &str = "not honoured by outrigger-proxy yet (accepted, no effect on traffic)";

impl Checker<'_> {
    fn error(&mut self, field: &str, msg: impl Into<String>) {
        self.out.push(Finding::error(
            &self.o.origin,
            Some(&self.o.describe()),
            Some(field),
            msg,
        ));
    }

    fn warn(&mut self, field: &str, msg: impl Into<String>) {
        self.out.push(Finding::warning(
            &self.o.origin,
            Some(&self.o.describe()),
            Some(field),
            msg,
        ));
    }

    fn duration(&mut self, field: &str, d: &Option<String>) {
        if let Some(d) = d
            && let Err(e) = duration::parse(d)
        {
            self.error(field, e);
        }
    }

    fn percent(&mut self, field: &str, p: &Option<r::Percent>) {
        if let Some(p) = p
            && !(0.0..=100.0).contains(&p.value)
        {
            self.error(
                field,
                format!("{} is not a percentage between 0 and 100", p.value),
            );
        }
    }

    fn string_match(&mut self, field: &str, m: &StringMatch) {
        if let StringMatch::Regex(re) = m
            && let Err(e) = regex::Regex::new(re)
        {
            self.error(field, format!("invalid regex: {e}"));
        }
    }

    fn weights(&mut self, field: &str, weights: &[Option<i64>]) {
        if weights.iter().flatten().any(|w| *w < 0) {
            self.error(field, "a weight is negative");
        } else if weights.len() > 1 {
            let sum: i64 = weights.iter().map(|w| w.unwrap_or(0)).sum();
            if sum != 100 {
                self.error(
                    field,
                    format!("the destination weights add up to {sum}, not 100"),
                );
            }
        }
    }

    fn virtual_service(&mut self, vs: &r::VirtualService) {
        if vs.hosts.is_empty() {
            self.error("spec.hosts", "a VirtualService needs at least one host");
        }
        if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
            self.error("spec", "no http, tcp or tls routes");
        }
        if !vs.tls.is_empty() {
            self.warn(
                "spec.tls",
                "TLS (SNI) routes are not translated yet; ignored",
            );
        }
        for (i, h) in vs.http.iter().enumerate() {
            let f = |s: &str| format!("spec.http[{i}]{s}");
            let actions = [
                !h.route.is_empty(),
                h.redirect.is_some(),
                h.direct_response.is_some(),
                h.delegate.is_some(),
            ];
            match actions.iter().filter(|a| **a).count() {
                0 => self.error(&f(""), "needs one of route, redirect, directResponse"),
                1 => {}
                _ => self.error(
                    &f(""),
                    "route, redirect, directResponse and delegate exclude each other",
                ),
            }
            if h.delegate.is_some() {
                self.warn(
                    &f(".delegate"),
                    "delegate VirtualServices are not supported; this route is ignored",
                );
            }
            self.weights(
                &f(".route"),
                &h.route.iter().map(|d| d.weight).collect::<Vec<_>>(),
            );
            if h.route.len() > 1 && h.route.iter().any(|d| d.headers.is_some()) {
                self.warn(&f(".route[].headers"), "per-destination header operations on a weighted route are not applied by outrigger-proxy yet");
            }
            for (j, d) in h.route.iter().enumerate() {
                if d.destination.host.is_empty() {
                    self.error(&f(&format!(".route[{j}].destination.host")), "missing");
                }
            }
            for (j, m) in h.matches.iter().enumerate() {
                let mf = f(&format!(".match[{j}]"));
                for (name, sm) in [
                    ("uri", &m.uri),
                    ("scheme", &m.scheme),
                    ("method", &m.method),
                    ("authority", &m.authority),
                ] {
                    if let Some(sm) = sm {
                        self.string_match(&format!("{mf}.{name}"), sm);
                    }
                }
                for (map, name) in [
                    (&m.headers, "headers"),
                    (&m.without_headers, "withoutHeaders"),
                    (&m.query_params, "queryParams"),
                ] {
                    for (k, hm) in map {
                        if let r::HeaderMatch::String(sm) = hm {
                            self.string_match(&format!("{mf}.{name}.{k}"), sm);
                        }
                    }
                }
            }
            self.duration(&f(".timeout"), &h.timeout);
            if let Some(rt) = &h.retries {
                self.duration(&f(".retries.perTryTimeout"), &rt.per_try_timeout);
                if rt.attempts < 0 {
                    self.error(&f(".retries.attempts"), "must not be negative");
                }
            }
            if let Some(fault) = &h.fault {
                if fault.delay.is_none() && fault.abort.is_none() {
                    self.error(&f(".fault"), "needs a delay or an abort");
                }
                if let Some(d) = &fault.delay {
                    if d.fixed_delay.is_none() {
                        self.error(&f(".fault.delay.fixedDelay"), "missing");
                    }
                    self.duration(&f(".fault.delay.fixedDelay"), &d.fixed_delay);
                    self.percent(&f(".fault.delay.percentage"), &d.percentage);
                }
                if let Some(a) = &fault.abort {
                    match (a.http_status, a.grpc_status.as_deref()) {
                        (Some(s), _) if (200..=599).contains(&s) => {}
                        (Some(s), _) => self.error(
                            &f(".fault.abort.httpStatus"),
                            format!("{s} is not an HTTP status (200-599)"),
                        ),
                        (None, Some(g)) if crate::resources::grpc_code(g).is_some() => {}
                        (None, Some(g)) => self.error(
                            &f(".fault.abort.grpcStatus"),
                            format!("{g:?} is not a gRPC status name (e.g. UNAVAILABLE)"),
                        ),
                        (None, None) => self.error(
                            &f(".fault.abort.httpStatus"),
                            "missing: httpStatus or grpcStatus (HTTP/2 error aborts are not supported)",
                        ),
                    }
                    self.percent(&f(".fault.abort.percentage"), &a.percentage);
                }
            }
            if let Some(d) = &h.direct_response
                && !(200..=599).contains(&d.status)
            {
                self.error(
                    &f(".directResponse.status"),
                    format!("{} is not an HTTP status", d.status),
                );
            }
            if let Some(rd) = &h.redirect
                && let Some(code) = rd.redirect_code
                && ![301, 302, 303, 307, 308].contains(&code)
            {
                self.error(
                    &f(".redirect.redirectCode"),
                    format!("{code} is not a redirect status"),
                );
            }
            if h.mirrors.is_some() {
                self.warn(&f(".mirrors"), "not translated yet (use `mirror`); ignored");
            }
            if h.cors_policy.is_some() {
                self.warn(&f(".corsPolicy"), NOT_YET);
            }
            self.percent(&f(".mirrorPercentage"), &h.mirror_percentage);
        }
        for (i, t) in vs.tcp.iter().enumerate() {
            let f = format!("spec.tcp[{i}].route");
            if t.route.is_empty() {
                self.error(&f, "a TCP route needs at least one destination");
            }
            self.weights(&f, &t.route.iter().map(|d| d.weight).collect::<Vec<_>>());
        }
    }

    fn consistent_hash(&mut self, field: &str, ch: &r::ConsistentHash) {
        let keys = [
            ch.http_header_name.is_some(),
            ch.http_cookie.is_some(),
            ch.use_source_ip.is_some(),
            ch.http_query_parameter_name.is_some(),
        ]
        .iter()
        .filter(|k| **k)
        .count();
        if keys != 1 {
            self.error(
                field,
                "needs exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
            );
        }
        if ch.http_header_name.as_deref() == Some("") {
            self.error(&format!("{field}.httpHeaderName"), "must not be empty");
        }
        if ch.http_query_parameter_name.as_deref() == Some("") {
            self.error(
                &format!("{field}.httpQueryParameterName"),
                "must not be empty",
            );
        }
        if let Some(c) = &ch.http_cookie {
            if c.name.is_empty() {
                self.error(&format!("{field}.httpCookie.name"), "must not be empty");
            }
            self.duration(&format!("{field}.httpCookie.ttl"), &c.ttl);
            if !c.attributes.is_empty() {
                self.warn(&format!("{field}.httpCookie.attributes"), NOT_YET);
            }
        }
        if ch.ring_hash.is_some() && ch.maglev.is_some() {
            self.error(field, "set either ringHash or maglev, not both");
        }
        if let Some(size) = ch.maglev.as_ref().and_then(|m| m.table_size)
            && (size < 2
                || (2..)
                    .take_while(|d: &u64| d * d <= size)
                    .any(|d| size.is_multiple_of(d)))
        {
            self.error(
                &format!("{field}.maglev.tableSize"),
                format!("{size} is not a prime number"),
            );
        }
        let ring = ch
            .ring_hash
            .as_ref()
            .and_then(|r| r.minimum_ring_size)
            .or(ch.minimum_ring_size);
        if let Some(size) = ring
            && size > 8 * 1024 * 1024
        {
            self.error(
                &format!("{field}.ringHash.minimumRingSize"),
                format!("{size} is over the limit of 8388608"),
            );
        }
    }

    fn policy(&mut self, field: &str, p: &r::TrafficPolicy) {
        if let Some(lb) = &p.load_balancer {
            if let Some(s) = &lb.simple
                && ![
                    "UNSPECIFIED",
                    "ROUND_ROBIN",
                    "LEAST_REQUEST",
                    "LEAST_CONN",
                    "RANDOM",
                    "PASSTHROUGH",
                ]
                .contains(&s.as_str())
            {
                self.error(
                    &format!("{field}.loadBalancer.simple"),
                    format!("unknown load balancer '{s}'"),
                );
            }
            if let Some(ch) = &lb.consistent_hash {
                self.consistent_hash(&format!("{field}.loadBalancer.consistentHash"), ch);
                if lb.simple.is_some() {
                    self.error(
                        &format!("{field}.loadBalancer"),
                        "set either simple or consistentHash, not both",
                    );
                }
            }
            if let Some(l) = &lb.locality_lb_setting {
                self.locality_lb(&format!("{field}.loadBalancer.localityLbSetting"), l);
            }
        }
        if let Some(cp) = &p.connection_pool {
            if let Some(tcp) = &cp.tcp {
                self.duration(
                    &format!("{field}.connectionPool.tcp.connectTimeout"),
                    &tcp.connect_timeout,
                );
                self.duration(
                    &format!("{field}.connectionPool.tcp.idleTimeout"),
                    &tcp.idle_timeout,
                );
                if tcp.tcp_keepalive.is_some() || tcp.max_connection_duration.is_some() {
                    self.warn(
                        &format!("{field}.connectionPool.tcp"),
                        "only maxConnections, connectTimeout and idleTimeout are honoured by outrigger-proxy yet",
                    );
                }
            }
            if let Some(serde_yaml::Value::Mapping(http)) = &cp.http {
                let honoured = [
                    "http1MaxPendingRequests",
                    "http2MaxRequests",
                    "maxRetries",
                    "idleTimeout",
                ];
                if let Some(serde_yaml::Value::String(d)) = http.get("idleTimeout") {
                    self.duration(
                        &format!("{field}.connectionPool.http.idleTimeout"),
                        &Some(d.clone()),
                    );
                }
                let other: Vec<&str> = http
                    .keys()
                    .filter_map(|k| k.as_str())
                    .filter(|k| !honoured.contains(k))
                    .collect();
                if !other.is_empty() {
                    self.warn(
                        &format!("{field}.connectionPool.http"),
                        format!("{}: {NOT_YET}", other.join(", ")),
                    );
                }
            }
        }
        for (name, v) in [
            ("tls", &p.tls),
            ("portLevelSettings", &p.port_level_settings),
            ("tunnel", &p.tunnel),
            ("proxyProtocol", &p.proxy_protocol),
        ] {
            if v.is_some() {
                self.warn(&format!("{field}.{name}"), NOT_YET);
            }
        }
    }

    /// Istio's validation of `localityLbSetting`.
    fn locality_lb(&mut self, field: &str, l: &r::LocalityLbSetting) {
        if !l.distribute.is_empty() && !l.failover.is_empty() {
            self.error(field, "set either distribute or failover, not both");
        }
        for (i, d) in l.distribute.iter().enumerate() {
            let total: u64 = d.to.values().map(|w| u64::from(*w)).sum();
            if total != 100 {
                self.error(
                    &format!("{field}.distribute[{i}].to"),
                    format!("the weights add up to {total}, not 100"),
                );
            }
        }
        for (i, f) in l.failover.iter().enumerate() {
            if f.from == f.to {
                self.error(
                    &format!("{field}.failover[{i}]"),
                    "from and to are the same region",
                );
            }
        }
        if !l.failover_priority.is_empty() {
            self.warn(&format!("{field}.failoverPriority"), NOT_YET);
        }
    }

    fn destination_rule(&mut self, dr: &r::DestinationRule) {
        if dr.host.is_empty() {
            self.error("spec.host", "missing");
        }
        if let Some(p) = &dr.traffic_policy {
            self.policy("spec.trafficPolicy", p);
        }
        let mut seen = Vec::new();
        for (i, s) in dr.subsets.iter().enumerate() {
            if s.name.is_empty() {
                self.error(&format!("spec.subsets[{i}].name"), "missing");
            } else if seen.contains(&&s.name) {
                self.error(
                    &format!("spec.subsets[{i}].name"),
                    format!("subset '{}' is defined twice", s.name),
                );
            }
            seen.push(&s.name);
            if let Some(p) = &s.traffic_policy {
                self.policy(&format!("spec.subsets[{i}].trafficPolicy"), p);
            }
        }
    }

    fn service_entry(&mut self, se: &r::ServiceEntry) {
        if se.hosts.is_empty() {
            self.error("spec.hosts", "a ServiceEntry needs at least one host");
        }
        if se.ports.is_empty() {
            self.error("spec.ports", "a ServiceEntry needs at least one port");
        }
        match se.resolution.as_deref() {
            None | Some("NONE" | "STATIC" | "DNS" | "DNS_ROUND_ROBIN") => {}
            Some(other) => self.error(
                "spec.resolution",
                format!("unknown resolution '{other}' (NONE, STATIC, DNS, DNS_ROUND_ROBIN)"),
            ),
        }
        if se.resolution.as_deref() == Some("STATIC")
            && se.endpoints.is_empty()
            && se.workload_selector.is_none()
        {
            self.warn("spec.endpoints", "STATIC resolution without endpoints or workloadSelector: the service has no endpoints");
        }
        if !se.endpoints.is_empty() && se.workload_selector.is_some() {
            self.error(
                "spec.workloadSelector",
                "endpoints and workloadSelector exclude each other",
            );
        }
        for (i, e) in se.endpoints.iter().enumerate() {
            if e.address.is_empty() {
                self.error(&format!("spec.endpoints[{i}].address"), "missing");
            }
        }
    }

    fn sidecar(&mut self, sc: &r::Sidecar) {
        for (i, e) in sc.egress.iter().enumerate() {
            for (j, h) in e.hosts.iter().enumerate() {
                if !h.contains('/') {
                    self.error(
                        &format!("spec.egress[{i}].hosts[{j}]"),
                        format!("'{h}' must be namespace/host"),
                    );
                }
            }
            if e.port.is_some() || e.bind.is_some() {
                self.warn(
                    &format!("spec.egress[{i}]"),
                    "per-port egress listeners are not supported; the hosts apply to every port",
                );
            }
        }
        if sc.ingress.is_some() {
            self.warn(
                "spec.ingress",
                "not supported; inbound listeners follow the services",
            );
        }
    }
}

/// Findings that need the registry and the other resources, keyed by the resource they keep
/// out. `objects` are the individually valid resources, in load order.
pub fn cross_check(objects: &[Object], registry: &Registry) -> Vec<(Key, Finding)> {
    let mut out = Vec::new();
    // The tracer: a warning, as spans are then not reported while the trace headers still flow.
    for o in objects {
        if let Spec::MeshConfig(m) = &o.spec
            && let Err(p) = crate::translate::tracing::collector(m, registry)
        {
            out.push((
                o.key(),
                Finding::warning(
                    &o.origin,
                    Some(&o.describe()),
                    Some(&p.field),
                    format!("{}; spans are not reported", p.message),
                ),
            ));
        }
    }
    // Subsets each host defines.
    let mut subsets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in objects {
        if let Spec::DestinationRule(dr) = &o.spec {
            let host = fqdn(&dr.host, &o.namespace);
            subsets
                .entry(host.clone())
                .or_default()
                .extend(dr.subsets.iter().map(|s| s.name.clone()));
            if !registry.services.contains_key(&host) && !host.contains('*') {
                out.push((
                    o.key(),
                    Finding::warning(
                        &o.origin,
                        Some(&o.describe()),
                        Some("spec.host"),
                        format!("no service '{host}' in the registry; the rule applies to nothing"),
                    ),
                ));
            }
        }
    }
    let mut routed: BTreeMap<String, String> = BTreeMap::new();
    for o in objects {
        let Spec::VirtualService(vs) = &o.spec else {
            continue;
        };
        let err = |field: String, msg: String| {
            (
                o.key(),
                Finding::error(&o.origin, Some(&o.describe()), Some(&field), msg),
            )
        };
        if !vs.gateways.is_empty() && !vs.gateways.iter().any(|g| g == "mesh") {
            continue;
        }
        let errors_before = out.len();
        let dests = vs.http.iter().enumerate().flat_map(|(i, h)| {
            h.route
                .iter()
                .enumerate()
                .map(move |(j, d)| {
                    (
                        format!("spec.http[{i}].route[{j}].destination"),
                        &d.destination,
                    )
                })
                .chain(
                    h.mirror
                        .iter()
                        .map(move |m| (format!("spec.http[{i}].mirror"), m)),
                )
        });
        let tcp = vs.tcp.iter().enumerate().flat_map(|(i, t)| {
            t.route.iter().enumerate().map(move |(j, d)| {
                (
                    format!("spec.tcp[{i}].route[{j}].destination"),
                    &d.destination,
                )
            })
        });
        for (field, d) in dests.chain(tcp) {
            let host = fqdn(&d.host, &o.namespace);
            let Some(svc) = registry.services.get(&host) else {
                out.push(err(
                    format!("{field}.host"),
                    format!("unknown host '{host}': no Service or ServiceEntry defines it"),
                ));
                continue;
            };
            match &d.port {
                Some(p) if svc.port(p.number).is_none() => out.push(err(
                    format!("{field}.port.number"),
                    format!("service '{host}' has no port {}", p.number),
                )),
                None if svc.ports.len() > 1 => out.push(err(
                    format!("{field}.port"),
                    format!("service '{host}' has several ports; say which one"),
                )),
                _ => {}
            }
            if let Some(s) = &d.subset
                && !subsets.get(&host).is_some_and(|v| v.contains(s))
            {
                out.push(err(
                    format!("{field}.subset"),
                    format!("subset '{s}' of '{host}' is not defined by any DestinationRule"),
                ));
            }
        }
        // Only a VirtualService that is otherwise valid claims its hosts.
        if out.len() == errors_before {
            for (i, h) in vs.hosts.iter().enumerate() {
                let host = fqdn(h, &o.namespace);
                if let Some(first) = routed.get(&host) {
                    out.push(err(format!("spec.hosts[{i}]"), format!("host '{host}' is already routed by VirtualService {first}; only one VirtualService per host is supported")));
                } else {
                    routed.insert(host, format!("{}/{}", o.namespace, o.name));
                }
            }
        }
    }
    out
}
