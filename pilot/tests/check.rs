//! `outrigger-pilot check` on bad input: every problem is one finding naming the file, the
//! document, the resource and the field; the exit code says whether there were errors.

use std::process::Command;

const REGISTRY: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: bill}\nspec: {clusterIP: 10.96.0.5, selector: {app: bill}, ports: [{name: http, port: 80}]}\n---\n\
apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bill}\nspec: {host: bill, subsets: [{name: v1, labels: {version: v1}}]}\n";

fn vs(name: &str, route: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [bill]\n  http:\n  - route: {route}\n"
    )
}

fn check(files: &[(&str, String)]) -> (i32, String) {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "outrigger-check-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_outrigger-pilot"))
        .arg("check")
        .arg(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout).replace(&format!("{}/", dir.display()), "");
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_clean_directory_passes() {
    let (code, text) = check(&[
        ("a.yaml", REGISTRY.into()),
        (
            "b.yaml",
            vs("bill", "[{destination: {host: bill, subset: v1}}]"),
        ),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.ends_with("3 resources applied (1 services), 0 errors, 0 warnings\n"),
        "{text}"
    );
}

#[test]
fn each_kind_of_bad_input_gets_one_clear_finding() {
    let (code, text) = check(&[
        ("a.yaml", REGISTRY.into()),
        ("b-syntax.yaml", "apiVersion: v1\nkind: [\n".into()),
        (
            "c-host.yaml",
            vs("to-nowhere", "[{destination: {host: nowhere}}]"),
        ),
        (
            "d-weights.yaml",
            vs(
                "weights",
                "[{destination: {host: bill}, weight: 30}, {destination: {host: bill, subset: v1}, weight: 30}]",
            ),
        ),
        (
            "e-subset.yaml",
            vs("subset", "[{destination: {host: bill, subset: v7}}]"),
        ),
        ("f-first.yaml", vs("first", "[{destination: {host: bill}}]")),
        (
            "g-second.yaml",
            vs("second", "[{destination: {host: bill}}]"),
        ),
        (
            "h-kind.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n".into(),
        ),
    ]);
    assert_eq!(code, 1, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let has = |s: &str| {
        assert!(
            lines.iter().any(|l| l.contains(s)),
            "missing {s:?} in:\n{text}"
        )
    };
    has("error: b-syntax.yaml#0: YAML syntax error");
    has(
        "error: c-host.yaml#0 VirtualService default/to-nowhere spec.http[0].route[0].destination.host: unknown host 'nowhere.default.svc.cluster.local'",
    );
    has(
        "error: d-weights.yaml#0 VirtualService default/weights spec.http[0].route: the destination weights add up to 60, not 100",
    );
    has(
        "error: e-subset.yaml#0 VirtualService default/subset spec.http[0].route[0].destination.subset: subset 'v7' of 'bill.default.svc.cluster.local' is not defined by any DestinationRule",
    );
    // The two for `bill` that remain valid: the later one is refused.
    has(
        "VirtualService default/second spec.hosts[0]: host 'bill.default.svc.cluster.local' is already routed by VirtualService default/first",
    );
    has(
        "warning: h-kind.yaml#0 Deployment kind: apps/v1 Deployment is not read by outrigger-pilot; skipped",
    );
    assert!(
        text.ends_with("3 resources applied (1 services), 5 errors, 1 warnings\n"),
        "{text}"
    );
}

#[test]
fn findings_as_json_and_an_unreadable_directory() {
    let (_, text) = check(&[
        ("a.yaml", REGISTRY.into()),
        (
            "b.yaml",
            vs("x", "[{destination: {host: bill}, weigth: 10}]"),
        ),
    ]);
    assert!(text.contains("spec.http[0].route[0].weigth"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_outrigger-pilot"))
        .args(["check", "/nonexistent/mesh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot read the configuration directory /nonexistent/mesh")
    );
}

#[test]
fn a_bad_consistent_hash_names_its_field() {
    let dr = |name: &str, lb: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}}}\nspec:\n  host: {name}\n  trafficPolicy:\n    loadBalancer: {lb}\n"
        )
    };
    let registry = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.7, ports: [{name: http, port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {clusterIP: 10.96.0.8, ports: [{name: http, port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: c}\nspec: {clusterIP: 10.96.0.9, ports: [{name: http, port: 80}]}\n";
    let (code, text) = check(&[
        ("registry.yaml", registry.into()),
        (
            "a.yaml",
            dr(
                "a",
                "{consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 1000}}}",
            ),
        ),
        (
            "b.yaml",
            dr("b", "{consistentHash: {httpCookie: {name: s, ttl: soon}}}"),
        ),
        (
            "c.yaml",
            dr(
                "c",
                "{consistentHash: {httpHeaderName: x, useSourceIp: true}}",
            ),
        ),
    ]);
    assert_eq!(code, 1, "{text}");
    for want in [
        "a.yaml#0 DestinationRule default/a spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: 1000 is not a prime number",
        "b.yaml#0 DestinationRule default/b spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl:",
        "c.yaml#0 DestinationRule default/c spec.trafficPolicy.loadBalancer.consistentHash: needs exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}
