//! The configuration outrigger-pilot serves: the valid resources of a directory, with the last
//! good version of anything that became invalid, so a bad edit never takes a working route down.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::analyze;
use crate::findings::{Finding, Level};
use crate::load::{self, Key, Object, Spec};
use crate::registry::Registry;

/// One consistent view of the mesh.
#[derive(Debug, Clone, Default)]
pub struct Mesh {
    pub registry: Registry,
    /// Every applied resource, in load order.
    pub objects: Vec<Object>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read the configuration directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Remembers the last good version of every file and resource between loads.
#[derive(Debug, Default)]
pub struct Loader {
    good_files: BTreeMap<PathBuf, Vec<Object>>,
    good: BTreeMap<Key, Object>,
}

impl Loader {
    /// Loads `dir`; the findings say what was rejected and what was kept instead.
    pub fn load(&mut self, dir: &Path) -> Result<(Mesh, Vec<Finding>), LoadError> {
        let files = load::list_files(dir).map_err(|source| LoadError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut findings = Vec::new();
        let mut objects = Vec::new();
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    let origin = crate::findings::Origin {
                        file: file.clone(),
                        doc: 0,
                    };
                    findings.push(Finding::error(
                        &origin,
                        None,
                        None,
                        format!("cannot read: {e}"),
                    ));
                    continue;
                }
            };
            let f = load::parse_file(&file, &text);
            findings.extend(f.findings);
            if f.unreadable {
                if let Some(old) = self.good_files.get(&file) {
                    let origin = crate::findings::Origin {
                        file: file.clone(),
                        doc: 0,
                    };
                    findings.push(Finding::warning(
                        &origin,
                        None,
                        None,
                        format!(
                            "keeping the last good version of this file ({} resources)",
                            old.len()
                        ),
                    ));
                    objects.extend(old.iter().cloned());
                }
                continue;
            }
            self.good_files.insert(file, f.objects.clone());
            objects.extend(f.objects);
        }
        // Each resource on its own.
        let mut seen = BTreeSet::new();
        let mut valid = Vec::new();
        for o in objects {
            if !seen.insert(o.key()) {
                findings.push(Finding::error(
                    &o.origin,
                    Some(&o.describe()),
                    Some("metadata.name"),
                    "defined twice; this copy is ignored",
                ));
                continue;
            }
            let f = analyze::validate(&o);
            let bad = f.iter().any(|x| x.level == Level::Error);
            findings.extend(f);
            if bad {
                if let Some(old) = self.good.get(&o.key()) {
                    findings.push(Finding::warning(
                        &o.origin,
                        Some(&o.describe()),
                        None,
                        format!("keeping the last good version (from {})", old.origin),
                    ));
                    valid.push(old.clone());
                }
            } else {
                valid.push(o);
            }
        }
        // Against each other: a rejected resource falls back to its last good version, which
        // must then pass too.
        let mut applied = valid;
        for round in 0..2 {
            let registry = Registry::build(&applied);
            let cross = analyze::cross_check(&applied, &registry);
            let rejected: BTreeSet<Key> = cross
                .iter()
                .filter(|(_, f)| f.level == Level::Error)
                .map(|(k, _)| k.clone())
                .collect();
            if round == 0 {
                findings.extend(cross.into_iter().map(|(_, f)| f));
            }
            if rejected.is_empty() {
                break;
            }
            applied = applied
                .into_iter()
                .filter_map(|o| {
                    if !rejected.contains(&o.key()) {
                        return Some(o);
                    }
                    match self.good.get(&o.key()) {
                        Some(old) if round == 0 && *old != o => {
                            findings.push(Finding::warning(
                                &o.origin,
                                Some(&o.describe()),
                                None,
                                format!("keeping the last good version (from {})", old.origin),
                            ));
                            Some(old.clone())
                        }
                        _ => None,
                    }
                })
                .collect();
        }
        let registry = Registry::build(&applied);
        self.good = applied.iter().map(|o| (o.key(), o.clone())).collect();
        Ok((
            Mesh {
                registry,
                objects: applied,
            },
            findings,
        ))
    }
}

/// Sorts findings for display: errors first, then by file and document.
pub fn sort_findings(f: &mut [Finding]) {
    f.sort_by(|a, b| (a.level, &a.origin).cmp(&(b.level, &b.origin)));
}

/// The VirtualServices that apply to sidecars (gateway `mesh` or none).
pub fn mesh_virtual_services(
    mesh: &Mesh,
) -> impl Iterator<Item = (&Object, &crate::resources::VirtualService)> {
    mesh.objects.iter().filter_map(|o| match &o.spec {
        Spec::VirtualService(vs)
            if vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh") =>
        {
            Some((o, vs))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory, removed when the test ends (also when it fails).
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("outrigger-pilot-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const BASE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: bill}\nspec: {clusterIP: 10.96.0.5, selector: {app: bill}, ports: [{name: http, port: 80}]}\n---\n\
        apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: bill}\nspec: {host: bill, subsets: [{name: v1, labels: {version: v1}}]}\n";

    fn vs(body: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: bill}}\nspec:\n  hosts: [bill]\n  http:\n{body}"
        )
    }

    #[test]
    fn a_bad_edit_keeps_the_last_good_version() {
        let scratch = Scratch::new("mesh");
        let dir = scratch.0.clone();
        std::fs::write(dir.join("a.yaml"), BASE).unwrap();
        std::fs::write(
            dir.join("b.yaml"),
            vs("  - route: [{destination: {host: bill, subset: v1}}]\n"),
        )
        .unwrap();
        let mut loader = Loader::default();
        let (mesh, f) = loader.load(&dir).unwrap();
        assert!(!crate::findings::has_errors(&f), "{f:?}");
        assert_eq!(mesh.objects.len(), 3);

        // An undefined subset: rejected, the old route stays.
        std::fs::write(
            dir.join("b.yaml"),
            vs("  - route: [{destination: {host: bill, subset: v9}}]\n"),
        )
        .unwrap();
        let (mesh, f) = loader.load(&dir).unwrap();
        let e = f
            .iter()
            .find(|x| x.level == Level::Error)
            .expect("an error");
        assert_eq!(
            e.field.as_deref(),
            Some("spec.http[0].route[0].destination.subset")
        );
        let kept = mesh_virtual_services(&mesh).next().expect("kept").1;
        assert_eq!(
            kept.http[0].route[0].destination.subset.as_deref(),
            Some("v1")
        );

        // A syntax error: the whole file keeps its last good version.
        std::fs::write(dir.join("b.yaml"), "kind: [\n").unwrap();
        let (mesh, f) = loader.load(&dir).unwrap();
        assert!(f.iter().any(|x| x.message.contains("YAML syntax error")));
        assert_eq!(mesh_virtual_services(&mesh).count(), 1);

        // Weights that do not add up to 100, for a new resource: nothing to keep.
        std::fs::write(dir.join("c.yaml"), vs("  - route: [{destination: {host: bill}, weight: 50}, {destination: {host: bill}, weight: 60}]\n").replace("name: bill}", "name: other}")).unwrap();
        let (mesh, f) = loader.load(&dir).unwrap();
        assert!(f.iter().any(|x| x.message.contains("add up to 110")));
        assert_eq!(mesh_virtual_services(&mesh).count(), 1);
    }

    #[test]
    fn two_virtual_services_for_one_host_and_unknown_hosts_are_errors() {
        let scratch = Scratch::new("mesh2");
        let dir = scratch.0.clone();
        std::fs::write(dir.join("a.yaml"), BASE).unwrap();
        std::fs::write(
            dir.join("b.yaml"),
            vs("  - route: [{destination: {host: bill}}]\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("c.yaml"),
            vs("  - route: [{destination: {host: nowhere}}]\n")
                .replace("name: bill}", "name: second}"),
        )
        .unwrap();
        std::fs::write(
            dir.join("d.yaml"),
            vs("  - route: [{destination: {host: bill}}]\n").replace("name: bill}", "name: third}"),
        )
        .unwrap();
        let (mesh, f) = Loader::default().load(&dir).unwrap();
        let errors: Vec<String> = f
            .iter()
            .filter(|x| x.level == Level::Error)
            .map(|x| x.to_string())
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("unknown host 'nowhere.default.svc.cluster.local'"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("third spec.hosts[0]: host 'bill.default.svc.cluster.local' is already routed by VirtualService default/bill"),
            "{errors:?}"
        );
        assert_eq!(mesh_virtual_services(&mesh).count(), 1);
    }
}
