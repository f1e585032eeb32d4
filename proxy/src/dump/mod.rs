//! Reading Envoy proto-JSON (admin `/config_dump` output and bootstraps) into Envoy's wire types.
//!
//! JSON is decoded against Envoy's descriptors (plus [`extras`]) into a dynamic message, encoded,
//! and decoded again into the `envoy-types` structs, so that the same `TryFrom` conversions serve
//! xDS and files.

mod extras;

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use envoy_types::pb::envoy::admin::v3 as admin;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage};
use thiserror::Error;

static ENVOY_DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/envoy-descriptors.bin"));

#[derive(Debug, Error)]
pub enum DumpError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON or YAML: {reason}")]
    Syntax { path: String, reason: String },
    #[error("{path}: not a {message}: {reason}")]
    Decode {
        path: String,
        message: &'static str,
        reason: String,
    },
    #[error("{path}: section {index} ({type_url}): {reason}")]
    Section {
        path: String,
        index: usize,
        type_url: String,
        reason: String,
    },
}

/// Envoy's descriptors plus the Istio extras. Decoded, they hold about 20 MB, more than the
/// rest of an idle proxy, and are only needed to read a bootstrap or config dump and to write
/// `/config_dump`: so the pool lives while somebody holds it, and is decoded again (some tens
/// of milliseconds) by the next reader after that. A reader of many messages holds one pool
/// for all of them with [`hold`] ([`load`] does, and so does the admin's dump).
pub fn pool() -> Arc<DescriptorPool> {
    let mut kept = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(pool) = kept.upgrade() {
        return pool;
    }
    let mut pool =
        DescriptorPool::decode(ENVOY_DESCRIPTORS).expect("the envoy-types descriptor set decodes");
    for file in extras::files() {
        pool.add_file_descriptor_proto(file)
            .expect("the extra descriptors are consistent");
    }
    let pool = Arc::new(pool);
    *kept = Arc::downgrade(&pool);
    pool
}

static POOL: Mutex<Weak<DescriptorPool>> = Mutex::new(Weak::new());
static ON_RELEASE: OnceLock<fn()> = OnceLock::new();

/// What to call once the pool has been let go by its last holder: the binary hands the freed
/// memory back to the system there (the allocator would otherwise keep it while idle).
pub fn on_release(f: fn()) {
    let _ = ON_RELEASE.set(f);
}

/// The pool, held for a batch of reads until this is dropped.
pub struct Held(Option<Arc<DescriptorPool>>);

/// Holds the pool (decoding it if nobody does) until the returned guard is dropped.
pub fn hold() -> Held {
    Held(Some(pool()))
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.0.take());
        let gone = POOL
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade()
            .is_none();
        if gone && let Some(release) = ON_RELEASE.get() {
            release();
        }
    }
}

/// A resource as it arrives: its name and its packed wire form.
#[derive(Debug, Clone)]
pub struct Packed {
    pub name: String,
    pub any: Any,
}

/// The resources of a config dump, by kind.
#[derive(Debug, Default)]
pub struct Dump {
    pub bootstrap: Option<Bootstrap>,
    pub listeners: Vec<Packed>,
    pub route_configs: Vec<Packed>,
    pub clusters: Vec<Packed>,
    pub endpoints: Vec<Packed>,
    pub secrets: Vec<Packed>,
    /// Sections recognised but not read (scoped routes, …), by type URL.
    pub skipped: Vec<String>,
}

fn decode_json<M: Message + Default>(
    json: &serde_json::Value,
    full_name: &'static str,
    path: &str,
) -> Result<M, DumpError> {
    let desc = pool()
        .get_message_by_name(full_name)
        .expect("known message");
    let opts = DeserializeOptions::new().deny_unknown_fields(false);
    let dynamic = DynamicMessage::deserialize_with_options(desc, json, &opts).map_err(|e| {
        DumpError::Decode {
            path: path.into(),
            message: full_name,
            reason: e.to_string(),
        }
    })?;
    M::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| DumpError::Decode {
        path: path.into(),
        message: full_name,
        reason: e.to_string(),
    })
}

fn read_value(path: &Path) -> Result<serde_json::Value, DumpError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DumpError::Read {
        path: p.clone(),
        source,
    })?;
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    if yaml {
        serde_yaml::from_str(&text).map_err(|e| DumpError::Syntax {
            path: p,
            reason: e.to_string(),
        })
    } else {
        serde_json::from_str(&text).map_err(|e| DumpError::Syntax {
            path: p,
            reason: e.to_string(),
        })
    }
}

fn unpack<M: Message + Default>(any: &Any, path: &str, index: usize) -> Result<M, DumpError> {
    M::decode(any.value.as_slice()).map_err(|e| DumpError::Section {
        path: path.into(),
        index,
        type_url: any.type_url.clone(),
        reason: e.to_string(),
    })
}

fn packed(name: &str, any: Option<Any>) -> Option<Packed> {
    any.map(|any| Packed {
        name: name.to_string(),
        any,
    })
}

/// Reads a config dump (`{"configs": [...]}`) or a bootstrap, as JSON or YAML.
pub fn load(path: &Path) -> Result<Dump, DumpError> {
    // One pool for every message of the file.
    let _pool = hold();
    let value = read_value(path)?;
    let p = path.display().to_string();
    if value.get("configs").is_none() {
        let bootstrap =
            decode_json::<Bootstrap>(&value, "envoy.config.bootstrap.v3.Bootstrap", &p)?;
        return Ok(Dump {
            bootstrap: Some(bootstrap),
            ..Dump::default()
        });
    }
    let config_dump: admin::ConfigDump = decode_json(&value, "envoy.admin.v3.ConfigDump", &p)?;
    let mut dump = Dump::default();
    for (i, section) in config_dump.configs.iter().enumerate() {
        let kind = section.type_url.rsplit('/').next().unwrap_or_default();
        match kind {
            "envoy.admin.v3.BootstrapConfigDump" => {
                dump.bootstrap = unpack::<admin::BootstrapConfigDump>(section, &p, i)?.bootstrap;
            }
            "envoy.admin.v3.ListenersConfigDump" => {
                let s: admin::ListenersConfigDump = unpack(section, &p, i)?;
                dump.listeners
                    .extend(s.static_listeners.into_iter().filter_map(|l| {
                        let name = l
                            .listener
                            .as_ref()
                            .map(|_| String::new())
                            .unwrap_or_default();
                        packed(&name, l.listener)
                    }));
                for l in s.dynamic_listeners {
                    // The active version is what serves; warming ones are not yet in use.
                    if let Some(state) = l.active_state.or(l.warming_state) {
                        dump.listeners.extend(packed(&l.name, state.listener));
                    }
                }
            }
            "envoy.admin.v3.RoutesConfigDump" => {
                let s: admin::RoutesConfigDump = unpack(section, &p, i)?;
                dump.route_configs.extend(
                    s.static_route_configs
                        .into_iter()
                        .filter_map(|r| packed("", r.route_config)),
                );
                dump.route_configs.extend(
                    s.dynamic_route_configs
                        .into_iter()
                        .filter_map(|r| packed("", r.route_config)),
                );
            }
            "envoy.admin.v3.ClustersConfigDump" => {
                let s: admin::ClustersConfigDump = unpack(section, &p, i)?;
                dump.clusters.extend(
                    s.static_clusters
                        .into_iter()
                        .filter_map(|c| packed("", c.cluster)),
                );
                dump.clusters.extend(
                    s.dynamic_active_clusters
                        .into_iter()
                        .filter_map(|c| packed("", c.cluster)),
                );
                dump.clusters.extend(
                    s.dynamic_warming_clusters
                        .into_iter()
                        .filter_map(|c| packed("", c.cluster)),
                );
            }
            "envoy.admin.v3.EndpointsConfigDump" => {
                let s: admin::EndpointsConfigDump = unpack(section, &p, i)?;
                dump.endpoints.extend(
                    s.static_endpoint_configs
                        .into_iter()
                        .filter_map(|e| packed("", e.endpoint_config)),
                );
                dump.endpoints.extend(
                    s.dynamic_endpoint_configs
                        .into_iter()
                        .filter_map(|e| packed("", e.endpoint_config)),
                );
            }
            "envoy.admin.v3.SecretsConfigDump" => {
                let s: admin::SecretsConfigDump = unpack(section, &p, i)?;
                dump.secrets.extend(
                    s.static_secrets
                        .into_iter()
                        .filter_map(|x| packed(&x.name, x.secret)),
                );
                dump.secrets.extend(
                    s.dynamic_active_secrets
                        .into_iter()
                        .filter_map(|x| packed(&x.name, x.secret)),
                );
            }
            _ => dump.skipped.push(section.type_url.clone()),
        }
    }
    Ok(dump)
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    #[test]
    fn readers_under_one_hold_share_one_pool() {
        let held = hold();
        let again = pool();
        let kept = held.0.as_ref().expect("a held pool");
        assert!(Arc::ptr_eq(kept, &again), "the pool was decoded twice");
        assert!(again.get_message_by_name("google.protobuf.Any").is_some());
    }
}
