//! A pod and a peer joined by a veth pair, each in its own namespace.
//!
//! ```text
//!  pod netns                          peer netns
//!  eth0 10.20.0.2/24 fd20::2/64 ───── eth0 10.20.0.1/24 fd20::1/64
//! ```

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Output};

use crate::netns::{Background, Netns};
use crate::probe::Answer;

pub const POD_V4: &str = "10.20.0.2";
pub const PEER_V4: &str = "10.20.0.1";
pub const POD_V6: &str = "fd20::2";
pub const PEER_V6: &str = "fd20::1";

/// The proxy's uid in Istio.
pub const PROXY_UID: u32 = 1337;

pub struct PodPair {
    pub pod: Netns,
    pub peer: Netns,
    _servers: Vec<Background>,
}

impl PodPair {
    /// Creates both namespaces and the link. `ipv6` adds the IPv6 addresses too.
    pub fn new(tag: &str, ipv6: bool) -> PodPair {
        crate::require_root();
        let pod = Netns::new(tag);
        let peer = Netns::new(&format!("{tag}p"));
        // Create the pair inside the pod namespace, then move one end to the peer.
        pod.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        pod.ip(&["link", "set", "peer0", "netns", peer.name()]);
        peer.ip(&["link", "set", "peer0", "name", "eth0"]);
        for (ns, v4, v6) in [(&pod, POD_V4, POD_V6), (&peer, PEER_V4, PEER_V6)] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            if ipv6 {
                ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
            }
            ns.ip(&["link", "set", "eth0", "up"]);
        }
        PodPair {
            pod,
            peer,
            _servers: Vec::new(),
        }
    }

    /// Starts an echoing `outrigger-probe serve --echo --name NAME` in `ns` on `addrs`.
    pub fn serve_echo(&mut self, in_peer: bool, name: &str, addrs: &[String]) {
        let ns = if in_peer { &self.peer } else { &self.pod };
        let mut cmd = ns.command(crate::bin("outrigger-probe"));
        cmd.args(["serve", "--echo", "--name", name]).args(addrs);
        let bg = ns.spawn(cmd, true);
        self._servers.push(bg);
    }

    /// Starts `outrigger-probe serve-udp --name NAME` in `ns` on `addrs`, running as `uid`.
    pub fn serve_udp(&mut self, in_peer: bool, uid: u32, name: &str, addrs: &[String]) {
        let ns = if in_peer { &self.peer } else { &self.pod };
        let mut cmd = ns.command_as(uid, crate::bin("outrigger-probe"));
        cmd.args(["serve-udp", "--name", name]).args(addrs);
        let bg = ns.spawn(cmd, true);
        self._servers.push(bg);
    }

    /// Starts `outrigger-probe serve --name NAME` in `ns` on `addrs`; stopped with the pair.
    pub fn serve(&mut self, in_peer: bool, name: &str, transparent: bool, addrs: &[String]) {
        let ns = if in_peer { &self.peer } else { &self.pod };
        let mut cmd = ns.command(crate::bin("outrigger-probe"));
        cmd.args(["serve", "--name", name]);
        if transparent {
            cmd.arg("--transparent");
        }
        cmd.args(addrs);
        let bg = ns.spawn(cmd, true);
        self._servers.push(bg);
    }

    /// The usual servers: in the pod a "proxy" on 15001/15006, an "app" on 8080 and "agent"
    /// ports 15020/15021/15090/15008; in the peer a "peer" on 80 and 7777.
    pub fn start_servers(&mut self, ipv6: bool, tproxy: bool) {
        let all = |port: u16| {
            let mut v = vec![format!("0.0.0.0:{port}")];
            if ipv6 {
                v.push(format!("[::]:{port}"));
            }
            v
        };
        let list = |ports: &[u16]| ports.iter().flat_map(|p| all(*p)).collect::<Vec<_>>();
        self.serve(false, "proxy", false, &list(&[15001]));
        self.serve(false, "proxy-inbound", tproxy, &list(&[15006]));
        self.serve(false, "app", false, &list(&[8080]));
        self.serve(false, "agent", false, &list(&[15020, 15021, 15090, 15008]));
        self.serve(true, "peer", false, &list(&[80, 7777]));
    }
}

/// Sends one UDP datagram from `ns` as `uid` with `outrigger-probe send-udp`; parses the answer.
pub fn send_udp_as(ns: &Netns, uid: u32, target: &str) -> Result<Answer, String> {
    let out = ns
        .command_as(uid, crate::bin("outrigger-probe"))
        .args(["send-udp", target, "--timeout-ms", "2000"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("bad answer: {e}"))
}

/// Runs `outrigger-probe connect` with `cmd` as the base command (`ns.command(..)` or
/// `ns.command_as(..)`) and parses the answer.
pub fn connect_with(
    mut cmd: Command,
    target: SocketAddr,
    bind: Option<IpAddr>,
) -> Result<Answer, String> {
    cmd.args(["connect", &target.to_string(), "--timeout-ms", "3000"]);
    if let Some(b) = bind {
        cmd.args(["--bind", &b.to_string()]);
    }
    let out: Output = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("bad answer {:?}: {e}", String::from_utf8_lossy(&out.stdout)))
}

/// Connects from `ns` as `uid`, sends `bytes` to an echo server, half-closes, and checks they
/// all come back. Returns the answer and the number of bytes echoed.
pub fn connect_send_as(
    ns: &Netns,
    uid: u32,
    target: &str,
    bytes: usize,
) -> Result<(Answer, usize), String> {
    let out = ns
        .command_as(uid, crate::bin("outrigger-probe"))
        .args([
            "connect",
            target,
            "--timeout-ms",
            "10000",
            "--send",
            &bytes.to_string(),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let answer: Answer = serde_json::from_str(lines.next().unwrap_or_default())
        .map_err(|e| format!("bad answer: {e}"))?;
    let echoed = lines
        .next()
        .and_then(|l| l.strip_prefix("echoed "))
        .and_then(|n| n.parse().ok())
        .ok_or("no echo count")?;
    Ok((answer, echoed))
}

/// Connects from `ns` as root.
pub fn connect(ns: &Netns, target: &str, bind: Option<&str>) -> Result<Answer, String> {
    let target: SocketAddr = target.parse().expect("target address");
    connect_with(
        ns.command(crate::bin("outrigger-probe")),
        target,
        bind.map(|b| b.parse().expect("bind ip")),
    )
}

/// Connects from `ns` as `uid`.
pub fn connect_as(
    ns: &Netns,
    uid: u32,
    target: &str,
    bind: Option<&str>,
) -> Result<Answer, String> {
    let target: SocketAddr = target.parse().expect("target address");
    connect_with(
        ns.command_as(uid, crate::bin("outrigger-probe")),
        target,
        bind.map(|b| b.parse().expect("bind ip")),
    )
}
