//! Loading the programs with their maps pinned under a directory, so a restarted agent
//! adopts the same maps (services, backends, conntrack) and established flows survive.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::Ebpf;
use kproxy_common::map_names;

use super::maps::{DatapathMaps, MapsError};
use crate::programs::{self, LoadError};

/// Where the agent pins its maps by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/kproxy";

/// How to load the datapath.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Directory (on bpffs) the maps are pinned in, created if missing. Maps already
    /// pinned there are adopted as they are.
    pub pin_dir: PathBuf,
    /// Size of the conntrack map when it is created (default 262144 entries; each flow
    /// takes two). Ignored for an adopted map.
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
    #[error("create pin directory {} (mkdir): {source} (is bpffs mounted at /sys/fs/bpf?)", path.display())]
    CreatePinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("remove pinned map {} (unlink): {source}", path.display())]
    Unpin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The loaded programs (not attached) and handles on every datapath map.
pub struct Datapath {
    /// The object: programs to attach (`programs::TC_INGRESS_PROGRAM`, ...), the
    /// per-interface counters and aya-log's buffer.
    pub ebpf: Ebpf,
    pub maps: DatapathMaps,
}

impl Datapath {
    /// Creates or adopts the pinned maps under `opts.pin_dir`, checks their layouts, and
    /// loads every program through the verifier.
    pub fn load(opts: &LoadOptions) -> Result<Self, LoaderError> {
        std::fs::create_dir_all(&opts.pin_dir).map_err(|source| LoaderError::CreatePinDir {
            path: opts.pin_dir.clone(),
            source,
        })?;
        let mut ebpf = programs::open(|loader| {
            loader.default_map_pin_directory(&opts.pin_dir);
            if let Some(n) = opts.conntrack_max {
                loader.map_max_entries(map_names::CONNTRACK, n);
            }
        })?;
        // Typed handles check key and value sizes: an adopted map of another layout
        // fails here, before any program uses it.
        let maps = DatapathMaps::from_ebpf(&mut ebpf)?;
        for name in programs::ALL_PROGRAMS {
            programs::load_program(&mut ebpf, name)?;
        }
        Ok(Self { ebpf, maps })
    }

    /// Verified instruction count of each program (for `kproxy check` and regressions).
    pub fn instruction_counts(&self) -> Vec<(&'static str, u32)> {
        programs::ALL_PROGRAMS
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
    for name in map_names::PINNED {
        let path = pin_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(LoaderError::Unpin { path, source }),
        }
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
