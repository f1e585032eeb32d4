//! The HTTP connection manager with real clients (curl, HTTP/1.1 and h2c) and real upstream
//! servers: routing by header and path, prefix rewrite, direct responses, redirects, and Envoy's
//! local replies (404 NR, 503 NC/UH/UF, 504 UT), request ids and upstream service time.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use outrigger_proxy::config::Address;
use outrigger_proxy::config::Snapshot;
use outrigger_proxy::config::cluster::{
    Cluster, Discovery, Endpoint, Health, LbPolicy, LoadAssignment, Locality, LocalityEndpoints,
};
use outrigger_proxy::config::listener::Listener;
use outrigger_proxy::config::route::{
    Action, Domain, Forward, HeaderAction, HeaderCondition, HeaderMatch, HeaderOps, PathMatch,
    Route, RouteConfig, RouteMatch, StringMatch, Target, VirtualHost,
};
use outrigger_proxy::listener;
use outrigger_proxy::testing::{http_listener, proxy_with};

/// Requests the upstreams answered on `/fail…` (always 503) and `/flaky…` (503 twice, then 200).
static FAILS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static FLAKY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// The Host headers the "shadow" upstream saw (mirrored requests).
static SHADOWED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// An upstream that answers with what it saw; `/slow…` waits two seconds first.
async fn upstream(name: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    if req.uri().path().starts_with("/slow") || name == "sluggish" {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    let attempt = req
                        .headers()
                        .get("x-envoy-attempt-count")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    if name == "shadow" {
                        let host = req.headers().get("host").and_then(|v| v.to_str().ok());
                        SHADOWED
                            .lock()
                            .unwrap()
                            .push(host.unwrap_or("").to_string());
                    }
                    if name == "broken" {
                        let mut r = Response::new(Full::new(Bytes::from("broken")));
                        *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                        return Ok::<_, std::convert::Infallible>(r);
                    }
                    if req.uri().path().starts_with("/fail") {
                        FAILS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let mut r = Response::new(Full::new(Bytes::from(format!(
                            "failed attempt {attempt}"
                        ))));
                        *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                        return Ok::<_, std::convert::Infallible>(r);
                    }
                    if req.uri().path().starts_with("/flaky")
                        && FLAKY.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 3 != 2
                    {
                        let mut r = Response::new(Full::new(Bytes::from("flaked")));
                        *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                        return Ok(r);
                    }
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let body = serde_json::json!({"server": name, "path": req.uri().to_string(), "host": h("host"), "request_id": h("x-request-id"), "proto": h("x-forwarded-proto"), "version": format!("{:?}", req.version())});
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                        body.to_string(),
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn static_cluster(name: &str, addrs: &[SocketAddr]) -> Cluster {
    Cluster {
        name: name.into(),
        discovery: Discovery::Static,
        lb_policy: LbPolicy::RoundRobin,
        connect_timeout: Duration::from_secs(1),
        load_assignment: Some(LoadAssignment::new(
            name.into(),
            vec![LocalityEndpoints {
                locality: Locality::default(),
                priority: 0,
                weight: None,
                endpoints: addrs
                    .iter()
                    .map(|a| Endpoint {
                        address: Address::Socket(*a),
                        health: Health::Healthy,
                        weight: 1,
                        workload: None,
                    })
                    .collect(),
            }],
        )),
        tls: false,
        idle_timeout: None,
        bind_source: None,
        upstream_protocol: Default::default(),
        locality_weighted: false,
        panic_threshold: 50.0,
        limits: Default::default(),
        service: None,
        outlier: None,
        ignored: vec![],
    }
}

fn route(path: PathMatch, headers: Vec<HeaderMatch>, action: Action) -> Route {
    Route {
        name: String::new(),
        matcher: RouteMatch {
            path,
            case_sensitive: true,
            headers,
            query: vec![],
        },
        action,
        headers: HeaderOps::default(),
        fault: None,
        operation: None,
    }
}

fn to(cluster: &str) -> Action {
    Action::Forward(Forward {
        target: Target::Cluster(cluster.into()),
        retry: None,
        mirrors: vec![],
        timeout: Some(Duration::from_secs(15)),
        grpc_timeout_max: None,
        prefix_rewrite: None,
        regex_rewrite: None,
        host_rewrite: None,
        hash_policies: vec![],
        idle_timeout: None,
    })
}

fn curl(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-S",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "-D",
            "-",
        ])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let (headers, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (
        code.trim().parse().unwrap_or(0),
        headers.to_ascii_lowercase(),
        body.to_string(),
    )
}

/// A route configuration sending everything to `cluster`.
fn all_to(cluster: &str) -> RouteConfig {
    RouteConfig::try_from(&outrigger_proxy::testing::route_config("80", cluster)).unwrap()
}

/// A route configuration with these routes on a `*` virtual host.
fn routes(routes: Vec<Route>) -> RouteConfig {
    RouteConfig {
        name: "80".into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec![Domain::Any],
            routes,
            headers: HeaderOps::default(),
        }],
        ignore_port_in_host_matching: true,
        headers: HeaderOps::default(),
        ignored: vec![],
        index: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routing_and_local_replies() {
    let v1 = upstream("v1").await;
    let v2 = upstream("v2").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let mut wire = http_listener("http", u32::from(port), "80");
    wire.address = Some(outrigger_proxy::testing::socket(
        "127.0.0.1",
        u32::from(port),
    ));
    let listener = Listener::try_from(&wire).unwrap();
    let jason = HeaderMatch {
        name: "end-user".into(),
        invert: false,
        condition: HeaderCondition::String(StringMatch::Exact("jason".into(), false)),
    };
    let rc = RouteConfig {
        name: "80".into(),
        virtual_hosts: vec![VirtualHost {
            name: "reviews".into(),
            domains: vec![Domain::Any],
            routes: vec![
                route(PathMatch::Prefix("/".into()), vec![jason], to("v2")),
                route(
                    PathMatch::Prefix("/api/".into()),
                    vec![],
                    Action::Forward(Forward {
                        target: Target::Cluster("v1".into()),
                        retry: None,
                        mirrors: vec![],
                        timeout: None,
                        grpc_timeout_max: None,
                        prefix_rewrite: Some("/".into()),
                        regex_rewrite: None,
                        host_rewrite: None,
                        hash_policies: vec![],
                        idle_timeout: None,
                    }),
                ),
                route(
                    PathMatch::Exact("/teapot".into()),
                    vec![],
                    Action::Direct {
                        status: 418,
                        body: Some("short and stout".into()),
                    },
                ),
                route(
                    PathMatch::Exact("/old".into()),
                    vec![],
                    Action::Redirect(outrigger_proxy::config::route::Redirect {
                        scheme: None,
                        host: None,
                        port: None,
                        path: Some(outrigger_proxy::config::route::PathRedirect::Path(
                            "/new".into(),
                        )),
                        strip_query: false,
                        status: 301,
                    }),
                ),
                route(PathMatch::Prefix("/down".into()), vec![], to("down")),
                route(PathMatch::Prefix("/empty".into()), vec![], to("empty")),
                route(
                    PathMatch::Prefix("/nocluster".into()),
                    vec![],
                    to("missing"),
                ),
                route(
                    PathMatch::Prefix("/slow".into()),
                    vec![],
                    Action::Forward(Forward {
                        target: Target::Cluster("v1".into()),
                        retry: None,
                        mirrors: vec![],
                        timeout: Some(Duration::from_millis(500)),
                        grpc_timeout_max: None,
                        prefix_rewrite: None,
                        regex_rewrite: None,
                        host_rewrite: None,
                        hash_policies: vec![],
                        idle_timeout: None,
                    }),
                ),
                // The route's stream idle timeout ends the wait for a two-second answer.
                route(
                    PathMatch::Prefix("/idle".into()),
                    vec![],
                    Action::Forward(Forward {
                        target: Target::Cluster("v1".into()),
                        retry: None,
                        mirrors: vec![],
                        timeout: Some(Duration::from_secs(15)),
                        grpc_timeout_max: None,
                        prefix_rewrite: Some("/slow".into()),
                        regex_rewrite: None,
                        host_rewrite: None,
                        hash_policies: vec![],
                        idle_timeout: Some(Duration::from_millis(300)),
                    }),
                ),
                route(PathMatch::Prefix("/v1".into()), vec![], to("v1")),
                route(PathMatch::Prefix("/h2up".into()), vec![], to("v1-h2")),
                Route {
                    headers: HeaderOps {
                        request_remove: vec!["x-secret".into()],
                        response_add: vec![(
                            "x-served-by".into(),
                            "outrigger".into(),
                            HeaderAction::Overwrite,
                        )],
                        ..HeaderOps::default()
                    },
                    ..route(
                        PathMatch::Prefix("/rewrite".into()),
                        vec![],
                        Action::Forward(Forward {
                            target: Target::Cluster("v1".into()),
                            retry: None,
                            mirrors: vec![],
                            timeout: None,
                            grpc_timeout_max: None,
                            prefix_rewrite: None,
                            regex_rewrite: None,
                            host_rewrite: Some("ratings.internal".into()),
                            hash_policies: vec![],
                            idle_timeout: None,
                        }),
                    )
                },
            ],
            headers: HeaderOps::default(),
        }],
        ignore_port_in_host_matching: true,
        headers: HeaderOps {
            response_add: vec![("x-mesh".into(), "outrigger".into(), HeaderAction::Overwrite)],
            ..HeaderOps::default()
        },
        ignored: vec![],
        index: Default::default(),
    };
    let mut snap = Snapshot::default();
    snap.listeners.insert("http".into(), Arc::new(listener));
    snap.routes.insert("80".into(), Arc::new(rc));
    let mut h2 = static_cluster("v1-h2", &[v1]);
    h2.upstream_protocol = outrigger_proxy::config::cluster::UpstreamProtocol::Http2;
    snap.clusters.insert(h2.name.clone(), Arc::new(h2));
    for c in [
        static_cluster("v1", &[v1]),
        static_cluster("v2", &[v2]),
        static_cluster("down", &[closed]),
    ] {
        snap.clusters.insert(c.name.clone(), Arc::new(c));
    }
    snap.clusters.insert(
        "empty".into(),
        Arc::new(Cluster {
            discovery: Discovery::Eds {
                service_name: "empty".into(),
            },
            ..static_cluster("empty", &[])
        }),
    );
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(snap));
    let (shared, _background) = outrigger_proxy::app::shared_for(rx, Default::default());
    tokio::spawn(listener::serve(shared));
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The rest blocks on curl; the proxy runs on the runtime's workers.
    let (code, headers, body) = curl(&[
        &format!("{base}/v1/reviews?x=1"),
        "-H",
        "Host: reviews:9080",
    ]);
    assert_eq!(code, 200, "{headers}{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["server"], "v1");
    assert_eq!(seen["path"], "/v1/reviews?x=1");
    assert_eq!(seen["host"], "reviews:9080", "the Host header is kept");
    assert_eq!(
        seen["request_id"].as_str().unwrap().len(),
        36,
        "an x-request-id is generated"
    );
    assert_eq!(seen["proto"], "http");
    assert!(
        headers.contains("x-envoy-upstream-service-time:"),
        "{headers}"
    );

    let (_, _, body) = curl(&[&format!("{base}/anything"), "-H", "end-user: jason"]);
    assert!(body.contains("\"server\":\"v2\""), "{body}");
    let (_, _, body) = curl(&[
        &format!("{base}/api/ratings/1"),
        "-H",
        "x-request-id: given-id",
    ]);
    assert!(
        body.contains("\"path\":\"/ratings/1\"") && body.contains("\"request_id\":\"given-id\""),
        "{body}"
    );
    assert_eq!(curl(&[&format!("{base}/teapot")]).0, 418);
    assert_eq!(curl(&[&format!("{base}/teapot")]).2, "short and stout");
    let (code, headers, _) = curl(&[&format!("{base}/old"), "-H", "Host: shop"]);
    assert_eq!(code, 301);
    assert!(headers.contains("location: http://shop/new"), "{headers}");

    // HTTP/1.1 downstream, h2c upstream (a cluster with explicit HTTP/2 options).
    let (code, _, body) = curl(&[&format!("{base}/h2up/x")]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"version\":\"HTTP/2.0\""), "{body}");
    let (_, _, body) = curl(&[&format!("{base}/v1/x")]);
    assert!(body.contains("\"version\":\"HTTP/1.1\""), "{body}");

    // Host rewrite and response header operations.
    let (code, headers, body) = curl(&[&format!("{base}/rewrite")]);
    assert_eq!(code, 200, "{headers}{body}");
    assert!(body.contains("\"host\":\"ratings.internal\""), "{body}");
    assert!(headers.contains("x-served-by: outrigger"), "{headers}");
    assert!(
        headers.contains("x-mesh: outrigger"),
        "route configuration headers: {headers}"
    );

    // Envoy's local replies.
    assert_eq!(curl(&[&format!("{base}/nothing")]).0, 404, "no route: NR");
    assert_eq!(
        curl(&[&format!("{base}/nocluster")]).0,
        503,
        "unknown cluster: NC"
    );
    let (code, _, body) = curl(&[&format!("{base}/empty")]);
    assert_eq!((code, body.as_str()), (503, "no healthy upstream"), "UH");
    let (code, _, body) = curl(&[&format!("{base}/down")]);
    assert_eq!(code, 503, "UF");
    assert!(
        body.starts_with("upstream connect error or disconnect/reset before headers"),
        "{body}"
    );
    let (code, _, body) = curl(&[&format!("{base}/slow")]);
    assert_eq!(
        (code, body.as_str()),
        (504, "upstream request timeout"),
        "UT"
    );

    // HTTP/2 requests have a timer each rather than the connection's.
    let (code, _, body) = curl(&["--http2-prior-knowledge", &format!("{base}/slow")]);
    assert_eq!(
        (code, body.as_str()),
        (504, "upstream request timeout"),
        "UT over h2c"
    );

    let (code, _, body) = curl(&[&format!("{base}/idle")]);
    assert_eq!((code, body.as_str()), (408, "stream timeout"), "SI");

    // x-envoy-upstream-rq-timeout-ms replaces the route's 500 ms: the two-second answer arrives.
    let (code, _, _) = curl(&[
        &format!("{base}/slow"),
        "-H",
        "x-envoy-upstream-rq-timeout-ms: 4000",
    ]);
    assert_eq!(code, 200, "the header's timeout applies");

    // h2c with prior knowledge downstream, HTTP/1.1 upstream.
    let (code, headers, body) = curl(&["--http2-prior-knowledge", &format!("{base}/v1/h2")]);
    assert_eq!(code, 200, "{headers}{body}");
    assert!(headers.starts_with("http/2 200"), "{headers}");
    assert!(body.contains("\"server\":\"v1\""));

    // Keep-alive: several requests on one downstream connection.
    let out = Command::new("curl")
        .args([
            "-s",
            "-v",
            &format!("{base}/v1/a"),
            &format!("{base}/v1/b"),
            &format!("{base}/v1/c"),
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        log.matches("Connected to").count(),
        1,
        "one connection for three requests:\n{log}"
    );

    // The requests of one connection share its timer. A later request with a shorter timeout
    // still times out on time (the timer is brought forward), and one with a longer timeout
    // outlives the earlier request's deadline (the timer is moved on when it fires early).
    let codes = |first_timeout_ms: &str, second_timeout_ms: Option<&str>| {
        // Each request of the pair: bounded, its status and whether it opened a connection.
        let each = [
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
        ]
        .map(String::from);
        let mut args = each.to_vec();
        args.extend([
            "-H".into(),
            format!("x-envoy-upstream-rq-timeout-ms: {first_timeout_ms}"),
            format!("{base}/v1/first"),
            "--next".into(),
        ]);
        args.extend(each);
        if let Some(t) = second_timeout_ms {
            args.extend(["-H".into(), format!("x-envoy-upstream-rq-timeout-ms: {t}")]);
        }
        args.push(format!("{base}/slow"));
        let out = Command::new("curl").args(&args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = codes("10000", None);
    assert_eq!(
        out, "200 1\n504 0\n",
        "the route's 500 ms applies after a 10 s request on the same connection"
    );
    let out = codes("300", Some("4000"));
    assert_eq!(
        out, "200 1\n200 0\n",
        "an earlier request's 300 ms deadline does not end a later 4 s one"
    );
    let out = codes("300", Some("1000"));
    assert_eq!(
        out, "200 1\n504 0\n",
        "after firing for an earlier request, the timer still ends a later one on time"
    );
}

/// Sends raw bytes, returns the status line of the answer.
fn raw(port: u16, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(request);
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_envoys_400_and_431() {
    let v1 = upstream("v1").await;
    let (port, _, _) = proxy_with(all_to("v1"), vec![static_cluster("v1", &[v1])]).await;
    let big = [
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".as_slice(),
        &[b'a'; 70_000],
        b"\r\n\r\n",
    ]
    .concat();
    // Far more than the limit, still being sent when the proxy answers.
    let huge = [
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".as_slice(),
        &[b'a'; 400_000],
        b"\r\n\r\n",
    ]
    .concat();
    let many: Vec<u8> = [
        b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec(),
        (0..150)
            .flat_map(|i| format!("X-H{i}: v\r\n").into_bytes())
            .collect(),
        b"\r\n".to_vec(),
    ]
    .concat();
    let cases: [(&str, &[u8], &str); 6] = [
        ("not HTTP", b"GARBAGE\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (
            "bad Content-Length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "70 KB of headers (Envoy's limit: 60 KiB)",
            &big,
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        (
            "400 KB of headers",
            &huge,
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        (
            "150 headers (Envoy's limit: 100)",
            &many,
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
        (
            "a good request still works",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "HTTP/1.1 200 OK",
        ),
    ];
    for (what, request, want) in cases {
        let request = request.to_vec();
        let got = tokio::task::spawn_blocking(move || raw(port, &request))
            .await
            .unwrap();
        assert_eq!(got, want, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_steers_away_from_a_slow_endpoint() {
    // "sluggish" answers after two seconds, "quick" at once: with 8 requests in flight at a
    // time, LEAST_REQUEST sends most of them to "quick" (round robin would split 50/50).
    let quick = upstream("quick").await;
    let sluggish = upstream("sluggish").await;
    let mut c = static_cluster("lr", &[quick, sluggish]);
    c.lb_policy = LbPolicy::LeastRequest;
    let (port, _, _) = proxy_with(all_to("lr"), vec![c]).await;
    let url = format!("http://127.0.0.1:{port}/x");
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--parallel", "--parallel-max", "8", "-w", "\n"]);
        for _ in 0..48 {
            cmd.arg(&url);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let slow = text.matches("\"server\":\"sluggish\"").count();
    let fast = text.matches("\"server\":\"quick\"").count();
    assert_eq!(slow + fast, 48, "{text}");
    assert!(slow <= 6, "the slow endpoint got {slow} of 48");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_replay_until_the_policy_is_exhausted() {
    use outrigger_proxy::config::route::{RetryOn, RetryPolicy};
    use std::sync::atomic::Ordering::SeqCst;
    let v1 = upstream("v1").await;
    let policy = |retries| RetryPolicy {
        on: RetryOn {
            server_error: true,
            ..RetryOn::default()
        },
        num_retries: retries,
        per_try_timeout: None,
        retriable_status_codes: vec![],
        previous_hosts: true,
        host_selection_max_attempts: 5,
        backoff: (Duration::from_millis(1), Duration::from_millis(5)),
    };
    let retrying = |prefix: &str, retries| {
        route(
            PathMatch::Prefix(prefix.into()),
            vec![],
            Action::Forward(Forward {
                target: Target::Cluster("v1".into()),
                retry: Some(policy(retries)),
                mirrors: vec![],
                timeout: Some(Duration::from_secs(5)),
                grpc_timeout_max: None,
                prefix_rewrite: None,
                regex_rewrite: None,
                host_rewrite: None,
                hash_policies: vec![],
                idle_timeout: None,
            }),
        )
    };
    let rc = routes(vec![retrying("/fail", 3), retrying("/flaky", 2)]);
    let (port, _, _) = proxy_with(rc, vec![static_cluster("v1", &[v1])]).await;
    let base = format!("http://127.0.0.1:{port}");
    let b = base.clone();
    let (before, (code, _, body), after) = tokio::task::spawn_blocking(move || {
        let before = FAILS.load(SeqCst);
        let r = curl(&[&format!("{b}/fail")]);
        (before, r, FAILS.load(SeqCst))
    })
    .await
    .unwrap();
    assert_eq!(code, 503);
    assert_eq!(after - before, 4, "3 retries: exactly 4 upstream requests");
    assert_eq!(
        body, "failed attempt 4",
        "x-envoy-attempt-count on each attempt"
    );
    // A body is replayed on every attempt.
    let b = base.clone();
    let (before, (code, _, _), after) = tokio::task::spawn_blocking(move || {
        let before = FAILS.load(SeqCst);
        let r = curl(&["-X", "POST", "--data", "hello", &format!("{b}/fail")]);
        (before, r, FAILS.load(SeqCst))
    })
    .await
    .unwrap();
    assert_eq!((code, after - before), (503, 4));
    // Two failures then a success: the client sees the success.
    let b = base.clone();
    let (code, _, body) = tokio::task::spawn_blocking(move || curl(&[&format!("{b}/flaky")]))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"server\":\"v1\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_receive_a_copy_of_every_request() {
    use outrigger_proxy::config::route::{Chance, Mirror};
    let v1 = upstream("v1").await;
    let shadow = upstream("shadow").await;
    let rc = routes(vec![route(
        PathMatch::Prefix("/".into()),
        vec![],
        Action::Forward(Forward {
            target: Target::Cluster("v1".into()),
            mirrors: vec![Mirror {
                cluster: "shadow".into(),
                chance: Chance(1_000_000),
            }],
            retry: None,
            timeout: Some(Duration::from_secs(5)),
            grpc_timeout_max: None,
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: None,
            hash_policies: vec![],
            idle_timeout: None,
        }),
    )]);
    let clusters = vec![
        static_cluster("v1", &[v1]),
        static_cluster("shadow", &[shadow]),
    ];
    let (port, _, _) = proxy_with(rc, clusters).await;
    let url = format!("http://127.0.0.1:{port}/bill");
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-H", "Host: ratings:9080", "-w", "\n"]);
        for _ in 0..20 {
            cmd.arg(&url);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("\"server\":\"v1\"").count(),
        20,
        "the client sees the primary: {text}"
    );
    assert!(!text.contains("shadow"), "{text}");
    let mut seen = 0;
    for _ in 0..100 {
        seen = SHADOWED.lock().unwrap().len();
        if seen >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 20, "every request mirrored");
    assert!(
        SHADOWED
            .lock()
            .unwrap()
            .iter()
            .all(|h| h == "ratings-shadow:9080")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_overflow_answers_503_uo() {
    use outrigger_proxy::config::cluster::Limits;
    // One connection, one pending request: of three concurrent requests to a two-second
    // endpoint, one is served, one waits and is served next, one overflows at once.
    let slow = upstream("sluggish").await;
    let mut c = static_cluster("cb", &[slow]);
    c.limits = Limits {
        max_connections: 1,
        max_pending_requests: 1,
        max_requests: 1024,
        max_retries: 3,
        retry_budget: None,
    };
    let (port, _, telemetry) = proxy_with(all_to("cb"), vec![c]).await;
    let url = format!("http://127.0.0.1:{port}/x");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "-s",
                "--parallel",
                "--parallel-immediate",
                "--parallel-max",
                "3",
            ])
            .args([
                "-w",
                "\\nRESULT %{http_code} %header{x-envoy-overloaded}\\n",
            ])
            .args([&url, &url, &url])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(str::trim)
        .collect();
    lines.sort();
    assert_eq!(lines, ["200", "200", "503 true"], "{text}");
    // Counted as Envoy counts it, for `/stats` (what Istio's circuit-breaking task greps).
    let stats =
        outrigger_proxy::admin::breaker_stats_text(&telemetry.upstreams.clusters.breaker_stats());
    assert!(
        stats.contains("cluster.cb.upstream_rq_pending_overflow: 1\n"),
        "{stats}"
    );
    assert!(
        stats.contains("cluster.cb.upstream_rq_retry_overflow: 0\n"),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_endpoint() {
    use outrigger_proxy::config::cluster::Outlier;
    let good = upstream("v1").await;
    let broken = upstream("broken").await;
    let mut c = static_cluster("od", &[good, broken]);
    c.outlier = Some(Outlier {
        consecutive_5xx: Some(2),
        consecutive_gateway: None,
        split_local_origin: false,
        consecutive_local_origin: None,
        base_ejection: Duration::from_secs(30),
        max_ejection_percent: 100,
    });
    let (port, snap, telemetry) = proxy_with(all_to("od"), vec![c]).await;
    let url = format!("http://127.0.0.1:{port}/x");
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}\\n"]);
        for _ in 0..20 {
            cmd.arg(&url).args(["-o", "/dev/null"]);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let codes: Vec<&str> = text.lines().collect();
    assert_eq!(codes.len(), 20, "{text}");
    let errors = codes.iter().filter(|c| **c == "500").count();
    assert_eq!(
        errors, 2,
        "two consecutive 5xx eject the endpoint; the rest go to the good one: {codes:?}"
    );
    let text = outrigger_proxy::admin::clusters_text(&snap, &telemetry.upstreams.clusters);
    assert!(
        text.contains(&format!(
            "od::{broken}::health_flags::/failed_outlier_check"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("od::{good}::health_flags::healthy")),
        "{text}"
    );
}
