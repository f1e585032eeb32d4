//! Reading a directory of multi-document YAML into typed resources, with a finding for every
//! document that cannot be used. A file with a YAML syntax error yields no resources at all (its
//! documents cannot be trusted); one bad document does not stop the others.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::findings::{Finding, Origin};
use crate::resources::{self as r, Labels, Metadata};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    WorkloadEntry,
    Sidecar,
    Service,
    EndpointSlice,
    Pod,
    /// The `istio` ConfigMap: Istio's mesh config under `data.mesh`.
    MeshConfig,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

// Resources are few and long-lived; boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    VirtualService(r::VirtualService),
    DestinationRule(r::DestinationRule),
    Gateway(r::Gateway),
    ServiceEntry(r::ServiceEntry),
    WorkloadEntry(r::WorkloadEntry),
    Sidecar(r::Sidecar),
    Service(r::ServiceSpec),
    EndpointSlice(r::EndpointSlice),
    Pod(r::Pod),
    MeshConfig(r::MeshConfig),
}

/// (kind, namespace, name): what makes two documents the same resource.
pub type Key = (Kind, String, String);

#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub kind: Kind,
    pub name: String,
    pub namespace: String,
    pub labels: Labels,
    pub origin: Origin,
    pub spec: Spec,
}

impl Object {
    pub fn key(&self) -> Key {
        (self.kind, self.namespace.clone(), self.name.clone())
    }

    /// `VirtualService default/reviews`.
    pub fn describe(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// What one file gave.
#[derive(Debug, Clone, Default)]
pub struct FileLoad {
    pub objects: Vec<Object>,
    pub findings: Vec<Finding>,
    /// The file could not be parsed as YAML at all.
    pub unreadable: bool,
}

/// The YAML and JSON files under `dir`, recursively, in name order.
pub fn list_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

const ISTIO_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// Which kind an apiVersion + kind names, or `None` for a kind outrigger-pilot does not read.
fn kind_of(api_version: &str, kind: &str) -> Option<Kind> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    match (group, kind) {
        ("networking.istio.io", k) if ISTIO_VERSIONS.contains(&version) => match k {
            "VirtualService" => Some(Kind::VirtualService),
            "DestinationRule" => Some(Kind::DestinationRule),
            "Gateway" => Some(Kind::Gateway),
            "ServiceEntry" => Some(Kind::ServiceEntry),
            "WorkloadEntry" => Some(Kind::WorkloadEntry),
            "Sidecar" => Some(Kind::Sidecar),
            _ => None,
        },
        ("", "Service") if version == "v1" => Some(Kind::Service),
        ("", "Pod") if version == "v1" => Some(Kind::Pod),
        ("", "ConfigMap") if version == "v1" => Some(Kind::MeshConfig),
        ("discovery.k8s.io", "EndpointSlice") if version == "v1" => Some(Kind::EndpointSlice),
        _ => None,
    }
}

fn typed<T: DeserializeOwned>(v: Value, prefix: &str) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            prefix.to_string()
        } else {
            format!("{prefix}.{path}")
        };
        (field, e.into_inner().to_string())
    })
}

fn spec_of(kind: Kind, doc: &Value) -> Result<Spec, (String, String)> {
    let spec = doc
        .get("spec")
        .cloned()
        .unwrap_or(Value::Mapping(Default::default()));
    let spec = if spec.is_null() {
        Value::Mapping(Default::default())
    } else {
        spec
    };
    Ok(match kind {
        Kind::VirtualService => Spec::VirtualService(typed(spec, "spec")?),
        Kind::DestinationRule => Spec::DestinationRule(typed(spec, "spec")?),
        Kind::Gateway => Spec::Gateway(typed(spec, "spec")?),
        Kind::ServiceEntry => Spec::ServiceEntry(typed(spec, "spec")?),
        Kind::WorkloadEntry => Spec::WorkloadEntry(typed(spec, "spec")?),
        Kind::Sidecar => Spec::Sidecar(typed(spec, "spec")?),
        Kind::Service => Spec::Service(typed(spec, "spec")?),
        Kind::Pod => {
            let status = doc
                .get("status")
                .cloned()
                .unwrap_or(Value::Mapping(Default::default()));
            Spec::Pod(r::Pod {
                spec: typed(spec, "spec")?,
                status: typed(status, "status")?,
            })
        }
        // EndpointSlices keep their content at the top level.
        Kind::EndpointSlice => Spec::EndpointSlice(typed(doc.clone(), "")?),
        // The mesh config is a YAML document inside the ConfigMap's `data.mesh` string.
        Kind::MeshConfig => {
            let text = doc
                .get("data")
                .and_then(|d| d.get("mesh"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let mesh: Value = serde_yaml::from_str(text)
                .map_err(|e| ("data.mesh".to_string(), format!("not YAML: {e}")))?;
            let mesh = if mesh.is_null() {
                Value::Mapping(Default::default())
            } else {
                mesh
            };
            Spec::MeshConfig(typed(mesh, "data.mesh")?)
        }
    })
}

/// Parses one file's text. `path` is only used to name the origin.
pub fn parse_file(path: &Path, text: &str) -> FileLoad {
    let mut out = FileLoad::default();
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(de) {
            Ok(v) => docs.push(v),
            Err(e) => {
                let origin = Origin {
                    file: path.to_path_buf(),
                    doc: i,
                };
                out.findings.push(Finding::error(
                    &origin,
                    None,
                    None,
                    format!("YAML syntax error: {e}; nothing in this file is applied"),
                ));
                out.unreadable = true;
                out.objects.clear();
                return out;
            }
        }
    }
    for (i, doc) in docs.into_iter().enumerate() {
        let origin = Origin {
            file: path.to_path_buf(),
            doc: i,
        };
        if doc.is_null() {
            continue;
        }
        let s = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let (api_version, kind_name) = (s("apiVersion"), s("kind"));
        if api_version.is_empty() || kind_name.is_empty() {
            out.findings.push(Finding::error(
                &origin,
                None,
                Some(if api_version.is_empty() {
                    "apiVersion"
                } else {
                    "kind"
                }),
                "missing: not a Kubernetes resource",
            ));
            continue;
        }
        let Some(kind) = kind_of(&api_version, &kind_name) else {
            out.findings.push(Finding::warning(
                &origin,
                Some(&kind_name),
                Some("kind"),
                format!("{api_version} {kind_name} is not read by outrigger-pilot; skipped"),
            ));
            continue;
        };
        let meta: Metadata = match typed(
            doc.get("metadata").cloned().unwrap_or(Value::Null),
            "metadata",
        ) {
            Ok(m) => m,
            Err((field, msg)) => {
                out.findings
                    .push(Finding::error(&origin, Some(&kind_name), Some(&field), msg));
                continue;
            }
        };
        let namespace = meta
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let describe = format!("{kind} {namespace}/{}", meta.name);
        if meta.name.is_empty() {
            out.findings.push(Finding::error(
                &origin,
                Some(&kind_name),
                Some("metadata.name"),
                "missing",
            ));
            continue;
        }
        if kind == Kind::MeshConfig && meta.name != "istio" {
            out.findings.push(Finding::warning(
                &origin,
                Some(&kind_name),
                Some("metadata.name"),
                format!(
                    "ConfigMap {} is not Istio's mesh config (named \"istio\"); skipped",
                    meta.name
                ),
            ));
            continue;
        }
        match spec_of(kind, &doc) {
            Ok(spec) => out.objects.push(Object {
                kind,
                name: meta.name,
                namespace,
                labels: meta.labels,
                origin,
                spec,
            }),
            Err((field, msg)) => out.findings.push(Finding::error(
                &origin,
                Some(&describe),
                Some(field.trim_start_matches('.')),
                msg,
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> FileLoad {
        parse_file(Path::new("mesh.yaml"), text)
    }

    #[test]
    fn reads_every_document_and_skips_unknown_kinds() {
        let f = parse(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a, namespace: shop}\nspec: {hosts: [a]}\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n",
        );
        assert_eq!(f.objects.len(), 2);
        assert_eq!(f.objects[0].describe(), "VirtualService shop/a");
        assert_eq!(f.objects[1].namespace, "default");
        assert_eq!(f.findings.len(), 1);
        assert_eq!(f.findings[0].level, crate::findings::Level::Warning);
        assert!(f.findings[0].message.contains("Deployment"));
    }

    #[test]
    fn a_misspelt_field_is_named_with_its_path() {
        let f = parse(
            "apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\nmetadata: {name: a}\n\
             spec:\n  hosts: [a]\n  http:\n  - route:\n    - destination: {host: a}\n      weigth: 10\n",
        );
        assert!(f.objects.is_empty());
        let e = &f.findings[0];
        assert_eq!(e.field.as_deref(), Some("spec.http[0].route[0].weigth"));
        assert!(e.message.contains("weigth"), "{}", e.message);
        assert_eq!(e.to_string().split(':').next(), Some("error"));
    }

    #[test]
    fn a_syntax_error_rejects_the_whole_file() {
        let f = parse("apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\nkind: [unclosed\n");
        assert!(f.unreadable);
        assert!(f.objects.is_empty());
        assert!(f.findings[0].message.contains("YAML syntax error"));
    }
}
