//! Where the agent learns which pods on this node are meshed. The file source reads a YAML file
//! (or a directory of them) that lists pods by network namespace, for VMs, one-machine meshes and
//! tests; it is re-read when it changes.
//!
//! ```yaml
//! pods:
//!   - name: client
//!     namespace: default
//!     netns: /run/netns/client
//!     ips: [10.30.0.10]
//!     annotations:
//!       traffic.sidecar.istio.io/excludeOutboundPorts: "9000"
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::policy::{self, Policy, PolicyError};

#[derive(Debug, Error)]
pub enum PodsError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("{path}: pod {pod}: {source}")]
    Policy {
        path: String,
        pod: String,
        source: PolicyError,
    },
    #[error("{path}: pod {pod}: {reason}")]
    Invalid {
        path: String,
        pod: String,
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PodFile {
    #[serde(default)]
    pods: Vec<PodSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PodSpec {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    netns: PathBuf,
    #[serde(default)]
    ips: Vec<IpAddr>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".into()
}

/// A meshed pod, ready for the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshedPod {
    /// `name.namespace`, as Istio names a pod.
    pub id: String,
    pub netns: PathBuf,
    pub ip4: Option<std::net::Ipv4Addr>,
    pub ip6: Option<std::net::Ipv6Addr>,
    pub policy: Policy,
}

/// What a read of the source gave: the meshed pods, and one error per pod (or file) left out.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub pods: Vec<MeshedPod>,
    pub errors: Vec<PodsError>,
}

/// Reads a file, or every `*.yaml`/`*.yml`/`*.json` file of a directory (sorted by name).
/// A file that does not parse is reported and contributes no pods; a pod with a bad annotation
/// is reported and left out (the iptables rules, if any, still capture it).
pub fn read(path: &Path) -> Snapshot {
    let mut snap = Snapshot::default();
    let files = match files(path) {
        Ok(f) => f,
        Err(e) => {
            snap.errors.push(e);
            return snap;
        }
    };
    for file in files {
        let shown = file.display().to_string();
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(source) => {
                snap.errors.push(PodsError::Read {
                    path: shown,
                    source,
                });
                continue;
            }
        };
        let parsed: PodFile = match serde_yaml::from_str(&text) {
            Ok(p) => p,
            Err(source) => {
                snap.errors.push(PodsError::Parse {
                    path: shown,
                    source,
                });
                continue;
            }
        };
        for spec in parsed.pods {
            match meshed(&spec) {
                Ok(Some(pod)) => snap.pods.push(pod),
                Ok(None) => {}
                Err(e) => snap.errors.push(e.at(&shown, &spec)),
            }
        }
    }
    snap
}

/// A fingerprint of the source's files (names, sizes, modification times): re-read on change.
pub fn fingerprint(path: &Path) -> String {
    let Ok(files) = files(path) else {
        return String::new();
    };
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(f).ok();
            format!(
                "{}:{}:{:?}",
                f.display(),
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok())
            )
        })
        .collect::<Vec<_>>()
        .join("|")
}

fn files(path: &Path) -> Result<Vec<PathBuf>, PodsError> {
    let err = |source| PodsError::Read {
        path: path.display().to_string(),
        source,
    };
    if !path.is_dir() {
        std::fs::metadata(path).map_err(err)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

enum SpecError {
    Policy(PolicyError),
    Invalid(String),
}

impl SpecError {
    fn at(self, path: &str, spec: &PodSpec) -> PodsError {
        let pod = format!("{}.{}", spec.name, spec.namespace);
        match self {
            SpecError::Policy(source) => PodsError::Policy {
                path: path.into(),
                pod,
                source,
            },
            SpecError::Invalid(reason) => PodsError::Invalid {
                path: path.into(),
                pod,
                reason,
            },
        }
    }
}

fn meshed(spec: &PodSpec) -> Result<Option<MeshedPod>, SpecError> {
    if !policy::wants_sidecar(&spec.annotations).map_err(SpecError::Policy)? {
        return Ok(None);
    }
    let policy = policy::from_annotations(&spec.annotations).map_err(SpecError::Policy)?;
    let mut ip4 = None;
    let mut ip6 = None;
    for ip in &spec.ips {
        match ip {
            IpAddr::V4(v4) if ip4.is_none() => ip4 = Some(*v4),
            IpAddr::V6(v6) if ip6.is_none() => ip6 = Some(*v6),
            _ => {
                return Err(SpecError::Invalid(format!(
                    "ips: {ip} is a second address of its family (a pod has one per family)"
                )));
            }
        }
    }
    if spec.netns.as_os_str().is_empty() {
        return Err(SpecError::Invalid("netns: empty path".into()));
    }
    Ok(Some(MeshedPod {
        id: format!("{}.{}", spec.name, spec.namespace),
        netns: spec.netns.clone(),
        ip4,
        ip6,
        policy,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn reads_a_directory_and_reports_bad_pods_by_name() {
        let dir = std::env::temp_dir().join(format!("outrigger-agent-pods-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(
            &dir,
            "a.yaml",
            "pods:\n- name: client\n  netns: /run/netns/client\n  ips: [10.30.0.10, 'fd00::10']\n\
             - name: plain\n  netns: /run/netns/plain\n  annotations: {sidecar.istio.io/inject: 'false'}\n",
        );
        write(
            &dir,
            "b.yaml",
            "pods:\n- name: bad\n  namespace: shop\n  netns: /run/netns/bad\n  annotations:\n    traffic.sidecar.istio.io/excludeOutboundPorts: web\n",
        );
        write(
            &dir,
            "c.yaml",
            "pods: [ {name: x, netns: /x, colour: red} ]\n",
        );
        write(&dir, "notes.txt", "ignored");
        let snap = read(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(snap.pods.len(), 1);
        let p = &snap.pods[0];
        assert_eq!(p.id, "client.default");
        assert_eq!(p.ip4, Some("10.30.0.10".parse().unwrap()));
        assert_eq!(p.ip6, Some("fd00::10".parse().unwrap()));
        let errors: Vec<String> = snap.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains(
                "b.yaml: pod bad.shop: annotation traffic.sidecar.istio.io/excludeOutboundPorts"
            ),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("c.yaml") && errors[1].contains("colour"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_missing_source_is_one_error() {
        let snap = read(Path::new("/nonexistent/outrigger-pods.yaml"));
        assert!(snap.pods.is_empty());
        assert_eq!(snap.errors.len(), 1);
    }
}
