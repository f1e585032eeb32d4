//! Copies the Envoy descriptor set that `envoy-types` ships (but does not export) into OUT_DIR,
//! so that proto-JSON (config dumps, bootstraps) can be decoded into Envoy's wire types.

use std::path::PathBuf;

const ENVOY_TYPES: &str = "envoy-types-0.7.7";

fn main() {
    println!("cargo:rerun-if-env-changed=OUTRIGGER_ENVOY_DESCRIPTORS");
    let found = std::env::var_os("OUTRIGGER_ENVOY_DESCRIPTORS")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("CARGO_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
            let registries = std::fs::read_dir(home.join("registry/src")).ok()?;
            registries
                .flatten()
                .map(|r| r.path().join(ENVOY_TYPES).join("src/generated/types.bin"))
                .find(|p| p.exists())
        });
    let Some(src) = found else {
        panic!(
            "cannot find {ENVOY_TYPES}/src/generated/types.bin in the cargo registry; set OUTRIGGER_ENVOY_DESCRIPTORS to its path"
        );
    };
    println!("cargo:rerun-if-changed={}", src.display());
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("envoy-descriptors.bin");
    std::fs::copy(&src, &out).expect("copy the envoy descriptor set");
}
