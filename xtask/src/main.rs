//! `cargo xtask`: the one entry point for developers and CI.
//!
//! - `cargo xtask test`: installs what the tests need (as root, through apt), then runs
//!   `cargo fmt --check`, `cargo clippy -D warnings`, builds every binary, runs every test, and
//!   the eBPF tests again on Debian's LTS kernel under QEMU (`vm-test`; skipped when a test
//!   filter is given).
//! - `cargo xtask demo`: the bill-service mesh (pilot, init, proxies) in throw-away network
//!   namespaces; `--capture` shows outrigger-init's capture alone.
//! - `cargo xtask build-ebpf`: rebuilds the committed eBPF objects.
//! - `cargo xtask vm-test`: the eBPF tests under QEMU on Debian's kernels.
//! - `cargo xtask bench`: HTTP/1.1 through outrigger-proxy, nginx and haproxy, side by side, at
//!   saturation and at a fixed rate (`cargo xtask loadgen`).
//! - `cargo xtask build-pgo`: outrigger-proxy built with profile-guided optimisation.

mod bench;
mod capture_bench;
mod demo;
mod deps;
mod loadgen;
mod mesh_demo;
mod pgo;
mod policies_demo;
mod vm_test;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Outrigger's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install test dependencies (as root), check formatting and lints, run every test.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// The bill-service mesh on one machine: outrigger-pilot, and pods with outrigger-init rules
    /// and outrigger-proxy sidecars in throw-away network namespaces; shows the 90/10 split,
    /// then a header rule and a fault rule applied live. Cleans up, also on Ctrl-C.
    Demo {
        /// Instead: show outrigger-init capturing one pod's traffic (no proxy).
        #[arg(long)]
        capture: bool,
        /// Instead: traffic policies applied live (timeout, retries, mirroring, circuit
        /// breaking), with the counters that show each.
        #[arg(long, conflicts_with = "capture")]
        policies: bool,
    },
    /// Run the eBPF capture tests under QEMU on the Debian kernels of vm-tests/kernels.txt
    /// (Debian 12's 6.1 LTS by default).
    VmTest {
        /// Kernel packages instead of vm-tests/kernels.txt (repeatable).
        #[arg(long = "kernel", value_name = "PACKAGE")]
        kernels: Vec<String>,
        /// Use KVM instead of software emulation (faster; some nested hosts cannot boot the
        /// guest under KVM, hence off by default: the tests take about half a minute either way).
        #[arg(long)]
        kvm: bool,
    },
    /// Rebuild the eBPF capture programs (ebpf/*.bpf.c → ebpf/*.bpf.o) with Debian's clang-19.
    /// The objects are committed; a test fails when one is stale.
    BuildEbpf,
    /// Benchmark HTTP/1.1 keep-alive through no proxy, outrigger-proxy, nginx and haproxy;
    /// writes bench/results/http1-keepalive.{md,png}.
    Bench {
        /// Seconds of load per target and round.
        #[arg(long, default_value_t = 6)]
        seconds: u32,
        /// Concurrent connections.
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// Rounds over all targets (alternating them); each target's median round is reported.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Instead: the app → sidecar capture by iptables vs eBPF (connect rewrite, and with
        /// sockmap), keep-alive and a new connection per request; writes
        /// bench/results/capture.{md,png}.
        #[arg(long)]
        capture: bool,
        /// The fixed-rate scenario's total requests per second (0 skips it).
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Measure the plain release build instead of the profile-guided one (`build-pgo`).
        #[arg(long)]
        no_pgo: bool,
    },
    /// Build outrigger-proxy with profile-guided optimisation: an instrumented build serves a
    /// training load, then the proxy is built with its profile (target/pgo/release/).
    BuildPgo,
    /// A fixed-rate HTTP/1.1 keep-alive load on 127.0.0.1:PORT; prints one JSON line of
    /// latency percentiles (µs). Used by `bench`; runnable alone.
    Loadgen {
        #[arg(long)]
        port: u16,
        /// Requests per second over all connections.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long, default_value_t = 16)]
        connections: u32,
        #[arg(long, default_value_t = 10)]
        seconds: u32,
    },
}

pub fn step(msg: &str) {
    eprintln!("\x1b[1;34m==>\x1b[0m {msg}");
}

pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .with_context(|| format!("running cargo {args:?}"))?;
    if !status.success() {
        bail!("`cargo {}` failed", args.join(" "));
    }
    Ok(())
}

/// A build step run twice at most: a toolchain crash (the linker killed by SIGBUS on a loaded
/// machine) is not a code error, and the retry only relinks what failed. A real compile error
/// fails both times, in seconds.
fn cargo_build_step(args: &[&str]) -> Result<()> {
    cargo(args).or_else(|first| {
        step(&format!(
            "{first:#}; retrying once in case the toolchain crashed"
        ));
        cargo(args)
    })
}

fn test(no_lint: bool, extra: &[String]) -> Result<()> {
    deps::ensure(deps::TEST)?;
    if !no_lint {
        step("cargo fmt --check");
        cargo(&["fmt", "--all", "--", "--check"])?;
        step("cargo clippy --all-targets -- -D warnings");
        cargo_build_step(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ])?;
    }
    step("building every binary");
    cargo_build_step(&["build", "--workspace", "--bins", "--quiet"])?;
    step("running every test (unit, conformance, network namespaces)");
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    let (passed, failed) = cargo_test(&args)?;
    println!("total: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        bail!("tests failed");
    }
    if extra.is_empty() {
        step("the policies demo, which checks its own numbers (cargo xtask demo --policies)");
        policies_demo::run()?;
        step("the eBPF tests on Debian's LTS kernel, under QEMU (cargo xtask vm-test)");
        vm_test::run_all(&[], false)?;
    }
    Ok(())
}

/// (passed, failed) of a libtest summary line (`test result: ok. 6 passed; 0 failed; …`).
pub fn test_result(line: &str) -> Option<(usize, usize)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |what: &str| {
        rest.split(';')
            .find_map(|part| {
                part.trim()
                    .trim_start_matches("ok. ")
                    .trim_start_matches("FAILED. ")
                    .strip_suffix(what)
            })
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0)
    };
    Some((count(" passed"), count(" failed")))
}

/// Runs `cargo test`, echoing its output, and adds up its "test result" lines.
fn cargo_test(args: &[&str]) -> Result<(usize, usize)> {
    use std::io::{BufRead, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(&cargo)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().context("cargo test stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f)) = test_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        failed += 1;
    }
    Ok((passed, failed))
}

fn build_ebpf() -> Result<()> {
    deps::ensure(deps::EBPF)?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    step("clang-19 -target bpf: ebpf/*.bpf.c");
    let status = Command::new(root.join("ebpf/build.sh"))
        .status()
        .context("running ebpf/build.sh")?;
    if !status.success() {
        bail!("ebpf/build.sh failed");
    }
    for entry in std::fs::read_dir(root.join("ebpf"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "o") {
            let len = std::fs::metadata(&path)?.len();
            println!("  {} ({len} bytes)", path.display());
        }
    }
    println!("commit the objects with their sources");
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Test {
            no_lint,
            cargo_args,
        } => test(no_lint, &cargo_args),
        Task::Demo { policies: true, .. } => policies_demo::run(),
        Task::Demo { capture: true, .. } => demo::run(),
        Task::Demo { .. } => mesh_demo::run(),
        Task::BuildEbpf => build_ebpf(),
        Task::BuildPgo => {
            deps::ensure(bench::NEEDS)?;
            let built = pgo::build()?;
            println!("{}", built.display());
            Ok(())
        }
        Task::VmTest { kernels, kvm } => vm_test::run_all(&kernels, kvm),
        Task::Bench {
            seconds,
            connections,
            rounds,
            capture: false,
            rate,
            no_pgo,
        } => bench::run(seconds, connections, rounds, rate, !no_pgo),
        Task::Bench {
            seconds,
            connections,
            capture: true,
            ..
        } => capture_bench::run(seconds, connections),
        Task::Loadgen {
            port,
            rate,
            connections,
            seconds,
        } => {
            let summary = loadgen::run(loadgen::Plan {
                port,
                rate,
                connections,
                seconds,
            })?;
            println!("{}", summary.to_json());
            Ok(())
        }
    }
}
