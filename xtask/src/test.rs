//! `cargo xtask test`: every check CI runs, in order, stopping at the first failure.

use std::process::Command;

use crate::{build, cmd, setup};

/// The package holding the privileged suites (root, BPF, network namespaces).
const PRIVILEGED_PACKAGE: &str = "kproxy-testbed";

fn stage(n: usize, total: usize, what: &str) {
    println!("\n==> [{n}/{total}] {what}");
}

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(args);
    build::with_ebpf_object(&mut cmd);
    cmd
}

pub fn run() -> anyhow::Result<()> {
    const TOTAL: usize = 7;
    stage(1, TOTAL, "setup");
    setup::run()?;

    stage(2, TOTAL, "build");
    build::all()?;

    stage(3, TOTAL, "cargo fmt --check");
    cmd::run(&mut cargo(&["fmt", "--all", "--check"]))?;

    stage(4, TOTAL, "clippy (userspace crates, warnings denied)");
    cmd::run(&mut cargo(&[
        "clippy",
        "--release",
        "--workspace",
        "--exclude",
        "kproxy-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    stage(
        5,
        TOTAL,
        "clippy (kproxy-ebpf on nightly for its target, warnings denied)",
    );
    cmd::run(
        cmd::nightly_cargo()
            .args([
                "clippy",
                "--package",
                "kproxy-ebpf",
                "--release",
                "--target",
                build::EBPF_TARGET,
            ])
            .args(["-Z", "build-std=core", "--", "-D", "warnings"]),
    )?;

    stage(6, TOTAL, "unit tests");
    cmd::run(&mut cargo(&[
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "kproxy-ebpf",
        "--exclude",
        PRIVILEGED_PACKAGE,
    ]))?;

    stage(
        7,
        TOTAL,
        "privileged suites (root: BPF programs, network namespaces)",
    );
    // Serial: the suites share kernel state (bpffs, iptables), so one at a time.
    cmd::run(&mut cargo(&[
        "test",
        "--release",
        "--package",
        PRIVILEGED_PACKAGE,
        "--",
        "--test-threads=1",
    ]))?;

    println!("\nall stages passed");
    Ok(())
}
