//! Choosing the virtual host and route of a request (pure).

use crate::config::route::{
    Domain, Forward, HeaderCondition, HeaderMatch, PathMatch, PathRedirect, Redirect, Route,
    RouteConfig, RouteMatch, StringMatch, VirtualHost,
};

/// The parts of a request routing looks at.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// The Host / :authority value, lower-cased.
    pub host: String,
    /// Path without the query string.
    pub path: String,
    pub query: Option<String>,
    /// Header names lower-cased; repeated headers appear once per value.
    pub headers: Vec<(String, String)>,
    pub method: http::Method,
    /// When the request came in.
    pub received: std::time::Instant,
    /// The request body's length, when known (for the byte metrics).
    pub body_length: Option<u64>,
}

impl RequestHead {
    fn header(&self, name: &str) -> Option<String> {
        // Pseudo-headers, as Envoy exposes them to header matchers.
        match name {
            ":authority" => return Some(self.host.clone()),
            ":method" => return Some(self.method.to_string()),
            ":scheme" => return Some("http".into()),
            ":path" => {
                return Some(match &self.query {
                    Some(q) => format!("{}?{q}", self.path),
                    None => self.path.clone(),
                });
            }
            _ => {}
        }
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect();
        // Envoy matches repeated headers as their comma-joined value.
        (!values.is_empty()).then(|| values.join(","))
    }

    fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| v.to_string())
        })
    }
}

/// The virtual host with the longest wildcard domain that `fits` the host (the first one on a
/// tie). `fits` returns the wildcard's length when it matches.
fn longest(rc: &RouteConfig, fits: impl Fn(&Domain) -> Option<usize>) -> Option<&VirtualHost> {
    let mut best: Option<(usize, &VirtualHost)> = None;
    for v in &rc.virtual_hosts {
        if let Some(len) = v.domains.iter().filter_map(&fits).max()
            && best.is_none_or(|(b, _)| len > b)
        {
            best = Some((len, v));
        }
    }
    best.map(|(_, v)| v)
}

/// `host` without its `:port` (IPv6 literals keep their brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map(|i| &host[..=i]).unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Envoy's virtual host search: exact domain, then the longest `*suffix`, then the longest
/// `prefix*`, then `*`.
pub fn virtual_host<'a>(rc: &'a RouteConfig, host: &str) -> Option<&'a VirtualHost> {
    let host = if rc.ignore_port_in_host_matching {
        strip_port(host)
    } else {
        host
    };
    let host: std::borrow::Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    };
    let domains = rc.index.get(&rc.virtual_hosts);
    let found = domains
        .exact
        .get(host.as_ref())
        .copied()
        .map(|i| &rc.virtual_hosts[i]);
    // The longest matching suffix or prefix, searched only when some virtual host has one.
    let affix = |any: bool, fits: &dyn Fn(&Domain) -> Option<usize>| {
        any.then(|| longest(rc, fits)).flatten()
    };
    found
        .or_else(|| {
            affix(domains.any_suffix, &|d| match d {
                Domain::Suffix(s) if host.len() > s.len() && host.ends_with(s.as_str()) => {
                    Some(s.len())
                }
                _ => None,
            })
        })
        .or_else(|| {
            affix(domains.any_prefix, &|d| match d {
                Domain::Prefix(p) if host.len() > p.len() && host.starts_with(p.as_str()) => {
                    Some(p.len())
                }
                _ => None,
            })
        })
        .or_else(|| domains.wildcard.map(|i| &rc.virtual_hosts[i]))
}

fn string_matches(m: &StringMatch, value: &str) -> bool {
    let fold = |s: &str, ic: bool| {
        if ic {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    match m {
        StringMatch::Exact(e, ic) => fold(value, *ic) == fold(e, *ic),
        StringMatch::Prefix(p, ic) => fold(value, *ic).starts_with(&fold(p, *ic)),
        StringMatch::Suffix(p, ic) => fold(value, *ic).ends_with(&fold(p, *ic)),
        StringMatch::Contains(p, ic) => fold(value, *ic).contains(&fold(p, *ic)),
        StringMatch::Regex(r) => r.is_match(value),
    }
}

fn header_matches(h: &HeaderMatch, req: &RequestHead) -> bool {
    let value = req.header(&h.name);
    let matched = match (&h.condition, value.as_deref()) {
        (HeaderCondition::Present(want), v) => v.is_some() == *want,
        (_, None) => false,
        (HeaderCondition::String(m), Some(v)) => string_matches(m, v),
        (HeaderCondition::Range(start, end), Some(v)) => {
            v.parse::<i64>().is_ok_and(|n| n >= *start && n < *end)
        }
    };
    matched != h.invert
}

fn path_matches(m: &RouteMatch, path: &str) -> bool {
    let (p, case) = (path, m.case_sensitive);
    let eq = |a: &str, b: &str| {
        if case {
            a == b
        } else {
            a.eq_ignore_ascii_case(b)
        }
    };
    let starts = |a: &str, b: &str| {
        if case {
            a.starts_with(b)
        } else {
            a.to_ascii_lowercase().starts_with(&b.to_ascii_lowercase())
        }
    };
    match &m.path {
        PathMatch::Prefix(prefix) => starts(p, prefix),
        PathMatch::Exact(exact) => eq(p, exact),
        PathMatch::Regex(r) => r.is_match(p),
        PathMatch::PathSeparatedPrefix(prefix) => {
            starts(p, prefix) && (p.len() == prefix.len() || p.as_bytes()[prefix.len()] == b'/')
        }
        PathMatch::Connect => false,
    }
}

/// The path a forwarded request goes upstream with, when the route rewrites it:
/// `prefix_rewrite` replaces the matched prefix, `regex_rewrite` substitutes the path.
pub fn rewritten_path(f: &Forward, matched: &PathMatch, path: &str) -> Option<String> {
    if let (Some(rewrite), PathMatch::Prefix(prefix) | PathMatch::PathSeparatedPrefix(prefix)) =
        (&f.prefix_rewrite, matched)
    {
        return path
            .strip_prefix(prefix.as_str())
            .map(|rest| format!("{rewrite}{rest}"));
    }
    f.regex_rewrite
        .as_ref()
        .map(|(re, sub)| re.replace_all(path, sub.as_str()).into_owned())
}

/// The `Location` of a redirect (Envoy's `RedirectAction`): scheme, host, port and path
/// replaced as configured; the query kept unless stripped or given by `path_redirect`.
pub fn redirect_location(r: &Redirect, req: &RequestHead, matched: &PathMatch) -> String {
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let mut host = r.host.clone().unwrap_or_else(|| req.host.clone());
    if let Some(port) = r.port {
        host = format!("{}:{port}", strip_port(&host));
    } else if r.scheme.is_some() && r.host.is_none() {
        // A scheme change drops the original (scheme-specific) port.
        host = strip_port(&host).to_string();
    }
    let (path, keep_query) = match &r.path {
        Some(PathRedirect::Path(p)) => (p.clone(), !p.contains('?')),
        Some(PathRedirect::Prefix(p)) => match matched {
            PathMatch::Prefix(prefix) | PathMatch::PathSeparatedPrefix(prefix) => (
                req.path
                    .strip_prefix(prefix.as_str())
                    .map(|rest| format!("{p}{rest}"))
                    .unwrap_or_else(|| req.path.clone()),
                true,
            ),
            _ => (p.clone(), true),
        },
        Some(PathRedirect::Regex(re, sub)) => {
            (re.replace_all(&req.path, sub.as_str()).into_owned(), true)
        }
        None => (req.path.clone(), true),
    };
    let query = match (&req.query, keep_query && !r.strip_query) {
        (Some(q), true) => format!("?{q}"),
        _ => String::new(),
    };
    format!("{scheme}://{host}{path}{query}")
}

/// Whether routing in `vh` reads request headers (header matchers, or a cluster named by a
/// header); pseudo-headers do not count, they come from the request line.
pub fn needs_headers(vh: &VirtualHost) -> bool {
    vh.routes.iter().any(|r| {
        r.matcher.headers.iter().any(|h| !h.name.starts_with(':'))
            || matches!(
                &r.action,
                crate::config::route::Action::Forward(f)
                    if matches!(f.target, crate::config::route::Target::Header(_))
            )
    })
}

/// The first route of `vh` whose match accepts `req`.
pub fn route<'a>(vh: &'a VirtualHost, req: &RequestHead) -> Option<&'a Route> {
    vh.routes.iter().find(|r| {
        let connect = req.method == http::Method::CONNECT;
        let path_ok = match r.matcher.path {
            PathMatch::Connect => connect,
            _ => !connect && path_matches(&r.matcher, &req.path),
        };
        path_ok
            && r.matcher.headers.iter().all(|h| header_matches(h, req))
            && r.matcher
                .query
                .iter()
                .all(|q| match (req.query_param(&q.name), &q.value) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(v), Some(m)) => string_matches(m, &v),
                })
    })
}

#[cfg(test)]
mod tests;
