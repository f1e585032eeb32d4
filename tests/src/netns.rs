//! A network namespace that exists as long as its guard.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Processes started through `Netns::spawn` or `Background::new` and not stopped yet.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Stops every background process, then deletes every namespace this process created and has
/// not deleted yet (for a Ctrl-C handler).
pub fn delete_all() {
    let pids = std::mem::take(&mut *CHILDREN.lock().unwrap_or_else(|e| e.into_inner()));
    for pid in &pids {
        signal(*pid, nix::sys::signal::Signal::SIGTERM);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    for pid in &pids {
        signal(*pid, nix::sys::signal::Signal::SIGKILL);
    }
    let names = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|e| e.into_inner()));
    for name in names {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&name));
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// The first `name` on PATH (or `name` itself when there is none).
fn which(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `ip netns add` on creation, `ip netns del` (and removal of `/etc/netns/NAME`) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Netns {
    /// A new namespace named `or-<tag>-<pid>-<n>` (≤ 15 chars are not required for netns names).
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("or-{tag}-{}-{n}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// The same, as the given uid/gid (with no supplementary groups), through `setpriv`.
    pub fn command_as(&self, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, "setpriv"])
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(program);
        c
    }

    /// A command that runs inside the namespace and inside `cgroup` (a cgroup v2 directory the
    /// test made), as `uid` when given: the shell joins the cgroup, then execs the program.
    pub fn command_in(
        &self,
        cgroup: &std::path::Path,
        uid: Option<u32>,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Command {
        // The cgroup is joined before `ip netns exec`, which mounts a fresh /sys (hiding the
        // cgroup2 mount under /sys/fs/cgroup); the membership carries over exec.
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
            .arg(cgroup)
            // By path: a shell with built-in applets (busybox in the VM tests) would otherwise
            // run its own `ip`.
            .arg(which("ip"))
            .args(["netns", "exec", &self.name]);
        if let Some(uid) = uid {
            c.arg("setpriv")
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups");
        }
        c.arg(program);
        c
    }

    /// Runs a command in the namespace and returns its output, whatever the exit status.
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    /// Runs a command in the namespace; panics if it fails. Returns stdout.
    pub fn ok(&self, program: &str, args: &[&str]) -> String {
        let out = run_ok(self.command(program).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip ARGS` in the namespace.
    pub fn ip(&self, args: &[&str]) -> String {
        self.ok("ip", args)
    }

    /// Writes `/etc/netns/NAME/resolv.conf`, which `ip netns exec` mounts over /etc/resolv.conf.
    pub fn set_resolv_conf(&self, content: &str) {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).expect("create /etc/netns dir");
        std::fs::write(dir.join("resolv.conf"), content).expect("write resolv.conf");
    }

    /// Writes `/etc/netns/NAME/hosts`, which `ip netns exec` mounts over /etc/hosts.
    pub fn set_hosts(&self, content: &str) {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).expect("create /etc/netns dir");
        std::fs::write(dir.join("hosts"), content).expect("write hosts");
    }

    fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// Starts a long-running process in the namespace; it is killed when the guard drops. If
    /// `wait_ready`, waits for the process to print a first line (`ready`).
    pub fn spawn(&self, mut cmd: Command, wait_ready: bool) -> Background {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        if wait_ready {
            let stdout = child.stdout.take().expect("stdout");
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            assert_eq!(line.trim(), "ready", "{cmd:?} did not start");
        }
        Background::new(child)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}

/// A process killed on drop.
#[derive(Debug)]
pub struct Background {
    child: Child,
}

impl Background {
    /// Adopts a child process (started outside any namespace).
    pub fn new(child: Child) -> Background {
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        Background { child }
    }

    fn forget(&self) {
        let id = self.child.id();
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != id);
    }

    /// Stops the process with SIGTERM (so it can clean up), then kills it if it lingers.
    pub fn terminate(&mut self) {
        signal(self.child.id(), nix::sys::signal::Signal::SIGTERM);
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.forget();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
