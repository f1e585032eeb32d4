//! HTTP/1.1 towards upstreams, against a scripted upstream that writes its answers byte for
//! byte: chunked bodies with trailers, bodies delimited by close, `Connection: close`, HEAD,
//! 204, interim 100 responses, large bodies, chunked and sized uploads, keep-alive reuse, and a
//! kept connection the upstream closed in between. Downstream is real curl.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use outrigger_proxy::config::cluster::Cluster;
use outrigger_proxy::config::route::RouteConfig;
use outrigger_proxy::testing::{load_assignment, proxy_with, route_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the scripted upstream saw.
#[derive(Default)]
struct Seen {
    /// Connections accepted.
    accepted: AtomicUsize,
    /// (connection number, request head, request body) of each request.
    requests: Mutex<Vec<(usize, String, Vec<u8>)>>,
    /// Connections closed by the proxy while a `/hang` request was unanswered.
    hung_up: AtomicUsize,
}

/// Reads more of the stream into `buf`; `None` at EOF.
async fn more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await.ok()?;
    (n > 0).then(|| buf.extend_from_slice(&chunk[..n]))
}

/// Reads one request (head and body, sized or chunked) from `buf`/`stream`; `None` at EOF.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end);
    let mut body = Vec::new();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        while buf.len() < len {
            more(stream, buf).await?;
        }
        body = buf.drain(..len).collect();
    } else if head.contains("transfer-encoding: chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                more(stream, buf).await?;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).ok()?, 16).ok()?;
            buf.drain(..line_end + 2);
            if size == 0 {
                while buf.len() < 2 {
                    more(stream, buf).await?;
                }
                buf.drain(..2);
                break;
            }
            while buf.len() < size + 2 {
                more(stream, buf).await?;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
        }
    }
    Some((head, body))
}

/// The answer to a request head, and whether the upstream closes the connection after it.
fn answer(head: &str, body: &[u8]) -> (Vec<u8>, bool) {
    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
    let ok = |b: &[u8]| {
        let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", b.len()).into_bytes();
        r.extend_from_slice(b);
        r
    };
    match path.as_str() {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
              5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nx-sum: 11\r\n\r\n"
                .to_vec(),
            false,
        ),
        "/until-close" => (b"HTTP/1.1 200 OK\r\n\r\nbody until the end".to_vec(), true),
        "/close" => (
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 6\r\n\r\nclosed".to_vec(),
            true,
        ),
        "/silent-close" => (ok(b"bye"), true),
        "/head" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Head: yes\r\n\r\n".to_vec(),
            false,
        ),
        "/nothing" => (b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), false),
        "/interim" => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nmade"
                .to_vec(),
            false,
        ),
        "/big" => (ok(&vec![b'x'; 3 * 1024 * 1024]), false),
        "/echo" => {
            let chunked = head.contains("transfer-encoding: chunked");
            let mut b = format!("chunked={chunked} ").into_bytes();
            b.extend_from_slice(body);
            (ok(&b), false)
        }
        _ => (ok(b"ok"), false),
    }
}

async fn scripted_upstream(seen: Arc<Seen>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = seen.accepted.fetch_add(1, Ordering::SeqCst) + 1;
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut hanging = false;
                while let Some((head, body)) = read_request(&mut stream, &mut buf).await {
                    if head.starts_with("get /hang ") {
                        // No answer: wait for the next request or the end of the connection.
                        hanging = true;
                        continue;
                    }
                    let (bytes, close) = answer(&head, &body);
                    seen.requests.lock().unwrap().push((n, head, body));
                    if stream.write_all(&bytes).await.is_err() || close {
                        return;
                    }
                }
                if hanging {
                    seen.hung_up.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    addr
}

/// The proxy with one listener routing everything to the scripted upstream.
async fn proxy(upstream: SocketAddr) -> u16 {
    let mut c = outrigger_proxy::testing::eds_cluster("up");
    c.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
        cluster::cluster::DiscoveryType::Static as i32,
    ));
    c.eds_cluster_config = None;
    c.load_assignment = Some(load_assignment(
        "up",
        &[("127.0.0.1", u32::from(upstream.port()))],
    ));
    let rc = RouteConfig::try_from(&route_config("80", "up")).unwrap();
    proxy_with(rc, vec![Cluster::try_from(&c).unwrap()]).await.0
}

/// curl with `args`: (the status codes, comma-separated; the headers; the bodies, concatenated).
fn curl(args: &[String]) -> (String, String, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10"])
        .args(["-w", "%{stderr}code=%{http_code}\n", "-D", "/dev/stderr"])
        .args(args)
        .output()
        .expect("curl");
    let stderr = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    let codes: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("code="))
        .collect();
    (codes.join(","), stderr.clone(), out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_http1_framing_reuse_and_recovery() {
    let seen = Arc::new(Seen::default());
    let up = scripted_upstream(seen.clone()).await;
    let port = proxy(up).await;
    let base = format!("http://127.0.0.1:{port}");
    let url = move |p: &str| format!("{base}{p}");
    let run = |args: Vec<String>| tokio::task::spawn_blocking(move || curl(&args));

    // A chunked body is decoded and passed on whole; the trailer is not.
    let (code, headers, body) = run(vec![url("/chunked")]).await.unwrap();
    assert_eq!(code, "200");
    assert_eq!(body, b"hello world");
    assert!(!headers.contains("x-sum"), "{headers}");

    // A body delimited by the upstream closing the connection.
    let (code, _, body) = run(vec![url("/until-close")]).await.unwrap();
    assert_eq!(
        (code.as_str(), body.as_slice()),
        ("200", &b"body until the end"[..])
    );

    // HEAD: the length is announced, no body follows, and the connection stays usable.
    let before = seen.accepted.load(Ordering::SeqCst);
    let (code, headers, body) = run(vec!["-I".into(), url("/head"), url("/after-head")])
        .await
        .unwrap();
    assert_eq!(code, "200,200");
    assert!(
        headers.contains("content-length: 10\r\nx-head: yes"),
        "{headers}"
    );
    // (-I writes the heads to stdout too; nothing else is there.)
    assert!(
        body.ends_with(b"\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(seen.accepted.load(Ordering::SeqCst) - before, 1);

    // 204, and an interim 100 before the final answer.
    let (code, _, body) = run(vec![url("/nothing")]).await.unwrap();
    assert_eq!((code.as_str(), body.len()), ("204", 0));
    let (code, _, body) = run(vec![url("/interim")]).await.unwrap();
    assert_eq!((code.as_str(), body.as_slice()), ("201", &b"made"[..]));

    // 3 MiB streamed through.
    let (code, _, body) = run(vec![url("/big")]).await.unwrap();
    assert_eq!(code, "200");
    assert_eq!(body.len(), 3 * 1024 * 1024);
    assert!(body.iter().all(|b| *b == b'x'));

    // Uploads: sized stays sized, an unsized (chunked) one is sent chunked, and a large one
    // with `Expect: 100-continue` arrives whole.
    let (_, _, body) = run(vec!["--data-binary".into(), "abc".into(), url("/echo")])
        .await
        .unwrap();
    assert_eq!(body, b"chunked=false abc");
    let (_, _, body) = run(vec![
        "-H".into(),
        "Transfer-Encoding: chunked".into(),
        "--data-binary".into(),
        "streamed".into(),
        url("/echo"),
    ])
    .await
    .unwrap();
    assert_eq!(body, b"chunked=true streamed");
    let large = std::env::temp_dir().join(format!("outrigger-upload-{}", std::process::id()));
    std::fs::write(&large, vec![b'y'; 200 * 1024]).unwrap();
    let (code, _, body) = run(vec![
        "-H".into(),
        "Expect: 100-continue".into(),
        "--data-binary".into(),
        format!("@{}", large.display()),
        url("/echo"),
    ])
    .await
    .unwrap();
    let _ = std::fs::remove_file(&large);
    assert_eq!(code, "200");
    assert_eq!(body.len(), "chunked=false ".len() + 200 * 1024);

    // Keep-alive: five requests on one downstream connection use one upstream connection.
    let before = seen.accepted.load(Ordering::SeqCst);
    let urls: Vec<String> = (0..5).map(|i| url(&format!("/ka{i}"))).collect();
    let (code, _, _) = run(urls).await.unwrap();
    assert_eq!(code, "200,200,200,200,200");
    assert_eq!(seen.accepted.load(Ordering::SeqCst) - before, 1);

    // `Connection: close` and a silent close: the next request on the same downstream
    // connection is answered over a new upstream connection, without an error.
    let before = seen.accepted.load(Ordering::SeqCst);
    let (code, _, body) = run(vec![
        url("/close"),
        url("/after-close"),
        url("/silent-close"),
        url("/after-silent-close"),
    ])
    .await
    .unwrap();
    assert_eq!(code, "200,200,200,200");
    assert_eq!(body, b"closedokbyeok");
    assert_eq!(seen.accepted.load(Ordering::SeqCst) - before, 3);

    // A client's own expected timeout is replaced by the proxy's (the route's default 15 s).
    let (code, _, _) = run(vec![
        "-H".into(),
        "X-Envoy-Expected-Rq-Timeout-Ms: 1".into(),
        url("/expected"),
    ])
    .await
    .unwrap();
    assert_eq!(code, "200");

    // What the upstream saw: origin-form targets, the proxy's headers, no hop-by-hop ones.
    let requests = seen.requests.lock().unwrap();
    let (_, head, _) = requests
        .iter()
        .find(|(_, h, _)| h.starts_with("get /expected "))
        .unwrap();
    assert_eq!(
        head.matches("x-envoy-expected-rq-timeout-ms").count(),
        1,
        "{head}"
    );
    assert!(
        head.contains("\r\nx-envoy-expected-rq-timeout-ms: 15000\r\n"),
        "{head}"
    );
    let (_, head, _) = requests
        .iter()
        .find(|(_, h, _)| h.starts_with("head /after-head "))
        .unwrap();
    assert!(head.contains("\r\nx-request-id: "), "{head}");
    assert!(head.contains("\r\nx-forwarded-proto: http\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"));
    let (_, head, _) = requests
        .iter()
        .find(|(_, h, b)| h.starts_with("post /echo ") && b.len() > 1000)
        .unwrap();
    assert!(!head.contains("expect:"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_request() {
    let seen = Arc::new(Seen::default());
    let up = scripted_upstream(seen.clone()).await;
    let port = proxy(up).await;
    let mut client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    client
        .write_all(b"GET /hang HTTP/1.1\r\nHost: up\r\n\r\n")
        .await
        .unwrap();
    // The request reaches the upstream, which never answers; then the client leaves.
    for _ in 0..100 {
        if seen.accepted.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(client);
    // The proxy drops the upstream request with it: the upstream sees its connection end.
    for _ in 0..100 {
        if seen.hung_up.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the upstream connection outlived the client by more than 2 s");
}
