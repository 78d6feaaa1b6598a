//! Embeds the kernel programs (`kproxy-ebpf`) into the agent.
//!
//! - `KPROXY_EBPF_OBJECT=PATH`: use the object `cargo xtask build` just built (the
//!   normal path: one eBPF build per run, and its errors printed plainly).
//! - `KPROXY_SKIP_EBPF=1`: embed an empty object, for linting or for work on the
//!   userspace alone; loading programs then fails with a message saying so.
//! - neither: build the eBPF crate here with aya-build (plain `cargo build`/`cargo test`).
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=KPROXY_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=KPROXY_SKIP_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let embedded = out_dir.join("kproxy");

    if let Some(object) = env::var_os("KPROXY_EBPF_OBJECT") {
        let object = PathBuf::from(object);
        println!("cargo:rerun-if-changed={}", object.display());
        fs::copy(&object, &embedded).with_context(|| {
            format!(
                "copy eBPF object {} into {}",
                object.display(),
                embedded.display()
            )
        })?;
        return Ok(());
    }
    if env::var_os("KPROXY_SKIP_EBPF").is_some_and(|v| v == "1") {
        fs::write(&embedded, b"").context("write empty eBPF object")?;
        return Ok(());
    }

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "kproxy-ebpf")
        .ok_or_else(|| anyhow!("package kproxy-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("kproxy-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
