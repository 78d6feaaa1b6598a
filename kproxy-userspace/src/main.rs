//! The `kproxy` command line.

mod cli;

use clap::{Parser, Subcommand};
use cli::{bench, check, cleanup, export, inspect, run};

#[derive(Parser)]
#[command(name = "kproxy", version, about = "kube-proxy's service routing in eBPF")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: program the datapath from the model and keep it in step.
    Run(run::Run),
    /// Remove everything kproxy installed: links, programs, pinned maps, iptables chains.
    Cleanup(cleanup::Cleanup),
    /// Load every kernel program through the verifier and report its size.
    Check,
    /// Print what another proxy would program for a service model.
    #[command(subcommand)]
    Export(export::Export),
    /// Measure how fast kproxy renders large models.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Show the pinned BPF maps beside the iptables rules kube-proxy would have.
    Inspect(inspect::InspectArgs),
    /// What happens to a packet, in kube-proxy's rules and in the BPF maps.
    Explain(inspect::ExplainArgs),
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Run(run) => run.run(),
        Command::Cleanup(cleanup) => cleanup.run(),
        Command::Check => check::run(),
        Command::Export(export) => export.run(),
        Command::Bench(bench) => bench.run(),
        Command::Inspect(inspect) => inspect.run(),
        Command::Explain(explain) => explain.run(),
    }
}
