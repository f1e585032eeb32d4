//! Test topologies in throw-away network namespaces, and helpers to run Outrigger's binaries in
//! them. Every namespace is deleted when its guard drops, also when a test fails.
#![forbid(unsafe_code)]

pub mod cases;
pub mod ebpf;
pub mod init;
pub mod mesh;
pub mod netns;
pub mod probe;
pub mod topology;

use std::path::PathBuf;
use std::sync::OnceLock;

static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Makes `bin` look in `dir` (e.g. `target/release` for benchmarks). Only the first call counts.
pub fn use_bin_dir(dir: PathBuf) {
    let _ = BIN_DIR.set(dir);
}

/// Path of a workspace binary (`outrigger-init`, `outrigger-probe`, …): the `use_bin_dir`
/// directory, else `OUTRIGGER_BIN_DIR` if set, else the cargo target directory the running test
/// or program was built into.
pub fn bin(name: &str) -> PathBuf {
    let dir = BIN_DIR
        .get()
        .cloned()
        .or_else(|| std::env::var_os("OUTRIGGER_BIN_DIR").map(PathBuf::from))
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current exe");
            let dir = exe.parent().expect("exe dir").to_path_buf();
            // Test binaries live in target/<profile>/deps.
            if dir.ends_with("deps") {
                dir.parent().expect("profile dir").to_path_buf()
            } else {
                dir
            }
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` (cargo xtask test does)",
        path.display()
    );
    path
}

/// Panics unless running as root: namespace tests must not pass by being skipped.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and iptables rules: run it as root (cargo xtask test does)"
    );
}
