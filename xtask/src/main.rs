//! `cargo xtask`: the one entry point for developers and CI.
//!
//! - `cargo xtask test`: installs what the tests need (as root, through apt), then runs
//!   `cargo fmt --check`, `cargo clippy -D warnings`, builds every binary and runs every test.
//! - `cargo xtask demo`: shows outrigger-init capturing a pod's traffic in throw-away network
//!   namespaces.
//! - `cargo xtask bench`: HTTP/1.1 through outrigger-proxy, nginx and haproxy, side by side.

mod bench;
mod demo;
mod deps;

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
    /// Capture a pod's traffic with outrigger-init in throw-away network namespaces and show it.
    Demo,
    /// Benchmark HTTP/1.1 keep-alive through no proxy, outrigger-proxy, nginx and haproxy;
    /// writes bench/results/http1-keepalive.{md,png}.
    Bench {
        /// Seconds of load per target.
        #[arg(long, default_value_t = 8)]
        seconds: u32,
        /// Concurrent connections.
        #[arg(long, default_value_t = 32)]
        connections: u32,
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

fn test(no_lint: bool, extra: &[String]) -> Result<()> {
    deps::ensure(deps::TEST)?;
    if !no_lint {
        step("cargo fmt --check");
        cargo(&["fmt", "--all", "--", "--check"])?;
        step("cargo clippy --all-targets -- -D warnings");
        cargo(&[
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
    cargo(&["build", "--workspace", "--bins", "--quiet"])?;
    step("running every test (unit, conformance, network namespaces)");
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    let (passed, failed) = cargo_test(&args)?;
    println!("total: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        bail!("tests failed");
    }
    Ok(())
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
        if let Some(rest) = line.strip_prefix("test result: ") {
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
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    if !status.success() && failed == 0 {
        failed += 1;
    }
    Ok((passed, failed))
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Test {
            no_lint,
            cargo_args,
        } => test(no_lint, &cargo_args),
        Task::Demo => demo::run(),
        Task::Bench {
            seconds,
            connections,
        } => bench::run(seconds, connections),
    }
}
