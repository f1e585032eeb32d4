//! `outrigger-proxy run -c BOOTSTRAP` with static resources: the real binary serves the
//! bootstrap's listener and forwards to its static cluster; a bad bootstrap is refused.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A one-shot-per-connection HTTP/1.0 origin that answers "static-origin".
fn origin() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 13\r\nconnection: close\r\n\r\nstatic-origin",
            );
        }
    });
    port
}

struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn static_bootstrap_is_served() {
    let (listen, upstream) = (free_port(), origin());
    let bootstrap = serde_json::json!({"static_resources": {
        "listeners": [{"name": "static", "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "s",
                "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "origin"}}]}]},
                "http_filters": [{"name": "router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}],
        "clusters": [{"name": "origin", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "origin", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}]}}]}});
    let dir = std::env::temp_dir().join(format!("outrigger-bootstrap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bootstrap.json");
    std::fs::write(&file, bootstrap.to_string()).unwrap();
    let bin = env!("CARGO_BIN_EXE_outrigger-proxy");
    let _proxy = Killed(
        Command::new(bin)
            .args(["run", "-c"])
            .arg(&file)
            .args([
                "--admin-address",
                "off",
                "--status-port",
                "0",
                "--prometheus-port",
                "0",
                "--concurrency",
                "1",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut body = String::new();
    for _ in 0..50 {
        let out = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{listen}/x"),
            ])
            .output()
            .unwrap();
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        if !body.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(body, "static-origin");

    // A bootstrap with a bad resource is refused with the reason, exit 2.
    std::fs::write(
        &file,
        r#"{"static_resources": {"clusters": [{"name": "bad", "type": "STATIC"}]}}"#,
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["run", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad") && err.contains("needs endpoints"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
