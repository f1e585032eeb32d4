//! Route configurations (RDS): virtual hosts, route matches and actions.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3 as wire;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use regex::Regex;

use super::{ConfigError, Ignored, duration};

/// Envoy's route timeout when a route sets none.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Match `host:port` as `host` (istiod sets it for sidecars).
    pub ignore_port_in_host_matching: bool,
    /// Header operations for every route of the configuration (applied after the route's and
    /// the virtual host's).
    pub headers: HeaderOps,
    pub ignored: Vec<Ignored>,
    /// The virtual hosts by domain, for the search (built when the configuration is converted,
    /// or on first use for one made in place).
    pub index: DomainIndex,
}

/// Where the virtual host of each exact domain is, and which kinds of domain the virtual hosts
/// have. Istio's outbound route configurations list every service of the mesh, several domains
/// each: a request looks its host up once instead of comparing it with all of them.
#[derive(Debug, Clone, Default)]
pub struct DomainIndex(std::sync::OnceLock<Box<Domains>>);

#[derive(Debug, Clone, Default)]
pub struct Domains {
    /// Exact domain to the first virtual host that names it.
    pub exact: HashMap<String, usize>,
    pub any_suffix: bool,
    pub any_prefix: bool,
    /// The first virtual host with `*`.
    pub wildcard: Option<usize>,
}

impl DomainIndex {
    pub fn get(&self, virtual_hosts: &[VirtualHost]) -> &Domains {
        self.0.get_or_init(|| {
            let mut d = Domains::default();
            for (i, v) in virtual_hosts.iter().enumerate() {
                for domain in &v.domains {
                    match domain {
                        Domain::Any => {
                            d.wildcard.get_or_insert(i);
                        }
                        Domain::Exact(e) => {
                            d.exact.entry(e.clone()).or_insert(i);
                        }
                        Domain::Suffix(_) => d.any_suffix = true,
                        Domain::Prefix(_) => d.any_prefix = true,
                    }
                }
            }
            Box::new(d)
        })
    }
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<Domain>,
    pub routes: Vec<Route>,
    pub headers: HeaderOps,
}

/// How a header value is written (Envoy's `HeaderAppendAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderAction {
    Append,
    AddIfAbsent,
    Overwrite,
    OverwriteIfExists,
}

/// `*_headers_to_add` / `*_headers_to_remove` of a route or virtual host.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub request_add: Vec<(String, String, HeaderAction)>,
    pub request_remove: Vec<String>,
    pub response_add: Vec<(String, String, HeaderAction)>,
    pub response_remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.request_add.is_empty()
            && self.request_remove.is_empty()
            && self.response_add.is_empty()
            && self.response_remove.is_empty()
    }
}

/// A chance, in millionths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chance(pub u32);

impl Chance {
    /// `roll` is uniform in 0..1_000_000.
    pub fn hit(self, roll: u32) -> bool {
        roll < self.0
    }
}

/// Fault injection (`envoy.filters.http.fault` per-route config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub delay: Option<(Duration, Chance)>,
    pub abort: Option<(Abort, Chance)>,
}

/// What an injected abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// An HTTP status (200-599).
    Http(u16),
    /// A gRPC status: HTTP 200 with `grpc-status` (a trailers-only gRPC response).
    Grpc(u32),
}

/// A virtual host domain pattern (lower-cased; Envoy matches hosts case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    Any,
    Exact(String),
    /// `*.example.com` (stored as `.example.com`).
    Suffix(String),
    /// `example.*` (stored as `example.`).
    Prefix(String),
}

impl Domain {
    fn parse(d: &str) -> Result<Domain, ConfigError> {
        let d = d.to_ascii_lowercase();
        Ok(if d == "*" {
            Domain::Any
        } else if let Some(rest) = d.strip_prefix('*') {
            Domain::Suffix(rest.to_string())
        } else if let Some(rest) = d.strip_suffix('*') {
            Domain::Prefix(rest.to_string())
        } else if d.contains('*') {
            return Err(ConfigError::new(
                "domains",
                format!("'{d}': a wildcard must be the first or last character"),
            ));
        } else {
            Domain::Exact(d)
        })
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: Action,
    pub headers: HeaderOps,
    pub fault: Option<Fault>,
    /// `decorator.operation`: the name of the spans of its requests.
    pub operation: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub case_sensitive: bool,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
    /// Matches `/a` and `/a/…`, not `/ab`.
    PathSeparatedPrefix(String),
    /// CONNECT requests.
    Connect,
}

#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String, bool),
    Prefix(String, bool),
    Suffix(String, bool),
    Contains(String, bool),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub enum HeaderCondition {
    String(StringMatch),
    Present(bool),
    /// `[start, end)`.
    Range(i64, i64),
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: String,
    pub invert: bool,
    pub condition: HeaderCondition,
}

#[derive(Debug, Clone)]
pub struct QueryMatch {
    pub name: String,
    /// `None`: the parameter must be present.
    pub value: Option<StringMatch>,
}

#[derive(Debug, Clone)]
pub enum Target {
    Cluster(String),
    /// (cluster, weight).
    Weighted(Vec<(String, u32)>),
    /// The cluster named by a request header.
    Header(String),
}

/// The conditions of Envoy's `retry_on`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx, a reset, a connect failure or a per-try timeout.
    pub server_error: bool,
    /// `gateway-error`: 502, 503, 504, and per-try timeouts.
    pub gateway_error: bool,
    /// `reset`: the upstream reset or closed before answering, or a per-try timeout.
    pub reset: bool,
    pub connect_failure: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    pub refused_stream: bool,
    /// `retriable-status-codes`: the policy's list.
    pub status_codes: bool,
    /// gRPC: `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`.
    pub grpc: [bool; 5],
}

/// A route's retry policy (`route.retry_policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub on: RetryOn,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    /// `previous_hosts`: a retry avoids the hosts already tried.
    pub previous_hosts: bool,
    pub host_selection_max_attempts: u32,
    /// Exponential backoff with full jitter: base and maximum interval.
    pub backoff: (Duration, Duration),
}

/// The gRPC status codes the `grpc` flags of `RetryOn` stand for.
pub const GRPC_RETRY_CODES: [u32; 5] = [1, 4, 13, 8, 14];

impl RetryPolicy {
    fn parse(p: &wire::RetryPolicy, ignored: &mut Vec<String>) -> Result<RetryPolicy, ConfigError> {
        let mut on = RetryOn::default();
        for c in p
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            match c {
                "5xx" => on.server_error = true,
                "gateway-error" => on.gateway_error = true,
                "reset" | "reset-before-request" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-status-codes" => on.status_codes = true,
                "cancelled" => on.grpc[0] = true,
                "deadline-exceeded" => on.grpc[1] = true,
                "internal" => on.grpc[2] = true,
                "resource-exhausted" => on.grpc[3] = true,
                "unavailable" => on.grpc[4] = true,
                other => ignored.push(format!("retry_on condition '{other}'")),
            }
        }
        let base = match &p.retry_back_off {
            Some(b) => match &b.base_interval {
                Some(d) => duration(d, "retry_policy.retry_back_off.base_interval")?,
                None => Duration::from_millis(25),
            },
            None => Duration::from_millis(25),
        };
        let max = match p
            .retry_back_off
            .as_ref()
            .and_then(|b| b.max_interval.as_ref())
        {
            Some(d) => duration(d, "retry_policy.retry_back_off.max_interval")?,
            None => base * 10,
        };
        Ok(RetryPolicy {
            on,
            num_retries: p.num_retries.map(|n| n.value).unwrap_or(1),
            per_try_timeout: match &p.per_try_timeout {
                Some(d) => {
                    Some(duration(d, "retry_policy.per_try_timeout")?).filter(|d| !d.is_zero())
                }
                None => None,
            },
            retriable_status_codes: p
                .retriable_status_codes
                .iter()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
            previous_hosts: p
                .retry_host_predicate
                .iter()
                .any(|h| h.name.contains("previous_hosts")),
            host_selection_max_attempts: u32::try_from(p.host_selection_retry_max_attempts.max(1))
                .unwrap_or(1),
            backoff: (base, max.max(base)),
        })
    }
}

/// `request_mirror_policies[]`: a copy of the request to another cluster, for this share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub cluster: String,
    pub chance: Chance,
}

#[derive(Debug, Clone)]
pub struct Forward {
    pub target: Target,
    /// Fire-and-forget copies (Envoy's shadowing).
    pub mirrors: Vec<Mirror>,
    /// Envoy's retries: `None` when the route has no retry policy.
    pub retry: Option<RetryPolicy>,
    /// `None`: no timeout (Envoy's `0s`); an absent field means Envoy's default of 15 s.
    pub timeout: Option<Duration>,
    /// `max_stream_duration.grpc_timeout_header_max`: the `grpc-timeout` header sets the
    /// timeout, capped by this (`Some(ZERO)`: no cap); `None`: the header is not used.
    pub grpc_timeout_max: Option<Duration>,
    pub prefix_rewrite: Option<String>,
    /// `regex_rewrite`: the path's matches replaced (`\\1` groups as in RE2).
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: Option<String>,
    /// `hash_policy`: what a RING_HASH or MAGLEV cluster hashes to pick the endpoint.
    pub hash_policies: Vec<HashPolicy>,
    /// `idle_timeout`: the route's stream idle timeout, over the connection manager's
    /// (`Some(ZERO)`: disabled for this route).
    pub idle_timeout: Option<Duration>,
}

/// One `route.hash_policy` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashPolicy {
    pub key: HashKey,
    /// A hash from this policy ends the list.
    pub terminal: bool,
}

/// What a hash policy hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header (lower case); several values hash in sorted order.
    Header(String),
    /// A cookie. With `ttl`, a request without it gets one made up and set on the response
    /// (`Set-Cookie` with `Max-Age` and `path`), so that its next requests stick.
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: String,
    },
    /// The downstream peer's IP address.
    SourceIp,
    /// A query parameter (first occurrence).
    QueryParameter(String),
}

fn hash_policies(ra: &wire::RouteAction) -> Result<Vec<HashPolicy>, ConfigError> {
    use wire::route_action::hash_policy::PolicySpecifier as P;
    let mut out = Vec::new();
    for (i, h) in ra.hash_policy.iter().enumerate() {
        let field = || format!("route.hash_policy[{i}]");
        let key = match &h.policy_specifier {
            Some(P::Header(h)) if !h.header_name.is_empty() => {
                HashKey::Header(h.header_name.to_ascii_lowercase())
            }
            Some(P::Header(_)) => return Err(ConfigError::new(field(), "empty header_name")),
            Some(P::Cookie(c)) if !c.name.is_empty() => HashKey::Cookie {
                name: c.name.clone(),
                ttl: c
                    .ttl
                    .as_ref()
                    .map(|d| duration(d, "route.hash_policy.cookie.ttl"))
                    .transpose()?,
                path: c.path.clone(),
            },
            Some(P::Cookie(_)) => return Err(ConfigError::new(field(), "empty cookie name")),
            Some(P::ConnectionProperties(c)) if c.source_ip => HashKey::SourceIp,
            Some(P::QueryParameter(q)) if !q.name.is_empty() => {
                HashKey::QueryParameter(q.name.clone())
            }
            Some(P::QueryParameter(_)) => {
                return Err(ConfigError::new(field(), "empty query parameter name"));
            }
            // Filter state and disabled connection properties never yield a hash in a sidecar.
            Some(P::FilterState(_)) | Some(P::ConnectionProperties(_)) | None => {
                tracing::debug!(policy = i, "hash policy never yields a hash here; ignored");
                continue;
            }
        };
        out.push(HashPolicy {
            key,
            terminal: h.terminal,
        });
    }
    Ok(out)
}

/// Envoy's RE2 substitution (`\\1`) in the regex crate's syntax (`${1}`).
fn substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                out.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

fn regex_substitution(
    m: &matcher::RegexMatchAndSubstitute,
    field: &str,
) -> Result<(Regex, String), ConfigError> {
    let pattern = m
        .pattern
        .as_ref()
        .ok_or_else(|| ConfigError::new(field, "no pattern"))?;
    let re = Regex::new(&pattern.regex)
        .map_err(|e| ConfigError::new(field, format!("invalid regex '{}': {e}", pattern.regex)))?;
    Ok((re, substitution(&m.substitution)))
}

/// How a redirect rewrites the path.
#[derive(Debug, Clone)]
pub enum PathRedirect {
    /// The whole path (and query, if it has one).
    Path(String),
    /// The matched prefix replaced.
    Prefix(String),
    /// A regex substitution of the path (`\\1` groups as in RE2).
    Regex(Regex, String),
}

/// `route.redirect`.
#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRedirect>,
    pub strip_query: bool,
    pub status: u16,
}

// Forwarding is nearly every route: it stays inline (no indirection per request); routes live
// in snapshots built once per configuration, so the size of the other variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    Direct {
        status: u16,
        body: Option<String>,
    },
    /// Used by Istio for routes handled entirely by filters.
    NonForwarding,
}

fn regex(r: &matcher::RegexMatcher, field: &str) -> Result<Regex, ConfigError> {
    // RE2 syntax: whole-string match as Envoy's safe_regex.
    Regex::new(&format!("^(?:{})$", r.regex))
        .map_err(|e| ConfigError::new(field, format!("invalid regex '{}': {e}", r.regex)))
}

fn string_match(m: &matcher::StringMatcher, field: &str) -> Result<StringMatch, ConfigError> {
    use matcher::string_matcher::MatchPattern as P;
    let ic = m.ignore_case;
    Ok(match &m.match_pattern {
        Some(P::Exact(s)) => StringMatch::Exact(s.clone(), ic),
        Some(P::Prefix(s)) => StringMatch::Prefix(s.clone(), ic),
        Some(P::Suffix(s)) => StringMatch::Suffix(s.clone(), ic),
        Some(P::Contains(s)) => StringMatch::Contains(s.clone(), ic),
        Some(P::SafeRegex(r)) => StringMatch::Regex(regex(r, field)?),
        Some(P::Custom(_)) => {
            return Err(ConfigError::new(
                field,
                "custom string matchers are not supported",
            ));
        }
        None => return Err(ConfigError::new(field, "empty string matcher")),
    })
}

// The deprecated specifiers are still what istiod and older control planes send.
#[allow(deprecated)]
fn header_match(h: &wire::HeaderMatcher, field: &str) -> Result<HeaderMatch, ConfigError> {
    use wire::header_matcher::HeaderMatchSpecifier as S;
    let condition = match &h.header_match_specifier {
        Some(S::ExactMatch(s)) => HeaderCondition::String(StringMatch::Exact(s.clone(), false)),
        Some(S::SafeRegexMatch(r)) => HeaderCondition::String(StringMatch::Regex(regex(r, field)?)),
        Some(S::RangeMatch(r)) => HeaderCondition::Range(r.start, r.end),
        Some(S::PresentMatch(p)) => HeaderCondition::Present(*p),
        Some(S::PrefixMatch(s)) => HeaderCondition::String(StringMatch::Prefix(s.clone(), false)),
        Some(S::SuffixMatch(s)) => HeaderCondition::String(StringMatch::Suffix(s.clone(), false)),
        Some(S::ContainsMatch(s)) => {
            HeaderCondition::String(StringMatch::Contains(s.clone(), false))
        }
        Some(S::StringMatch(m)) => HeaderCondition::String(string_match(m, field)?),
        // No specifier: the header must be present.
        None => HeaderCondition::Present(true),
    };
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        invert: h.invert_match,
        condition,
    })
}

impl TryFrom<&wire::RouteMatch> for RouteMatch {
    type Error = ConfigError;
    fn try_from(m: &wire::RouteMatch) -> Result<RouteMatch, ConfigError> {
        use wire::route_match::PathSpecifier as P;
        let path = match &m.path_specifier {
            Some(P::Prefix(p)) => PathMatch::Prefix(p.clone()),
            Some(P::Path(p)) => PathMatch::Exact(p.clone()),
            Some(P::SafeRegex(r)) => PathMatch::Regex(regex(r, "match.safe_regex")?),
            Some(P::ConnectMatcher(_)) => PathMatch::Connect,
            Some(P::PathSeparatedPrefix(p)) => PathMatch::PathSeparatedPrefix(p.clone()),
            Some(P::PathMatchPolicy(_)) => {
                return Err(ConfigError::new("match.path_match_policy", "not supported"));
            }
            None => return Err(ConfigError::new("match", "no path specifier")),
        };
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| header_match(h, &format!("match.headers[{i}]")))
            .collect::<Result<_, _>>()?;
        let query = m
            .query_parameters
            .iter()
            .enumerate()
            .map(|(i, q)| {
                use wire::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
                let value = match &q.query_parameter_match_specifier {
                    Some(Q::StringMatch(s)) => {
                        Some(string_match(s, &format!("match.query_parameters[{i}]"))?)
                    }
                    Some(Q::PresentMatch(_)) | None => None,
                };
                Ok(QueryMatch {
                    name: q.name.clone(),
                    value,
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(RouteMatch {
            path,
            case_sensitive: m.case_sensitive.map(|b| b.value).unwrap_or(true),
            headers,
            query,
        })
    }
}

fn action(r: &wire::Route) -> Result<Action, ConfigError> {
    use wire::route::Action as A;
    match &r.action {
        Some(A::Route(ra)) => {
            use wire::route_action::ClusterSpecifier as C;
            let target = match &ra.cluster_specifier {
                Some(C::Cluster(c)) => Target::Cluster(c.clone()),
                Some(C::ClusterHeader(h)) => Target::Header(h.to_ascii_lowercase()),
                Some(C::WeightedClusters(w)) => {
                    let clusters: Vec<(String, u32)> = w
                        .clusters
                        .iter()
                        .map(|c| (c.name.clone(), c.weight.map(|w| w.value).unwrap_or(0)))
                        .collect();
                    if clusters.iter().map(|(_, w)| u64::from(*w)).sum::<u64>() == 0 {
                        return Err(ConfigError::new(
                            "route.weighted_clusters",
                            "the weights add up to 0",
                        ));
                    }
                    Target::Weighted(clusters)
                }
                Some(_) => {
                    return Err(ConfigError::new(
                        "route.cluster_specifier_plugin",
                        "not supported",
                    ));
                }
                None => return Err(ConfigError::new("route", "no cluster specifier")),
            };
            let mut not_understood = Vec::new();
            let retry = ra
                .retry_policy
                .as_ref()
                .map(|p| RetryPolicy::parse(p, &mut not_understood))
                .transpose()?;
            for n in not_understood {
                tracing::debug!(condition = %n, "retry condition not supported; ignored");
            }
            let mirrors = ra
                .request_mirror_policies
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    if m.cluster.is_empty() {
                        return Err(ConfigError::new(
                            format!("route.request_mirror_policies[{i}]"),
                            "only a named cluster is supported (not cluster_header)",
                        ));
                    }
                    Ok(Mirror {
                        cluster: m.cluster.clone(),
                        chance: chance(
                            m.runtime_fraction
                                .as_ref()
                                .and_then(|f| f.default_value.as_ref()),
                        ),
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(Action::Forward(Forward {
                target,
                mirrors,
                retry,
                timeout: match &ra.timeout {
                    None => Some(DEFAULT_ROUTE_TIMEOUT),
                    Some(d) => Some(duration(d, "route.timeout")?).filter(|t| !t.is_zero()),
                },
                grpc_timeout_max: match ra
                    .max_stream_duration
                    .as_ref()
                    .and_then(|m| m.grpc_timeout_header_max.as_ref())
                {
                    Some(d) => Some(duration(
                        d,
                        "route.max_stream_duration.grpc_timeout_header_max",
                    )?),
                    None => None,
                },
                prefix_rewrite: Some(ra.prefix_rewrite.clone()).filter(|p| !p.is_empty()),
                regex_rewrite: ra
                    .regex_rewrite
                    .as_ref()
                    .map(|r| regex_substitution(r, "route.regex_rewrite"))
                    .transpose()?,
                host_rewrite: match &ra.host_rewrite_specifier {
                    Some(wire::route_action::HostRewriteSpecifier::HostRewriteLiteral(h)) => {
                        Some(h.clone())
                    }
                    _ => None,
                },
                hash_policies: hash_policies(ra)?,
                idle_timeout: ra
                    .idle_timeout
                    .as_ref()
                    .map(|d| duration(d, "route.idle_timeout"))
                    .transpose()?,
            }))
        }
        Some(A::Redirect(rd)) => {
            use wire::redirect_action::PathRewriteSpecifier as P;
            let status =
                match wire::redirect_action::RedirectResponseCode::try_from(rd.response_code) {
                    Ok(wire::redirect_action::RedirectResponseCode::MovedPermanently) => 301,
                    Ok(wire::redirect_action::RedirectResponseCode::Found) => 302,
                    Ok(wire::redirect_action::RedirectResponseCode::SeeOther) => 303,
                    Ok(wire::redirect_action::RedirectResponseCode::TemporaryRedirect) => 307,
                    Ok(wire::redirect_action::RedirectResponseCode::PermanentRedirect) => 308,
                    Err(_) => {
                        return Err(ConfigError::new(
                            "redirect.response_code",
                            format!("unknown code {}", rd.response_code),
                        ));
                    }
                };
            use wire::redirect_action::SchemeRewriteSpecifier as S;
            let path = match &rd.path_rewrite_specifier {
                Some(P::PathRedirect(p)) => Some(PathRedirect::Path(p.clone())),
                Some(P::PrefixRewrite(p)) => Some(PathRedirect::Prefix(p.clone())),
                Some(P::RegexRewrite(r)) => {
                    let (re, sub) = regex_substitution(r, "redirect.regex_rewrite")?;
                    Some(PathRedirect::Regex(re, sub))
                }
                Some(P::PathRewrite(_)) => {
                    return Err(ConfigError::new(
                        "redirect.path_rewrite",
                        "path template rewrites are not supported",
                    ));
                }
                None => None,
            };
            Ok(Action::Redirect(Redirect {
                scheme: match &rd.scheme_rewrite_specifier {
                    Some(S::HttpsRedirect(true)) => Some("https".into()),
                    Some(S::SchemeRedirect(s)) if !s.is_empty() => Some(s.clone()),
                    _ => None,
                },
                host: Some(rd.host_redirect.clone()).filter(|h| !h.is_empty()),
                port: u16::try_from(rd.port_redirect).ok().filter(|p| *p != 0),
                path,
                strip_query: rd.strip_query,
                status,
            }))
        }
        Some(A::DirectResponse(d)) => {
            let status = u16::try_from(d.status)
                .ok()
                .filter(|s| (100..600).contains(s))
                .ok_or_else(|| {
                    ConfigError::new(
                        "direct_response.status",
                        format!("{} is not an HTTP status", d.status),
                    )
                })?;
            use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as S;
            let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                Some(S::InlineString(s)) => Some(s.clone()),
                Some(S::InlineBytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            };
            Ok(Action::Direct { status, body })
        }
        Some(A::NonForwardingAction(_)) => Ok(Action::NonForwarding),
        Some(A::FilterAction(_)) => Err(ConfigError::new("filter_action", "not supported")),
        None => Err(ConfigError::new("action", "missing")),
    }
}

fn header_adds(
    opts: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption],
    field: &str,
) -> Result<Vec<(String, String, HeaderAction)>, ConfigError> {
    use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction as A;
    opts.iter()
        .enumerate()
        .map(|(i, o)| {
            let h = o
                .header
                .as_ref()
                .ok_or_else(|| ConfigError::new(format!("{field}[{i}].header"), "missing"))?;
            let value = if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            };
            #[allow(deprecated)]
            let action = match (o.append, A::try_from(o.append_action)) {
                (Some(b), _) if b.value => HeaderAction::Append,
                (Some(_), _) => HeaderAction::Overwrite,
                (None, Ok(A::AppendIfExistsOrAdd)) => HeaderAction::Append,
                (None, Ok(A::AddIfAbsent)) => HeaderAction::AddIfAbsent,
                (None, Ok(A::OverwriteIfExistsOrAdd)) => HeaderAction::Overwrite,
                (None, Ok(A::OverwriteIfExists)) => HeaderAction::OverwriteIfExists,
                (None, Err(_)) => {
                    return Err(ConfigError::new(
                        format!("{field}[{i}].append_action"),
                        format!("unknown action {}", o.append_action),
                    ));
                }
            };
            if http::HeaderName::from_bytes(h.key.as_bytes()).is_err() {
                return Err(ConfigError::new(
                    format!("{field}[{i}].header.key"),
                    format!("'{}' is not a header name", h.key),
                ));
            }
            Ok((h.key.to_ascii_lowercase(), value, action))
        })
        .collect()
}

fn header_ops(
    req_add: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption],
    req_remove: &[String],
    resp_add: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption],
    resp_remove: &[String],
) -> Result<HeaderOps, ConfigError> {
    Ok(HeaderOps {
        request_add: header_adds(req_add, "request_headers_to_add")?,
        request_remove: req_remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
        response_add: header_adds(resp_add, "response_headers_to_add")?,
        response_remove: resp_remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    })
}

fn chance(p: Option<&envoy_types::pb::envoy::r#type::v3::FractionalPercent>) -> Chance {
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType as D;
    // Envoy: an absent percentage means every request.
    let Some(p) = p else {
        return Chance(1_000_000);
    };
    let scale = match D::try_from(p.denominator) {
        Ok(D::Hundred) => 10_000,
        Ok(D::TenThousand) => 100,
        _ => 1,
    };
    Chance(p.numerator.saturating_mul(scale).min(1_000_000))
}

/// The per-route `HTTPFault`.
fn fault(any: &envoy_types::pb::google::protobuf::Any) -> Result<Option<Fault>, ConfigError> {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier as D;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
        HttpFault, fault_abort::ErrorType as E,
    };
    let field = "typed_per_filter_config[envoy.filters.http.fault]";
    let f = <HttpFault as prost::Message>::decode(any.value.as_slice())
        .map_err(|e| ConfigError::new(field, format!("cannot decode HTTPFault: {e}")))?;
    let delay = match &f.delay {
        None => None,
        Some(d) => match &d.fault_delay_secifier {
            Some(D::FixedDelay(t)) => Some((
                duration(t, &format!("{field}.delay.fixed_delay"))?,
                chance(d.percentage.as_ref()),
            )),
            _ => {
                return Err(ConfigError::new(
                    format!("{field}.delay"),
                    "only fixed delays are supported",
                ));
            }
        },
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => match a.error_type {
            Some(E::HttpStatus(s)) if (200..600).contains(&s) => {
                Some((Abort::Http(s as u16), chance(a.percentage.as_ref())))
            }
            Some(E::GrpcStatus(s)) if s <= 16 => {
                Some((Abort::Grpc(s), chance(a.percentage.as_ref())))
            }
            _ => {
                return Err(ConfigError::new(
                    format!("{field}.abort"),
                    "only HTTP status (200-599) and gRPC status (0-16) aborts are supported",
                ));
            }
        },
    };
    Ok(Some(Fault { delay, abort }).filter(|f| f.delay.is_some() || f.abort.is_some()))
}

impl TryFrom<&wire::VirtualHost> for VirtualHost {
    type Error = ConfigError;
    fn try_from(v: &wire::VirtualHost) -> Result<VirtualHost, ConfigError> {
        let domains = v
            .domains
            .iter()
            .map(|d| Domain::parse(d))
            .collect::<Result<_, _>>()?;
        let routes = v
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let name = if r.name.is_empty() {
                    format!("routes[{i}]")
                } else {
                    format!("routes[{i}]({})", r.name)
                };
                let matcher = r
                    .r#match
                    .as_ref()
                    .ok_or_else(|| ConfigError::new("match", "missing"))?;
                Ok(Route {
                    name: r.name.clone(),
                    matcher: matcher.try_into().map_err(|e: ConfigError| e.at(&name))?,
                    action: action(r).map_err(|e| e.at(&name))?,
                    headers: header_ops(
                        &r.request_headers_to_add,
                        &r.request_headers_to_remove,
                        &r.response_headers_to_add,
                        &r.response_headers_to_remove,
                    )
                    .map_err(|e| e.at(&name))?,
                    fault: match r.typed_per_filter_config.get("envoy.filters.http.fault") {
                        Some(any) => fault(any).map_err(|e| e.at(&name))?,
                        None => None,
                    },
                    operation: r
                        .decorator
                        .as_ref()
                        .map(|d| d.operation.clone())
                        .filter(|o| !o.is_empty()),
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(VirtualHost {
            name: v.name.clone(),
            domains,
            routes,
            headers: header_ops(
                &v.request_headers_to_add,
                &v.request_headers_to_remove,
                &v.response_headers_to_add,
                &v.response_headers_to_remove,
            )?,
        })
    }
}

impl TryFrom<&wire::RouteConfiguration> for RouteConfig {
    type Error = ConfigError;
    fn try_from(rc: &wire::RouteConfiguration) -> Result<RouteConfig, ConfigError> {
        let virtual_hosts = rc
            .virtual_hosts
            .iter()
            .enumerate()
            .map(|(i, v)| {
                VirtualHost::try_from(v)
                    .map_err(|e| e.at(format!("virtual_hosts[{i}]({})", v.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut ignored = Vec::new();
        if rc.vhds.is_some() {
            ignored.push(Ignored {
                what: "vhds".into(),
                reason: "on-demand virtual hosts are not supported; the inline ones are used",
            });
        }
        let converted = RouteConfig {
            name: rc.name.clone(),
            virtual_hosts,
            ignore_port_in_host_matching: rc.ignore_port_in_host_matching,
            headers: header_ops(
                &rc.request_headers_to_add,
                &rc.request_headers_to_remove,
                &rc.response_headers_to_add,
                &rc.response_headers_to_remove,
            )?,
            ignored,
            index: DomainIndex::default(),
        };
        // Built here, with the configuration, rather than by its first request.
        converted.index.get(&converted.virtual_hosts);
        Ok(converted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_parse_like_envoy() {
        assert_eq!(Domain::parse("*").unwrap(), Domain::Any);
        assert_eq!(
            Domain::parse("Reviews.Default.svc.cluster.local").unwrap(),
            Domain::Exact("reviews.default.svc.cluster.local".into())
        );
        assert_eq!(
            Domain::parse("*.example.com").unwrap(),
            Domain::Suffix(".example.com".into())
        );
        assert_eq!(
            Domain::parse("reviews:*").unwrap(),
            Domain::Prefix("reviews:".into())
        );
        assert!(Domain::parse("a*b").is_err());
    }

    #[test]
    fn re2_substitutions_become_regex_crate_ones() {
        assert_eq!(substitution("/v2/\\1/\\2"), "/v2/${1}/${2}");
        assert_eq!(substitution("cost $5"), "cost $$5");
    }

    #[test]
    fn regexes_match_the_whole_path() {
        let r = regex(
            &matcher::RegexMatcher {
                regex: "/api/v[0-9]+".into(),
                ..Default::default()
            },
            "f",
        )
        .unwrap();
        assert!(r.is_match("/api/v2"));
        assert!(
            !r.is_match("/api/v2/users"),
            "safe_regex matches the whole value"
        );
    }
}
