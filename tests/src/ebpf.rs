//! What the eBPF capture tests need besides namespaces: a cgroup v2 directory of their own, a
//! private bpffs, and outrigger-agent running against them. Each guard undoes its part on drop,
//! also when a test fails: the agent's pins are removed (which detaches the programs), the
//! cgroup is emptied and removed, the bpffs and any cgroup2 mount the test made are unmounted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::mesh::wait_for;
use crate::netns::Background;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "outrigger-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn mount_point(fstype: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == fstype)
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// A cgroup v2 directory made for one test, under the machine's cgroup2 mount or, where there is
/// none (cgroup v1 hosts), under a cgroup2 mount the test makes and removes.
pub struct Cgroup {
    pub path: PathBuf,
    own_mount: Option<PathBuf>,
}

impl Cgroup {
    pub fn new(tag: &str) -> Cgroup {
        crate::require_root();
        let (base, own_mount) = match mount_point("cgroup2") {
            Some(m) => (m, None),
            None => {
                let m = std::env::temp_dir().join(unique("cgroup2"));
                std::fs::create_dir_all(&m).expect("create the cgroup2 mount point");
                let out = Command::new("mount")
                    .args(["-t", "cgroup2", "none"])
                    .arg(&m)
                    .output()
                    .expect("run mount");
                assert!(
                    out.status.success(),
                    "cannot mount cgroup2 (the eBPF capture needs it): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                (m.clone(), Some(m))
            }
        };
        let path = base.join(unique(tag));
        std::fs::create_dir(&path).expect("create the test cgroup");
        Cgroup { path, own_mount }
    }

    /// A child cgroup (a "pod" under the attach point).
    pub fn child(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).expect("create a child cgroup");
        p
    }

    fn kill_all(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    Self::kill_all(&e.path());
                }
            }
        }
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    fn remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    Self::remove(&e.path());
                }
            }
        }
        // A cgroup can only go once its processes are gone: retry briefly.
        for _ in 0..50 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        Self::kill_all(&self.path);
        Self::remove(&self.path);
        if let Some(m) = &self.own_mount {
            let _ = Command::new("umount").arg(m).status();
            let _ = std::fs::remove_dir(m);
        }
    }
}

/// A pod for capture tests: a namespace with `ip4` (/24) and `ip6` (/64) on a veth `eth0`, and
/// the service ranges 10.200.0.0/16 and fd00:200::/64 blackholed, so that a connect the capture
/// does not redirect fails at once and no packet leaves.
pub fn pod_netns(tag: &str, ip4: &str, ip6: Option<&str>) -> crate::netns::Netns {
    let ns = crate::netns::Netns::new(tag);
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["link", "set", "eth0p", "up"]);
    ns.ip(&["addr", "add", &format!("{ip4}/24"), "dev", "eth0"]);
    ns.ip(&["route", "add", "blackhole", "10.200.0.0/16"]);
    if let Some(ip6) = ip6 {
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ip6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ns.ip(&["-6", "route", "add", "blackhole", "fd00:200::/64"]);
    }
    ns
}

/// A private bpffs mount for one test's pins.
pub struct Bpffs {
    pub path: PathBuf,
}

impl Bpffs {
    pub fn new() -> Bpffs {
        let path = std::env::temp_dir().join(unique("bpffs"));
        std::fs::create_dir_all(&path).expect("create the bpffs mount point");
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount bpffs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Bpffs { path }
    }

    /// The pins outrigger-agent left (its directory under the mount).
    pub fn pins(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect(&self.path.join("outrigger"), &self.path, &mut out);
        out.sort();
        out
    }
}

impl Default for Bpffs {
    fn default() -> Self {
        Self::new()
    }
}

fn collect(dir: &Path, base: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, base, out);
        } else if let Ok(rel) = p.strip_prefix(base) {
            out.push(rel.display().to_string());
        }
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        // Removing the pins detaches whatever a failed test left attached.
        let _ = std::fs::remove_dir_all(self.path.join("outrigger"));
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// `outrigger-agent run` against a test cgroup and bpffs, with a pod file the test writes.
pub struct Agent {
    process: Option<Background>,
    pub pods_file: PathBuf,
    pub http: String,
    pub bpffs: PathBuf,
    pub cgroup: PathBuf,
    pub log: PathBuf,
    pub extra: Vec<String>,
}

static HTTP_PORT: AtomicU32 = AtomicU32::new(0);

impl Agent {
    /// Writes the pod file and starts the agent; waits for `/healthz`. `extra` are more
    /// `run` flags (`--sockmap`, …).
    pub fn start(cgroup: &Path, bpffs: &Bpffs, pods_yaml: &str, extra: &[&str]) -> Agent {
        let base = std::env::temp_dir().join(unique("agent"));
        std::fs::create_dir_all(&base).expect("create the agent directory");
        let pods_file = base.join("pods.yaml");
        std::fs::write(&pods_file, pods_yaml).expect("write the pod file");
        let port =
            15200 + (std::process::id() % 200) * 10 + HTTP_PORT.fetch_add(1, Ordering::SeqCst) % 10;
        let mut agent = Agent {
            process: None,
            pods_file,
            http: format!("127.0.0.1:{port}"),
            bpffs: bpffs.path.clone(),
            cgroup: cgroup.to_path_buf(),
            log: base.join("agent.log"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        agent.restart();
        agent
    }

    /// Starts (again) the agent process; waits until `/healthz` answers.
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the agent log");
        let child = Command::new(crate::bin("outrigger-agent"))
            .arg("run")
            .arg("--cgroup")
            .arg(&self.cgroup)
            .arg("--bpffs")
            .arg(&self.bpffs)
            .arg("--pods")
            .arg(&self.pods_file)
            .args(["--http", &self.http, "--resync-ms", "100"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start outrigger-agent");
        self.process = Some(Background::new(child));
        let url = format!("http://{}/healthz", self.http);
        let ok = wait_for(Duration::from_secs(10), || {
            let out = Command::new("curl")
                .args(["-s", "--max-time", "1", &url])
                .output()
                .ok()?;
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            body.starts_with("ok").then_some(())
        });
        assert!(
            ok.is_some(),
            "outrigger-agent did not come up:\n{}",
            self.log_text()
        );
    }

    /// Stops the agent with SIGTERM (the capture stays attached, as in a DaemonSet restart).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.terminate();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Rewrites the pod file (the agent re-reads it on change).
    pub fn write_pods(&self, yaml: &str) {
        let tmp = self.pods_file.with_extension("tmp");
        std::fs::write(&tmp, yaml).expect("write the pod file");
        std::fs::rename(&tmp, &self.pods_file).expect("rename the pod file");
    }

    /// `GET path` on the agent's HTTP endpoint.
    pub fn get(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args([
                "-s",
                "--max-time",
                "3",
                &format!("http://{}{path}", self.http),
            ])
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `outrigger-agent status --json`.
    pub fn status(&self) -> serde_json::Value {
        let out = agent_cmd(&["status", "--json", "--bpffs"], &self.bpffs);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// The sum of one capture counter over every attached set.
    pub fn counter(&self, name: &str) -> u64 {
        self.status()["sets"]
            .as_array()
            .map(|sets| {
                sets.iter()
                    .filter_map(|s| s["counters"][name].as_u64())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// `outrigger-agent detach`.
    pub fn detach(&self) -> Output {
        agent_cmd(&["detach", "--bpffs"], &self.bpffs)
    }
}

fn agent_cmd(args: &[&str], bpffs: &Path) -> Output {
    Command::new(crate::bin("outrigger-agent"))
        .args(args)
        .arg(bpffs)
        .output()
        .expect("run outrigger-agent")
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        let _ = self.detach();
        if let Some(dir) = self.pods_file.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The programs attached to `cgroup`, as the kernel lists them (`bpftool cgroup show`).
pub fn attached_programs(cgroup: &Path) -> String {
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("run bpftool");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
