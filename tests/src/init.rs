//! Running `outrigger-init` inside a namespace.

use crate::netns::Netns;

/// The arguments Istio's injector gives istio-init.
pub const DEFAULT_SIDECAR: &[&str] = &[
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021,15020",
];

/// The default sidecar arguments followed by `extra` (later flags win, as in pflag).
pub fn sidecar_with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    DEFAULT_SIDECAR
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

/// The outcome of one `outrigger-init` run.
#[derive(Debug)]
pub struct InitRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `outrigger-init ARGS` in `ns` with extra environment variables.
pub fn run(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> InitRun {
    let out = ns
        .command(crate::bin("outrigger-init"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run outrigger-init");
    InitRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Like [`run`], and panics with the log unless it exits 0.
pub fn run_ok(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> InitRun {
    let r = run(ns, args, env);
    assert_eq!(r.code, 0, "outrigger-init {args:?} failed:\n{}", r.stderr);
    r
}
