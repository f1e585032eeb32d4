//! A small mesh on one machine: pods in their own network namespaces joined by a bridge, each with
//! outrigger-init's capture rules and an outrigger-proxy sidecar, all configured by one
//! outrigger-pilot from a directory of Istio YAML.
//!
//! ```text
//!              hub netns: br0
//!        ┌──────────┼───────────┐
//!  client 10.30.0.10   bill-v1 10.30.0.11   bill-v2 10.30.0.12   (each: iptables + proxy + app)
//! ```
//!
//! Everything is removed when the `Mesh` drops: processes first, then namespaces, then the
//! configuration copy.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::netns::{Background, Netns};
use crate::topology::PROXY_UID;

pub struct Pod {
    pub name: String,
    pub ip: String,
    pub ns: Netns,
}

pub struct Mesh {
    // Declared first: dropped (killed) before the namespaces they live in.
    processes: Vec<Background>,
    pub pods: Vec<Pod>,
    _hub: Netns,
    /// The configuration directory outrigger-pilot watches (a copy the caller may edit).
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// Where sidecars find the pilot: its Unix socket (default) or `10.30.0.1:15010` (the
    /// pilot also listens on the bridge).
    pub xds_address: String,
    /// Sidecars use state-of-the-world xDS instead of Delta.
    pub sotw: bool,
    /// Capture by eBPF instead of iptables: no outrigger-init rules, and the sidecars and the
    /// clients run in this cgroup v2 directory, where outrigger-agent's programs are attached.
    pub ebpf_cgroup: Option<PathBuf>,
    /// More environment for the sidecars started next (`ISTIO_META_*` as a pod spec sets them).
    pub sidecar_env: Vec<(String, String)>,
    tag: String,
}

/// What pilot-agent passes to Envoy besides `-c` (Istio 1.2x).
pub const PILOT_AGENT_FLAGS: [&str; 16] = [
    "--drain-time-s",
    "45",
    "--drain-strategy",
    "immediate",
    "--local-address-ip-version",
    "v4",
    "--file-flush-interval-msec",
    "1000",
    "--disable-hot-restart",
    "--allow-unknown-static-fields",
    "-l",
    "warning",
    "--component-log-level",
    "misc:error",
    "--concurrency",
    "1",
];

/// The pilot's address on the bridge.
pub const PILOT_TCP: &str = "10.30.0.1:15010";

/// Waits until `f` returns `Some`, polling every 50 ms for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One response of `curl`: the status and the body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub body: String,
}

impl Reply {
    /// The `server` field of an `outrigger-probe serve-http` answer.
    pub fn server(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        v.get("server")?.as_str().map(String::from)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

impl Mesh {
    /// A bridge, a copy of the YAML files of `config` and an outrigger-pilot serving them.
    pub fn new(tag: &str, config: &Path) -> Mesh {
        crate::require_root();
        let hub = Netns::new(&format!("{tag}hub"));
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.ip(&["link", "set", "br0", "up"]);
        let dir = std::env::temp_dir().join(format!("outrigger-mesh-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the mesh directory");
        for entry in std::fs::read_dir(config)
            .expect("read the mesh configuration")
            .flatten()
        {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                std::fs::copy(&p, dir.join(entry.file_name())).expect("copy configuration");
            }
        }
        let socket = dir.join("xds.sock");
        hub.ip(&["addr", "add", "10.30.0.1/24", "dev", "br0"]);
        // In the hub namespace: reachable over TCP from the pods, and over the socket file.
        let child = hub
            .command(crate::bin("outrigger-pilot"))
            .arg("serve")
            .arg(&dir)
            .args([
                "--listen",
                &format!("unix:{}", socket.display()),
                "--listen",
                PILOT_TCP,
            ])
            .args(["--poll-ms", "100", "--debounce-ms", "50", "--log", "warn"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start outrigger-pilot");
        let mesh = Mesh {
            processes: vec![Background::new(child)],
            pods: Vec::new(),
            _hub: hub,
            dir: dir.clone(),
            socket: socket.clone(),
            xds_address: format!("unix:{}", socket.display()),
            sotw: false,
            ebpf_cgroup: None,
            sidecar_env: Vec::new(),
            tag: tag.into(),
        };
        assert!(
            wait_for(Duration::from_secs(10), || socket.exists().then_some(())).is_some(),
            "outrigger-pilot did not start"
        );
        mesh
    }

    /// A pod `name` with `ip` (on 10.30.0.0/24) attached to the bridge, with a default route and
    /// `hosts` entries for name resolution.
    pub fn add_pod(&mut self, name: &str, ip: &str, hosts: &str) -> usize {
        let i = self.pods.len();
        let ns = Netns::new(&format!("{}{i}", self.tag));
        let hub_end = format!("h{i}");
        ns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", &hub_end,
        ]);
        ns.ip(&["link", "set", &hub_end, "netns", self._hub.name()]);
        self._hub.ip(&["link", "set", &hub_end, "master", "br0"]);
        self._hub.ip(&["link", "set", &hub_end, "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        // Service VIPs are not on any link: they only need a route to be captured.
        ns.ip(&["route", "add", "default", "dev", "eth0"]);
        ns.set_hosts(&format!("127.0.0.1 localhost\n{hosts}"));
        self.pods.push(Pod {
            name: name.into(),
            ip: ip.into(),
            ns,
        });
        i
    }

    /// Installs Istio's capture rules in the pod and starts its sidecar (uid 1337) against the
    /// pilot; waits until the proxy is ready (first configuration applied).
    pub fn sidecar(&mut self, pod: usize, labels: &[(&str, &str)]) {
        let mut source = vec!["--xds-address".to_string(), self.xds_address.clone()];
        if self.sotw {
            source.push("--sotw".into());
        }
        self.sidecar_with(pod, labels, &source);
    }

    /// Started in Envoy's place, as pilot-agent starts it: `-c BOOTSTRAP` and Envoy's flags.
    pub fn sidecar_envoy(&mut self, pod: usize, labels: &[(&str, &str)], bootstrap: &Path) {
        let source = vec!["-c".to_string(), bootstrap.display().to_string()];
        self.sidecar_with(pod, labels, &source);
    }

    /// The same with the control plane embedded in the proxy (`--mesh-config DIR`).
    pub fn sidecar_embedded(&mut self, pod: usize, labels: &[(&str, &str)]) {
        let source = vec!["--mesh-config".to_string(), self.dir.display().to_string()];
        self.sidecar_with(pod, labels, &source);
    }

    fn sidecar_with(&mut self, pod: usize, labels: &[(&str, &str)], source: &[String]) {
        let p = &self.pods[pod];
        if self.ebpf_cgroup.is_none() {
            crate::init::run_ok(&p.ns, crate::init::DEFAULT_SIDECAR, &[]);
        }
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
            .collect();
        let mut cmd = match &self.ebpf_cgroup {
            Some(cg) => {
                p.ns.command_in(cg, Some(PROXY_UID), crate::bin("outrigger-proxy"))
            }
            None => p.ns.command_as(PROXY_UID, crate::bin("outrigger-proxy")),
        };
        if source.first().map(String::as_str) == Some("-c") {
            // Started as pilot-agent starts Envoy: the bootstrap and Envoy's flags; the identity
            // from the environment.
            cmd.args(source).args(PILOT_AGENT_FLAGS);
        } else {
            cmd.arg("run")
                .args(source)
                .args(["--concurrency", "1", "--log", "warn"]);
        }
        cmd.env("POD_NAME", &p.name)
            .env("POD_NAMESPACE", "default")
            .env("INSTANCE_IP", &p.ip)
            .env(
                "ISTIO_METAJSON_LABELS",
                serde_json::Value::Object(labels).to_string(),
            );
        cmd.envs(self.sidecar_env.iter().map(|(k, v)| (k, v)));
        let bg = p.ns.spawn(cmd, false);
        self.processes.push(bg);
        let ready = wait_for(Duration::from_secs(15), || {
            let out = p.ns.output(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "1",
                    "http://127.0.0.1:15021/healthz/ready",
                ],
            );
            (String::from_utf8_lossy(&out.stdout) == "200").then_some(())
        });
        assert!(
            ready.is_some(),
            "the sidecar of {} did not become ready",
            p.name
        );
    }

    /// Starts the app: an HTTP server named `name` on 0.0.0.0:`port`.
    pub fn app_http(&mut self, pod: usize, name: &str, port: u16) {
        let p = &self.pods[pod];
        let mut cmd = p.ns.command(crate::bin("outrigger-probe"));
        cmd.args(["serve-http", "--name", name, &format!("0.0.0.0:{port}")]);
        let bg = p.ns.spawn(cmd, true);
        self.processes.push(bg);
    }

    /// Starts the app: a TCP server that answers with its name and echoes (tcp-echo style).
    pub fn app_echo(&mut self, pod: usize, name: &str, port: u16) {
        let p = &self.pods[pod];
        let mut cmd = p.ns.command(crate::bin("outrigger-probe"));
        cmd.args([
            "serve",
            "--echo",
            "--name",
            name,
            &format!("0.0.0.0:{port}"),
        ]);
        let bg = p.ns.spawn(cmd, true);
        self.processes.push(bg);
    }

    /// Starts a long-running process in the pod (as root, outside any capture rule the pod has
    /// for uid 1000), which prints `ready` once it serves; killed with the mesh.
    pub fn background(&mut self, pod: usize, program: &str, args: &[&str]) {
        let p = &self.pods[pod];
        let mut cmd = p.ns.command(program);
        cmd.args(args);
        let bg = p.ns.spawn(cmd, true);
        self.processes.push(bg);
    }

    /// The pods as outrigger-agent's pod file lists them (network namespace, address).
    pub fn agent_pods(&self) -> String {
        let mut out = String::from("pods:\n");
        for p in &self.pods {
            out.push_str(&format!(
                "- name: {}\n  netns: /run/netns/{}\n  ips: [{}]\n",
                p.name,
                p.ns.name(),
                p.ip
            ));
        }
        out
    }

    /// Writes a configuration file atomically (write, then rename), as an editor would.
    pub fn write_config(&self, file: &str, content: &str) {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, content).expect("write configuration");
        std::fs::rename(&tmp, self.dir.join(file)).expect("rename configuration");
    }

    /// `count` requests to `url` from the pod as an app user (uid 1000), over one keep-alive
    /// connection: one real curl, many transfers. `extra` are more curl arguments (headers).
    pub fn curl_many(&self, pod: usize, url: &str, count: usize, extra: &[&str]) -> Vec<Reply> {
        let p = &self.pods[pod];
        let list = self.dir.join(format!(".urls-{pod}"));
        let lines: String = (0..count).map(|_| format!("url = \"{url}\"\n")).collect();
        std::fs::write(&list, lines).expect("write the URL list");
        let mut curl = match &self.ebpf_cgroup {
            Some(cg) => p.ns.command_in(cg, Some(1000), "curl"),
            None => p.ns.command_as(1000, "curl"),
        };
        let out = curl
            .args(["-s", "--max-time", "60", "-w", " %{http_code}\\n", "-K"])
            .arg(&list)
            .args(extra)
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter_map(|l| {
                let (body, code) = l.rsplit_once(' ')?;
                Some(Reply {
                    code: code.parse().ok()?,
                    body: body.to_string(),
                })
            })
            .collect()
    }

    /// One request.
    pub fn curl(&self, pod: usize, url: &str, extra: &[&str]) -> Reply {
        self.curl_many(pod, url, 1, extra).pop().unwrap_or(Reply {
            code: 0,
            body: String::new(),
        })
    }

    /// Counts replies by `server` (or `status NNN` for answers that are not the app's).
    pub fn tally(replies: &[Reply]) -> std::collections::BTreeMap<String, usize> {
        let mut t = std::collections::BTreeMap::new();
        for r in replies {
            let key = match (r.code, r.server()) {
                (200, Some(s)) => s,
                (code, _) => format!("status {code}"),
            };
            *t.entry(key).or_insert(0) += 1;
        }
        t
    }

    /// The pod's proxy admin endpoint (`/stats`, `/config_dump`, …).
    pub fn admin(&self, pod: usize, path: &str) -> String {
        self.pods[pod].ns.ok(
            "curl",
            &[
                "-s",
                "--max-time",
                "3",
                &format!("http://127.0.0.1:15000{path}"),
            ],
        )
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for p in self.processes.iter_mut().rev() {
            p.terminate();
        }
        self.processes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
