//! What the agent last applied, recorded beside the pins so `kproxy inspect` can show
//! the model behind the live maps while the agent runs and after it stopped.
//!
//! bpffs holds only BPF objects, so the record lives in a regular directory derived
//! from the pin path: `/run/kproxy/<pin path, '/' → '_'>/` (a symlink to the current
//! version, swapped atomically on every record) holding `applied.json`
//! (mode, node facts, sync number), `config.yaml` (when one was given) and `model/`
//! (a copy of every model file as it was when applied).

use std::{
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::iptables::Flavor;

/// Root of every agent's record directory.
pub const RECORD_ROOT: &str = "/run/kproxy";

/// The record directory of the agent pinning under `pin_path`.
pub fn record_dir(pin_path: &Path) -> PathBuf {
    let flat = pin_path.to_string_lossy().trim_matches('/').replace('/', "_");
    Path::new(RECORD_ROOT).join(flat)
}

/// Cluster mode: the API server's objects at the last sync, written by the agent as a
/// model file beside the record (which copies it like any model file).
pub fn cluster_snapshot_path(pin_path: &Path) -> PathBuf {
    let mut name = record_dir(pin_path).into_os_string();
    name.push(".cluster.yaml");
    PathBuf::from(name)
}

/// Which writer the agent keeps in step with the model (`kproxy run --mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// TC (and XDP) programs with BPF maps.
    #[default]
    Ebpf,
    /// kube-proxy's iptables rules, applied with iptables-restore.
    Iptables,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Ebpf => "ebpf",
            Mode::Iptables => "iptables",
        })
    }
}

/// Facts about the last applied sync.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub mode: Mode,
    /// The iptables flavour (`system`, `nft`, `legacy`) in iptables mode.
    pub iptables_backend: Option<Flavor>,
    pub node_name: String,
    pub node_ip: Option<IpAddr>,
    /// The node's local addresses at the sync (NodePort addresses are chosen from them).
    pub node_addresses: Vec<IpAddr>,
    /// The masquerade (hairpin) source address in eBPF mode.
    pub masquerade_address: Option<IpAddr>,
    /// The `--model` paths as given.
    pub model_paths: Vec<PathBuf>,
    /// Sync counter since the agent started.
    pub sync: u64,
    /// Seconds since the Unix epoch.
    pub applied_at_unix: u64,
}

/// A recorded state: the facts, and where the copies of its inputs are.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    pub applied: Applied,
    /// Directory holding the model files as applied (load it with `model::load`).
    pub model_dir: PathBuf,
    /// The configuration as applied, if one was given.
    pub config: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("write agent record {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "read agent record {path} (no agent has synced with this --pin-path on this machine since boot?)"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("decode agent record {path}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The YAML files `paths` name (files as given; `*.yaml`/`*.yml` inside directories).
fn model_files(paths: &[PathBuf]) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = fs::read_dir(path)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Records `applied` with copies of its model files and configuration, replacing the
/// previous record atomically: each record is written to a directory of its own, then
/// the record path (a symlink) is renamed onto it, so a reader never finds it missing or
/// half written. The previous version stays until the next record (a reader may still be
/// inside it); older ones are removed.
pub fn record(pin_path: &Path, applied: &Applied, config: Option<&Path>) -> Result<(), RecordError> {
    let link = record_dir(pin_path);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let version = version_path(&link, &format!("{stamp}-{}", applied.sync));
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RecordError::Write { path, source }
    };
    let model_dir = version.join("model");
    fs::create_dir_all(&model_dir).map_err(write_err(&model_dir))?;
    let files = model_files(&applied.model_paths).map_err(write_err(&model_dir))?;
    for (i, file) in files.iter().enumerate() {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Numbered so files of the same name in different directories keep their order.
        let copy = model_dir.join(format!("{i:04}-{name}"));
        let copy = if copy.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            copy
        } else {
            copy.with_extension("yaml")
        };
        fs::copy(file, &copy).map_err(write_err(file))?;
    }
    if let Some(config) = config {
        let copy = version.join("config.yaml");
        fs::copy(config, &copy).map_err(write_err(config))?;
    }
    let json = serde_json::to_vec_pretty(applied).expect("Applied serializes");
    let applied_path = version.join("applied.json");
    fs::write(&applied_path, json).map_err(write_err(&applied_path))?;

    let previous = fs::read_link(&link).ok();
    let new_link = link.with_extension("link-new");
    let _ = fs::remove_file(&new_link);
    let target = version.file_name().map(PathBuf::from).unwrap_or_default();
    std::os::unix::fs::symlink(&target, &new_link).map_err(write_err(&new_link))?;
    if link.is_dir() && !link.is_symlink() {
        // A record of an agent from before versioned records.
        let _ = fs::remove_dir_all(&link);
    }
    fs::rename(&new_link, &link).map_err(write_err(&link))?;
    remove_versions(
        &link,
        &[Some(target), previous].into_iter().flatten().collect::<Vec<_>>(),
    );
    Ok(())
}

/// The directory of one version of the record at `link`.
fn version_path(link: &Path, version: &str) -> PathBuf {
    let mut name = link.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".v{version}"));
    link.with_file_name(name)
}

/// Removes the versions of the record at `link` other than `keep` (file names).
fn remove_versions(link: &Path, keep: &[PathBuf]) {
    let (Some(parent), Some(base)) = (link.parent(), link.file_name()) else {
        return;
    };
    let prefix = format!("{}.v", base.to_string_lossy());
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = PathBuf::from(entry.file_name());
        if name.to_string_lossy().starts_with(&prefix) && !keep.contains(&name) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The record of the agent pinning under `pin_path`, read from one version even if the
/// agent replaces it meanwhile.
pub fn load(pin_path: &Path) -> Result<Recorded, RecordError> {
    let link = record_dir(pin_path);
    let dir = fs::canonicalize(&link).map_err(|source| RecordError::Read {
        path: link.join("applied.json"),
        source,
    })?;
    let applied_path = dir.join("applied.json");
    let text = fs::read(&applied_path).map_err(|source| RecordError::Read {
        path: applied_path.clone(),
        source,
    })?;
    let applied = serde_json::from_slice(&text).map_err(|source| RecordError::Decode {
        path: applied_path,
        source,
    })?;
    let config = dir.join("config.yaml");
    Ok(Recorded {
        applied,
        model_dir: dir.join("model"),
        config: config.exists().then_some(config),
    })
}

/// Removes the record and every version of it (cleanup).
pub fn remove(pin_path: &Path) -> Result<(), RecordError> {
    let link = record_dir(pin_path);
    remove_versions(&link, &[]);
    let _ = fs::remove_file(cluster_snapshot_path(pin_path));
    let removed = if link.is_symlink() || !link.is_dir() {
        fs::remove_file(&link)
    } else {
        fs::remove_dir_all(&link)
    };
    match removed {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(RecordError::Write {
            path: link,
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_dir_flattens_the_pin_path() {
        assert_eq!(
            record_dir(Path::new("/sys/fs/bpf/kproxy")),
            PathBuf::from("/run/kproxy/sys_fs_bpf_kproxy")
        );
    }

    #[test]
    fn record_then_load_round_trips_and_copies_inputs() {
        let tmp = std::env::temp_dir().join(format!("kproxy-record-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(tmp.join("models")).unwrap();
        fs::write(tmp.join("models/a.yaml"), "a: 1\n").unwrap();
        fs::write(tmp.join("models/b.yml"), "b: 2\n").unwrap();
        fs::write(tmp.join("models/skip.txt"), "no\n").unwrap();
        fs::write(tmp.join("single.yaml"), "c: 3\n").unwrap();
        fs::write(tmp.join("config.yaml"), "hostnameOverride: n1\n").unwrap();
        let pin = tmp.join("pins");
        let applied = Applied {
            mode: Mode::Ebpf,
            node_name: "n1".into(),
            model_paths: vec![tmp.join("models"), tmp.join("single.yaml")],
            sync: 3,
            ..Applied::default()
        };
        record(&pin, &applied, Some(&tmp.join("config.yaml"))).unwrap();
        let loaded = load(&pin).unwrap();
        assert_eq!(loaded.applied, applied);
        let mut copies: Vec<String> = fs::read_dir(&loaded.model_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        copies.sort();
        assert_eq!(copies, ["0000-a.yaml", "0001-b.yml", "0002-single.yaml"]);
        assert_eq!(
            fs::read_to_string(loaded.config.unwrap()).unwrap(),
            "hostnameOverride: n1\n"
        );
        remove(&pin).unwrap();
        assert!(load(&pin).is_err());
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn a_new_record_replaces_the_old_one_atomically() {
        let tmp = std::env::temp_dir().join(format!("kproxy-record-swap-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).unwrap();
        fs::write(tmp.join("m.yaml"), "a: 1\n").unwrap();
        let pin = tmp.join("pins");
        let versions = || {
            fs::read_dir(RECORD_ROOT)
                .unwrap()
                .flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let link = record_dir(&pin);
                    name.starts_with(&format!("{}.v", link.file_name().unwrap().to_string_lossy()))
                })
                .count()
        };
        for sync in 1..=3 {
            let applied = Applied {
                model_paths: vec![tmp.join("m.yaml")],
                sync,
                ..Applied::default()
            };
            record(&pin, &applied, None).unwrap();
            assert_eq!(load(&pin).unwrap().applied.sync, sync);
            assert!(record_dir(&pin).is_symlink());
            // The current version and the one before it (a reader may still be inside).
            assert!(versions() <= 2, "{} versions", versions());
        }
        remove(&pin).unwrap();
        assert_eq!(versions(), 0);
        assert!(!record_dir(&pin).exists() && !record_dir(&pin).is_symlink());
        fs::remove_dir_all(&tmp).unwrap();
    }
}
