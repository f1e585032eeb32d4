//! Graceful drain, as Envoy's: the real proxy binary on loopback, a slow origin in Python, and
//! curl as the client. On SIGTERM readiness turns 503, the listeners close (new connections
//! are refused), requests in flight finish and get `Connection: close`, and the proxy exits
//! when the last connection closes, or cuts a long TCP stream at the drain time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A slow HTTP/1.1 origin (`/sleep/SECONDS`) and a TCP echo server, in Python's asyncio.
const ORIGIN: &str = r#"
import asyncio, sys
async def http(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            if path.startswith("/sleep/"):
                await asyncio.sleep(float(path[7:]))
            body = b"done " + path.encode()
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await w.drain()
    except Exception:
        pass
    w.close()
async def echo(r, w):
    try:
        while data := await r.read(4096):
            w.write(data)
            await w.drain()
    except Exception:
        pass
    w.close()
async def main():
    a = await asyncio.start_server(http, "127.0.0.1", int(sys.argv[1]), backlog=2048)
    b = await asyncio.start_server(echo, "127.0.0.1", int(sys.argv[2]))
    print("ready", flush=True)
    await asyncio.gather(a.serve_forever(), b.serve_forever())
asyncio.run(main())
"#;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Ports {
    origin: u16,
    echo: u16,
    http: u16,
    tcp: u16,
    admin: u16,
    status: u16,
}

fn bootstrap(p: &Ports) -> serde_json::Value {
    let cluster = |name: &str, port: u16| {
        serde_json::json!({"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}})
    };
    serde_json::json!({
        "static_resources": {
            "listeners": [{
                "name": "http", "address": {"socket_address": {"address": "127.0.0.1", "port_value": p.http}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "http",
                    "route_config": {"name": "all", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "origin", "timeout": "30s"}}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }}]}]
            }, {
                "name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": p.tcp}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                    "stat_prefix": "tcp", "cluster": "echo"
                }}]}]
            }],
            "clusters": [cluster("origin", p.origin), cluster("echo", p.echo)]
        }
    })
}

/// The origin and a proxy draining for `drain_s` seconds.
fn start(drain_s: u64) -> (Ports, Killed, Killed) {
    let p = Ports {
        origin: free_port(),
        echo: free_port(),
        http: free_port(),
        tcp: free_port(),
        admin: free_port(),
        status: free_port(),
    };
    let mut origin = Command::new("python3")
        .args(["-c", ORIGIN, &p.origin.to_string(), &p.echo.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    let stdout = origin.stdout.take();
    let origin = Killed(origin);
    BufReader::new(stdout.unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let dir =
        std::env::temp_dir().join(format!("outrigger-drain-{}-{}", std::process::id(), p.http));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bootstrap.json");
    std::fs::write(&config, bootstrap(&p).to_string()).unwrap();
    let proxy = Command::new(env!("CARGO_BIN_EXE_outrigger-proxy"))
        .args(["run", "-c"])
        .arg(&config)
        .args([
            "--admin-address",
            &format!("127.0.0.1:{}", p.admin),
            "--status-port",
            &p.status.to_string(),
            "--prometheus-port",
            "0",
            "--drain-time-s",
            &drain_s.to_string(),
            "--drain-strategy",
            "immediate",
            "--log",
            "warn",
        ])
        .spawn()
        .expect("outrigger-proxy");
    let proxy = Killed(proxy);
    for _ in 0..200 {
        if status(p.status) == 200 {
            return (p, origin, proxy);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the proxy never turned ready");
}

/// The readiness port's status code (0: no answer).
fn status(port: u16) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{port}/healthz/ready"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

fn sigterm(proxy: &Killed) {
    let ok = Command::new("kill")
        .args(["-TERM", &proxy.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Waits (bounded) for the proxy to exit; its exit status and when.
fn exited(proxy: &mut Killed, within: Duration) -> (std::process::ExitStatus, Instant) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = proxy.0.try_wait().unwrap() {
            return (s, Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the proxy did not exit within {within:?}");
}

#[test]
fn a_slow_request_and_a_thousand_in_flight_finish_across_sigterm() {
    let (p, _origin, mut proxy) = start(10);
    // 1,000 requests in flight on keep-alive connections (four curls, 250 in parallel each),
    // and one that takes 7 s.
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", p.http);
    let many: Vec<Child> = (0..4)
        .map(|_| {
            let mut c = Command::new("curl");
            c.args([
                "-s",
                "--parallel",
                "--parallel-immediate",
                "--parallel-max",
                "250",
                "-m",
                "20",
            ])
            .args(["-w", "%{http_code} %{header_json}\n"]);
            for _ in 0..250 {
                c.args(["-o", "/dev/null"]).arg(url("/sleep/3"));
            }
            c.stdout(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let slow = Command::new("curl")
        .args(["-s", "-m", "20", "-w", "\n%{http_code}"])
        .arg(url("/sleep/7"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let term = Instant::now();
    sigterm(&proxy);
    std::thread::sleep(Duration::from_millis(300));
    // Drain started: not ready, and new connections are refused.
    assert_eq!(status(p.status), 503, "readiness during the drain");
    let refused = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-m", "2", "-w", "%{http_code}"])
        .arg(url("/sleep/0"))
        .output()
        .unwrap();
    assert_eq!(
        (
            refused.status.code(),
            String::from_utf8_lossy(&refused.stdout).to_string()
        ),
        (Some(7), "000".to_string()),
        "a new connection after the drain started is refused"
    );
    let mut ok = 0;
    let mut closing = 0;
    for c in many {
        let out = c.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if std::env::var_os("DRAIN_DEBUG").is_some() {
            eprintln!("{}", &text[..text.len().min(3000)]);
        }
        for line in text.lines() {
            ok += usize::from(line.starts_with("200 {"));
            closing += usize::from(
                line.to_ascii_lowercase()
                    .contains("\"connection\":[\"close\"]"),
            );
        }
    }
    assert_eq!(ok, 1000, "every request in flight at SIGTERM was answered");
    assert_eq!(closing, 1000, "and told to close its connection");
    let out = slow.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "done /sleep/7\n200",
        "the 7 s request completed within the 10 s drain"
    );
    let (code, at) = exited(&mut proxy, Duration::from_secs(15));
    assert!(code.success(), "{code}");
    let took = at - term;
    assert!(
        took < Duration::from_secs(10),
        "the proxy exits when the last connection closes, before the drain time: {took:?}"
    );
    eprintln!("drain: 1000 + 1 requests answered; exit {took:?} after SIGTERM");
}

#[test]
fn a_long_tcp_stream_is_cut_at_the_drain_time() {
    let (p, _origin, mut proxy) = start(2);
    let mut stream = TcpStream::connect(("127.0.0.1", p.tcp)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    let term = Instant::now();
    sigterm(&proxy);
    // The stream still works during the drain...
    std::thread::sleep(Duration::from_millis(500));
    stream.write_all(b"pong").unwrap();
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    // ...and is closed when the drain time ends.
    let mut rest = Vec::new();
    let end = stream.read_to_end(&mut rest);
    let closed = term.elapsed();
    assert!(matches!(end, Ok(0)) || end.is_err(), "{end:?}");
    assert!(
        closed >= Duration::from_millis(1900) && closed < Duration::from_secs(6),
        "closed at the 2 s drain time: {closed:?}"
    );
    let (code, _) = exited(&mut proxy, Duration::from_secs(5));
    assert!(code.success(), "{code}");
}
