//! Backend selection (legacy vs nft), dry-run file output and JSON logs.

use outrigger_testkit::bin;
use outrigger_testkit::init::{self, DEFAULT_SIDECAR, sidecar_with};
use outrigger_testkit::topology::{PEER_V4, PodPair, connect};

fn run(t: &PodPair, extra: &[&str]) -> (i32, String) {
    let r = init::run(&t.pod, &sidecar_with(extra), &[]);
    (r.code, r.stderr)
}

fn istio_in(save: &str) -> bool {
    save.lines()
        .any(|l| l.contains("ISTIO_OUTPUT") && !l.starts_with('#'))
}

#[test]
fn forced_legacy_backend_is_used_and_locked() {
    let mut t = PodPair::new("legacy", false);
    t.start_servers(false, false);
    let (code, stderr) = run(
        &t,
        &[
            "--force-iptables-binary=legacy",
            "--log_output_level=default:debug",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        istio_in(&t.pod.ok("iptables-legacy-save", &[])),
        "rules are in the legacy backend"
    );
    assert!(
        !istio_in(&t.pod.ok("iptables-nft-save", &[])),
        "and not in nft"
    );
    assert!(
        stderr.contains("iptables-legacy-restore --noflush --wait=30"),
        "legacy writes take the xtables lock:\n{stderr}"
    );
    assert_eq!(
        connect(&t.pod, &format!("{PEER_V4}:80"), None)
            .unwrap()
            .server,
        "proxy"
    );
    // A re-run without forcing finds the rules in legacy and keeps using it.
    let (code, stderr) = run(&t, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("already in place") && stderr.contains("iptables-legacy"),
        "{stderr}"
    );
    let (code, stderr) = run(&t, &["--cleanup-only"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!istio_in(&t.pod.ok("iptables-legacy-save", &[])));
}

#[test]
fn nft_is_chosen_when_legacy_holds_no_rules() {
    let t = PodPair::new("nft", false);
    let (code, stderr) = run(&t, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(istio_in(&t.pod.ok("iptables-nft-save", &[])));
    assert!(!istio_in(&t.pod.ok("iptables-legacy-save", &[])));
    // The legacy probe leaves an empty nat table behind; the re-run must still pick nft.
    let (code, stderr) = run(&t, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("already in place") && stderr.contains("iptables-nft"),
        "{stderr}"
    );
}

#[test]
fn dry_run_file_and_json_logs() {
    let t = PodPair::new("dryfile", false);
    let file = std::env::temp_dir().join(format!("outrigger-dry-{}.txt", std::process::id()));
    let out = t
        .pod
        .command(bin("outrigger-init"))
        .args(DEFAULT_SIDECAR)
        .args(["--dry-run", "--log_as_json"])
        .env("DRY_RUN_FILE_PATH", &file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        stdout,
        "the file holds the same record"
    );
    let _ = std::fs::remove_file(&file);
    assert!(stdout.starts_with("iptables-save\nip6tables-save\n* nat\n"));
    for line in String::from_utf8(out.stderr).unwrap().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
    assert!(!istio_in(&t.pod.ok("iptables-save", &[])));
}
