//! Route configurations (RDS): virtual hosts, route matches and actions.

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
    pub ignored: Vec<Ignored>,
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<Domain>,
    pub routes: Vec<Route>,
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

#[derive(Debug, Clone)]
pub struct Forward {
    pub target: Target,
    /// `None`: no timeout (Envoy's `0s`); an absent field means Envoy's default of 15 s.
    pub timeout: Option<Duration>,
    pub prefix_rewrite: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Action {
    Forward(Forward),
    Redirect {
        host: Option<String>,
        path: Option<String>,
        status: u16,
    },
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
            Ok(Action::Forward(Forward {
                target,
                timeout: match &ra.timeout {
                    None => Some(DEFAULT_ROUTE_TIMEOUT),
                    Some(d) => Some(duration(d, "route.timeout")?).filter(|t| !t.is_zero()),
                },
                prefix_rewrite: Some(ra.prefix_rewrite.clone()).filter(|p| !p.is_empty()),
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
            let path = match &rd.path_rewrite_specifier {
                Some(P::PathRedirect(p)) => Some(p.clone()),
                _ => None,
            };
            Ok(Action::Redirect {
                host: Some(rd.host_redirect.clone()).filter(|h| !h.is_empty()),
                path,
                status,
            })
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
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(VirtualHost {
            name: v.name.clone(),
            domains,
            routes,
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
        Ok(RouteConfig {
            name: rc.name.clone(),
            virtual_hosts,
            ignored,
        })
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
