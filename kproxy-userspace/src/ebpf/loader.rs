//! Loading the embedded kernel programs with their maps pinned under a directory, so a
//! restarted agent adopts the same maps (services, backends, conntrack) and established
//! flows survive.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{CgroupSockAddr, SchedClassifier, Xdp},
};
use kproxy_common::{IfaceCounters, map_names};

use super::maps::{DatapathMaps, MapsError, counters};

/// XDP entry point, for traffic entering the node's external interfaces.
pub const XDP_PROGRAM: &str = "kproxy_xdp";
/// TC ingress entry point, for pod-facing and external interfaces.
pub const TC_INGRESS_PROGRAM: &str = "kproxy_tc_ingress";
/// TC egress entry point (reverse NAT only), on the same interfaces as TC ingress.
pub const TC_EGRESS_PROGRAM: &str = "kproxy_tc_egress";
/// Socket-LB, cgroup connect4 entry point.
pub const SOCK_CONNECT4_PROGRAM: &str = "kproxy_sock_connect4";
/// Socket-LB, cgroup sendmsg4 entry point.
pub const SOCK_SENDMSG4_PROGRAM: &str = "kproxy_sock_sendmsg4";
/// Socket-LB, cgroup recvmsg4 entry point.
pub const SOCK_RECVMSG4_PROGRAM: &str = "kproxy_sock_recvmsg4";
/// Socket-LB, cgroup getpeername4 entry point.
pub const SOCK_GETPEERNAME4_PROGRAM: &str = "kproxy_sock_getpeername4";
/// The socket-LB entry points, attached to one cgroup together.
pub const SOCK_PROGRAMS: [&str; 4] = [
    SOCK_CONNECT4_PROGRAM,
    SOCK_SENDMSG4_PROGRAM,
    SOCK_RECVMSG4_PROGRAM,
    SOCK_GETPEERNAME4_PROGRAM,
];
/// Every entry point of the object, in the order `kproxy check` reports them.
pub const ALL_PROGRAMS: [&str; 7] = [
    XDP_PROGRAM,
    TC_INGRESS_PROGRAM,
    TC_EGRESS_PROGRAM,
    SOCK_CONNECT4_PROGRAM,
    SOCK_SENDMSG4_PROGRAM,
    SOCK_RECVMSG4_PROGRAM,
    SOCK_GETPEERNAME4_PROGRAM,
];

/// Parses the embedded object and creates its maps (nothing is loaded into the kernel
/// yet beyond the maps). `configure` can set pin paths, globals and map sizes.
pub fn open(configure: impl FnOnce(&mut EbpfLoader)) -> Result<Ebpf, LoaderError> {
    if crate::EBPF_OBJECT.is_empty() {
        return Err(LoaderError::NoObject);
    }
    let mut loader = EbpfLoader::new();
    configure(&mut loader);
    loader.load(crate::EBPF_OBJECT).map_err(|err| {
        if is_permission_error(&err) {
            LoaderError::NotPermitted
        } else {
            LoaderError::Object(err)
        }
    })
}

fn is_permission_error(err: &aya::EbpfError) -> bool {
    let text = format!("{err:#}");
    text.contains("Operation not permitted") || text.contains("EPERM")
}

/// Loads (verifies) the program `name` of `ebpf` into the kernel.
pub fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), LoaderError> {
    let program = ebpf.program_mut(name).ok_or(LoaderError::MissingProgram(name))?;
    let result = match program {
        aya::programs::Program::Xdp(p) => p.load(),
        aya::programs::Program::SchedClassifier(p) => p.load(),
        aya::programs::Program::CgroupSockAddr(p) => p.load(),
        _ => return Err(LoaderError::MissingProgram(name)),
    };
    result.map_err(|source| LoaderError::Program { name, source })
}

/// Where the agent pins its maps by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/kproxy";

/// How to load the datapath.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Directory (on bpffs) the maps are pinned in, created if missing. Maps already
    /// pinned there are adopted as they are.
    pub pin_dir: PathBuf,
    /// Size of the established-TCP conntrack table when it is created, in entries (each
    /// flow takes two; default 262144); the table of UDP flows and TCP handshakes gets
    /// half as many (Cilium's TCP:other ratio). Ignored for adopted maps.
    pub conntrack_max: Option<u32>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            conntrack_max: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("create pin directory {}: `mkdir` failed (is bpffs mounted at /sys/fs/bpf?)", path.display())]
    CreatePinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "this kproxy was built without its eBPF object (KPROXY_SKIP_EBPF=1); rebuild with `cargo xtask build`"
    )]
    NoObject,
    #[error("parse the eBPF object and create its maps")]
    Object(#[from] aya::EbpfError),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("program {0} is missing or of another type in the eBPF object")]
    ProgramType(&'static str),
    #[error("load program {name}: `BPF_PROG_LOAD` failed")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("BPF is not permitted: run kproxy as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")]
    NotPermitted,
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("remove pinned map {}: `unlink` failed", path.display())]
    Unpin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The loaded programs (not attached) and handles on every datapath map.
pub struct Loaded {
    /// The object: programs to attach ([`TC_INGRESS_PROGRAM`], ...), the
    /// per-interface counters and aya-log's buffer.
    pub ebpf: Ebpf,
    pub maps: DatapathMaps,
}

impl Loaded {
    /// Creates or adopts the pinned maps under `opts.pin_dir`, checks their layouts, and
    /// loads every program through the verifier.
    pub fn load(opts: &LoadOptions) -> Result<Self, LoaderError> {
        std::fs::create_dir_all(&opts.pin_dir).map_err(|source| LoaderError::CreatePinDir {
            path: opts.pin_dir.clone(),
            source,
        })?;
        let mut ebpf = open(|loader| {
            loader.default_map_pin_directory(&opts.pin_dir);
            if let Some(n) = opts.conntrack_max {
                loader.map_max_entries(map_names::CT_TCP, n);
                loader.map_max_entries(map_names::CT_ANY, (n / 2).max(1));
            }
        })?;
        // Typed handles check key and value sizes: an adopted map of another layout
        // fails here, before any program uses it.
        let maps = DatapathMaps::from_ebpf(&mut ebpf)?;
        for name in ALL_PROGRAMS {
            load_program(&mut ebpf, name)?;
        }
        Ok(Self { ebpf, maps })
    }

    /// The TC ingress program, to attach.
    pub fn tc_program(&mut self) -> Result<&mut SchedClassifier, LoaderError> {
        self.ebpf
            .program_mut(TC_INGRESS_PROGRAM)
            .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
            .ok_or(LoaderError::ProgramType(TC_INGRESS_PROGRAM))
    }

    /// The TC egress program, to attach.
    pub fn tc_egress_program(&mut self) -> Result<&mut SchedClassifier, LoaderError> {
        self.ebpf
            .program_mut(TC_EGRESS_PROGRAM)
            .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
            .ok_or(LoaderError::ProgramType(TC_EGRESS_PROGRAM))
    }

    /// The XDP program, to attach.
    pub fn xdp_program(&mut self) -> Result<&mut Xdp, LoaderError> {
        self.ebpf
            .program_mut(XDP_PROGRAM)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .ok_or(LoaderError::ProgramType(XDP_PROGRAM))
    }

    /// The socket-LB program `name` (one of [`SOCK_PROGRAMS`]), to attach.
    pub fn sock_program(&mut self, name: &'static str) -> Result<&mut CgroupSockAddr, LoaderError> {
        self.ebpf
            .program_mut(name)
            .and_then(|p| <&mut CgroupSockAddr>::try_from(p).ok())
            .ok_or(LoaderError::ProgramType(name))
    }

    /// The per-interface counters of `hook` on `ifindex`, summed over CPUs.
    pub fn iface_counters(&self, ifindex: u32, hook: u32) -> Result<IfaceCounters, MapsError> {
        counters::iface_counters(&self.ebpf, ifindex, hook)
    }

    /// Verified instruction count of each program (for `kproxy check` and regressions).
    pub fn instruction_counts(&self) -> Vec<(&'static str, u32)> {
        ALL_PROGRAMS
            .iter()
            .map(|&name| {
                let n = self
                    .ebpf
                    .program(name)
                    .and_then(|p| p.info().ok())
                    .and_then(|i| i.verified_instruction_count())
                    .unwrap_or(0);
                (name, n)
            })
            .collect()
    }
}

/// Removes every map kproxy pins under `pin_dir`, then the directory if it is empty.
/// Missing pins are fine. The maps live on while a loaded program still uses them.
pub fn unpin_all(pin_dir: &Path) -> Result<(), LoaderError> {
    for name in map_names::PINNED.iter().chain(&map_names::RETIRED) {
        unpin(&pin_dir.join(name))?;
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        // Something else is pinned there too: leave the directory.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
        Err(source) => Err(LoaderError::Unpin {
            path: pin_dir.to_path_buf(),
            source,
        }),
    }
}

/// Removes the pins of retired map layouts under `pin_dir` (left by an older agent; no
/// program of this one uses them). Returns the names removed.
pub fn unpin_retired(pin_dir: &Path) -> Result<Vec<&'static str>, LoaderError> {
    let mut removed = Vec::new();
    for name in map_names::RETIRED {
        if unpin(&pin_dir.join(name))? {
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Removes the pin at `path`; false if there was none.
fn unpin(path: &Path) -> Result<bool, LoaderError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(LoaderError::Unpin {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use kproxy_common::map_names;

    /// The map names are spelled twice (the kernel's map macros need literals): the
    /// object's maps must be exactly the ones `map_names` lists.
    #[test]
    fn map_names_match_the_object() {
        assert!(
            !crate::EBPF_OBJECT.is_empty(),
            "built without the eBPF object (KPROXY_SKIP_EBPF=1)"
        );
        let object = aya_obj::Object::parse(crate::EBPF_OBJECT).expect("parse the embedded object");
        let in_object: BTreeSet<&str> = object
            .maps
            .keys()
            .map(String::as_str)
            // Sections of globals (`.rodata`, `.bss`) and aya-log's buffer are not ours.
            .filter(|name| !name.starts_with('.') && !name.starts_with("AYA_"))
            .collect();
        let listed: BTreeSet<&str> = map_names::PINNED
            .iter()
            .copied()
            .chain([map_names::IFACE_STATS])
            .collect();
        assert_eq!(in_object, listed);
    }
}
