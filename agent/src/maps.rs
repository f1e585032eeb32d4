//! Handles on the pinned maps: settings, the meshed pods, counters and fill levels.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, MapInfo, PerCpuArray};
use thiserror::Error;

use crate::layout::{COUNTERS, POD_SIZE, SETTINGS_SIZE, Settings};

#[derive(Debug, Error)]
pub enum MapsError {
    #[error("map {name}: {source}")]
    Map {
        name: String,
        source: aya::maps::MapError,
    },
}

impl From<aya::maps::MapError> for MapsError {
    fn from(source: aya::maps::MapError) -> Self {
        MapsError::Map {
            name: "?".into(),
            source,
        }
    }
}

/// Every map of the object, with what it holds, for status and metrics.
pub const ALL: [&str; 7] = [
    "settings",
    "pods",
    "pod_ips",
    "cookie_orig",
    "tuple_orig",
    "sock_pairs",
    "counters",
];

pub struct Maps {
    dir: PathBuf,
    settings: Array<MapData, [u8; SETTINGS_SIZE]>,
    pods: HashMap<MapData, u64, [u8; POD_SIZE]>,
    pod_ips: HashMap<MapData, [u8; 16], u64>,
    counters: PerCpuArray<MapData, u64>,
}

fn open_map(dir: &Path, name: &str) -> Result<Map, MapsError> {
    let err = |source| MapsError::Map {
        name: name.into(),
        source,
    };
    let data = MapData::from_pin(dir.join(name)).map_err(err)?;
    Map::from_map_data(data).map_err(err)
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    dir: &Path,
    name: &str,
) -> Result<T, MapsError> {
    T::try_from(open_map(dir, name)?).map_err(|source| MapsError::Map {
        name: name.into(),
        source,
    })
}

/// One map's fill level.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fill {
    pub entries: u64,
    pub max_entries: u32,
}

impl Maps {
    /// Opens the maps pinned in `dir`.
    pub fn open(dir: &Path) -> Result<Maps, MapsError> {
        Ok(Maps {
            dir: dir.to_path_buf(),
            settings: typed(dir, "settings")?,
            pods: typed(dir, "pods")?,
            pod_ips: typed(dir, "pod_ips")?,
            counters: typed(dir, "counters")?,
        })
    }

    fn err(name: &str) -> impl FnOnce(aya::maps::MapError) -> MapsError + '_ {
        move |source| MapsError::Map {
            name: name.into(),
            source,
        }
    }

    pub fn write_settings(&mut self, s: Settings) -> Result<(), MapsError> {
        self.settings
            .set(0, s.to_bytes(), 0)
            .map_err(Self::err("settings"))
    }

    pub fn put_pod(&mut self, netns_cookie: u64, entry: &[u8; POD_SIZE]) -> Result<(), MapsError> {
        self.pods
            .insert(netns_cookie, entry, 0)
            .map_err(Self::err("pods"))
    }

    pub fn remove_pod(&mut self, netns_cookie: u64) -> Result<(), MapsError> {
        self.pods.remove(&netns_cookie).map_err(Self::err("pods"))
    }

    pub fn put_ip(&mut self, ip: [u8; 16], netns_cookie: u64) -> Result<(), MapsError> {
        self.pod_ips
            .insert(ip, netns_cookie, 0)
            .map_err(Self::err("pod_ips"))
    }

    pub fn remove_ip(&mut self, ip: [u8; 16]) -> Result<(), MapsError> {
        self.pod_ips.remove(&ip).map_err(Self::err("pod_ips"))
    }

    /// The pods and addresses the maps hold now (after an agent restart, what to reconcile).
    pub fn current(&self) -> (BTreeMap<u64, [u8; POD_SIZE]>, BTreeMap<[u8; 16], u64>) {
        let pods = self.pods.iter().filter_map(Result::ok).collect();
        let ips = self.pod_ips.iter().filter_map(Result::ok).collect();
        (pods, ips)
    }

    /// Each counter summed over CPUs, by name.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        COUNTERS
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let total = self
                    .counters
                    .get(&(i as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*name, total)
            })
            .collect()
    }

    /// Entries and capacity of every map.
    pub fn fill(&self) -> BTreeMap<&'static str, Fill> {
        ALL.iter()
            .filter_map(|name| {
                let path = self.dir.join(name);
                let info = MapInfo::from_pin(&path).ok()?;
                let entries = count_entries(&self.dir, name).unwrap_or(0);
                Some((
                    *name,
                    Fill {
                        entries,
                        max_entries: info.max_entries(),
                    },
                ))
            })
            .collect()
    }
}

fn count_entries(dir: &Path, name: &str) -> Option<u64> {
    let map = open_map(dir, name).ok()?;
    let n = match name {
        "settings" => 1,
        "counters" => COUNTERS.len(),
        "pods" => HashMap::<_, u64, [u8; POD_SIZE]>::try_from(map)
            .ok()?
            .keys()
            .count(),
        "pod_ips" => HashMap::<_, [u8; 16], u64>::try_from(map)
            .ok()?
            .keys()
            .count(),
        "cookie_orig" => HashMap::<_, u64, [u8; 20]>::try_from(map)
            .ok()?
            .keys()
            .count(),
        "tuple_orig" => HashMap::<_, [u8; 36], [u8; 20]>::try_from(map)
            .ok()?
            .keys()
            .count(),
        "sock_pairs" => aya::maps::SockHash::<_, [u8; 36]>::try_from(map)
            .ok()?
            .keys()
            .count(),
        _ => return None,
    };
    Some(n as u64)
}
