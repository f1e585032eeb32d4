//! `cargo xtask vm-test`: the eBPF capture tests on other kernels. For each Debian kernel package
//! in vm-tests/kernels.txt, downloads it with apt, boots it under QEMU (KVM when available) with
//! a small initramfs — busybox, the tools the tests call (ip, setpriv, curl, bpftool) with their
//! libraries, the `ebpf_capture` test binary, outrigger-agent and outrigger-probe — and runs the
//! tests there. The guest is thrown away; the host's network and cgroups are not touched.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{deps, step};

const NEEDS: deps::Needs = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("/bin/busybox", "busybox-static"),
    ("cpio", "cpio"),
    ("dpkg-deb", "dpkg"),
    ("curl", "curl"),
    ("bpftool", "bpftool"),
    ("ip", "iproute2"),
    ("setpriv", "util-linux"),
    ("clang-19", "clang-19"),
    ("/usr/include/bpf/bpf_helpers.h", "libbpf-dev"),
];

/// Tools the tests run inside the guest, copied with their shared libraries.
const TOOLS: [&str; 4] = ["ip", "setpriv", "curl", "bpftool"];

/// The guest's time limit (the tests themselves take seconds).
const GUEST_LIMIT: Duration = Duration::from_secs(600);

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /usr/bin /usr/sbin /sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /sys/fs/cgroup /run/netns
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for m in /lib/modules/extra/*.ko; do insmod "$m"; done
ip link set lo up
export PATH=/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin OUTRIGGER_BIN_DIR=/work/bin HOME=/root
echo "== guest kernel $(uname -r)"
# python3 (for the getsockopt check) is not in the initramfs.
/work/ebpf_capture --test-threads=1 --skip other_getsockopt_calls
echo "== tests exited $?"
poweroff -f
"#;

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `linux-image-amd64` → `linux-image-6.1.0-56-amd64` (what the metapackage depends on).
fn resolve(package: &str) -> Result<String> {
    // A versioned package (linux-image-6.1.0-56-amd64) is taken as it is.
    if package
        .strip_prefix("linux-image-")
        .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()))
    {
        return Ok(package.to_string());
    }
    let text = run(Command::new("apt-cache").args(["depends", package]))?;
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Depends: ")
                .filter(|d| d.starts_with("linux-image-"))
        })
        .map(str::to_string)
        .with_context(|| format!("{package}: no linux-image dependency in apt-cache"))
}

/// Downloads and unpacks the package once; returns (vmlinuz, modules dir).
fn fetch_kernel(package: &str, cache: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = cache.join(package);
    let unpacked = dir.join("root");
    if !unpacked.exists() {
        std::fs::create_dir_all(&dir)?;
        step(&format!("apt-get download {package}"));
        run(Command::new("apt-get")
            .args(["download", package])
            .current_dir(&dir))?;
        let deb = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("the downloaded .deb")?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    let vmlinuz = std::fs::read_dir(unpacked.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz"))
        })
        .context("no boot/vmlinuz* in the package")?;
    let modules = std::fs::read_dir(unpacked.join("lib/modules"))?
        .flatten()
        .map(|e| e.path())
        .next()
        .context("no lib/modules in the package")?;
    Ok((vmlinuz, modules))
}

/// Copies `file` into `root` at the same path, with every shared library `ldd` lists.
fn add_with_libs(root: &Path, file: &Path, seen: &mut BTreeSet<PathBuf>) -> Result<()> {
    copy_into(root, file, file)?;
    let out = Command::new("ldd").arg(file).output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or "/lib64/ld-linux….so.2 (0x…)"
        let path = line
            .split("=>")
            .nth(1)
            .unwrap_or(line)
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') && seen.insert(PathBuf::from(path)) {
            let real = std::fs::canonicalize(path)?;
            copy_into(root, &real, Path::new(path))?;
        }
    }
    Ok(())
}

fn copy_into(root: &Path, from: &Path, at: &Path) -> Result<()> {
    let dest = root.join(at.strip_prefix("/").unwrap_or(at));
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, &dest).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

fn which(tool: &str) -> Result<PathBuf> {
    let out = run(Command::new("sh").args(["-c", &format!("command -v {tool}")]))?;
    let p = PathBuf::from(out.trim());
    Ok(std::fs::canonicalize(&p).unwrap_or(p))
}

/// Builds the tests and binaries; returns the `ebpf_capture` test executable.
fn build(root: &Path) -> Result<PathBuf> {
    step("building outrigger-agent, outrigger-probe and the ebpf_capture test");
    crate::cargo(&[
        "build",
        "--quiet",
        "-p",
        "outrigger-agent",
        "-p",
        "outrigger-testkit",
        "--bins",
    ])?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = run(Command::new(cargo).current_dir(root).args([
        "test",
        "--no-run",
        "--quiet",
        "-p",
        "outrigger-testkit",
        "--test",
        "ebpf_capture",
        "--message-format=json",
    ]))?;
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| {
            (v["target"]["name"] == "ebpf_capture")
                .then(|| v["executable"].as_str().map(PathBuf::from))
                .flatten()
        })
        .context("the ebpf_capture test executable")
}

fn initramfs(stage: &Path, test: &Path, bins: &Path, modules: &Path, out: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(stage);
    std::fs::create_dir_all(stage.join("bin"))?;
    std::fs::copy("/bin/busybox", stage.join("bin/busybox"))?;
    let mut seen = BTreeSet::new();
    for tool in TOOLS {
        let path = which(tool)?;
        add_with_libs(stage, &path, &mut seen)?;
        // Under /usr/bin too, whatever the host's layout: PATH finds it.
        copy_into(stage, &path, &Path::new("/usr/bin").join(tool))?;
    }
    let work = stage.join("work");
    std::fs::create_dir_all(work.join("bin"))?;
    add_with_libs(stage, test, &mut seen)?;
    std::fs::copy(test, work.join("ebpf_capture"))?;
    for bin in ["outrigger-agent", "outrigger-probe"] {
        add_with_libs(stage, &bins.join(bin), &mut seen)?;
        std::fs::copy(bins.join(bin), work.join("bin").join(bin))?;
    }
    // veth for the pods' addresses (a module in Debian's kernels).
    let extra = stage.join("lib/modules/extra");
    std::fs::create_dir_all(&extra)?;
    for m in [
        "kernel/drivers/net/veth.ko",
        "kernel/drivers/net/veth.ko.xz",
    ] {
        let p = modules.join(m);
        if p.exists() {
            std::fs::copy(&p, extra.join("veth.ko"))?;
        }
    }
    std::fs::write(stage.join("init"), INIT)?;
    run(Command::new("chmod").arg("+x").arg(stage.join("init")))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            stage.display(),
            out.display()
        ))
        .status()?;
    if !status.success() {
        bail!("building the initramfs failed");
    }
    Ok(())
}

/// Boots the kernel; streams the console; returns (tests passed, failed, guest exit code).
fn boot(vmlinuz: &Path, initrd: &Path, use_kvm: bool) -> Result<(usize, usize, Option<i32>)> {
    let kvm = use_kvm;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-m", "2048", "-smp", "2", "-nographic", "-no-reboot"])
        .args(["-machine", if kvm { "accel=kvm" } else { "accel=tcg" }])
        // Under KVM, a plain CPU model: nested hosts refuse some MSRs of `-cpu host`/`max`
        // (ARCH_CAPABILITIES), and the tests need no CPU feature beyond x86-64.
        .args(["-cpu", if kvm { "qemu64" } else { "max" }])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=3 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let start = Instant::now();
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut passed, mut failed, mut exit) = (0, 0, None);
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                println!("  guest | {line}");
                if let Some((p, f)) = crate::test_result(&line) {
                    passed += p;
                    failed += f;
                }
                if let Some(code) = line.strip_prefix("== tests exited ") {
                    exit = code.trim().parse().ok();
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if start.elapsed() > GUEST_LIMIT {
            let _ = child.kill();
            bail!("the guest did not finish within {GUEST_LIMIT:?}");
        }
    }
    let _ = child.wait();
    Ok((passed, failed, exit))
}

pub fn run_all(kernels: &[String], kvm: bool) -> Result<()> {
    deps::ensure(NEEDS)?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let list = if kernels.is_empty() {
        std::fs::read_to_string(root.join("vm-tests/kernels.txt"))
            .context("vm-tests/kernels.txt")?
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        kernels.to_vec()
    };
    let test = build(&root)?;
    let bins = test
        .parent()
        .and_then(Path::parent)
        .context("the target directory")?
        .to_path_buf();
    let cache = root.join("target/vm-tests");
    let mut summary = Vec::new();
    for package in &list {
        let package = resolve(package)?;
        let (vmlinuz, modules) = fetch_kernel(&package, &cache)?;
        let initrd = cache.join(format!("{package}.initrd.gz"));
        step(&format!("initramfs for {package}"));
        initramfs(&cache.join("stage"), &test, &bins, &modules, &initrd)?;
        step(&format!(
            "booting {} under QEMU ({})",
            vmlinuz.display(),
            if kvm { "KVM" } else { "software emulation" }
        ));
        let started = Instant::now();
        let (passed, failed, exit) = boot(&vmlinuz, &initrd, kvm)?;
        summary.push(format!(
            "{package}: {passed} passed, {failed} failed, guest exit {} ({:.1} s)",
            exit.map_or("none".into(), |c| c.to_string()),
            started.elapsed().as_secs_f64()
        ));
        if failed > 0 || passed == 0 || exit != Some(0) {
            println!("{}", summary.join("\n"));
            bail!("the eBPF tests failed on {package}");
        }
    }
    println!("{}", summary.join("\n"));
    Ok(())
}
