//! `cargo xtask bench`: builds the agent and the bench binary, then runs the bench
//! (which lives in the kproxy-testbed package, beside the topology it uses).

use std::process::Command;

use crate::{build, cmd, setup};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    let agent = build::all()?;
    println!("==> build kproxy-bench (release)");
    cmd::run(build::with_ebpf_object(Command::new("cargo").args([
        "build",
        "--release",
        "--package",
        "kproxy-testbed",
        "--bin",
        "kproxy-bench",
    ])))?;
    let bench = cmd::workspace_root().join("target/release/kproxy-bench");
    cmd::run(Command::new(bench).args(args).env("KPROXY_BIN", agent))
}
