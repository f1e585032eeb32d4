//! The committed `ebpf/capture.bpf.o` is what `ebpf/build.sh` makes from the committed sources:
//! rebuilt into a scratch directory with clang-19 and compared byte for byte.

use std::path::Path;
use std::process::Command;

#[test]
fn committed_object_matches_its_sources() {
    let ebpf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf");
    let scratch = std::env::temp_dir().join(format!("outrigger-ebpf-{}", std::process::id()));
    let out = Command::new(ebpf.join("build.sh"))
        .arg(&scratch)
        .output()
        .expect(
            "run ebpf/build.sh (needs clang-19 and libbpf-dev; cargo xtask test installs them)",
        );
    assert!(
        out.status.success(),
        "ebpf/build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh = std::fs::read(scratch.join("capture.bpf.o")).expect("the rebuilt object");
    let committed = std::fs::read(ebpf.join("capture.bpf.o")).expect("the committed object");
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        fresh == committed,
        "ebpf/capture.bpf.o is stale: run `cargo xtask build-ebpf` and commit the object"
    );
    // And the agent embeds that very object.
    assert_eq!(outrigger_agent::capture::OBJECT, &committed[..]);
}
