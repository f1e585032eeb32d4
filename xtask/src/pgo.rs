//! A profile-guided build of outrigger-proxy, for `cargo xtask bench` and release images:
//! an instrumented build serves a training load (the benchmark's route, HTTP/1.1 at a fixed
//! rate, at saturation and with a new connection per request), its profile is merged with the
//! `llvm-profdata` of rustc's own LLVM version (Debian's `llvm-N`), and the proxy is built
//! again with it. The profile lays out the request path's code by how it runs: branches taken
//! together, cold code apart, the hot functions next to each other. That matters most when the
//! caches are cold, as in a sidecar woken for each request.
//!
//! Both builds have target directories of their own (`target/pgo-train`, `target/pgo`), so the
//! ordinary release build is left as it is.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bench::{self, CLIENT_CPU, ORIGIN, OUTRIGGER, PROXY_ARGS, SERVER_CPU};
use crate::{deps, step};

/// The LLVM major version of `rustc -vV`'s output ("LLVM version: 22.1.2").
pub fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.trim().split('.').next())
        .and_then(|m| m.parse().ok())
}

/// `llvm-profdata` of the same LLVM as rustc, installed from Debian when missing.
fn profdata_tool() -> Result<PathBuf> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    let major = llvm_major(&String::from_utf8_lossy(&out.stdout))
        .context("rustc -vV names no LLVM version")?;
    let tool = format!("/usr/lib/llvm-{major}/bin/llvm-profdata");
    let package = format!("llvm-{major}");
    deps::ensure(&[(tool.as_str(), package.as_str())])?;
    Ok(PathBuf::from(tool))
}

/// A 64-bit FNV-1a digest of `bytes`, to name a profile by its content (so that a new profile
/// is a new RUSTFLAGS value, which makes cargo rebuild with it).
pub fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn cargo_with_flags(root: &Path, target_dir: &str, rustflags: &str) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "outrigger-proxy"])
        .arg("--target-dir")
        .arg(root.join(target_dir))
        .env("RUSTFLAGS", rustflags)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of outrigger-proxy with {rustflags} failed");
    }
    Ok(())
}

/// Builds the profile-guided proxy; its path.
pub fn build() -> Result<PathBuf> {
    let tool = profdata_tool()?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = root.join("target/pgo-train/profiles");
    step("building an instrumented outrigger-proxy (release, -Cprofile-generate)");
    cargo_with_flags(
        &root,
        "target/pgo-train",
        &format!("-Cprofile-generate={}", data.display()),
    )?;
    // Build scripts were instrumented too and wrote their own profiles: start afresh.
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    train(&root.join("target/pgo-train/release/outrigger-proxy"))?;
    let raw: Vec<PathBuf> = std::fs::read_dir(&data)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "profraw"))
        .collect();
    if raw.is_empty() {
        bail!(
            "the instrumented proxy wrote no profile to {}",
            data.display()
        );
    }
    let merged = data.join("merged.profdata");
    let status = Command::new(&tool)
        .arg("merge")
        .arg("-o")
        .arg(&merged)
        .args(&raw)
        .status()
        .with_context(|| format!("running {}", tool.display()))?;
    if !status.success() {
        bail!("llvm-profdata merge failed");
    }
    let bytes = std::fs::read(&merged)?;
    let named = root.join(format!("target/pgo-{:016x}.profdata", digest(&bytes)));
    std::fs::write(&named, &bytes)?;
    step(&format!(
        "building outrigger-proxy with the profile ({} KiB, -Cprofile-use)",
        bytes.len() / 1024
    ));
    cargo_with_flags(
        &root,
        "target/pgo",
        &format!("-Cprofile-use={}", named.display()),
    )?;
    Ok(root.join("target/pgo/release/outrigger-proxy"))
}

/// The training load through the instrumented proxy; the proxy exits cleanly afterwards, which
/// writes its profile.
fn train(proxy: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("outrigger-pgo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    bench::write_configs(&dir)?;
    for port in [ORIGIN, OUTRIGGER] {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("port {port} is taken by another process: stop it before building");
        }
    }
    let _origin = bench::spawn(
        bench::pinned(SERVER_CPU, "nginx")
            .arg("-c")
            .arg(dir.join("origin.conf")),
    )?;
    let mut trained = bench::spawn(
        bench::pinned(SERVER_CPU, proxy)
            .args(["run", "-c"])
            .arg(dir.join("outrigger.json"))
            .args(PROXY_ARGS),
    )?;
    bench::wait_port(ORIGIN)?;
    bench::wait_port(OUTRIGGER)?;
    step("training: 1000 req/s over 16 connections, saturation, a connection per request");
    bench::loadgen(OUTRIGGER, 1000, 16, 5)?;
    bench::wrk(OUTRIGGER, 4, 32)?;
    let close = bench::pinned(CLIENT_CPU, "wrk")
        .args(["-t1", "-c8", "-d2s", "-H", "Connection: close"])
        .arg(format!("http://127.0.0.1:{OUTRIGGER}/"))
        .output()
        .context("running wrk")?;
    if !close.status.success() {
        bail!("wrk with a connection per request failed");
    }
    let pid = trained.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    for _ in 0..100 {
        if matches!(trained.0.try_wait(), Ok(Some(_))) {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the instrumented proxy did not exit on SIGTERM within 5 s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustcs_llvm_major_version() {
        let vv = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nrelease: 1.95.0\nLLVM version: 22.1.2\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.95.0\n"), None);
        assert_eq!(llvm_major("LLVM version: x\n"), None);
    }

    #[test]
    fn digests_tell_contents_apart() {
        assert_eq!(digest(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(digest(b"profile a"), digest(b"profile b"));
    }
}
