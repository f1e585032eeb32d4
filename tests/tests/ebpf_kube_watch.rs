//! `outrigger-agent run --pods-from kubernetes` end to end, but for the API server: no
//! kube-apiserver can be installed here, so a small HTTP server stands in for it and serves the
//! two requests kube-rs's watcher makes (the pod list with `fieldSelector=spec.nodeName=…`, then
//! a watch that adds a pod). Everything else is real: kube-rs reading a kubeconfig, the agent's
//! reflector and injection rules, the pod's process found through /proc by its UID in a
//! kubelet-style cgroup, the eBPF capture of the pod's connection.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use outrigger_testkit::ebpf::{Bpffs, Cgroup, pod_netns};
use outrigger_testkit::mesh::wait_for;
use outrigger_testkit::netns::{Background, Netns};
use outrigger_testkit::probe::Answer;

/// Lists the pods of pods.json (only for `spec.nodeName=node-a`); a watch sends the pods of
/// watch.json as ADDED events, then holds the stream open. Logs every request path to stderr.
const API_SERVER: &str = r#"
import http.server, json, sys, time, urllib.parse, os
d = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(u.query)
        sys.stderr.write("GET " + self.path + "\n"); sys.stderr.flush()
        if u.path != "/api/v1/pods":
            self.send_response(404); self.send_header("content-length", "0"); self.end_headers(); return
        node_ok = q.get("fieldSelector") == ["spec.nodeName=node-a"]
        if q.get("watch") in (["true"], ["1"]):
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            if node_ok:
                for pod in json.load(open(os.path.join(d, "watch.json"))):
                    line = (json.dumps({"type": "ADDED", "object": pod}) + "\n").encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line)); self.wfile.flush()
            time.sleep(30)
            self.wfile.write(b"0\r\n\r\n")
            return
        items = json.load(open(os.path.join(d, "pods.json"))) if node_ok else []
        body = json.dumps({"kind": "PodList", "apiVersion": "v1",
                           "metadata": {"resourceVersion": "1"}, "items": items}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[2])), H)
print("ready", flush=True)
srv.serve_forever()
"#;

fn pod_json(name: &str, uid: &str, ip: &str, rv: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "resourceVersion": rv,
                     "annotations": {"traffic.sidecar.istio.io/excludeOutboundPorts": "9000"}},
        "spec": {"nodeName": "node-a",
                 "containers": [{"name": "app"}, {"name": "istio-proxy"}],
                 "initContainers": [{"name": "istio-init"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

/// A pod netns with `ip` on a veth and blackholed service range, and a process in the pod's
/// kubelet-style cgroup (`kubepods/burstable/pod<uid>`).
fn pod(cg: &Cgroup, tag: &str, uid: &str, ip: &str) -> (Netns, std::path::PathBuf, Background) {
    let ns = pod_netns(tag, ip, None);
    let pod_cg = cg.child(&format!("kubepods/burstable/pod{uid}"));
    // The sidecar stand-in, as uid 1337: answers with SO_ORIGINAL_DST.
    let mut cmd = ns.command_in(
        &pod_cg,
        Some(1337),
        outrigger_testkit::bin("outrigger-probe"),
    );
    cmd.args(["serve", "--name", "proxy", "0.0.0.0:15001"]);
    let proxy = ns.spawn(cmd, true);
    (ns, pod_cg, proxy)
}

fn connect(ns: &Netns, cgroup: &Path, target: &str) -> Result<Answer, String> {
    let out = ns
        .command_in(cgroup, None, outrigger_testkit::bin("outrigger-probe"))
        .args(["connect", target, "--timeout-ms", "3000"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

#[test]
fn pods_from_the_kubernetes_api_are_captured() {
    let cg = Cgroup::new("kubewatch");
    let bpffs = Bpffs::new();
    let dir = std::env::temp_dir().join(format!("outrigger-kubeapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uid_a = format!("a0000000-0000-4000-8000-{:012x}", std::process::id());
    let uid_b = format!("b0000000-0000-4000-8000-{:012x}", std::process::id());
    let (ns_a, cg_a, _proxy_a) = pod(&cg, "kwa", &uid_a, "10.61.0.5");
    let (ns_b, cg_b, _proxy_b) = pod(&cg, "kwb", &uid_b, "10.61.0.6");
    // Pod a is in the list; pod b arrives through the watch.
    std::fs::write(
        dir.join("pods.json"),
        serde_json::to_string(&[pod_json("web-a", &uid_a, "10.61.0.5", "1")]).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("watch.json"),
        serde_json::to_string(&[pod_json("web-b", &uid_b, "10.61.0.6", "2")]).unwrap(),
    )
    .unwrap();

    let port = 16400 + (std::process::id() % 500) as u16;
    let mut api = Command::new("python3");
    api.args(["-c", API_SERVER])
        .arg(&dir)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("api.log")).unwrap());
    let mut api_child = api.spawn().expect("start the stand-in API server");
    {
        use std::io::BufRead;
        let mut line = String::new();
        let out = api_child.stdout.take().unwrap();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
    }
    let _api = Background::new(api_child);
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'http://127.0.0.1:{port}'}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
        ),
    )
    .unwrap();

    let log = dir.join("agent.log");
    let child = Command::new(outrigger_testkit::bin("outrigger-agent"))
        .args(["run", "--pods-from", "kubernetes", "--node-name", "node-a"])
        .arg("--cgroup")
        .arg(&cg.path)
        .arg("--bpffs")
        .arg(&bpffs.path)
        .args([
            "--http",
            &format!("127.0.0.1:{}", port + 1),
            "--resync-ms",
            "100",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start outrigger-agent");
    let mut agent = Background::new(child);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // Both pods are meshed: the listed one and the watched one.
    for (ns, cgroup, name) in [(&ns_a, &cg_a, "web-a"), (&ns_b, &cg_b, "web-b")] {
        let answer = wait_for(Duration::from_secs(15), || {
            connect(ns, cgroup, "10.200.0.1:80").ok()
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} was not captured:\n{}\nAPI requests:\n{}",
                log_text(),
                std::fs::read_to_string(dir.join("api.log")).unwrap_or_default()
            )
        });
        assert_eq!(answer.original_dst, Some("10.200.0.1:80".parse().unwrap()));
        // The pod's annotation came along.
        assert!(
            connect(ns, cgroup, "10.200.0.1:9000").is_err(),
            "{name}: port 9000 excluded"
        );
    }
    let requests = std::fs::read_to_string(dir.join("api.log")).unwrap_or_default();
    assert!(
        requests.contains("fieldSelector=spec.nodeName%3Dnode-a"),
        "the watch is limited to this node: {requests}"
    );
    assert!(
        log_text().contains("web-a.shop") && log_text().contains("web-b.shop"),
        "{}",
        log_text()
    );

    agent.terminate();
    let _ = Command::new(outrigger_testkit::bin("outrigger-agent"))
        .args(["detach", "--bpffs"])
        .arg(&bpffs.path)
        .status();
    let _ = std::fs::remove_dir_all(&dir);
}
