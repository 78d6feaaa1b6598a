//! Socket-LB: the cgroup `connect4`/`sendmsg4`/`recvmsg4`/`getpeername4` programs on
//! one cgroup v2 directory, as pinned links that outlive the agent. A restarted agent
//! swaps its freshly loaded programs into the same links (`BPF_LINK_UPDATE`), so the
//! cgroup is never without them.
//!
//! Pins live beside the interface links: `<pin dir>/links/cgroup_<attach>_<cgroup
//! inode>` (the inode tells a cgroup recreated under the same path apart). A cgroup
//! bpf_link always has `BPF_F_ALLOW_MULTI` semantics (the kernel refuses the flag itself
//! on `BPF_LINK_CREATE`), so several agents (tests) and other programs share a cgroup. Pins of another cgroup are detached and removed
//! ([`CgroupLinks::sweep_others`]); `kproxy cleanup` removes every pin
//! ([`super::LinkPins::sweep`]).

use std::{
    fs,
    io::{self, BufRead as _},
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use aya::{
    pin::PinError,
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, links::FdLink},
};

use super::{
    links::detach_now,
    sys::{link_update, obj_get},
};

/// File-name prefix of the cgroup link pins (the interface links' sweep leaves them).
pub const PIN_PREFIX: &str = "cgroup_";

/// `SO_NETNS_COOKIE` (include/uapi/asm-generic/socket.h): a socket's netns cookie.
const SO_NETNS_COOKIE: libc::c_int = 71;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("read /proc/mounts")]
    Mounts(#[source] io::Error),
    #[error("cgroup {}: `stat` failed", path.display())]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {}: `open` failed", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("create link directory {}: `mkdir` failed", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attach {attach} to cgroup {}: `bpf_link_create` failed", cgroup.display())]
    Attach {
        attach: &'static str,
        cgroup: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("take the {attach} link")]
    Take {
        attach: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("the {attach} link is not an fd link")]
    NotFdLink {
        attach: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pin link at {}: `BPF_OBJ_PIN` failed", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error("program of {attach}: not loaded")]
    ProgramFd {
        attach: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("open pinned link {}: `BPF_OBJ_GET` failed", path.display())]
    OpenPin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("adopt pinned link {}: `BPF_LINK_UPDATE` failed", path.display())]
    Update {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("list or remove link pins in {}", path.display())]
    Sweep {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent's network namespace cookie: `getsockopt(SO_NETNS_COOKIE)` failed")]
    NetnsCookie(#[source] io::Error),
}

/// The root of the cgroup v2 hierarchy (the first `cgroup2` mount in /proc/mounts), if
/// one is mounted.
pub fn cgroup2_root() -> Result<Option<PathBuf>, CgroupError> {
    let file = fs::File::open("/proc/mounts").map_err(CgroupError::Mounts)?;
    for line in io::BufReader::new(file).lines() {
        let line = line.map_err(CgroupError::Mounts)?;
        let mut fields = line.split_whitespace();
        let (Some(_), Some(dir), Some(fstype)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if fstype == "cgroup2" {
            // /proc/mounts escapes spaces and the like as octal (\040).
            return Ok(Some(PathBuf::from(unescape_mount_path(dir))));
        }
    }
    Ok(None)
}

/// A /proc/mounts path with its `\ooo` escapes decoded.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if bytes[i] == b'\\'
            && let Some(d) = octal
        {
            out.push(
                d.iter()
                    .fold(0u8, |v, b| v.wrapping_mul(8).wrapping_add(b - b'0')),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The network namespace cookie of the calling thread's namespace (`SO_NETNS_COOKIE` of
/// a fresh socket): what the socket programs compare sockets against.
pub fn netns_cookie() -> Result<u64, CgroupError> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"))
        .map_err(CgroupError::NetnsCookie)?;
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a live u64.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc < 0 {
        return Err(CgroupError::NetnsCookie(io::Error::last_os_error()));
    }
    Ok(cookie)
}

use super::links::Attached;

/// The socket programs' pinned links on one cgroup.
pub struct CgroupLinks {
    dir: PathBuf,
    cgroup: PathBuf,
    inode: u64,
}

impl CgroupLinks {
    /// Links of `cgroup` pinned under `<pin_dir>/links` (created when missing).
    pub fn new(pin_dir: &Path, cgroup: &Path) -> Result<Self, CgroupError> {
        let inode = fs::metadata(cgroup)
            .map_err(|source| CgroupError::Stat {
                path: cgroup.to_path_buf(),
                source,
            })?
            .ino();
        let dir = pin_dir.join("links");
        fs::create_dir_all(&dir).map_err(|source| CgroupError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        Ok(CgroupLinks {
            dir,
            cgroup: cgroup.to_path_buf(),
            inode,
        })
    }

    /// The cgroup the links attach to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The pin path of the `attach` link (`connect4`, ...).
    pub fn path(&self, attach: &str) -> PathBuf {
        self.dir.join(format!("{PIN_PREFIX}{attach}_{}", self.inode))
    }

    /// Attaches `program` (its attach type, named `attach` in the pin) to the cgroup,
    /// or swaps it into the link a previous agent pinned there.
    pub fn attach(
        &self,
        program: &mut CgroupSockAddr,
        attach: &'static str,
    ) -> Result<Attached, CgroupError> {
        let path = self.path(attach);
        let prog_fd = program.fd().map_err(|source| CgroupError::ProgramFd {
            attach,
            source: Box::new(source),
        })?;
        if path.exists() {
            let link = obj_get(&path).map_err(|source| CgroupError::OpenPin {
                path: path.clone(),
                source,
            })?;
            link_update(&link, prog_fd.as_fd()).map_err(|source| CgroupError::Update { path, source })?;
            return Ok(Attached::Adopted);
        }
        let cgroup = fs::File::open(&self.cgroup).map_err(|source| CgroupError::Open {
            path: self.cgroup.clone(),
            source,
        })?;
        // A cgroup bpf_link always shares the hook (BPF_F_ALLOW_MULTI semantics); the
        // kernel refuses explicit flags on link creation (EINVAL), so none are passed.
        let id = program
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|source| CgroupError::Attach {
                attach,
                cgroup: self.cgroup.clone(),
                source: Box::new(source),
            })?;
        let link = program.take_link(id).map_err(|source| CgroupError::Take {
            attach,
            source: Box::new(source),
        })?;
        let fd_link: FdLink = link
            .try_into()
            .map_err(|source| CgroupError::NotFdLink { attach, source })?;
        fd_link
            .pin(&path)
            .map_err(|source| CgroupError::Pin { path, source })?;
        Ok(Attached::New)
    }

    /// Detaches and removes the cgroup link pins of any other cgroup (an earlier agent's
    /// `--cgroup`). Returns the removed names.
    pub fn sweep_others(&self) -> Result<Vec<String>, CgroupError> {
        let suffix = format!("_{}", self.inode);
        sweep(&self.dir, |name| !name.ends_with(&suffix))
    }
}

/// Detaches and removes every cgroup link pin under `<pin_dir>/links` (with the socket
/// programs off, or at cleanup). Returns the removed names.
pub fn sweep_all(pin_dir: &Path) -> Result<Vec<String>, CgroupError> {
    let dir = pin_dir.join("links");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    sweep(&dir, |_| true)
}

fn sweep(dir: &Path, remove: impl Fn(&str) -> bool) -> Result<Vec<String>, CgroupError> {
    let sweep_err = |source| CgroupError::Sweep {
        path: dir.to_path_buf(),
        source,
    };
    let mut removed = Vec::new();
    for entry in fs::read_dir(dir).map_err(sweep_err)? {
        let entry = entry.map_err(sweep_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PIN_PREFIX) || !remove(&name) {
            continue;
        }
        // Best effort: removing the pin detaches too, only later.
        let _ = detach_now(&entry.path());
        fs::remove_file(entry.path()).map_err(sweep_err)?;
        removed.push(name);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::unescape_mount_path;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path("/sys/fs/cgroup/unified"),
            "/sys/fs/cgroup/unified"
        );
        assert_eq!(unescape_mount_path("/mnt/a\\040b"), "/mnt/a b");
    }
}
