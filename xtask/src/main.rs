//! `cargo xtask`: the project's own commands. Each one runs `setup` first, so a fresh
//! machine needs nothing but `cargo xtask run` or `cargo xtask test`.

mod bench;
mod build;
mod cmd;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "kproxy's build, run and test commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and the tests need (idempotent; quiet when all is present).
    Setup,
    /// Build the kernel programs, then the agent at target/release/kproxy with them embedded
    /// (installs the build tools first; mounts nothing, so it runs in an image build).
    Build,
    /// Setup, build, then run `target/release/kproxy ARGS` (no ARGS: the demo).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Setup, build, fmt, clippy, unit tests and the privileged suites, failing on the first failure.
    Test {
        /// Run the privileged suites N times (the other stages once), then report
        /// failures per test.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        repeat: Option<u32>,
    },
    /// The seed article's cluster on this machine, served by kproxy (namespaces only).
    Demo {
        /// Which datapath serves the demo.
        #[arg(long, default_value = "ebpf", value_parser = ["ebpf", "iptables"])]
        mode: String,
        /// eBPF mode: run the XDP program on the node's external link too (TC only
        /// without it).
        #[arg(long)]
        xdp: bool,
        /// Exit right after showing the state instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
        /// The one-node cluster (both pods behind one node) instead of the seed as it is:
        /// pod A on host1, pod B on host2, an agent per node.
        #[arg(long)]
        one_node: bool,
    },
    /// eBPF against iptables as services grow: `[--services 1,1000,10000] [--modes ...]
    /// [--duration SECS] [--quick] [--out DIR]` (`-- --help` for all options).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(err) = run() {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let root = cmd::workspace_root();
    std::env::set_current_dir(&root)?;
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Build => {
            setup::for_build()?;
            build::all().map(|_| ())
        }
        Command::Run { args } if args.is_empty() => demo("ebpf", false, false, true),
        Command::Run { args } => {
            setup::run()?;
            let agent = build::all()?;
            cmd::run(std::process::Command::new(agent).args(&args))
        }
        Command::Test { repeat } => test::run(repeat),
        Command::Demo {
            mode,
            xdp,
            once,
            one_node,
        } => demo(&mode, xdp, once, !one_node),
        Command::Bench { args } => bench::run(&args),
    }
}

/// Builds the agent and the demo driver, then runs the demo from the repository root.
fn demo(mode: &str, xdp: bool, once: bool, two_nodes: bool) -> anyhow::Result<()> {
    setup::run()?;
    let agent = build::all()?;
    let driver = build::demo()?;
    let mut command = std::process::Command::new(driver);
    command
        .args(["--mode", mode, "--examples", "examples"])
        .env("KPROXY_BIN", agent);
    if once {
        command.arg("--once");
    }
    if xdp {
        command.arg("--xdp");
    }
    if two_nodes {
        command.arg("--two-nodes");
    }
    cmd::run(&mut command)
}
