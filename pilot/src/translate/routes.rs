//! RDS: one route configuration per outbound HTTP port (named by the port), a virtual host per
//! service on that port with istiod's domains, and the VirtualService routes translated as
//! `route/route.go` translates them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::envoy::r#type::v3 as types;
use envoy_types::pb::google::protobuf::Any;

use super::wire::{self, istio_metadata, string_value};
use super::{Ctx, PASSTHROUGH, outbound_name};
use crate::load::Object;
use crate::registry::{DOMAIN_SUFFIX, Service, fqdn};
use crate::resources::{self as r, HeaderMatch, StringMatch};

/// The domains of `svc` as seen from a proxy in `proxy_ns` (`generateVirtualHostDomains`).
pub fn domains(svc: &Service, proxy_ns: &str) -> Vec<String> {
    let mut out = vec![svc.hostname.clone()];
    if let Some(short) = svc
        .hostname
        .strip_suffix(&format!(".{}.{DOMAIN_SUFFIX}", svc.namespace))
    {
        if svc.namespace == proxy_ns {
            out.push(short.to_string());
        }
        out.push(format!("{short}.{}", svc.namespace));
        out.push(format!("{short}.{}.svc", svc.namespace));
    }
    out.extend(svc.vips.iter().cloned());
    out
}

fn string_matcher(m: &StringMatch, ignore_case: bool) -> matcher::StringMatcher {
    use matcher::string_matcher::MatchPattern as P;
    let pattern = match m {
        StringMatch::Exact(s) => P::Exact(s.clone()),
        StringMatch::Prefix(s) => P::Prefix(s.clone()),
        StringMatch::Regex(s) => P::SafeRegex(matcher::RegexMatcher {
            regex: s.clone(),
            ..Default::default()
        }),
    };
    matcher::StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

fn header_matcher(name: &str, m: &HeaderMatch, invert: bool) -> route::HeaderMatcher {
    use route::header_matcher::HeaderMatchSpecifier as H;
    let spec = match m {
        HeaderMatch::String(s) => H::StringMatch(string_matcher(s, false)),
        HeaderMatch::Present(_) => H::PresentMatch(true),
    };
    route::HeaderMatcher {
        name: name.to_ascii_lowercase(),
        header_match_specifier: Some(spec),
        invert_match: invert,
        ..Default::default()
    }
}

/// `TranslateRouteMatch`.
fn route_match(m: Option<&r::HttpMatch>) -> route::RouteMatch {
    use route::route_match::PathSpecifier as P;
    let Some(m) = m else {
        return route::RouteMatch {
            path_specifier: Some(P::Prefix("/".into())),
            ..Default::default()
        };
    };
    let path = match &m.uri {
        None => P::Prefix("/".into()),
        Some(StringMatch::Exact(p)) => P::Path(p.clone()),
        Some(StringMatch::Prefix(p)) => P::Prefix(p.clone()),
        Some(StringMatch::Regex(re)) => P::SafeRegex(matcher::RegexMatcher {
            regex: re.clone(),
            ..Default::default()
        }),
    };
    let mut headers: Vec<route::HeaderMatcher> = m
        .headers
        .iter()
        .map(|(k, v)| header_matcher(k, v, false))
        .collect();
    headers.extend(
        m.without_headers
            .iter()
            .map(|(k, v)| header_matcher(k, v, true)),
    );
    for (name, sm) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(sm) = sm {
            headers.push(header_matcher(
                name,
                &HeaderMatch::String(sm.clone()),
                false,
            ));
        }
    }
    let query_parameters = m
        .query_params
        .iter()
        .map(|(k, v)| {
            use route::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
            let spec = match v {
                HeaderMatch::String(s) => Q::StringMatch(string_matcher(s, false)),
                HeaderMatch::Present(_) => Q::PresentMatch(true),
            };
            route::QueryParameterMatcher {
                name: k.clone(),
                query_parameter_match_specifier: Some(spec),
            }
        })
        .collect();
    route::RouteMatch {
        path_specifier: Some(path),
        case_sensitive: if m.ignore_uri_case {
            wire::bool_value(false)
        } else {
            None
        },
        headers,
        query_parameters,
        ..Default::default()
    }
}

fn header_options(ops: &r::HeaderOperations) -> Vec<core::HeaderValueOption> {
    use core::header_value_option::HeaderAppendAction as A;
    let one = |k: &String, v: &String, action: A| core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: k.to_ascii_lowercase(),
            value: v.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    ops.set
        .iter()
        .map(|(k, v)| one(k, v, A::OverwriteIfExistsOrAdd))
        .chain(
            ops.add
                .iter()
                .map(|(k, v)| one(k, v, A::AppendIfExistsOrAdd)),
        )
        .collect()
}

fn apply_headers(rt: &mut route::Route, h: &r::Headers) {
    if let Some(req) = &h.request {
        rt.request_headers_to_add.extend(header_options(req));
        rt.request_headers_to_remove
            .extend(req.remove.iter().map(|s| s.to_ascii_lowercase()));
    }
    if let Some(resp) = &h.response {
        rt.response_headers_to_add.extend(header_options(resp));
        rt.response_headers_to_remove
            .extend(resp.remove.iter().map(|s| s.to_ascii_lowercase()));
    }
}

/// Istio percentages become millionths.
fn fraction(p: Option<r::Percent>, legacy: Option<i64>) -> types::FractionalPercent {
    let (numerator, denominator) = match (p, legacy) {
        (Some(p), _) => (
            (p.value * 10_000.0).round() as u32,
            types::fractional_percent::DenominatorType::Million,
        ),
        (None, Some(n)) => (
            n.clamp(0, 100) as u32,
            types::fractional_percent::DenominatorType::Hundred,
        ),
        // Unset: every request.
        (None, None) => (100, types::fractional_percent::DenominatorType::Hundred),
    };
    types::FractionalPercent {
        numerator,
        denominator: denominator as i32,
    }
}

/// `TranslateFault`.
fn fault_config(f: &r::HttpFault) -> fault::HttpFault {
    let delay = f.delay.as_ref().and_then(|d| {
        let fixed = crate::duration::parse(d.fixed_delay.as_deref()?).ok()?;
        Some(common_fault::FaultDelay {
            fault_delay_secifier: Some(common_fault::fault_delay::FaultDelaySecifier::FixedDelay(
                wire::duration(fixed),
            )),
            percentage: Some(fraction(d.percentage, d.percent)),
        })
    });
    let abort = f.abort.as_ref().and_then(|a| {
        let error_type = match (a.http_status, a.grpc_status.as_deref()) {
            (Some(s), _) => fault::fault_abort::ErrorType::HttpStatus(u32::try_from(s).ok()?),
            (None, Some(g)) => {
                fault::fault_abort::ErrorType::GrpcStatus(crate::resources::grpc_code(g)?)
            }
            (None, None) => return None,
        };
        Some(fault::FaultAbort {
            error_type: Some(error_type),
            percentage: Some(fraction(a.percentage, None)),
            ..Default::default()
        })
    });
    fault::HttpFault {
        delay,
        abort,
        ..Default::default()
    }
}

/// `retry.DefaultPolicy`, or the VirtualService's (`ConvertPolicy`); `attempts: 0` is none.
fn retry_policy(retries: Option<&r::HttpRetry>) -> Option<route::RetryPolicy> {
    let mut p = route::RetryPolicy {
        retry_on: "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
            .into(),
        num_retries: wire::u32_value(2),
        retry_host_predicate: vec![route::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(
                route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(wire::pack(
                    &PreviousHostsPredicate {},
                )),
            ),
        }],
        host_selection_retry_max_attempts: 5,
        retriable_status_codes: vec![503],
        ..Default::default()
    };
    let Some(r) = retries else { return Some(p) };
    if r.attempts <= 0 {
        return None;
    }
    p.num_retries = wire::u32_value(r.attempts as u32);
    if let Some(on) = &r.retry_on {
        let (codes, policies): (Vec<&str>, Vec<&str>) = on
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .partition(|s| s.parse::<u32>().is_ok());
        p.retriable_status_codes = codes.iter().filter_map(|c| c.parse().ok()).collect();
        let mut policies: Vec<&str> = policies;
        if !p.retriable_status_codes.is_empty() && !policies.contains(&"retriable-status-codes") {
            policies.push("retriable-status-codes");
        }
        p.retry_on = policies.join(",");
    }
    if let Some(t) = r
        .per_try_timeout
        .as_deref()
        .and_then(|d| crate::duration::parse(d).ok())
    {
        p.per_try_timeout = Some(wire::duration(t));
    }
    Some(p)
}

/// The port a destination means: its own, or the service's only one.
fn destination_cluster(ctx: &Ctx, d: &r::Destination, vs_ns: &str) -> String {
    let host = fqdn(&d.host, vs_ns);
    let port = d
        .port
        .as_ref()
        .map(|p| p.number)
        .or_else(|| {
            ctx.mesh
                .registry
                .services
                .get(&host)
                .and_then(|s| s.ports.first())
                .map(|p| p.port)
        })
        .unwrap_or(0);
    outbound_name(port, d.subset.as_deref().unwrap_or(""), &host)
}

/// Istio's `ConsistentHashToHashPolicy`: the route hash policy of the DestinationRule load
/// balancer that applies to `host` (and `subset`, whose policy wins over the top-level one).
fn hash_policy(ctx: &Ctx, host: &str, subset: &str) -> Option<route::route_action::HashPolicy> {
    use route::route_action::hash_policy::{self as hp, PolicySpecifier as P};
    let dr = ctx.destination_rules.get(host)?;
    let from_subset = dr
        .subsets
        .iter()
        .find(|s| !subset.is_empty() && s.name == subset)
        .and_then(|s| s.traffic_policy.as_ref())
        .and_then(|p| p.load_balancer.as_ref());
    let lb = from_subset.or(dr
        .traffic_policy
        .as_ref()
        .and_then(|p| p.load_balancer.as_ref()))?;
    let ch = lb.consistent_hash.as_ref()?;
    let spec = if let Some(h) = &ch.http_header_name {
        P::Header(hp::Header {
            header_name: h.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &ch.http_cookie {
        P::Cookie(hp::Cookie {
            name: c.name.clone(),
            path: c.path.clone().unwrap_or_default(),
            ttl: c
                .ttl
                .as_deref()
                .and_then(|t| crate::duration::parse(t).ok())
                .map(wire::duration),
            ..Default::default()
        })
    } else if ch.use_source_ip == Some(true) {
        P::ConnectionProperties(hp::ConnectionProperties { source_ip: true })
    } else if let Some(q) = &ch.http_query_parameter_name {
        P::QueryParameter(hp::QueryParameter { name: q.clone() })
    } else {
        return None;
    };
    Some(route::route_action::HashPolicy {
        policy_specifier: Some(spec),
        terminal: false,
    })
}

/// The hash policy of a route to `destinations`: the destinations' DestinationRule hash policy
/// when they all have the same one (Envoy has one list per route, not per weighted cluster).
fn route_hash_policy<'d>(
    ctx: &Ctx,
    destinations: impl Iterator<Item = &'d r::Destination>,
    vs_ns: &str,
) -> Vec<route::route_action::HashPolicy> {
    let policies: Vec<Option<route::route_action::HashPolicy>> = destinations
        .map(|d| {
            hash_policy(
                ctx,
                &fqdn(&d.host, vs_ns),
                d.subset.as_deref().unwrap_or(""),
            )
        })
        .collect();
    match policies.first() {
        Some(Some(first)) if policies.iter().all(|p| p.as_ref() == Some(first)) => {
            vec![first.clone()]
        }
        _ => Vec::new(),
    }
}

fn with_common(ra: &mut route::RouteAction, timeout: Option<&str>) {
    let t = timeout
        .and_then(|t| crate::duration::parse(t).ok())
        .unwrap_or(Duration::ZERO);
    ra.timeout = Some(wire::duration(t));
    ra.max_stream_duration = Some(route::route_action::MaxStreamDuration {
        grpc_timeout_header_max: Some(wire::duration(Duration::ZERO)),
        ..Default::default()
    });
}

/// One Envoy route per match of each http route that applies to `port`.
fn virtual_service_routes(
    ctx: &Ctx,
    o: &Object,
    vs: &r::VirtualService,
    svc: &Service,
    port: u32,
) -> Vec<route::Route> {
    let mut out = Vec::new();
    let config = format!(
        "/apis/networking.istio.io/v1/namespaces/{}/virtual-service/{}",
        o.namespace, o.name
    );
    for h in vs.http.iter().filter(|h| h.delegate.is_none()) {
        let matches: Vec<Option<&r::HttpMatch>> = if h.matches.is_empty() {
            vec![None]
        } else {
            h.matches
                .iter()
                .filter(|m| m.port.is_none_or(|p| p == port))
                .map(Some)
                .collect()
        };
        for m in matches {
            let mut rt = route::Route {
                name: m
                    .map(|m| m.name.as_str())
                    .filter(|n| !n.is_empty())
                    .unwrap_or(&h.name)
                    .to_string(),
                r#match: Some(route_match(m)),
                metadata: Some(istio_metadata(&[("config", string_value(&config))])),
                decorator: Some(route::Decorator {
                    operation: format!("{}:{port}/*", svc.hostname),
                    ..Default::default()
                }),
                ..Default::default()
            };
            if let Some(rd) = &h.redirect {
                use route::redirect_action::{
                    PathRewriteSpecifier as P, RedirectResponseCode as C,
                    SchemeRewriteSpecifier as S,
                };
                let code = match rd.redirect_code.unwrap_or(301) {
                    302 => C::Found,
                    303 => C::SeeOther,
                    307 => C::TemporaryRedirect,
                    308 => C::PermanentRedirect,
                    _ => C::MovedPermanently,
                };
                rt.action = Some(route::route::Action::Redirect(route::RedirectAction {
                    host_redirect: rd.authority.clone().unwrap_or_default(),
                    port_redirect: rd.port.unwrap_or(0),
                    response_code: code as i32,
                    scheme_rewrite_specifier: rd.scheme.clone().map(S::SchemeRedirect),
                    path_rewrite_specifier: rd.uri.clone().map(P::PathRedirect),
                    ..Default::default()
                }));
            } else if let Some(d) = &h.direct_response {
                use core::data_source::Specifier as D;
                let body = d.body.as_ref().and_then(|b| {
                    b.string
                        .clone()
                        .map(D::InlineString)
                        .or_else(|| b.bytes.clone().map(|s| D::InlineBytes(s.into_bytes())))
                });
                rt.action = Some(route::route::Action::DirectResponse(
                    route::DirectResponseAction {
                        status: d.status,
                        body: body.map(|s| core::DataSource {
                            specifier: Some(s),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ));
            } else {
                use route::route_action::ClusterSpecifier as C;
                let spec = match h.route.as_slice() {
                    [one] => C::Cluster(destination_cluster(ctx, &one.destination, &o.namespace)),
                    many => C::WeightedClusters(route::WeightedCluster {
                        clusters: many
                            .iter()
                            .filter(|d| d.weight.unwrap_or(0) > 0)
                            .map(|d| {
                                let mut cw = route::weighted_cluster::ClusterWeight {
                                    name: destination_cluster(ctx, &d.destination, &o.namespace),
                                    weight: wire::u32_value(d.weight.unwrap_or(0) as u32),
                                    ..Default::default()
                                };
                                if let Some(hs) = &d.headers {
                                    if let Some(req) = &hs.request {
                                        cw.request_headers_to_add = header_options(req);
                                        cw.request_headers_to_remove = req.remove.clone();
                                    }
                                    if let Some(resp) = &hs.response {
                                        cw.response_headers_to_add = header_options(resp);
                                        cw.response_headers_to_remove = resp.remove.clone();
                                    }
                                }
                                cw
                            })
                            .collect(),
                        ..Default::default()
                    }),
                };
                let mut ra = route::RouteAction {
                    cluster_specifier: Some(spec),
                    retry_policy: retry_policy(h.retries.as_ref()),
                    hash_policy: route_hash_policy(
                        ctx,
                        h.route
                            .iter()
                            .filter(|d| h.route.len() == 1 || d.weight.unwrap_or(0) > 0)
                            .map(|d| &d.destination),
                        &o.namespace,
                    ),
                    ..Default::default()
                };
                with_common(&mut ra, h.timeout.as_deref());
                if let Some(rw) = &h.rewrite {
                    if let Some(uri) = &rw.uri {
                        ra.prefix_rewrite = uri.clone();
                    }
                    if let Some(a) = &rw.authority {
                        ra.host_rewrite_specifier = Some(
                            route::route_action::HostRewriteSpecifier::HostRewriteLiteral(
                                a.clone(),
                            ),
                        );
                    }
                    if let Some(rr) = &rw.uri_regex_rewrite {
                        ra.regex_rewrite = Some(matcher::RegexMatchAndSubstitute {
                            pattern: Some(matcher::RegexMatcher {
                                regex: rr.pattern.clone(),
                                ..Default::default()
                            }),
                            substitution: rr.rewrite.clone(),
                        });
                    }
                }
                if let Some(m) = &h.mirror {
                    ra.request_mirror_policies
                        .push(route::route_action::RequestMirrorPolicy {
                            cluster: destination_cluster(ctx, m, &o.namespace),
                            runtime_fraction: Some(core::RuntimeFractionalPercent {
                                default_value: Some(fraction(
                                    h.mirror_percentage.or(Some(r::Percent { value: 100.0 })),
                                    None,
                                )),
                                ..Default::default()
                            }),
                            ..Default::default()
                        });
                }
                // A single destination's header operations apply to the route.
                if let [one] = h.route.as_slice()
                    && let Some(hs) = &one.headers
                {
                    apply_headers(&mut rt, hs);
                }
                rt.action = Some(route::route::Action::Route(ra));
            }
            if let Some(hs) = &h.headers {
                apply_headers(&mut rt, hs);
            }
            if let Some(f) = &h.fault {
                rt.typed_per_filter_config.insert(
                    "envoy.filters.http.fault".into(),
                    wire::pack(&fault_config(f)),
                );
            }
            out.push(rt);
        }
    }
    out
}

fn default_route(ctx: &Ctx, svc: &Service, port: u32) -> route::Route {
    let mut rt = route::Route {
        name: "default".into(),
        r#match: Some(route_match(None)),
        decorator: Some(route::Decorator {
            operation: format!("{}:{port}/*", svc.hostname),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut ra = route::RouteAction {
        cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
            outbound_name(port, "", &svc.hostname),
        )),
        retry_policy: retry_policy(None),
        hash_policy: hash_policy(ctx, &svc.hostname, "").into_iter().collect(),
        ..Default::default()
    };
    with_common(&mut ra, None);
    rt.action = Some(route::route::Action::Route(ra));
    rt
}

/// The last virtual host: `allow_any` to PassthroughCluster, or `block_all` with a 502.
fn catch_all(allow_any: bool) -> route::VirtualHost {
    let (name, action) = if allow_any {
        let mut ra = route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                PASSTHROUGH.into(),
            )),
            ..Default::default()
        };
        with_common(&mut ra, None);
        ("allow_any", route::route::Action::Route(ra))
    } else {
        (
            "block_all",
            route::route::Action::DirectResponse(route::DirectResponseAction {
                status: 502,
                ..Default::default()
            }),
        )
    };
    route::VirtualHost {
        name: name.into(),
        domains: vec!["*".into()],
        routes: vec![route::Route {
            name: name.into(),
            r#match: Some(route_match(None)),
            action: Some(action),
            ..Default::default()
        }],
        ..Default::default()
    }
}

pub fn route_config(ctx: &Ctx, port: u32) -> route::RouteConfiguration {
    let mut virtual_hosts = Vec::new();
    for svc in ctx
        .services
        .iter()
        .filter(|s| s.port(port).is_some_and(|p| p.protocol.is_http()))
    {
        let routes = match ctx.virtual_services.get(&svc.hostname) {
            Some((o, vs)) if !vs.http.is_empty() => virtual_service_routes(ctx, o, vs, svc, port),
            _ => vec![default_route(ctx, svc, port)],
        };
        virtual_hosts.push(route::VirtualHost {
            name: format!("{}:{port}", svc.hostname),
            domains: domains(svc, &ctx.proxy.namespace),
            routes,
            ..Default::default()
        });
    }
    virtual_hosts.push(catch_all(ctx.allow_any));
    route::RouteConfiguration {
        name: port.to_string(),
        virtual_hosts,
        validate_clusters: wire::bool_value(false),
        ignore_port_in_host_matching: true,
        max_direct_response_body_size_bytes: wire::u32_value(1 << 20),
        ..Default::default()
    }
}

/// The outbound HTTP ports of the visible services.
pub fn http_ports(ctx: &Ctx) -> BTreeSet<u32> {
    ctx.services
        .iter()
        .flat_map(|s| s.ports.iter())
        .filter(|p| p.protocol.is_http())
        .map(|p| p.port)
        .collect()
}

pub fn build(ctx: &Ctx) -> BTreeMap<String, Any> {
    http_ports(ctx)
        .into_iter()
        .map(|p| (p.to_string(), wire::pack(&route_config(ctx, p))))
        .collect()
}
