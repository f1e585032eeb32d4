//! `outrigger-probe`: tiny TCP servers and clients for the namespace tests and the demo.
//!
//! `serve` answers every connection with one JSON line saying which server took it, on which
//! port, and the connection's original destination (SO_ORIGINAL_DST after a REDIRECT, or the
//! local address after TPROXY). `connect` prints that line.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::Duration;

use clap::{Parser, Subcommand};
use outrigger_testkit::probe::{Answer, original_dst};
use socket2::{Domain, Socket, Type};

#[derive(Parser)]
#[command(about = "Test servers and clients that report where a TCP connection landed")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Listen on the given addresses and answer each connection with a JSON line.
    Serve {
        /// Name reported in the answers.
        #[arg(long)]
        name: String,
        /// Set IP_TRANSPARENT (TPROXY listeners).
        #[arg(long)]
        transparent: bool,
        /// After the answer line, echo everything received until the client half-closes.
        #[arg(long)]
        echo: bool,
        /// Addresses to listen on, e.g. 0.0.0.0:15001 [::]:15001.
        #[arg(required = true)]
        listen: Vec<SocketAddr>,
    },
    /// A small HTTP/1.1 server (keep-alive) answering every request with JSON: the server's
    /// name, the method, path, Host and the request headers. A request can ask for a late
    /// answer (`x-probe-delay-ms: N`) or another status (`x-probe-status: 503`).
    ServeHttp {
        #[arg(long)]
        name: String,
        #[arg(required = true)]
        listen: Vec<SocketAddr>,
    },
    /// Answer every UDP datagram with a JSON line (same fields; no original destination).
    ServeUdp {
        #[arg(long)]
        name: String,
        #[arg(required = true)]
        listen: Vec<SocketAddr>,
    },
    /// Send one UDP datagram, print the answer line.
    SendUdp {
        target: SocketAddr,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Also print `from ADDR`: the answer's source address as recvmsg() reports it.
        #[arg(long)]
        show_peer: bool,
        /// sendto() on an unconnected socket instead of connect() + send().
        #[arg(long)]
        unconnected: bool,
    },
    /// Connect, print the server's answer line.
    Connect {
        target: SocketAddr,
        /// Local address to bind before connecting.
        #[arg(long)]
        bind: Option<IpAddr>,
        /// After the answer, send this many bytes, half-close, and check they all come back
        /// (against an `--echo` server); prints `echoed N` on a second line.
        #[arg(long)]
        send: Option<usize>,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Also print `peer ADDR`: what getpeername() says the socket is connected to.
        #[arg(long)]
        show_peer: bool,
    },
}

fn listener(addr: SocketAddr, transparent: bool) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    if transparent {
        if addr.is_ipv6() {
            s.set_ip_transparent_v6(true)?;
        } else {
            s.set_ip_transparent_v4(true)?;
        }
    }
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s.into())
}

fn serve(
    name: String,
    transparent: bool,
    echo: bool,
    addrs: Vec<SocketAddr>,
) -> std::io::Result<()> {
    let listeners = addrs
        .iter()
        .map(|a| listener(*a, transparent))
        .collect::<Result<Vec<_>, _>>()?;
    println!("ready");
    let mut handles = Vec::new();
    for l in listeners {
        let name = name.clone();
        handles.push(thread::spawn(move || {
            for mut stream in l.incoming().flatten() {
                let answer = Answer {
                    server: name.clone(),
                    listen_port: l.local_addr().map(|a| a.port()).unwrap_or(0),
                    local: stream.local_addr().ok(),
                    peer: stream.peer_addr().ok(),
                    // Without NAT the kernel answers with the local address: report NAT only.
                    original_dst: original_dst(&stream)
                        .filter(|d| Some(*d) != stream.local_addr().ok()),
                };
                let _ = writeln!(
                    stream,
                    "{}",
                    serde_json::to_string(&answer).unwrap_or_default()
                );
                if echo {
                    thread::spawn(move || {
                        if let Ok(mut reader) = stream.try_clone() {
                            let _ = copy_retrying(&mut reader, &mut stream);
                        }
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// Serves HTTP/1.1 requests on one connection until it closes.
/// A blocking read can fail with EAGAIN when the bytes arrive through a sockmap redirect
/// (the kernel's `tcp_bpf_recvmsg` reports a wake-up without data that way): read again, as a
/// non-blocking program would on its next readiness event.
fn is_spurious(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

fn copy_retrying(reader: &mut impl Read, writer: &mut impl Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                writer.write_all(&buf[..n])?;
                total += n as u64;
            }
            Err(e) if is_spurious(&e) => thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(e),
        }
    }
}

/// `read_to_end`, retrying spurious EAGAIN until `timeout` has passed without progress (the
/// socket's read timeout also shows as EAGAIN).
fn read_to_end_retrying(
    reader: &mut impl Read,
    out: &mut Vec<u8>,
    timeout: Duration,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = std::time::Instant::now();
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                last = std::time::Instant::now();
            }
            Err(e) if is_spurious(&e) && last.elapsed() < timeout => {
                thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e),
        }
    }
}

fn http_connection(name: &str, stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let (method, path, version) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = serde_json::Map::new();
        let mut length = 0usize;
        let mut close = version == "HTTP/1.0";
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                if k == "content-length" {
                    length = v.parse().unwrap_or(0);
                }
                if k == "connection" && v.eq_ignore_ascii_case("close") {
                    close = true;
                }
                headers.insert(k, serde_json::Value::String(v));
            }
        }
        let mut body = vec![0u8; length];
        std::io::Read::read_exact(&mut reader, &mut body)?;
        let host = headers.get("host").cloned().unwrap_or_default();
        // Test controls: answer late, or with another status.
        let control = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let Some(ms) = control("x-probe-delay-ms") {
            thread::sleep(Duration::from_millis(ms.min(60_000)));
        }
        let status = control("x-probe-status")
            .filter(|s| (200..600).contains(s))
            .unwrap_or(200);
        let answer = serde_json::json!({"server": name, "method": method, "path": path, "host": host, "headers": headers});
        let text = answer.to_string();
        write!(
            out,
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-served-by: {name}\r\n{}\r\n{text}",
            if status == 200 { "OK" } else { "Status" },
            text.len(),
            if close { "connection: close\r\n" } else { "" }
        )?;
        if close {
            return Ok(());
        }
    }
}

fn serve_http(name: String, addrs: Vec<SocketAddr>) -> std::io::Result<()> {
    let listeners = addrs
        .iter()
        .map(|a| listener(*a, false))
        .collect::<Result<Vec<_>, _>>()?;
    println!("ready");
    let mut handles = Vec::new();
    for l in listeners {
        let name = name.clone();
        handles.push(thread::spawn(move || {
            for stream in l.incoming().flatten() {
                let name = name.clone();
                thread::spawn(move || {
                    let _ = stream.set_nodelay(true);
                    let _ = http_connection(&name, stream);
                });
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn serve_udp(name: String, addrs: Vec<SocketAddr>) -> std::io::Result<()> {
    let sockets = addrs
        .iter()
        .map(std::net::UdpSocket::bind)
        .collect::<Result<Vec<_>, _>>()?;
    println!("ready");
    let mut handles = Vec::new();
    for sock in sockets {
        let name = name.clone();
        handles.push(thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((_, from)) = sock.recv_from(&mut buf) {
                let local = sock.local_addr().ok();
                let answer = Answer {
                    server: name.clone(),
                    listen_port: local.map(|a| a.port()).unwrap_or(0),
                    local,
                    peer: Some(from),
                    original_dst: None,
                };
                let _ = sock.send_to(
                    serde_json::to_string(&answer)
                        .unwrap_or_default()
                        .as_bytes(),
                    from,
                );
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn send_udp(
    target: SocketAddr,
    timeout: Duration,
    show_peer: bool,
    unconnected: bool,
) -> std::io::Result<String> {
    let any: SocketAddr = if target.is_ipv6() {
        "[::]:0".parse().expect("addr")
    } else {
        "0.0.0.0:0".parse().expect("addr")
    };
    let sock = std::net::UdpSocket::bind(any)?;
    sock.set_read_timeout(Some(timeout))?;
    if unconnected {
        sock.send_to(b"query", target)?;
    } else {
        sock.connect(target)?;
        sock.send(b"query")?;
    }
    let mut buf = [0u8; 1500];
    // recv_from on the connected socket: the source is what recvmsg() reports (the DNS
    // capture rewrites it back to the resolver's address).
    let (n, from) = sock.recv_from(&mut buf)?;
    let mut out = format!("{}\n", String::from_utf8_lossy(&buf[..n]));
    if show_peer {
        out.push_str(&format!("from {from}\n"));
    }
    Ok(out)
}

fn connect(
    target: SocketAddr,
    bind: Option<IpAddr>,
    send: Option<usize>,
    timeout: Duration,
    show_peer: bool,
) -> std::io::Result<String> {
    let s = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    if let Some(ip) = bind {
        s.bind(&SocketAddr::new(ip, 0).into())?;
    }
    s.connect_timeout(&target.into(), timeout)?;
    let stream: TcpStream = s.into();
    stream.set_read_timeout(Some(timeout))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed without an answer",
        ));
    }
    if show_peer {
        line.push_str(&format!("peer {}\n", stream.peer_addr()?));
    }
    if let Some(n) = send {
        // Write in a thread while reading here, so that large transfers do not deadlock.
        let mut writer = stream.try_clone()?;
        let pattern: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        let expected = pattern.clone();
        let sender = thread::spawn(move || -> std::io::Result<()> {
            writer.write_all(&pattern)?;
            writer.shutdown(std::net::Shutdown::Write)
        });
        let mut back = Vec::with_capacity(n);
        read_to_end_retrying(&mut reader, &mut back, timeout)?;
        sender
            .join()
            .map_err(|_| std::io::Error::other("sender panicked"))??;
        if back != expected {
            return Err(std::io::Error::other(format!(
                "echo mismatch: sent {n} bytes, got {} back",
                back.len()
            )));
        }
        line.push_str(&format!("echoed {}\n", back.len()));
    }
    Ok(line)
}

fn main() -> ExitCode {
    match Cli::parse().cmd {
        Cmd::Serve {
            name,
            transparent,
            echo,
            listen,
        } => match serve(name, transparent, echo, listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("outrigger-probe serve: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::ServeHttp { name, listen } => match serve_http(name, listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("outrigger-probe serve-http: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::ServeUdp { name, listen } => match serve_udp(name, listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("outrigger-probe serve-udp: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::SendUdp {
            target,
            timeout_ms,
            show_peer,
            unconnected,
        } => match send_udp(
            target,
            Duration::from_millis(timeout_ms),
            show_peer,
            unconnected,
        ) {
            Ok(line) => {
                print!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("outrigger-probe send-udp {target}: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Connect {
            target,
            bind,
            send,
            timeout_ms,
            show_peer,
        } => match connect(
            target,
            bind,
            send,
            Duration::from_millis(timeout_ms),
            show_peer,
        ) {
            Ok(line) => {
                print!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("outrigger-probe connect {target}: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
