//! The `kproxy` command line.

mod export;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kproxy::programs;

#[derive(Parser)]
#[command(name = "kproxy", version, about = "kube-proxy's service routing in eBPF")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load every kernel program through the verifier and report its size.
    Check,
    /// Print what another proxy would program for a service model.
    #[command(subcommand)]
    Export(export::Export),
    /// Measure how fast kproxy renders large models.
    #[command(subcommand)]
    Bench(export::Bench),
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Check => check(),
        Command::Export(export) => export.run(),
        Command::Bench(bench) => bench.run(),
    }
}

fn check() -> anyhow::Result<()> {
    let mut ebpf = programs::open(|_| {})?;
    for name in programs::ALL_PROGRAMS {
        programs::load_program(&mut ebpf, name)?;
        let info = ebpf
            .program(name)
            .context("program vanished after load")?
            .info()
            .with_context(|| format!("read info of program {name} (BPF_OBJ_GET_INFO_BY_FD)"))?;
        let insns = info.verified_instruction_count().unwrap_or(0);
        println!("{name}: verified, {insns} instructions");
    }
    Ok(())
}
