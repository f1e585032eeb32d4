//! Loading, attaching and pinning the capture programs of `ebpf/capture.bpf.o`.
//!
//! Everything lives under `<bpffs>/outrigger/<object id>-cg<cgroup inode>/`: `maps/` (pinned by
//! name) and `links/` (one pinned bpf_link per cgroup program). Pinned links keep the programs
//! attached when the agent exits, so capture survives an agent restart; the sk_msg program is
//! attached to the pinned SOCKHASH and lives as long as it does.
//!
//! - Start with the same object and cgroup: the pins are adopted, nothing is re-attached.
//! - Start with a new object (an upgrade) or another cgroup: the new set is attached first, then
//!   the old directories are removed (make before break).
//! - A failure part-way removes what this start attached: never a half-attached state.
//! - `detach` removes `<bpffs>/outrigger`, which detaches everything.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::programs::{CgroupAttachMode, CgroupSockAddr, CgroupSockopt, SkMsg, SockOps};
use aya::{Ebpf, EbpfLoader};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::layout::Settings;
use crate::maps::{Maps, MapsError};

/// The compiled programs, built by `cargo xtask build-ebpf` and committed.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../ebpf/capture.bpf.o");

/// Programs attached to the cgroup, by function name, pinned under `links/` by the same name.
pub const CGROUP_PROGRAMS: [&str; 10] = [
    "outrigger_connect4",
    "outrigger_connect6",
    "outrigger_sendmsg4",
    "outrigger_recvmsg4",
    "outrigger_sendmsg6",
    "outrigger_recvmsg6",
    "outrigger_getpeername4",
    "outrigger_getpeername6",
    "outrigger_sockops",
    "outrigger_getsockopt",
];
pub const SK_MSG: &str = "outrigger_sk_msg";

/// Maps whose size follows `--max-connections`.
pub const CONNECTION_MAPS: [&str; 3] = ["cookie_orig", "tuple_orig", "sock_pairs"];

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("cgroup {path}: {reason}")]
    Cgroup { path: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("loading the capture programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("pinning {name}: {source}")]
    Pin {
        name: &'static str,
        source: aya::pin::PinError,
    },
    #[error("link of {name}: {reason}")]
    Link { name: &'static str, reason: String },
    #[error("map {name} missing from the object")]
    MissingMap { name: &'static str },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaptureError + '_ {
    move |source| CaptureError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The first 12 hex digits of the object's SHA-256.
pub fn object_id() -> String {
    let digest = Sha256::digest(OBJECT);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// `<bpffs>/outrigger`.
pub fn root(bpffs: &Path) -> PathBuf {
    bpffs.join("outrigger")
}

/// The set directory for this object on this cgroup.
pub fn set_dir(bpffs: &Path, cgroup: &Path) -> Result<PathBuf, CaptureError> {
    let inode = std::fs::metadata(cgroup).map_err(io(cgroup))?.ino();
    Ok(root(bpffs).join(format!("{}-cg{inode}", object_id())))
}

/// Every set directory present (attached sets), newest object first is not implied.
pub fn sets(bpffs: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root(bpffs)) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

/// How `attach` found things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Attached now.
    Attached,
    /// The same programs were already attached and pinned: adopted as they are.
    Adopted,
}

pub struct Attachment {
    pub dir: PathBuf,
    pub start: Start,
    pub maps: Maps,
}

/// Attaches (or adopts) the capture on `cgroup`, pinning under `bpffs`, then writes `settings`.
pub fn attach(
    cgroup: &Path,
    bpffs: &Path,
    settings: Settings,
    max_connections: u32,
) -> Result<Attachment, CaptureError> {
    let dir = set_dir(bpffs, cgroup)?;
    let links = dir.join("links");
    let complete = CGROUP_PROGRAMS.iter().all(|p| links.join(p).exists());
    if complete {
        let mut maps = Maps::open(&dir.join("maps"))?;
        maps.write_settings(settings)?;
        remove_other_sets(bpffs, &dir);
        return Ok(Attachment {
            dir,
            start: Start::Adopted,
            maps,
        });
    }
    // A directory without every link is what an interrupted start left: start over.
    let _ = std::fs::remove_dir_all(&dir);
    match attach_new(cgroup, &dir, settings, max_connections) {
        Ok(maps) => {
            remove_other_sets(bpffs, &dir);
            Ok(Attachment {
                dir,
                start: Start::Attached,
                maps,
            })
        }
        Err(e) => {
            // Unpinning detaches what this start attached (the aya handles are gone by now).
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

fn attach_new(
    cgroup: &Path,
    dir: &Path,
    settings: Settings,
    max_connections: u32,
) -> Result<Maps, CaptureError> {
    let maps_dir = dir.join("maps");
    let links_dir = dir.join("links");
    std::fs::create_dir_all(&maps_dir).map_err(io(&maps_dir))?;
    std::fs::create_dir_all(&links_dir).map_err(io(&links_dir))?;
    let cgroup_file = File::open(cgroup).map_err(io(cgroup))?;

    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&maps_dir);
    for name in CONNECTION_MAPS {
        loader.map_max_entries(name, max_connections);
    }
    let mut ebpf = loader.load(OBJECT)?;
    // Settings before any program runs: without them every program leaves traffic alone.
    let mut maps = Maps::open(&maps_dir)?;
    maps.write_settings(settings)?;

    for name in CGROUP_PROGRAMS {
        attach_one(&mut ebpf, name, &cgroup_file, &links_dir)?;
    }
    let sock_pairs = ebpf
        .take_map("sock_pairs")
        .ok_or(CaptureError::MissingMap { name: "sock_pairs" })?;
    let sock_pairs: aya::maps::SockHash<aya::maps::MapData, [u8; 36]> =
        aya::maps::SockHash::try_from(sock_pairs).map_err(|e| CaptureError::Maps(e.into()))?;
    let program = program_mut(&mut ebpf, SK_MSG)?;
    let sk_msg: &mut SkMsg = program.try_into().map_err(|source| CaptureError::Program {
        name: SK_MSG,
        source,
    })?;
    sk_msg.load().map_err(|source| CaptureError::Program {
        name: SK_MSG,
        source,
    })?;
    let id = sk_msg
        .attach(sock_pairs.fd())
        .map_err(|source| CaptureError::Program {
            name: SK_MSG,
            source,
        })?;
    let link = sk_msg
        .take_link(id)
        .map_err(|source| CaptureError::Program {
            name: SK_MSG,
            source,
        })?;
    // The attachment belongs to the pinned SOCKHASH from now on: dropping the handle would
    // detach it, so it is let go instead.
    std::mem::forget(link);
    Ok(maps)
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::programs::Program, CaptureError> {
    ebpf.program_mut(name).ok_or(CaptureError::Program {
        name,
        source: aya::programs::ProgramError::UnexpectedProgramType,
    })
}

fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
    links_dir: &Path,
) -> Result<(), CaptureError> {
    let perr = |source| CaptureError::Program { name, source };
    let program = program_mut(ebpf, name)?;
    let link: aya::programs::links::FdLink = match program {
        aya::programs::Program::CgroupSockAddr(p) => {
            let p: &mut CgroupSockAddr = p;
            p.load().map_err(perr)?;
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(perr)?;
            fd_link(p.take_link(id).map_err(perr)?, name)?
        }
        aya::programs::Program::SockOps(p) => {
            let p: &mut SockOps = p;
            p.load().map_err(perr)?;
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(perr)?;
            fd_link(p.take_link(id).map_err(perr)?, name)?
        }
        aya::programs::Program::CgroupSockopt(p) => {
            let p: &mut CgroupSockopt = p;
            p.load().map_err(perr)?;
            let fd = p.fd().map_err(perr)?;
            let pin = links_dir.join(name);
            return crate::sys::link_create_pinned(
                fd.as_fd(),
                cgroup.as_fd(),
                crate::sys::ATTACH_CGROUP_GETSOCKOPT,
                &pin,
            )
            .map_err(|source| CaptureError::Io {
                path: pin.display().to_string(),
                source,
            });
        }
        _ => return Err(perr(aya::programs::ProgramError::UnexpectedProgramType)),
    };
    link.pin(links_dir.join(name))
        .map_err(|source| CaptureError::Pin { name, source })?;
    Ok(())
}

fn fd_link<L>(link: L, name: &'static str) -> Result<aya::programs::links::FdLink, CaptureError>
where
    L: TryInto<aya::programs::links::FdLink, Error = aya::programs::links::LinkError>,
{
    link.try_into().map_err(|e| CaptureError::Link {
        name,
        reason: e.to_string(),
    })
}

fn remove_other_sets(bpffs: &Path, keep: &Path) {
    for set in sets(bpffs) {
        if set != keep {
            tracing::info!(set = %set.display(), "removing the previous capture set");
            let _ = std::fs::remove_dir_all(&set);
        }
    }
}

/// Removes every pinned set: the programs are detached once nothing else holds them.
/// Returns the set directories removed.
pub fn detach(bpffs: &Path) -> Result<Vec<PathBuf>, CaptureError> {
    let sets = sets(bpffs);
    let root = root(bpffs);
    if root.exists() {
        std::fs::remove_dir_all(&root).map_err(io(&root))?;
    }
    Ok(sets)
}

/// Checks that `path` is a cgroup v2 directory the agent may attach to.
pub fn check_cgroup(path: &Path) -> Result<(), CaptureError> {
    let err = |reason: String| CaptureError::Cgroup {
        path: path.display().to_string(),
        reason,
    };
    if !path.is_dir() {
        return Err(err("no such directory".into()));
    }
    match crate::sys::is_cgroup2(path) {
        Ok(true) => Ok(()),
        Ok(false) => Err(err(
            "not a cgroup v2 directory (BPF cgroup programs cannot attach to cgroup v1)".into(),
        )),
        Err(e) => Err(err(e.to_string())),
    }
}
