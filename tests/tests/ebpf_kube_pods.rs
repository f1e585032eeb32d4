//! The Kubernetes pod source's node side, on real processes: a pod's network namespace is found
//! through /proc by the pod UID in the process's cgroup path, as kubelet lays cgroups out
//! (cgroupfs driver here: `kubepods/besteffort/pod<uid>`).

use std::collections::BTreeMap;
use std::path::Path;

use outrigger_agent::kube::{PodInfo, snapshot_of};
use outrigger_agent::sys::netns_cookie;
use outrigger_testkit::ebpf::Cgroup;
use outrigger_testkit::netns::Netns;

#[test]
fn a_pods_network_namespace_is_found_by_its_uid() {
    let uid = format!("0d5e7c1a-4b2f-4a8e-9c3d-{:012x}", std::process::id());
    let cg = Cgroup::new("kube");
    let pod_cgroup = cg.child(&format!("kubepods/besteffort/pod{uid}"));
    let ns = Netns::new("kpod");
    let mut cmd = ns.command_in(&pod_cgroup, None, "sleep");
    cmd.arg("30");
    let _app = ns.spawn(cmd, false);

    let pod = |uid: &str| PodInfo {
        name: "web".into(),
        namespace: "shop".into(),
        uid: uid.into(),
        containers: vec!["web".into(), "istio-proxy".into()],
        init_containers: vec![],
        annotations: BTreeMap::new(),
        ips: vec!["10.60.0.5".parse().unwrap()],
        host_network: false,
        phase: "Running".into(),
    };
    let want = netns_cookie(&Path::new("/run/netns").join(ns.name())).unwrap();
    let found = outrigger_testkit::mesh::wait_for(std::time::Duration::from_secs(5), || {
        let snap = snapshot_of([pod(&uid)].into_iter(), Path::new("/proc"));
        snap.pods.into_iter().next()
    })
    .expect("the pod's process was not found under /proc");
    assert_eq!(found.id, "web.shop");
    assert_eq!(netns_cookie(&found.netns).unwrap(), want);
    assert_ne!(want, netns_cookie(Path::new("/proc/self/ns/net")).unwrap());

    // A pod with no process on this node is reported, by name.
    let snap = snapshot_of(
        [pod("11111111-2222-3333-4444-555555555555")].into_iter(),
        Path::new("/proc"),
    );
    assert!(snap.pods.is_empty());
    let e = snap.errors[0].to_string();
    assert!(
        e.contains("web.shop") && e.contains("no process of pod UID"),
        "{e}"
    );
}
