//! A temporary directory owned by a test, removed on drop (also when the test fails).

use std::path::{Path, PathBuf};

use crate::netns::unique_name;

pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/kproxy-{tag}-{unique}`.
    pub fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("kproxy-{tag}-{}", unique_name("d")));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
