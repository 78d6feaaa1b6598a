//! What the kernel says about the agent's BPF objects, read with bpftool (installed by
//! `cargo xtask setup`): the program behind a pinned link, its run count and run time
//! (collected while [`RunTimeStats`] is held), and the memory of the pinned maps.

use std::{fs, os::fd::OwnedFd, path::Path, process::Command};

use anyhow::{Context as _, bail};
use serde_json::Value;

fn bpftool(args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("run bpftool (`cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!(
            "bpftool {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| format!("bpftool {} output", args.join(" ")))
}

/// Keeps the kernel's program run-time statistics on while held (they cost a little per
/// run, so only during the bench).
pub struct RunTimeStats {
    _fd: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> anyhow::Result<Self> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("enable BPF run-time stats")?;
        Ok(RunTimeStats { _fd: fd })
    }
}

/// The programs behind the links pinned under `<pin_dir>/links` (TC, and XDP when the
/// agent runs it too), each once.
pub fn attached_program_ids(pin_dir: &Path) -> anyhow::Result<Vec<u64>> {
    let links = pin_dir.join("links");
    let mut ids = Vec::new();
    for entry in fs::read_dir(&links).with_context(|| format!("list {}", links.display()))? {
        let link = bpftool(&["link", "show", "pinned", &entry?.path().display().to_string()])?;
        ids.extend(link["prog_id"].as_u64());
    }
    ids.sort_unstable();
    ids.dedup();
    anyhow::ensure!(!ids.is_empty(), "no link pinned under {}", links.display());
    Ok(ids)
}

/// Cumulative (run count, run time in ns) of program `id`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgramRuns {
    pub count: u64,
    pub time_ns: u64,
}

impl ProgramRuns {
    /// The runs of programs `ids` together (a packet goes through one or the other).
    pub fn read(ids: &[u64]) -> anyhow::Result<Self> {
        let mut sum = ProgramRuns::default();
        for id in ids {
            let prog = bpftool(&["prog", "show", "id", &id.to_string()])?;
            sum.count += prog["run_cnt"].as_u64().unwrap_or(0);
            sum.time_ns += prog["run_time_ns"].as_u64().unwrap_or(0);
        }
        Ok(sum)
    }

    /// Nanoseconds per run between `earlier` and `self`, if the program ran.
    pub fn ns_per_run_since(&self, earlier: &ProgramRuns) -> Option<f64> {
        let runs = self.count.checked_sub(earlier.count)?;
        let time = self.time_ns.checked_sub(earlier.time_ns)?;
        (runs > 0).then(|| time as f64 / runs as f64)
    }
}

/// Bytes of memory (memlock accounting) of every map pinned directly under `pin_dir`.
pub fn pinned_map_bytes(pin_dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(pin_dir).with_context(|| format!("list {}", pin_dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            continue; // the link pins
        }
        let map = bpftool(&["map", "show", "pinned", &path.display().to_string()])?;
        total += map["bytes_memlock"].as_u64().unwrap_or(0);
    }
    Ok(total)
}
