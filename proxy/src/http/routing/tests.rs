use super::*;
use crate::config::route::{Action, Forward, QueryMatch, Target};

fn vh(name: &str, domains: &[&str], routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: name.into(),
        domains: domains
            .iter()
            .map(|d| match *d {
                "*" => Domain::Any,
                d if d.starts_with('*') => Domain::Suffix(d[1..].into()),
                d if d.ends_with('*') => Domain::Prefix(d[..d.len() - 1].into()),
                d => Domain::Exact(d.into()),
            })
            .collect(),
        routes,
        headers: Default::default(),
    }
}

fn r(name: &str, path: PathMatch, headers: Vec<HeaderMatch>, query: Vec<QueryMatch>) -> Route {
    Route {
        name: name.into(),
        matcher: RouteMatch {
            path,
            case_sensitive: true,
            headers,
            query,
        },
        action: Action::Forward(Forward {
            target: Target::Cluster(name.into()),
            retry: None,
            mirrors: vec![],
            timeout: None,
            grpc_timeout_max: None,
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: None,
            hash_policies: vec![],
            idle_timeout: None,
        }),
        headers: Default::default(),
        fault: None,
        operation: None,
    }
}

fn req(host: &str, path: &str, headers: &[(&str, &str)]) -> RequestHead {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path.to_string(), None),
    };
    RequestHead {
        host: host.into(),
        path,
        query,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        method: http::Method::GET,
        received: std::time::Instant::now(),
        body_length: None,
    }
}

#[test]
fn virtual_host_search_order() {
    let rc = RouteConfig {
        name: "80".into(),
        virtual_hosts: vec![
            vh("any", &["*"], vec![]),
            vh("prefix", &["reviews*"], vec![]),
            vh("suffix", &["*.svc.cluster.local"], vec![]),
            vh("longer-suffix", &["*.default.svc.cluster.local"], vec![]),
            vh(
                "exact",
                &[
                    "reviews.default.svc.cluster.local",
                    "reviews.default.svc.cluster.local:9080",
                    "reviews",
                    "reviews:9080",
                ],
                vec![],
            ),
        ],
        ignore_port_in_host_matching: false,
        headers: Default::default(),
        ignored: vec![],
        index: Default::default(),
    };
    let pick = |h: &str| virtual_host(&rc, h).map(|v| v.name.as_str());
    assert_eq!(pick("reviews:9080"), Some("exact"));
    assert_eq!(
        pick("Reviews.Default.svc.cluster.local"),
        Some("exact"),
        "case-insensitive"
    );
    assert_eq!(
        pick("ratings.default.svc.cluster.local"),
        Some("longer-suffix")
    );
    assert_eq!(pick("ratings.other.svc.cluster.local"), Some("suffix"));
    assert_eq!(pick("reviewsx"), Some("prefix"));
    assert_eq!(pick("example.com"), Some("any"));
}

/// The search as Envoy describes it, by scanning every virtual host: exact, longest suffix,
/// longest prefix, `*`; the first virtual host wins a tie.
fn scanned<'a>(rc: &'a RouteConfig, host: &str) -> Option<&'a str> {
    let host = host.to_ascii_lowercase();
    let best = |fits: &dyn Fn(&Domain) -> Option<usize>| {
        let mut best: Option<(usize, &VirtualHost)> = None;
        for v in &rc.virtual_hosts {
            if let Some(len) = v.domains.iter().filter_map(fits).max()
                && best.is_none_or(|(b, _)| len > b)
            {
                best = Some((len, v));
            }
        }
        best.map(|(_, v)| v)
    };
    best(&|d| matches!(d, Domain::Exact(e) if *e == host).then_some(0))
        .or_else(|| {
            best(&|d| match d {
                Domain::Suffix(s) if host.len() > s.len() && host.ends_with(s.as_str()) => {
                    Some(s.len())
                }
                _ => None,
            })
        })
        .or_else(|| {
            best(&|d| match d {
                Domain::Prefix(p) if host.len() > p.len() && host.starts_with(p.as_str()) => {
                    Some(p.len())
                }
                _ => None,
            })
        })
        .or_else(|| best(&|d| (*d == Domain::Any).then_some(0)))
        .map(|v| v.name.as_str())
}

/// A mesh-sized route configuration (as istiod sends a sidecar for port 80: every service,
/// under several names each, with some wildcards and repeats): the indexed search finds what
/// scanning every virtual host finds.
#[test]
fn indexed_virtual_host_search_agrees_with_a_scan() {
    let mut rng = fastrand::Rng::with_seed(80);
    let names = ["reviews", "ratings", "details", "shop", "cart", "api"];
    let namespaces = ["default", "prod", "edge"];
    let mut virtual_hosts = Vec::new();
    for i in 0..300 {
        let svc = format!("{}{}", names[i % names.len()], i % 50);
        let ns = namespaces[rng.usize(..namespaces.len())];
        let mut domains = vec![
            format!("{svc}.{ns}.svc.cluster.local"),
            format!("{svc}.{ns}"),
            svc.clone(),
        ];
        match rng.u8(..10) {
            0 => domains.push(format!("*.{ns}.svc.cluster.local")),
            1 => domains.push(format!("{svc}*")),
            2 => domains.push("*".into()),
            _ => {}
        }
        let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
        virtual_hosts.push(vh(&format!("vh{i}"), &domains, vec![]));
    }
    let rc = RouteConfig {
        name: "80".into(),
        virtual_hosts,
        ignore_port_in_host_matching: false,
        headers: Default::default(),
        ignored: vec![],
        index: Default::default(),
    };
    for _ in 0..5_000 {
        let svc = format!("{}{}", names[rng.usize(..names.len())], rng.usize(..60));
        let ns = namespaces[rng.usize(..namespaces.len())];
        let host = match rng.u8(..5) {
            0 => format!("{svc}.{ns}.svc.cluster.local"),
            1 => format!("{svc}.{ns}"),
            2 => svc.to_uppercase(),
            3 => format!("{svc}x"),
            _ => format!("other.{ns}.svc.cluster.local"),
        };
        assert_eq!(
            virtual_host(&rc, &host).map(|v| v.name.as_str()),
            scanned(&rc, &host),
            "{host}"
        );
    }
}

#[test]
fn routes_match_in_order_with_headers_and_query() {
    let exact_user = HeaderMatch {
        name: "end-user".into(),
        invert: false,
        condition: HeaderCondition::String(StringMatch::Exact("jason".into(), false)),
    };
    let no_debug = HeaderMatch {
        name: "x-debug".into(),
        invert: true,
        condition: HeaderCondition::Present(true),
    };
    let regex_ua = HeaderMatch {
        name: "user-agent".into(),
        invert: false,
        condition: HeaderCondition::String(StringMatch::Regex(
            regex::Regex::new("^(?:.*Firefox.*)$").unwrap(),
        )),
    };
    let v = vh(
        "v",
        &["*"],
        vec![
            r(
                "jason",
                PathMatch::Prefix("/".into()),
                vec![exact_user],
                vec![],
            ),
            r(
                "exact",
                PathMatch::Exact("/productpage".into()),
                vec![],
                vec![],
            ),
            r(
                "firefox",
                PathMatch::Prefix("/ff".into()),
                vec![regex_ua, no_debug],
                vec![],
            ),
            r(
                "sep",
                PathMatch::PathSeparatedPrefix("/api".into()),
                vec![],
                vec![],
            ),
            r(
                "query",
                PathMatch::Prefix("/q".into()),
                vec![],
                vec![QueryMatch {
                    name: "v".into(),
                    value: Some(StringMatch::Exact("2".into(), false)),
                }],
            ),
            r(
                "regex",
                PathMatch::Regex(regex::Regex::new("^(?:/items/[0-9]+)$").unwrap()),
                vec![],
                vec![],
            ),
            r("catchall", PathMatch::Prefix("/".into()), vec![], vec![]),
        ],
    );
    let pick =
        |path: &str, h: &[(&str, &str)]| route(&v, &req("x", path, h)).map(|r| r.name.as_str());
    assert_eq!(pick("/reviews", &[("end-user", "jason")]), Some("jason"));
    assert_eq!(pick("/productpage", &[]), Some("exact"));
    assert_eq!(pick("/productpage/x", &[]), Some("catchall"));
    assert_eq!(
        pick("/ff", &[("user-agent", "Mozilla Firefox 120")]),
        Some("firefox")
    );
    assert_eq!(
        pick(
            "/ff",
            &[("user-agent", "Mozilla Firefox 120"), ("x-debug", "1")]
        ),
        Some("catchall"),
        "inverted match"
    );
    assert_eq!(pick("/api", &[]), Some("sep"));
    assert_eq!(pick("/api/v1", &[]), Some("sep"));
    assert_eq!(pick("/apix", &[]), Some("catchall"));
    assert_eq!(pick("/q?a=1&v=2", &[]), Some("query"));
    assert_eq!(pick("/q?v=3", &[]), Some("catchall"));
    assert_eq!(pick("/items/42", &[]), Some("regex"));
    assert_eq!(pick("/items/42/x", &[]), Some("catchall"));
}

#[test]
fn ports_are_ignored_in_host_matching_when_asked() {
    let mut rc = RouteConfig {
        name: "8080".into(),
        virtual_hosts: vec![
            vh("bill", &["bill", "bill.shop", "10.96.0.5"], vec![]),
            vh("v6", &["[fd00::5]"], vec![]),
        ],
        ignore_port_in_host_matching: false,
        headers: Default::default(),
        ignored: vec![],
        index: Default::default(),
    };
    assert_eq!(
        virtual_host(&rc, "bill:8080").map(|v| v.name.as_str()),
        None
    );
    rc.ignore_port_in_host_matching = true;
    let pick = |h: &str| virtual_host(&rc, h).map(|v| v.name.as_str());
    assert_eq!(pick("bill:8080"), Some("bill"));
    assert_eq!(pick("10.96.0.5:8080"), Some("bill"));
    assert_eq!(pick("[fd00::5]:8080"), Some("v6"));
    assert_eq!(pick("bill"), Some("bill"));
}

#[test]
fn pseudo_headers_match_method_and_authority() {
    let m = |name: &str, value: &str| HeaderMatch {
        name: name.into(),
        invert: false,
        condition: HeaderCondition::String(StringMatch::Exact(value.into(), false)),
    };
    let v = vh(
        "x",
        &["*"],
        vec![
            r(
                "post",
                PathMatch::Prefix("/".into()),
                vec![m(":method", "POST")],
                vec![],
            ),
            r(
                "host",
                PathMatch::Prefix("/".into()),
                vec![m(":authority", "a.example")],
                vec![],
            ),
        ],
    );
    let mut head = req("a.example", "/", &[]);
    assert_eq!(route(&v, &head).map(|r| r.name.as_str()), Some("host"));
    head.method = http::Method::POST;
    assert_eq!(route(&v, &head).map(|r| r.name.as_str()), Some("post"));
}

#[test]
fn redirects_rewrite_scheme_host_port_and_path() {
    use crate::config::route::{PathRedirect, Redirect};
    let base = Redirect {
        scheme: None,
        host: None,
        port: None,
        path: None,
        strip_query: false,
        status: 301,
    };
    let head = req("shop:8080", "/old/items?page=2", &[]);
    let prefix = PathMatch::Prefix("/old".into());
    let loc = |r: Redirect| redirect_location(&r, &head, &prefix);
    assert_eq!(loc(base.clone()), "http://shop:8080/old/items?page=2");
    assert_eq!(
        loc(Redirect {
            scheme: Some("https".into()),
            ..base.clone()
        }),
        "https://shop/old/items?page=2"
    );
    assert_eq!(
        loc(Redirect {
            host: Some("other".into()),
            port: Some(9443),
            path: Some(PathRedirect::Prefix("/new".into())),
            ..base.clone()
        }),
        "http://other:9443/new/items?page=2"
    );
    assert_eq!(
        loc(Redirect {
            path: Some(PathRedirect::Path("/x?y=1".into())),
            ..base.clone()
        }),
        "http://shop:8080/x?y=1",
        "a path_redirect with a query replaces it"
    );
    assert_eq!(
        loc(Redirect {
            strip_query: true,
            path: Some(PathRedirect::Regex(
                regex::Regex::new("^/old/(.*)$").unwrap(),
                "/v2/${1}".into()
            )),
            ..base
        }),
        "http://shop:8080/v2/items"
    );
}

#[test]
fn regex_rewrites_substitute_the_path() {
    let f = Forward {
        target: Target::Cluster("c".into()),
        retry: None,
        mirrors: vec![],
        timeout: None,
        grpc_timeout_max: None,
        prefix_rewrite: None,
        regex_rewrite: Some((
            regex::Regex::new("^/service/([^/]+)(/.*)$").unwrap(),
            "${2}/instance/${1}".into(),
        )),
        host_rewrite: None,
        hash_policies: vec![],
        idle_timeout: None,
    };
    assert_eq!(
        rewritten_path(&f, &PathMatch::Prefix("/".into()), "/service/foo/v1/api").as_deref(),
        Some("/v1/api/instance/foo")
    );
}
