//! A bpffs pin directory owned by a test, removed (with every pin in it) on drop.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::netns::unique_name;

pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// `/sys/fs/bpf/kproxy-test-{unique}` (not created: the code under test creates it).
    pub fn new(tag: &str) -> Self {
        PinDir {
            path: PathBuf::from(format!("/sys/fs/bpf/kproxy-test-{}", unique_name(tag))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
