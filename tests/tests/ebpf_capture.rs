//! The eBPF capture on the real kernel: outrigger-agent attaches `ebpf/capture.bpf.o` to a cgroup
//! this test made, pods are network namespaces this test made, and every process that should be
//! captured is put in that cgroup. Service addresses (10.200.0.0/16, fd00:200::/64) are
//! blackholed in the pods, so a connect that is not redirected fails at once (EINVAL) and no
//! packet can leave.

use std::path::Path;
use std::time::Duration;

use outrigger_testkit::ebpf::{Agent, Bpffs, Cgroup, attached_programs, pod_netns};
use outrigger_testkit::mesh::wait_for;
use outrigger_testkit::netns::{Background, Netns};
use outrigger_testkit::probe::Answer;

const PROXY_UID: u32 = 1337;

/// A pod: a namespace with an address per family on eth0 and blackholed service ranges.
fn pod(tag: &str, last: u8) -> Netns {
    pod_netns(
        tag,
        &format!("10.40.0.{last}"),
        Some(&format!("fd00:40::{last}")),
    )
}

fn pod_entry(name: &str, ns: &Netns, last: u8, annotations: &[(&str, &str)]) -> String {
    let mut s = format!(
        "- name: {name}\n  netns: /run/netns/{}\n  ips: [10.40.0.{last}, 'fd00:40::{last}']\n",
        ns.name()
    );
    if !annotations.is_empty() {
        s.push_str("  annotations:\n");
        for (k, v) in annotations {
            s.push_str(&format!("    {k}: '{v}'\n"));
        }
    }
    s
}

fn pods(entries: &[String]) -> String {
    format!("pods:\n{}", entries.concat())
}

/// The stand-in sidecar: `outrigger-probe serve` on 15001 (both families), as uid 1337, in the
/// cgroup; it answers each connection with its SO_ORIGINAL_DST.
fn proxy(ns: &Netns, cgroup: &Path, echo: bool) -> Background {
    let mut cmd = ns.command_in(
        cgroup,
        Some(PROXY_UID),
        outrigger_testkit::bin("outrigger-probe"),
    );
    cmd.args(["serve", "--name", "proxy"]);
    if echo {
        cmd.arg("--echo");
    }
    cmd.args(["0.0.0.0:15001", "[::]:15001"]);
    ns.spawn(cmd, true)
}

/// `outrigger-probe connect --show-peer` from the pod, in `cgroup` (or not), as `uid` (or root).
fn connect(
    ns: &Netns,
    cgroup: Option<&Path>,
    uid: Option<u32>,
    target: &str,
    extra: &[&str],
) -> Result<(Answer, String), String> {
    let probe = outrigger_testkit::bin("outrigger-probe");
    let mut cmd = match (cgroup, uid) {
        (Some(cg), uid) => ns.command_in(cg, uid, probe),
        (None, Some(uid)) => ns.command_as(uid, probe),
        (None, None) => ns.command(probe),
    };
    cmd.args(["connect", target, "--timeout-ms", "5000", "--show-peer"])
        .args(extra);
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let answer: Answer = serde_json::from_str(lines.next().unwrap_or_default())
        .map_err(|e| format!("bad answer {text:?}: {e}"))?;
    Ok((answer, lines.collect::<Vec<_>>().join("\n")))
}

#[test]
fn outbound_connects_reach_the_proxy_with_their_original_destination() {
    let cg = Cgroup::new("capture");
    let bpffs = Bpffs::new();
    let ns = pod("ebpfa", 5);
    let agent = Agent::start(&cg.path, &bpffs, &pods(&[pod_entry("a", &ns, 5, &[])]), &[]);
    let _proxy = proxy(&ns, &cg.path, false);

    let programs = attached_programs(&cg.path);
    for p in [
        "outrigger_connect4",
        "outrigger_connect6",
        "outrigger_sockops",
        "outrigger_getsockopt",
        "outrigger_getpeername4",
    ] {
        assert!(programs.contains(p), "{p} not attached:\n{programs}");
    }

    // IPv4: the proxy reads the service address with SO_ORIGINAL_DST, sees the pod IP as the
    // peer (as after an iptables REDIRECT), and the app's getpeername() is the service.
    let (answer, rest) =
        connect(&ns, Some(&cg.path), None, "10.200.0.1:80", &[]).expect("v4 connect");
    assert_eq!(answer.server, "proxy");
    assert_eq!(answer.listen_port, 15001);
    assert_eq!(answer.original_dst, Some("10.200.0.1:80".parse().unwrap()));
    assert_eq!(
        answer.peer.map(|p| p.ip().to_string()),
        Some("10.40.0.5".into())
    );
    assert_eq!(rest, "peer 10.200.0.1:80");

    // IPv6: IP6T_SO_ORIGINAL_DST, the pod's IPv6 address as the peer.
    let (answer, rest) =
        connect(&ns, Some(&cg.path), None, "[fd00:200::7]:8080", &[]).expect("v6 connect");
    assert_eq!(answer.listen_port, 15001);
    assert_eq!(
        answer.original_dst,
        Some("[fd00:200::7]:8080".parse().unwrap())
    );
    assert_eq!(
        answer.peer.map(|p| p.ip().to_string()),
        Some("fd00:40::5".into())
    );
    assert_eq!(rest, "peer [fd00:200::7]:8080");

    assert!(agent.counter("redirected") >= 2, "{}", agent.status());
    assert!(agent.counter("getsockopt_hit") >= 2, "{}", agent.status());
    assert!(
        agent.counter("getpeername_rewritten") >= 2,
        "{}",
        agent.status()
    );
    // The connection maps are emptied as connections close.
    let drained = wait_for(Duration::from_secs(5), || {
        let s = agent.status();
        let maps = &s["sets"][0]["maps"];
        (maps["cookie_orig"]["entries"] == 0 && maps["tuple_orig"]["entries"] == 0).then_some(())
    });
    assert!(drained.is_some(), "maps not cleaned: {}", agent.status());
}

#[test]
fn other_getsockopt_calls_get_the_kernels_own_answer() {
    let cg = Cgroup::new("sockopt");
    let bpffs = Bpffs::new();
    let ns = pod("ebpfg", 11);
    let _agent = Agent::start(
        &cg.path,
        &bpffs,
        &pods(&[pod_entry("g", &ns, 11, &[])]),
        &[],
    );
    // Every other getsockopt in the cgroup is the kernel's own answer, including options larger
    // than a page (which a cgroup/getsockopt program cannot see) and SO_ORIGINAL_DST on a
    // socket the capture did not redirect. libc's getsockopt through ctypes: Python's own
    // socket.getsockopt caps the buffer at 1024 bytes.
    let script = r#"
import ctypes, socket, errno
libc = ctypes.CDLL(None, use_errno=True)
def opt(s, level, name, size):
    buf = ctypes.create_string_buffer(size)
    ln = ctypes.c_uint32(size)
    rc = libc.getsockopt(s.fileno(), level, name, buf, ctypes.byref(ln))
    return rc, ctypes.get_errno(), ln.value
s = socket.socket()
print("tcp_info", *opt(s, socket.IPPROTO_TCP, 11, 8192))
print("rcvbuf", *opt(s, socket.SOL_SOCKET, socket.SO_RCVBUF, 4))
print("orig_dst", *opt(s, socket.SOL_IP, 80, 16))
"#;
    let out = ns
        .command_in(&cg.path, None, "python3")
        .args(["-c", script])
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let fields = |name: &str| -> Vec<i64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(|r| r.split(' ').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default()
    };
    let tcp_info = fields("tcp_info");
    assert_eq!(tcp_info.first(), Some(&0), "{text}");
    assert!(
        tcp_info[2] > 100 && tcp_info[2] < 8192,
        "TCP_INFO length: {text}"
    );
    assert_eq!(fields("rcvbuf"), vec![0, 0, 4], "{text}");
    assert_eq!(
        fields("orig_dst")[..2],
        [-1, 2],
        "ENOENT from the kernel: {text}"
    );
}

#[test]
fn proxy_loopback_excluded_and_unmeshed_traffic_is_left_alone() {
    let cg = Cgroup::new("skip");
    let bpffs = Bpffs::new();
    let ns = pod("ebpfb", 6);
    let other = pod("ebpfc", 7); // in the cgroup, but not a meshed pod
    let meshed = |annotations: &[(&str, &str)]| pods(&[pod_entry("b", &ns, 6, annotations)]);
    let agent = Agent::start(
        &cg.path,
        &bpffs,
        &meshed(&[("traffic.sidecar.istio.io/excludeOutboundPorts", "9000,9001")]),
        &[],
    );
    let _proxy = proxy(&ns, &cg.path, false);
    let redirected = |ns: &Netns, cgroup: Option<&Path>, uid: Option<u32>, target: &str| {
        connect(ns, cgroup, uid, target, &[]).is_ok()
    };

    assert!(redirected(&ns, Some(&cg.path), None, "10.200.0.1:80"));
    // The sidecar's own connects (uid 1337) are never redirected.
    assert!(!redirected(
        &ns,
        Some(&cg.path),
        Some(PROXY_UID),
        "10.200.0.1:80"
    ));
    // Excluded ports.
    assert!(!redirected(&ns, Some(&cg.path), None, "10.200.0.1:9000"));
    assert!(!redirected(&ns, Some(&cg.path), None, "[fd00:200::1]:9001"));
    // Outside the cgroup, and from a namespace that is not a meshed pod.
    assert!(!redirected(&ns, None, None, "10.200.0.1:80"));
    let _other_proxy = proxy(&other, &cg.path, false);
    assert!(!redirected(&other, Some(&cg.path), None, "10.200.0.1:80"));
    // Loopback is the app's own business: a direct connect to 15001 is not "redirected".
    let (answer, _) = connect(&ns, Some(&cg.path), None, "127.0.0.1:15001", &[]).expect("loopback");
    assert_eq!(answer.original_dst, None);
    assert!(agent.counter("skip_proxy") >= 1);
    assert!(agent.counter("skip_excluded") >= 2);
    assert!(agent.counter("skip_loopback") >= 1);
    assert!(agent.counter("not_meshed") >= 1);

    // includeOutboundIPRanges: only 10.200.1.0/24 goes to the proxy. Applied live.
    agent.write_pods(&meshed(&[(
        "traffic.sidecar.istio.io/includeOutboundIPRanges",
        "10.200.1.0/24",
    )]));
    let applied = wait_for(Duration::from_secs(5), || {
        (!redirected(&ns, Some(&cg.path), None, "10.200.2.1:80")).then_some(())
    });
    assert!(
        applied.is_some(),
        "the new annotation was not applied:\n{}",
        agent.log_text()
    );
    assert!(redirected(&ns, Some(&cg.path), None, "10.200.1.1:80"));
    assert!(redirected(&ns, Some(&cg.path), None, "10.200.1.1:9000"));

    // excludeOutboundIPRanges wins over the default "*"; includeOutboundPorts brings a port
    // back whatever the range (istio-iptables' order).
    agent.write_pods(&meshed(&[
        (
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "10.200.3.0/24,fd00:200::3/128",
        ),
        ("traffic.sidecar.istio.io/includeOutboundIPRanges", ""),
        ("traffic.sidecar.istio.io/includeOutboundPorts", "5432"),
    ]));
    let applied = wait_for(Duration::from_secs(5), || {
        (!redirected(&ns, Some(&cg.path), None, "10.200.1.1:80")).then_some(())
    });
    assert!(applied.is_some(), "{}", agent.log_text());
    assert!(!redirected(&ns, Some(&cg.path), None, "10.200.3.1:80"));
    assert!(!redirected(&ns, Some(&cg.path), None, "[fd00:200::3]:80"));
    assert!(redirected(&ns, Some(&cg.path), None, "10.200.2.1:5432"));
    assert!(redirected(&ns, Some(&cg.path), None, "[fd00:200::4]:5432"));
    // Excluded ranges come before included ports.
    assert!(!redirected(&ns, Some(&cg.path), None, "10.200.3.1:5432"));

    // A bad annotation value: the pod is left to iptables (not redirected), the log and the
    // metrics say why, and nothing else changes.
    agent.write_pods(&meshed(&[(
        "traffic.sidecar.istio.io/excludeOutboundPorts",
        "http",
    )]));
    let left = wait_for(Duration::from_secs(5), || {
        (!redirected(&ns, Some(&cg.path), None, "10.200.2.1:5432")).then_some(())
    });
    assert!(
        left.is_some(),
        "the pod with a bad annotation stayed meshed"
    );
    let log = agent.log_text();
    assert!(
        log.contains("traffic.sidecar.istio.io/excludeOutboundPorts") && log.contains("\"http\""),
        "{log}"
    );
    assert!(
        agent
            .get("/metrics")
            .contains("outrigger_agent_pod_errors 1")
    );
}

#[test]
fn sockmap_splices_both_ways_with_large_transfers_and_half_close() {
    let cg = Cgroup::new("sockmap");
    let bpffs = Bpffs::new();
    let ns = pod("ebpfd", 8);
    let agent = Agent::start(
        &cg.path,
        &bpffs,
        &pods(&[pod_entry("d", &ns, 8, &[])]),
        &["--sockmap"],
    );
    let _proxy = proxy(&ns, &cg.path, true);
    // 8 MiB each way: the client writes, half-closes, and must read every byte back; the proxy
    // (echo) half-closes after the client's FIN reached it.
    for target in ["10.200.0.1:80", "[fd00:200::1]:80"] {
        let (answer, rest) = connect(
            &ns,
            Some(&cg.path),
            None,
            target,
            &["--send", &(8 << 20).to_string()],
        )
        .unwrap_or_else(|e| panic!("{target}: {e}"));
        assert_eq!(answer.original_dst, Some(target.parse().unwrap()));
        assert!(rest.contains(&format!("echoed {}", 8 << 20)), "{rest}");
    }
    assert!(
        agent.counter("sockhash_inserted") >= 4,
        "{}",
        agent.status()
    );
    assert!(agent.counter("msg_redirected") >= 2, "{}", agent.status());
    // Closed sockets leave the SOCKHASH.
    let empty = wait_for(Duration::from_secs(5), || {
        (agent.status()["sets"][0]["maps"]["sock_pairs"]["entries"] == 0).then_some(())
    });
    assert!(empty.is_some(), "{}", agent.status());
}

#[test]
fn dns_to_port_53_goes_to_the_dns_proxy_and_answers_come_from_the_resolver() {
    let cg = Cgroup::new("dns");
    let bpffs = Bpffs::new();
    let ns = pod("ebpfe", 9);
    let _agent = Agent::start(
        &cg.path,
        &bpffs,
        &pods(&[pod_entry("e", &ns, 9, &[])]),
        &["--dns-capture"],
    );
    let mut dns = ns.command_in(
        &cg.path,
        Some(PROXY_UID),
        outrigger_testkit::bin("outrigger-probe"),
    );
    dns.args([
        "serve-udp",
        "--name",
        "dns-proxy",
        "127.0.0.1:15053",
        "[::1]:15053",
    ]);
    let _dns = ns.spawn(dns, true);
    // connect() + send (glibc's resolver), and sendto() on an unconnected socket, both families.
    for (target, extra) in [
        ("10.200.0.53:53", None),
        ("10.200.0.53:53", Some("--unconnected")),
        ("[fd00:200::53]:53", None),
        ("[fd00:200::53]:53", Some("--unconnected")),
    ] {
        let out = ns
            .command_in(&cg.path, None, outrigger_testkit::bin("outrigger-probe"))
            .args(["send-udp", target, "--timeout-ms", "3000", "--show-peer"])
            .args(extra)
            .output()
            .expect("run send-udp");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{target} {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("\"server\":\"dns-proxy\""), "{text}");
        assert!(
            text.contains(&format!("from {target}")),
            "{target} {extra:?}: {text}"
        );
    }
}

#[test]
fn capture_survives_agent_restart_and_detach_leaves_nothing() {
    let cg = Cgroup::new("restart");
    let bpffs = Bpffs::new();
    let ns = pod("ebpff", 10);
    let mut agent = Agent::start(
        &cg.path,
        &bpffs,
        &pods(&[pod_entry("f", &ns, 10, &[])]),
        &[],
    );
    let _proxy = proxy(&ns, &cg.path, false);
    assert!(connect(&ns, Some(&cg.path), None, "10.200.0.1:80", &[]).is_ok());

    // Stopped: the pinned links keep the capture attached.
    agent.stop();
    let (answer, _) =
        connect(&ns, Some(&cg.path), None, "10.200.0.1:81", &[]).expect("still captured");
    assert_eq!(answer.original_dst, Some("10.200.0.1:81".parse().unwrap()));

    // Started again: the pins are adopted, not attached twice.
    agent.restart();
    let adopted = wait_for(Duration::from_secs(5), || {
        agent
            .log_text()
            .contains("adopted the pinned capture")
            .then_some(())
    });
    assert!(adopted.is_some(), "{}", agent.log_text());
    let programs = attached_programs(&cg.path);
    assert_eq!(
        programs.matches("outrigger_connect4").count(),
        1,
        "{programs}"
    );
    assert!(connect(&ns, Some(&cg.path), None, "10.200.0.1:82", &[]).is_ok());

    // Detach: no pin, no program on the cgroup, no redirect.
    agent.stop();
    let out = agent.detach();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(bpffs.pins(), Vec::<String>::new());
    let gone = wait_for(Duration::from_secs(5), || {
        (!attached_programs(&cg.path).contains("outrigger")).then_some(())
    });
    assert!(gone.is_some(), "{}", attached_programs(&cg.path));
    assert!(connect(&ns, Some(&cg.path), None, "10.200.0.1:80", &[]).is_err());
}

#[test]
fn a_cgroup_v1_or_missing_cgroup_leaves_iptables_in_charge() {
    let bpffs = Bpffs::new();
    let not_cgroup2 = std::env::temp_dir().join(format!("outrigger-notcg-{}", std::process::id()));
    std::fs::create_dir_all(&not_cgroup2).unwrap();
    let agent = Agent::start(&not_cgroup2, &bpffs, "pods: []\n", &[]);
    let health = agent.get("/healthz");
    assert!(health.starts_with("ok: iptables-only"), "{health}");
    assert!(health.contains("not a cgroup v2 directory"), "{health}");
    assert!(
        agent
            .get("/metrics")
            .contains("outrigger_agent_capture_mode{mode=\"iptables-only\"} 1")
    );
    assert_eq!(bpffs.pins(), Vec::<String>::new());
    drop(agent);
    let _ = std::fs::remove_dir(&not_cgroup2);

    // The probe says the same, with exit code 3.
    let out = std::process::Command::new(outrigger_testkit::bin("outrigger-agent"))
        .args(["probe", "--cgroup", "/nonexistent-cgroup"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no such directory"));
}

#[test]
fn a_missing_bpffs_is_mounted_and_capture_works() {
    let cg = Cgroup::new("mountfs");
    // A plain directory where bpffs should be: the agent mounts one there.
    let dir = std::env::temp_dir().join(format!("outrigger-nobpffs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = Bpffs { path: dir.clone() };
    let ns = pod("ebpfh", 12);
    let agent = Agent::start(&cg.path, &fake, &pods(&[pod_entry("h", &ns, 12, &[])]), &[]);
    assert!(
        agent.log_text().contains("mounted bpffs"),
        "{}",
        agent.log_text()
    );
    let _proxy = proxy(&ns, &cg.path, false);
    let (answer, _) = connect(&ns, Some(&cg.path), None, "10.200.0.1:80", &[]).expect("captured");
    assert_eq!(answer.original_dst, Some("10.200.0.1:80".parse().unwrap()));
    assert!(!fake.pins().is_empty());
    // Dropping `fake` (after the agent) unpins and unmounts what the agent mounted.
}
