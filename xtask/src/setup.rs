//! `cargo xtask setup`: installs what building and testing kproxy needs, and only
//! what is missing. Quiet when everything is present.

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::cmd;

/// Debian packages: LLVM 22 for bpf-linker, and the tools the agent, tests and bench
/// drive (`conntrack` flushes the node's table between bench runs).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "iptables",
    "iproute2",
    "bpftool",
    // Test topologies switch checksum offload and GRO on their veths.
    "ethtool",
    "conntrack",
    // `nft`: the cleanup tests create and remove kube-proxy's nftables tables.
    "nftables",
];

/// The bpf-linker this toolchain links with (0.13's default feature targets LLVM 23,
/// which cannot link nightly 1.97's LLVM 22 output).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Where Debian's llvm-22-dev puts LLVM 22.
const LLVM_22_PREFIX: &str = "/usr/lib/llvm-22";

/// Everything: the build tools, and bpffs mounted for running and testing.
pub fn run() -> anyhow::Result<()> {
    install(true)
}

/// The build tools only: no bpffs mount, which a container image build (no
/// CAP_SYS_ADMIN) cannot do and the build does not need.
pub fn for_build() -> anyhow::Result<()> {
    install(false)
}

fn install(mount_bpffs: bool) -> anyhow::Result<()> {
    require_root()?;
    let mut installed = Vec::new();
    installed.extend(nightly_rust_src()?);
    installed.extend(apt_packages()?);
    installed.extend(bpf_linker()?);
    if mount_bpffs {
        installed.extend(bpffs()?);
    }
    if !installed.is_empty() {
        println!("setup: done ({})", installed.join(", "));
    }
    Ok(())
}

fn require_root() -> anyhow::Result<()> {
    let uid = cmd::probe(Command::new("id").arg("-u")).unwrap_or_default();
    if uid.trim() != "0" {
        bail!(
            "setup needs root: it installs Debian packages and mounts bpffs, and kproxy loads BPF programs. \
             Run `cargo xtask` as root (e.g. in a root shell: `su -c 'cargo xtask test'`)."
        );
    }
    Ok(())
}

fn nightly_rust_src() -> anyhow::Result<Option<String>> {
    let Some(sysroot) = cmd::probe(Command::new("rustc").args(["+nightly", "--print", "sysroot"])) else {
        bail!(
            "the nightly toolchain is missing; it builds the eBPF programs. Run: \
             rustup toolchain install nightly --profile minimal --component rust-src"
        );
    };
    if Path::new(sysroot.trim())
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
    {
        return Ok(None);
    }
    println!("setup: installing rust-src for the nightly toolchain");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    Ok(Some("rust-src".into()))
}

fn is_installed(package: &str) -> bool {
    cmd::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.contains("install ok installed"))
}

fn apt_packages() -> anyhow::Result<Option<String>> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(None);
    }
    if cmd::probe(Command::new("apt-get").arg("--version")).is_none() {
        bail!(
            "missing packages {}, and there is no apt-get here: install them with your package manager",
            missing.join(" ")
        );
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    Ok(Some(missing.join(" ")))
}

fn bpf_linker() -> anyhow::Result<Option<String>> {
    let version = cmd::probe(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.split_whitespace().any(|word| word == BPF_LINKER_VERSION) {
        return Ok(None);
    }
    println!("setup: installing bpf-linker {BPF_LINKER_VERSION} for LLVM 22 (a few minutes)");
    // LLVM_PREFIX: the build would otherwise take whichever llvm-config is first on PATH.
    cmd::run(Command::new("cargo").env("LLVM_PREFIX", LLVM_22_PREFIX).args([
        "install",
        "bpf-linker",
        "--force",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))?;
    Ok(Some(format!("bpf-linker {BPF_LINKER_VERSION}")))
}

fn bpffs() -> anyhow::Result<Option<String>> {
    let mounts = fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
    if mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_, target, fstype) = (fields.next(), fields.next(), fields.next());
        target == Some("/sys/fs/bpf") && fstype == Some("bpf")
    }) {
        return Ok(None);
    }
    println!("setup: mounting bpffs at /sys/fs/bpf");
    fs::create_dir_all("/sys/fs/bpf").context("create /sys/fs/bpf")?;
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    Ok(Some("bpffs".into()))
}
