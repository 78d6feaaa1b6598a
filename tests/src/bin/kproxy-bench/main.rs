//! `kproxy-bench` (run by `cargo xtask bench`): kproxy's eBPF datapath against
//! kube-proxy's iptables rules (nft and legacy) on the same topology, as the number of
//! services grows, with the ways XDP can forward external traffic (to the stack, native
//! redirect, generic redirect) and the programs' own cost per packet
//! (BPF_PROG_TEST_RUN). Needs root; everything it creates lives in namespaces and pin
//! directories of its own, removed at the end, on failure and on Ctrl-C.
//!
//! Writes `OUT/results.json` (one record per figure), `OUT/run.json` (settings, noise,
//! notes, machine), `OUT/table.md`, and `OUT/conn_rate.svg`, `OUT/latency.svg`.

mod bpf_stats;
mod chart;
mod cpu;
mod load;
mod model;
mod modes;
mod node;
mod per_packet;
mod progress;
mod report;
mod run;
mod server;
mod signals;
mod stats;

use std::{fs, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, ensure};
use clap::Parser;
use serde::Serialize;

use crate::{modes::Mode, report::Metric, run::Settings, stats::percentile};

#[derive(Parser)]
#[command(name = "kproxy-bench", about = "eBPF against iptables as services grow")]
struct Cli {
    /// Numbers of services to measure (comma-separated).
    #[arg(long, value_delimiter = ',')]
    services: Option<Vec<usize>>,
    /// Datapaths: none, iptables (nft), iptables-legacy, tc, xdp, xdp-redirect,
    /// xdp-generic (comma-separated).
    #[arg(long, value_delimiter = ',')]
    modes: Option<Vec<Mode>>,
    /// Seconds per connection-rate and throughput run.
    #[arg(long)]
    duration: Option<f64>,
    /// Repetitions of every measurement.
    #[arg(long)]
    reps: Option<usize>,
    /// Seconds a sync may take before it is stopped and reported as a lower bound.
    #[arg(long)]
    cap: Option<f64>,
    /// A short run (under three minutes on two cores): fewer N, shorter runs, one repetition.
    #[arg(long)]
    quick: bool,
    /// Where the results go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

impl Cli {
    fn settings(&self) -> Settings {
        let quick = self.quick;
        let pick = |quick_value: f64, full_value: f64| if quick { quick_value } else { full_value };
        Settings {
            services: self.services.clone().unwrap_or_else(|| {
                if quick {
                    vec![1, 1000]
                } else {
                    vec![1, 1000, 10000]
                }
            }),
            modes: self.modes.clone().unwrap_or_else(|| modes::ALL.to_vec()),
            duration: Duration::from_secs_f64(self.duration.unwrap_or(pick(0.5, 1.2))),
            reps: self.reps.unwrap_or(if quick { 1 } else { 3 }),
            concurrency: 16,
            max_connections: 200_000,
            latency_count: if quick { 200 } else { 1000 },
            latency_max: Duration::from_secs_f64(pick(0.5, 1.0)),
            gate_max: Duration::from_secs_f64(pick(0.5, 1.0)),
            cap: Duration::from_secs_f64(self.cap.unwrap_or(pick(20.0, 60.0))),
            test_runs: if quick { 5_000 } else { 20_000 },
        }
    }
}

/// Whether this kproxy can run the XDP datapath (`kproxy run --xdp-iface`).
fn kproxy_has_xdp() -> bool {
    Command::new(kproxy_testbed::agent::kproxy_bin())
        .args(["run", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--xdp-iface"))
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[derive(Serialize)]
struct RunInfo<'a> {
    settings: &'a Settings,
    machine: Machine,
    noise: NoiseSummary,
    notes: &'a [String],
}

#[derive(Serialize)]
struct Machine {
    cpus: usize,
    kernel: String,
    iptables_nft: String,
    iptables_legacy: String,
}

#[derive(Serialize)]
struct NoiseSummary {
    runs: usize,
    foreign_cpu_median: f64,
    foreign_cpu_max: f64,
    busy_before_median: f64,
    repeated_runs: usize,
}

fn main() {
    if let Err(err) = real_main() {
        eprintln!("kproxy-bench: {err:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = cli.settings();
    signals::install()?;
    ensure!(
        nix::unistd::geteuid().is_root(),
        "kproxy-bench needs root (namespaces, BPF, iptables)"
    );
    let mut notes = Vec::new();
    if settings.modes.iter().any(|m| m.has_xdp()) && !kproxy_has_xdp() {
        settings.modes.retain(|m| !m.has_xdp());
        notes.push("xdp modes: not measured: this kproxy has no `run --xdp-iface` yet".to_string());
    }
    settings.modes.sort();
    settings.modes.dedup();
    for &n in &settings.services {
        ensure!(
            (1..=model::MAX_SERVICES).contains(&n),
            "--services: {n} is outside 1..={}",
            model::MAX_SERVICES
        );
    }
    fs::create_dir_all(&cli.out).with_context(|| format!("create {}", cli.out.display()))?;
    let _stats = bpf_stats::RunTimeStats::enable()?;
    eprintln!(
        "[bench] services {:?}, modes {}, {} reps of {:.1} s runs; estimated {:.0} s",
        settings.services,
        settings
            .modes
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(","),
        settings.reps,
        settings.duration.as_secs_f64(),
        run::estimate(&settings).as_secs_f64()
    );

    let outcome = run::run(&settings)?;
    notes.extend(outcome.notes.iter().cloned());

    let modes: Vec<String> = settings.modes.iter().map(|m| m.name().to_string()).collect();
    let table = report::table(&outcome.records, &modes);
    let noise = NoiseSummary {
        runs: outcome.noise.foreign_during.len(),
        foreign_cpu_median: percentile(&outcome.noise.foreign_during, 50.0).unwrap_or(0.0),
        foreign_cpu_max: percentile(&outcome.noise.foreign_during, 100.0).unwrap_or(0.0),
        busy_before_median: percentile(&outcome.noise.busy_before, 50.0).unwrap_or(0.0),
        repeated_runs: outcome.noise.repeated,
    };
    let info = RunInfo {
        settings: &settings,
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            kernel: command_line("uname", &["-r"]),
            iptables_nft: command_line("iptables-nft", &["--version"]),
            iptables_legacy: command_line("iptables-legacy", &["--version"]),
        },
        noise,
        notes: &notes,
    };
    let write = |name: &str, text: String| {
        let path = cli.out.join(name);
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    };
    write("results.json", serde_json::to_string_pretty(&outcome.records)?)?;
    write("run.json", serde_json::to_string_pretty(&info)?)?;
    write("table.md", table.clone())?;
    write(
        "conn_rate.svg",
        chart::svg(
            &outcome.records,
            Metric::ConnRate,
            "New connections per second (one request each, 16 in flight) against services",
            &modes,
        ),
    )?;
    write(
        "latency.svg",
        chart::svg(
            &outcome.records,
            Metric::LatencyP50Us,
            "Latency p50 of a one-request connection (µs) against services",
            &modes,
        ),
    )?;

    println!("{table}");
    println!(
        "noise: other processes took a median {:.0}% (max {:.0}%) of the machine during the {} traffic runs; \
         {} runs repeated for noise; the machine was {:.0}% busy (median) just before them.",
        info.noise.foreign_cpu_median * 100.0,
        info.noise.foreign_cpu_max * 100.0,
        info.noise.runs,
        info.noise.repeated_runs,
        info.noise.busy_before_median * 100.0
    );
    for note in &notes {
        println!("note: {note}");
    }
    println!("results: {}", cli.out.join("results.json").display());
    Ok(())
}
