//! A bpffs pin directory owned by a test: every kproxy map pinned under it is removed
//! when it is dropped (also when the test fails).

use std::path::{Path, PathBuf};

use kproxy::ebpf::{LoadOptions, Loaded, unpin_all};

use crate::netns::unique_name;

/// `/sys/fs/bpf/kproxy-test-{unique}`, unpinned on drop.
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn new(tag: &str) -> Self {
        PinDir {
            path: PathBuf::from(format!("/sys/fs/bpf/kproxy-test-{}", unique_name(tag))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the datapath with its maps pinned here (small conntrack for tests).
    pub fn load(&self) -> Loaded {
        Loaded::load(&LoadOptions {
            pin_dir: self.path.clone(),
            conntrack_max: Some(4096),
        })
        .unwrap_or_else(|e| panic!("load datapath under {}: {e}", self.path.display()))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = unpin_all(&self.path) {
            eprintln!("cleanup of {}: {e}", self.path.display());
        }
        // Link pins and anything else a test left below it.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
