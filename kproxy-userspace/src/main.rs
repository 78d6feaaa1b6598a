//! The `kproxy` command line.

mod export;
mod inspect_cli;
mod lifecycle;

use clap::{Parser, Subcommand};
use kproxy::bpf;

#[derive(Parser)]
#[command(name = "kproxy", version, about = "kube-proxy's service routing in eBPF")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: program the datapath from the model and keep it in step.
    Run(lifecycle::Run),
    /// Remove everything kproxy installed: links, programs, pinned maps, iptables chains.
    Cleanup(lifecycle::Cleanup),
    /// Load every kernel program through the verifier and report its size.
    Check,
    /// Print what another proxy would program for a service model.
    #[command(subcommand)]
    Export(export::Export),
    /// Measure how fast kproxy renders large models.
    #[command(subcommand)]
    Bench(export::Bench),
    /// Show the pinned BPF maps beside the iptables rules kube-proxy would have.
    Inspect(inspect_cli::InspectArgs),
    /// What happens to a packet, in kube-proxy's rules and in the BPF maps.
    Explain(inspect_cli::ExplainArgs),
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Run(run) => run.run(),
        Command::Cleanup(cleanup) => cleanup.run(),
        Command::Check => check(),
        Command::Export(export) => export.run(),
        Command::Bench(bench) => bench.run(),
        Command::Inspect(inspect) => inspect.run(),
        Command::Explain(explain) => explain.run(),
    }
}

fn check() -> anyhow::Result<()> {
    // The maps are pinned by name: load them under a scratch directory, never the
    // agent's, and remove it afterwards.
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/kproxy-check-{}", std::process::id()));
    let opts = bpf::LoadOptions {
        pin_dir: pin_dir.clone(),
        conntrack_max: Some(1024),
    };
    let loaded = bpf::Datapath::load(&opts);
    let unpinned = bpf::unpin_all(&pin_dir);
    let datapath = loaded?;
    unpinned?;
    for (name, insns) in datapath.instruction_counts() {
        anyhow::ensure!(insns > 0, "{name}: no verified instruction count");
        println!("{name}: verified, {insns} instructions");
    }
    Ok(())
}
