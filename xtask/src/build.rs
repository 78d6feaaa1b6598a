//! Building the kernel programs and the agent.

use std::{path::PathBuf, process::Command};

use crate::cmd;

/// The eBPF target and the object it leaves behind.
pub const EBPF_TARGET: &str = "bpfel-unknown-none";

/// Where `ebpf()` leaves the kernel object.
pub fn ebpf_object() -> PathBuf {
    cmd::workspace_root()
        .join("target")
        .join(EBPF_TARGET)
        .join("release")
        .join("kproxy")
}

/// Builds `kproxy-ebpf` with nightly and build-std (cargo rebuilds it whenever a
/// source changes, so the object is never stale).
pub fn ebpf() -> anyhow::Result<PathBuf> {
    println!("==> build kproxy-ebpf ({EBPF_TARGET}, release)");
    cmd::run(
        cmd::nightly_cargo()
            .args(["build", "--package", "kproxy-ebpf", "--bins", "--release"])
            .args(["--target", EBPF_TARGET, "-Z", "build-std=core"])
            // The same flags aya-build passes: BTF for the loader, the arch cfg for aya-ebpf.
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                [
                    "--cfg=bpf_target_arch=\"x86_64\"",
                    "-Cdebuginfo=2",
                    "-Clink-arg=--btf",
                ]
                .join("\x1f"),
            ),
    )?;
    Ok(ebpf_object())
}

/// Sets the variable that makes kproxy-userspace embed the object `ebpf()` built.
pub fn with_ebpf_object(cmd: &mut Command) -> &mut Command {
    cmd.env("KPROXY_EBPF_OBJECT", ebpf_object())
}

/// Builds the kernel programs, then the agent; returns the agent's path.
pub fn all() -> anyhow::Result<PathBuf> {
    ebpf()?;
    println!("==> build kproxy (release)");
    cmd::run(with_ebpf_object(Command::new("cargo").args([
        "build",
        "--release",
        "--package",
        "kproxy-userspace",
        "--bin",
        "kproxy",
    ])))?;
    Ok(cmd::workspace_root().join("target/release/kproxy"))
}

/// Builds the demo driver (it lives with the test topology in kproxy-testbed).
pub fn demo() -> anyhow::Result<PathBuf> {
    println!("==> build kproxy-demo (release)");
    cmd::run(with_ebpf_object(Command::new("cargo").args([
        "build",
        "--release",
        "--package",
        "kproxy-testbed",
        "--bin",
        "kproxy-demo",
    ])))?;
    Ok(cmd::workspace_root().join("target/release/kproxy-demo"))
}
