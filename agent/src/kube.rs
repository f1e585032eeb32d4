//! The Kubernetes pod source: a watch of the pods scheduled on this node (kube-rs), with Istio's
//! injection semantics, and each pod's network namespace found through /proc.
//!
//! - A pod is meshed when Istio injected it (a container, or a native-sidecar init container,
//!   named `istio-proxy`), it is not on the host network, it has an IP, and
//!   `sidecar.istio.io/inject` does not say "false". Its `traffic.sidecar.istio.io/*` annotations
//!   give its policy, as they give istio-init's flags.
//! - Its network namespace is `/proc/<pid>/ns/net` of any process whose cgroup path names the
//!   pod's UID (`pod<uid>` with cgroupfs, `pod<uid with _>` with the systemd driver). The agent
//!   therefore runs with the host's PID namespace (see deploy/).
//!
//! The watch runs on a thread of its own; `snapshot` reads the reflector's store.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::pods::{MeshedPod, PodsError, Snapshot};
use crate::policy;

#[derive(Debug, Error)]
pub enum KubeError {
    #[error("Kubernetes client: {0}")]
    Client(String),
    #[error("--node-name (or NODE_NAME) is required with --pods-from kubernetes")]
    NoNode,
}

/// What the agent reads of a Pod, converted at the boundary from the API type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub containers: Vec<String>,
    pub init_containers: Vec<String>,
    pub annotations: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    pub phase: String,
}

impl From<&k8s_openapi::api::core::v1::Pod> for PodInfo {
    fn from(p: &k8s_openapi::api::core::v1::Pod) -> Self {
        let spec = p.spec.as_ref();
        let status = p.status.as_ref();
        let names = |list: Option<&Vec<k8s_openapi::api::core::v1::Container>>| {
            list.map(|l| l.iter().map(|c| c.name.clone()).collect())
                .unwrap_or_default()
        };
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|l| l.iter().filter_map(|i| i.ip.parse().ok()).collect())
            .unwrap_or_default();
        if ips.is_empty()
            && let Some(ip) = status
                .and_then(|s| s.pod_ip.as_ref())
                .and_then(|i| i.parse().ok())
        {
            ips.push(ip);
        }
        PodInfo {
            name: p.metadata.name.clone().unwrap_or_default(),
            namespace: p
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            uid: p.metadata.uid.clone().unwrap_or_default(),
            containers: names(spec.map(|s| &s.containers)),
            init_containers: names(spec.and_then(|s| s.init_containers.as_ref())),
            annotations: p.metadata.annotations.clone().unwrap_or_default(),
            ips,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        }
    }
}

/// A pod the capture should serve, before its network namespace is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub uid: String,
    pub pod: MeshedPod,
}

/// Istio's injection semantics (pure). `Ok(None)`: not meshed; `Err`: meshed but unusable.
pub fn candidate(p: &PodInfo) -> Result<Option<Candidate>, String> {
    let injected = p
        .containers
        .iter()
        .chain(&p.init_containers)
        .any(|c| c == "istio-proxy");
    if !injected || p.host_network || p.phase == "Succeeded" || p.phase == "Failed" {
        return Ok(None);
    }
    if !policy::wants_sidecar(&p.annotations).map_err(|e| e.to_string())? {
        return Ok(None);
    }
    if p.ips.is_empty() || p.uid.is_empty() {
        return Ok(None); // not started yet: the next event brings the IP
    }
    let policy = policy::from_annotations(&p.annotations).map_err(|e| e.to_string())?;
    let ip4 = p.ips.iter().find_map(|i| match i {
        IpAddr::V4(v) => Some(*v),
        IpAddr::V6(_) => None,
    });
    let ip6 = p.ips.iter().find_map(|i| match i {
        IpAddr::V6(v) => Some(*v),
        IpAddr::V4(_) => None,
    });
    Ok(Some(Candidate {
        uid: p.uid.clone(),
        pod: MeshedPod {
            id: format!("{}.{}", p.name, p.namespace),
            netns: PathBuf::new(),
            ip4,
            ip6,
            policy,
        },
    }))
}

/// Whether a `/proc/<pid>/cgroup` text puts the process in the pod with this UID (pure).
pub fn cgroup_names_pod(cgroup: &str, uid: &str) -> bool {
    if uid.is_empty() {
        return false;
    }
    let plain = format!("pod{uid}");
    let systemd = format!("pod{}", uid.replace('-', "_"));
    cgroup.lines().any(|line| {
        let path = line.splitn(3, ':').nth(2).unwrap_or(line);
        path.split('/').any(|part| {
            part == plain
                || part.starts_with(&format!("{plain}."))
                || part.ends_with(&format!("-{systemd}.slice"))
                || part == systemd
        })
    })
}

/// `<proc>/<pid>/ns/net` of a process of the pod, if one runs on this node.
pub fn netns_of_pod(proc_root: &Path, uid: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(proc_root).ok()?;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(proc_root.join(pid).join("cgroup")) else {
            continue;
        };
        if cgroup_names_pod(&text, uid) {
            return Some(proc_root.join(pid).join("ns/net"));
        }
    }
    None
}

/// The pods of this node, from the API server.
pub struct KubeSource {
    store: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Pod>,
    proc_root: PathBuf,
    _thread: std::thread::JoinHandle<()>,
}

impl KubeSource {
    /// Starts the watch (in-cluster or kubeconfig credentials, as kube-rs finds them).
    pub fn start(node: &str, proc_root: &Path) -> Result<KubeSource, KubeError> {
        use futures::StreamExt;
        use kube::runtime::{WatchStreamExt, reflector, watcher};
        if node.is_empty() {
            return Err(KubeError::NoNode);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| KubeError::Client(e.to_string()))?;
        let client = runtime
            .block_on(kube::Client::try_default())
            .map_err(|e| KubeError::Client(e.to_string()))?;
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let (reader, writer) = reflector::store();
        let stream = reflector(writer, watcher(api, config))
            .default_backoff()
            .touched_objects();
        let thread = std::thread::spawn(move || {
            runtime.block_on(stream.for_each(|event| {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "pod watch");
                }
                std::future::ready(())
            }));
        });
        Ok(KubeSource {
            store: reader,
            proc_root: proc_root.to_path_buf(),
            _thread: thread,
        })
    }

    /// A fingerprint of the store: pod UIDs and resource versions.
    pub fn fingerprint(&self) -> String {
        let mut v: Vec<String> = self
            .store
            .state()
            .iter()
            .map(|p| {
                format!(
                    "{}@{}",
                    p.metadata.uid.as_deref().unwrap_or(""),
                    p.metadata.resource_version.as_deref().unwrap_or("")
                )
            })
            .collect();
        v.sort();
        v.join(",")
    }

    /// The meshed pods now, each with its network namespace.
    pub fn snapshot(&self) -> Snapshot {
        let pods: Vec<Arc<k8s_openapi::api::core::v1::Pod>> = self.store.state();
        snapshot_of(
            pods.iter().map(|p| PodInfo::from(p.as_ref())),
            &self.proc_root,
        )
    }
}

/// Candidates with their namespaces; errors name the pod.
pub fn snapshot_of(pods: impl Iterator<Item = PodInfo>, proc_root: &Path) -> Snapshot {
    let mut snap = Snapshot::default();
    for info in pods {
        match candidate(&info) {
            Ok(Some(mut c)) => match netns_of_pod(proc_root, &c.uid) {
                Some(ns) => {
                    c.pod.netns = ns;
                    snap.pods.push(c.pod);
                }
                None => snap.errors.push(PodsError::Invalid {
                    path: "kubernetes".into(),
                    pod: c.pod.id,
                    reason: format!(
                        "no process of pod UID {} under {}",
                        c.uid,
                        proc_root.display()
                    ),
                }),
            },
            Ok(None) => {}
            Err(reason) => snap.errors.push(PodsError::Invalid {
                path: "kubernetes".into(),
                pod: format!("{}.{}", info.name, info.namespace),
                reason,
            }),
        }
    }
    snap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injected() -> PodInfo {
        PodInfo {
            name: "reviews-v1-7d9".into(),
            namespace: "bookinfo".into(),
            uid: "6f1c2a9e-0b1d-4c55-9a3e-2f0c1d2e3f40".into(),
            containers: vec!["reviews".into(), "istio-proxy".into()],
            init_containers: vec!["istio-init".into()],
            annotations: BTreeMap::new(),
            ips: vec!["10.244.1.7".parse().unwrap()],
            host_network: false,
            phase: "Running".into(),
        }
    }

    #[test]
    fn injection_semantics() {
        let c = candidate(&injected()).unwrap().unwrap();
        assert_eq!(c.pod.id, "reviews-v1-7d9.bookinfo");
        assert_eq!(c.pod.ip4, Some("10.244.1.7".parse().unwrap()));

        // Native sidecar (init container with restartPolicy Always).
        let mut native = injected();
        native.containers = vec!["reviews".into()];
        native.init_containers = vec!["istio-proxy".into()];
        assert!(candidate(&native).unwrap().is_some());

        let mut plain = injected();
        plain.containers = vec!["reviews".into()];
        plain.init_containers.clear();
        assert_eq!(candidate(&plain).unwrap(), None);

        let mut host = injected();
        host.host_network = true;
        assert_eq!(candidate(&host).unwrap(), None);

        let mut off = injected();
        off.annotations
            .insert(policy::INJECT.into(), "false".into());
        assert_eq!(candidate(&off).unwrap(), None);

        let mut pending = injected();
        pending.ips.clear();
        assert_eq!(candidate(&pending).unwrap(), None);

        let mut bad = injected();
        bad.annotations
            .insert(policy::EXCLUDE_OUT_PORTS.into(), "9000,x".into());
        let e = candidate(&bad).unwrap_err();
        assert!(e.contains("excludeOutboundPorts"), "{e}");
    }

    #[test]
    fn pod_uid_in_cgroup_paths() {
        let uid = "6f1c2a9e-0b1d-4c55-9a3e-2f0c1d2e3f40";
        // cgroupfs driver, cgroup v2 and v1 lines.
        assert!(cgroup_names_pod(
            &format!("0::/kubepods/burstable/pod{uid}/0123abcd\n"),
            uid
        ));
        assert!(cgroup_names_pod(
            &format!("4:memory:/kubepods/pod{uid}/0123\n0::/\n"),
            uid
        ));
        // systemd driver.
        assert!(cgroup_names_pod(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod6f1c2a9e_0b1d_4c55_9a3e_2f0c1d2e3f40.slice/cri-containerd-0123.scope\n",
            uid
        ));
        // Another pod, a prefix of the UID, the host.
        assert!(!cgroup_names_pod(
            "0::/kubepods/burstable/pod6f1c2a9e-0b1d-4c55-9a3e-2f0c1d2e3f41/x\n",
            uid
        ));
        assert!(!cgroup_names_pod(
            "0::/kubepods/burstable/pod6f1c2a9e/x\n",
            uid
        ));
        assert!(!cgroup_names_pod("0::/user.slice/session-1.scope\n", uid));
        assert!(!cgroup_names_pod("0::/kubepods/pod/x\n", ""));
    }

    #[test]
    fn api_pod_converts_at_the_boundary() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                         "annotations": {"traffic.sidecar.istio.io/excludeInboundPorts": "8081"}},
            "spec": {"containers": [{"name": "web"}, {"name": "istio-proxy"}],
                     "initContainers": [{"name": "istio-init"}]},
            "status": {"phase": "Running", "podIP": "10.1.2.3",
                       "podIPs": [{"ip": "10.1.2.3"}, {"ip": "fd00::3"}]}
        }))
        .unwrap();
        let info = PodInfo::from(&pod);
        assert_eq!(info.containers, vec!["web", "istio-proxy"]);
        assert_eq!(info.ips.len(), 2);
        let c = candidate(&info).unwrap().unwrap();
        assert_eq!(c.pod.policy.exclude_in_ports, vec![8081]);
        assert_eq!(c.pod.ip6, Some("fd00::3".parse().unwrap()));
    }
}
