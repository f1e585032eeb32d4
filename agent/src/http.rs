//! `/healthz` and `/metrics` for the DaemonSet, on a small blocking HTTP/1.0 server.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the endpoints report, shared with the reconcile loop.
#[derive(Debug)]
pub struct Shared {
    pub bpffs: PathBuf,
    /// "ebpf" or "iptables-only", and why when not ebpf.
    pub mode: Mutex<(String, String)>,
    pub pod_errors: AtomicUsize,
}

impl Shared {
    pub fn new(bpffs: PathBuf) -> Arc<Shared> {
        Arc::new(Shared {
            bpffs,
            mode: Mutex::new(("starting".into(), String::new())),
            pod_errors: AtomicUsize::new(0),
        })
    }

    pub fn set_mode(&self, mode: &str, reason: &str) {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = (mode.into(), reason.into());
    }
}

/// Serves until the process exits.
pub fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let _ = handle(stream, &shared);
            });
        }
    });
    Ok(local)
}

fn handle(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    // Drain the headers.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let (mode, reason) = shared
        .mode
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (status, ctype, body) = match path.as_str() {
        // Healthy in either mode: iptables-only is a defined fallback, not a failure.
        "/healthz" if mode == "ebpf" || mode == "iptables-only" => (
            "200 OK",
            "text/plain",
            if reason.is_empty() {
                format!("ok: {mode}\n")
            } else {
                format!("ok: {mode} ({reason})\n")
            },
        ),
        "/healthz" => ("503 Service Unavailable", "text/plain", format!("{mode}\n")),
        "/metrics" => {
            let mut status = crate::status::read(&shared.bpffs);
            if mode != "ebpf" {
                status.mode = "iptables-only";
            }
            (
                "200 OK",
                "text/plain; version=0.0.4",
                crate::status::metrics(&status, shared.pod_errors.load(Ordering::Relaxed)),
            )
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.0 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}
