//! `cargo xtask demo`: a pod and a peer in throw-away network namespaces; outrigger-init installs
//! the default sidecar capture rules in the pod; test connections show where traffic lands.

use anyhow::{Result, anyhow};
use outrigger_testkit::init::{self, DEFAULT_SIDECAR as SIDECAR_ARGS, sidecar_with};
use outrigger_testkit::netns;
use outrigger_testkit::topology::{self, PEER_V4, POD_V4, PROXY_UID, PodPair};

use crate::{cargo, deps, step};

struct Probe {
    what: &'static str,
    from_peer: bool,
    uid: u32,
    target: String,
    bind: Option<&'static str>,
    expect: &'static str,
}

pub fn run() -> Result<()> {
    deps::ensure(deps::TEST)?;
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: deleting the demo's network namespaces");
        netns::delete_all();
        std::process::exit(130);
    })?;
    step("building outrigger-init and outrigger-probe");
    cargo(&[
        "build",
        "--quiet",
        "-p",
        "outrigger-init",
        "-p",
        "outrigger-testkit",
        "--bins",
    ])?;

    step(&format!(
        "creating a pod ({POD_V4}) and a peer ({PEER_V4}) in throw-away network namespaces"
    ));
    let mut t = PodPair::new("demo", false);
    step(
        "starting stand-ins: 'proxy' on :15001 and :15006, 'app' on :8080, 'agent' on :15020/:15021/:15090/:15008, 'peer' on :80",
    );
    t.start_servers(false, false);

    step(&format!(
        "outrigger-init {}",
        SIDECAR_ARGS
            .iter()
            .map(|a| if a.is_empty() || *a == "*" {
                format!("'{a}'")
            } else {
                a.to_string()
            })
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let out = init::run(
        &t.pod,
        &sidecar_with(&["--log_output_level=default:warn"]),
        &[],
    );
    if out.code != 0 {
        return Err(anyhow!("outrigger-init failed: {}", out.stderr));
    }

    let probes = [
        Probe {
            what: "app calls a service",
            from_peer: false,
            uid: 1000,
            target: format!("{PEER_V4}:80"),
            bind: None,
            expect: "proxy",
        },
        Probe {
            what: "proxy calls upstream",
            from_peer: false,
            uid: PROXY_UID,
            target: format!("{PEER_V4}:80"),
            bind: None,
            expect: "peer",
        },
        Probe {
            what: "client calls the app",
            from_peer: true,
            uid: 0,
            target: format!("{POD_V4}:8080"),
            bind: None,
            expect: "proxy-inbound",
        },
        Probe {
            what: "kubelet probes health",
            from_peer: true,
            uid: 0,
            target: format!("{POD_V4}:15021"),
            bind: None,
            expect: "agent",
        },
        Probe {
            what: "proxy forwards inbound",
            from_peer: false,
            uid: PROXY_UID,
            target: format!("{POD_V4}:8080"),
            bind: Some("127.0.0.6"),
            expect: "app",
        },
        Probe {
            what: "app calls localhost",
            from_peer: false,
            uid: 1000,
            target: "127.0.0.1:8080".into(),
            bind: None,
            expect: "app",
        },
    ];
    step("test connections");
    println!(
        "\n  {:<36} {:<6} {:<18} {:<22} original dst",
        "connection", "uid", "to", "landed on"
    );
    println!("  {}", "-".repeat(108));
    let mut ok = 0;
    for p in &probes {
        let ns = if p.from_peer { &t.peer } else { &t.pod };
        let result = topology::connect_as(ns, p.uid, &p.target, p.bind);
        let (landed, orig, good) = match &result {
            Ok(a) => (
                format!("{} :{}", a.server, a.listen_port),
                a.original_dst
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "-".into()),
                a.server == p.expect,
            ),
            Err(e) => (format!("failed: {e}"), "-".into(), false),
        };
        ok += usize::from(good);
        let from = match p.bind {
            Some(b) => format!("{} ({b})", p.what),
            None => p.what.to_string(),
        };
        println!(
            "  {:<36} {:<6} {:<18} {:<22} {:<20} {}",
            from,
            p.uid,
            p.target,
            landed,
            orig,
            if good { "✓" } else { "✗ unexpected" }
        );
    }
    println!();

    step("iptables -t nat -vnL in the pod (the view an operator gets with istio-init)");
    print!("{}", t.pod.ok("iptables", &["-t", "nat", "-vnL"]));

    step("re-running outrigger-init with the same flags (a no-op)");
    let again = init::run(&t.pod, SIDECAR_ARGS, &[]);
    println!(
        "  exit {}; {}",
        again.code,
        if again.stderr.contains("already in place") {
            "rules already in place, nothing changed"
        } else {
            "unexpected output"
        }
    );

    step("cleaning up: outrigger-init --cleanup-only, then deleting the namespaces");
    init::run(&t.pod, &sidecar_with(&["--cleanup-only"]), &[]);
    let left = t.pod.ok("iptables-save", &[]).matches("ISTIO").count();
    println!("  ISTIO_* references left after cleanup: {left}");
    drop(t);
    println!(
        "\nsummary: {ok}/{} connections landed where Istio's rules send them",
        probes.len()
    );
    if ok != probes.len() || left != 0 {
        return Err(anyhow!("the demo saw unexpected behaviour"));
    }
    Ok(())
}
