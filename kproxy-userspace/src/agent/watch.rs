//! Noticing changes to the model files: an edit in place (size or mtime change) or a
//! replacement by rename (inode change), for files and for the YAML files of a
//! directory. Polling the metadata is cheap for a handful of files and needs no
//! inotify bookkeeping across renames.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// What identifies one version of a file: its inode, size and modification time.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    size: u64,
    mtime_ns: i128,
}

/// The stamps of every input file, in a stable order; a missing path is `None`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<(PathBuf, Option<FileStamp>)>);

fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = fs::metadata(path).ok()?;
    Some(FileStamp {
        inode: meta.ino(),
        size: meta.size(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    })
}

fn is_yaml(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Takes the fingerprint of `paths` (files, or directories whose `*.yaml`/`*.yml` count).
pub fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let mut stamps = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = fs::read_dir(path)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| is_yaml(p))
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            stamps.push((path.clone(), stamp(path)));
            stamps.extend(files.into_iter().map(|f| {
                let s = stamp(&f);
                (f, s)
            }));
        } else {
            stamps.push((path.clone(), stamp(path)));
        }
    }
    Fingerprint(stamps)
}

/// Reports a change once the inputs differ from the last accepted state and have
/// stayed the same for one poll (so a file still being written is not read half-way).
pub struct ModelWatcher {
    paths: Vec<PathBuf>,
    accepted: Fingerprint,
    pending: Option<Fingerprint>,
}

impl ModelWatcher {
    /// Watches `paths`, taking their current state as already applied.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let accepted = fingerprint(&paths);
        ModelWatcher {
            paths,
            accepted,
            pending: None,
        }
    }

    /// Call once per poll interval: true when the inputs changed and settled.
    pub fn poll(&mut self) -> bool {
        let now = fingerprint(&self.paths);
        if now == self.accepted {
            self.pending = None;
            return false;
        }
        if self.pending.as_ref() == Some(&now) {
            self.accepted = now;
            self.pending = None;
            return true;
        }
        self.pending = Some(now);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kproxy-watch-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    #[test]
    fn edit_in_place_is_reported_after_it_settles() {
        let dir = temp_dir("edit");
        let file = dir.join("model.yaml");
        fs::write(&file, "a: 1\n").unwrap();
        let mut watcher = ModelWatcher::new(vec![file.clone()]);
        assert!(!watcher.poll(), "nothing changed yet");
        fs::write(&file, "a: 22\n").unwrap();
        assert!(!watcher.poll(), "first sight of a change waits one poll");
        assert!(watcher.poll(), "settled change is reported");
        assert!(!watcher.poll(), "and only once");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replacement_by_rename_and_new_files_in_a_directory_are_reported() {
        let dir = temp_dir("rename");
        fs::write(dir.join("svc.yaml"), "a: 1\n").unwrap();
        fs::write(dir.join("notes.txt"), "ignored\n").unwrap();
        let mut watcher = ModelWatcher::new(vec![dir.clone()]);
        // Same size and content, new inode: what `mv new.yaml svc.yaml` does.
        fs::write(dir.join("new.tmp"), "a: 1\n").unwrap();
        fs::rename(dir.join("new.tmp"), dir.join("svc.yaml")).unwrap();
        assert!(!watcher.poll());
        assert!(watcher.poll(), "rename over the file is a change");
        fs::write(dir.join("notes.txt"), "still ignored\n").unwrap();
        assert!(!watcher.poll() && !watcher.poll(), "non-YAML files do not count");
        fs::write(dir.join("more.yml"), "b: 2\n").unwrap();
        assert!(!watcher.poll());
        assert!(watcher.poll(), "a new YAML file is a change");
        fs::remove_dir_all(&dir).unwrap();
    }
}
