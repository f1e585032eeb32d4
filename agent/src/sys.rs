//! The few system calls the agent needs beyond aya: a network namespace's cookie, file system
//! types, and mounting bpffs. The only unsafe code of the agent is here.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use nix::sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SysError {
    #[error("network namespace {path}: {source}")]
    Netns {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Fs { path: String, source: nix::Error },
    #[error("mounting bpffs at {path}: {source}")]
    Mount { path: String, source: nix::Error },
}

/// The cookie the kernel gives a network namespace (what `bpf_get_netns_cookie` returns), read
/// with SO_NETNS_COOKIE from a socket made inside it (Linux 5.14+).
pub fn netns_cookie(path: &Path) -> Result<u64, SysError> {
    let err = |source: std::io::Error| SysError::Netns {
        path: path.display().to_string(),
        source,
    };
    let ns = File::open(path).map_err(err)?;
    // setns changes the calling thread only: do it on a thread of its own.
    let handle = std::thread::spawn(move || -> std::io::Result<u64> {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        let sock = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(std::io::Error::from)?;
        socket_netns_cookie(&sock)
    });
    handle
        .join()
        .map_err(|_| err(std::io::Error::other("namespace thread panicked")))?
        .map_err(err)
}

/// asm-generic/socket.h (x86, arm, riscv; not re-exported by libc for every target).
const SO_NETNS_COOKIE: libc::c_int = 71;

#[allow(unsafe_code)]
fn socket_netns_cookie(sock: &OwnedFd) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `sock` is an open socket for the duration of the call; `cookie` and `len` are
    // valid, writable and sized as the kernel expects for SO_NETNS_COOKIE (a u64).
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The network namespace cookie of the calling process (for tests and status).
pub fn own_netns_cookie() -> Result<u64, SysError> {
    netns_cookie(Path::new("/proc/self/ns/net"))
}

fn is_fs(path: &Path, magic: nix::sys::statfs::FsType) -> Result<bool, SysError> {
    let st = statfs(path).map_err(|source| SysError::Fs {
        path: path.display().to_string(),
        source,
    })?;
    Ok(st.filesystem_type() == magic)
}

/// Whether `path` is in a cgroup v2 hierarchy.
pub fn is_cgroup2(path: &Path) -> Result<bool, SysError> {
    is_fs(path, CGROUP2_SUPER_MAGIC)
}

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> Result<bool, SysError> {
    is_fs(path, BPF_FS_MAGIC)
}

/// Mounts a bpffs at `path` (created if missing) unless one is there already. Returns whether
/// it mounted one.
pub fn ensure_bpffs(path: &Path) -> Result<bool, SysError> {
    std::fs::create_dir_all(path).map_err(|e| SysError::Fs {
        path: path.display().to_string(),
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    if is_bpffs(path)? {
        return Ok(false);
    }
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| SysError::Mount {
        path: path.display().to_string(),
        source,
    })?;
    Ok(true)
}

/// BPF_CGROUP_GETSOCKOPT, from linux/bpf.h's `enum bpf_attach_type`.
pub const ATTACH_CGROUP_GETSOCKOPT: u32 = 21;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `union bpf_attr` is 144 bytes on current kernels; a zeroed buffer at least that large is
/// what the kernel expects for the commands below (unused tail fields must be zero).
type BpfAttr = [u64; 18];

#[allow(unsafe_code)]
fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable, zero-initialised bpf_attr-sized buffer that outlives
    // the call, and its size is passed alongside.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of::<BpfAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// BPF_LINK_CREATE of `program` on `cgroup` for `attach_type`, then BPF_OBJ_PIN of the link at
/// `pin`. aya 0.14 cannot hand out a cgroup/getsockopt link as an `FdLink` to pin, so this one
/// link is made here; the others go through aya.
#[allow(unsafe_code)]
pub fn link_create_pinned(
    program: std::os::fd::BorrowedFd<'_>,
    cgroup: std::os::fd::BorrowedFd<'_>,
    attach_type: u32,
    pin: &Path,
) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut attr: BpfAttr = [0; 18];
    // link_create: prog_fd (u32), target_fd (u32), attach_type (u32), flags (u32).
    attr[0] = u64::from(program.as_raw_fd() as u32) | (u64::from(cgroup.as_raw_fd() as u32) << 32);
    attr[1] = u64::from(attach_type);
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("bpf returned a bad fd"))?;
    // SAFETY: the kernel just returned this new file descriptor; nothing else owns it.
    let link = unsafe { OwnedFd::from_raw_fd(fd) };
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::other("pin path contains a NUL byte"))?;
    let mut attr: BpfAttr = [0; 18];
    // obj_pin: pathname (u64 pointer), bpf_fd (u32), file_flags (u32).
    attr[0] = path.as_ptr() as u64;
    attr[1] = u64::from(link.as_raw_fd() as u32);
    bpf(BPF_OBJ_PIN, &mut attr)?;
    Ok(())
}
