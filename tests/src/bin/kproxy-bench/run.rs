//! The measurement plan: for each N and mode, a fresh node; the full sync; traffic to
//! every (path, target), repeated with the order rotated; throughput; more full syncs
//! on scratch nodes; one-service changes. Then, for each N, the TC and XDP programs'
//! own cost per packet. Each repetition is one sample; figures are the medians with
//! their range. The XDP variants that only change how external traffic is forwarded
//! get the NodePort traffic runs alone.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    bpf_stats::{self, ProgramRuns},
    chart::PANELS,
    cpu, load,
    modes::Mode,
    node::{self, BenchNode, SyncOutcome},
    per_packet,
    progress::Progress,
    report::{Metric, Path, Record, Target},
    signals,
    stats::{Summary, percentile},
};

/// How much and how long to measure.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub services: Vec<usize>,
    pub modes: Vec<Mode>,
    /// Length of each connection-rate and throughput run.
    pub duration: Duration,
    pub reps: usize,
    /// Connections in flight during a connection-rate run (wrk -c16 in the baseline).
    pub concurrency: usize,
    /// Upper bound on connections per rate run, whatever the duration.
    pub max_connections: u64,
    /// Sequential connections per latency run, and the time bound on it.
    pub latency_count: usize,
    pub latency_max: Duration,
    /// Longest wait for a quiet machine before each run.
    pub gate_max: Duration,
    /// Longest a sync may take before it is stopped and reported as a lower bound.
    pub cap: Duration,
    /// BPF_PROG_TEST_RUN runs behind each per-packet figure.
    pub test_runs: u32,
}

/// A run is noisy when other processes took more than this share of the machine.
const FOREIGN_LIMIT: f64 = 0.10;
const GATE_WINDOW: Duration = Duration::from_millis(250);
const GATE_BUSY: f64 = 0.05;
const LATENCY_WARMUP: usize = 50;

/// How quiet the machine was.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Noise {
    /// Busy share of the machine in the last gate window before each run.
    pub busy_before: Vec<f64>,
    /// Share of the machine other processes used during each run.
    pub foreign_during: Vec<f64>,
    /// Runs repeated because they were noisy.
    pub repeated: usize,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub records: Vec<Record>,
    pub notes: Vec<String>,
    pub noise: Noise,
}

#[derive(Default)]
struct TargetSamples {
    rate: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    bpf_ns: Vec<f64>,
}

fn mode_paths(mode: Mode) -> Vec<(Path, Target)> {
    if mode == Mode::None {
        vec![(Path::Direct, Target::First)]
    } else if mode.external_only() {
        PANELS
            .into_iter()
            .filter(|(path, _)| *path == Path::Nodeport)
            .collect()
    } else {
        PANELS.to_vec()
    }
}

/// The modes whose program gets the per-packet figures (the XDP variants run the same
/// program as `xdp`).
fn per_packet_modes(s: &Settings) -> Vec<Mode> {
    [Mode::Tc, Mode::Xdp]
        .into_iter()
        .filter(|m| s.modes.contains(m))
        .collect()
}

/// Rough seconds a datapath needs to program N services (measured on this machine
/// kind: nft's `--noflush` restore and kproxy's full map sync grow faster than N), plus
/// the agent reading the model, for the progress estimate only.
fn sync_estimate(mode: Mode, services: usize, one_change: bool, cap: Duration) -> f64 {
    let thousands = services as f64 / 1000.0;
    let read_model = 0.3 * thousands;
    let programming = match mode {
        Mode::None => 0.0,
        Mode::Iptables => 0.8 * thousands.powf(1.6),
        Mode::IptablesLegacy => 0.45 * thousands * if one_change { 0.6 } else { 1.0 },
        _ if one_change => 0.002 * thousands,
        _ => 0.085 * thousands.powi(2),
    };
    read_model + programming.min(cap.as_secs_f64()) + 0.3
}

/// Repetitions of a sync that [`worth_repeating`] allows for one taking `each` seconds.
fn sync_reps(s: &Settings, each: f64) -> f64 {
    (s.cap.as_secs_f64() / each).floor().clamp(1.0, s.reps as f64)
}

fn traffic_estimate(s: &Settings) -> f64 {
    let gate = s.gate_max.as_secs_f64().min(1.0);
    let latency = s.latency_max.as_secs_f64().min(s.latency_count as f64 * 250e-6) + 0.05;
    gate + s.duration.as_secs_f64() + latency + 0.1
}

/// Seconds for one repetition of the per-packet figures: seeding N services, then the
/// runs of every kind of frame (a few µs each, mostly the syscall).
fn per_packet_estimate(s: &Settings, n: usize) -> f64 {
    let gate = s.gate_max.as_secs_f64().min(1.0);
    gate + 0.3 + n as f64 * 30e-6 + f64::from(s.test_runs) * per_packet::KINDS.len() as f64 * 5e-6
}

/// The whole plan's expected length, for the progress line.
pub fn estimate(s: &Settings) -> Duration {
    let mut total = 0.0;
    for &n in &s.services {
        for &mode in &s.modes {
            total += node_estimate(s, mode, n);
        }
        total += per_packet_modes(s).len() as f64 * s.reps as f64 * per_packet_estimate(s, n);
    }
    Duration::from_secs_f64(total)
}

fn node_estimate(s: &Settings, mode: Mode, n: usize) -> f64 {
    let paths = mode_paths(mode).len() as f64;
    let reps = s.reps as f64;
    let mut t = 2.0 + paths * reps * traffic_estimate(s);
    if mode.external_only() {
        return t + 1.0 + sync_estimate(mode, n, false, s.cap);
    }
    t += reps * (s.gate_max.as_secs_f64().min(1.0) + s.duration.as_secs_f64());
    if mode != Mode::None {
        let full = sync_estimate(mode, n, false, s.cap);
        let change = sync_estimate(mode, n, true, s.cap);
        t += 1.0 + (full + 1.5) * sync_reps(s, full) + change * sync_reps(s, change);
    }
    t
}

pub fn run(s: &Settings) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    let conntrack_tool = std::process::Command::new("conntrack")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !conntrack_tool {
        out.notes.push(
            "conntrack (the tool) is missing: the node's conntrack table was not flushed between runs \
             (`cargo xtask setup` installs it)"
                .into(),
        );
    }
    let mut progress = Progress::new(estimate(s));
    for &services in &s.services {
        for &mode in &s.modes {
            signals::check()?;
            measure_node(s, mode, services, &mut progress, &mut out)
                .with_context(|| format!("N={services} mode {mode}"))?;
        }
        for mode in per_packet_modes(s) {
            let records = per_packet_records(s, mode, services, &mut progress)
                .with_context(|| format!("N={services} mode {mode}: per packet"))?;
            out.records.extend(records);
        }
    }
    eprintln!(
        "[bench] all measurements done in {:.0} s",
        progress.elapsed().as_secs_f64()
    );
    Ok(out)
}

fn summary(samples: &[f64]) -> Option<Summary> {
    Summary::of(samples)
}

fn seconds(outcomes: &[SyncOutcome]) -> (Vec<f64>, Option<Duration>) {
    let done = outcomes
        .iter()
        .filter_map(|o| match o {
            SyncOutcome::Done(d) => Some(d.as_secs_f64()),
            _ => None,
        })
        .collect();
    let capped = outcomes.iter().find_map(|o| match o {
        SyncOutcome::Capped(c) => Some(*c),
        _ => None,
    });
    (done, capped)
}

fn push_sync_record(
    out: &mut Outcome,
    mode: Mode,
    services: usize,
    metric: Metric,
    outcomes: &[SyncOutcome],
) {
    for o in outcomes {
        if let SyncOutcome::Failed(why) = o {
            out.notes
                .push(format!("N={services} {mode}: {metric:?} failed: {why}"));
        }
    }
    let (done, capped) = seconds(outcomes);
    if let Some(cap) = capped {
        // One capped run makes the median meaningless: report the cap as a lower bound.
        let bound = cap.as_secs_f64();
        let reps = outcomes.len();
        let mut record = Record::new(
            mode.name(),
            services,
            None,
            metric,
            Summary {
                median: bound,
                min: bound,
                max: bound,
                reps,
            },
        )
        .capped();
        record.min = done.iter().copied().fold(bound, f64::min);
        out.records.push(record);
    } else if let Some(sum) = summary(&done) {
        out.records
            .push(Record::new(mode.name(), services, None, metric, sum));
    }
}

fn measure_node(
    s: &Settings,
    mode: Mode,
    services: usize,
    progress: &mut Progress,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let label = format!("N={services} {mode}");
    progress.step(
        &format!("{label}: topology, agent start, full sync"),
        Duration::from_secs_f64(2.0 + sync_estimate(mode, services, false, s.cap)),
    );
    let mut node = BenchNode::start(mode, services)?;
    let mut full_syncs = Vec::new();
    if mode != Mode::None {
        let first = node.wait_sync(s.cap)?;
        let usable = matches!(first, SyncOutcome::Done(_));
        full_syncs.push(first);
        if !usable {
            push_sync_record(out, mode, services, Metric::SyncFullS, &full_syncs);
            out.notes.push(format!(
                "{label}: the full sync did not finish, so no traffic was measured"
            ));
            return Ok(());
        }
        if let Some(rss) = node.agent_rss_mb() {
            out.records.push(single(mode, services, Metric::RssMb, rss));
        }
        if mode.has_xdp() {
            let setup = node
                .xdp_setup()
                .unwrap_or_else(|| "the agent logged no XDP link".into());
            out.notes.push(format!("{label}: {setup}"));
        }
        if mode.is_ebpf() {
            match bpf_stats::pinned_map_bytes(node.pin_dir()) {
                Ok(bytes) => out
                    .records
                    .push(single(mode, services, Metric::MapMb, bytes as f64 / 1e6)),
                Err(err) => out.notes.push(format!("{label}: map memory not read: {err:#}")),
            }
        }
    }
    let paths = mode_paths(mode);
    for &(path, target) in &paths {
        let (ns, addr) = node.target(path, target);
        load::probe(ns, addr).with_context(|| {
            format!("{label}: {path:?}/{target:?} to {addr} does not answer before measuring")
        })?;
    }
    let programs = if mode.is_ebpf() {
        match bpf_stats::attached_program_ids(node.pin_dir()) {
            Ok(ids) => Some(ids),
            Err(err) => {
                out.notes.push(format!("{label}: no BPF program stats: {err:#}"));
                None
            }
        }
    } else {
        None
    };

    let mut samples: BTreeMap<(Path, Target), TargetSamples> = BTreeMap::new();
    for rep in 0..s.reps {
        for i in 0..paths.len() {
            let (path, target) = paths[(i + rep) % paths.len()];
            progress.step(
                &format!(
                    "{label}: {}/{} rep {}/{}",
                    format!("{path:?}").to_lowercase(),
                    format!("{target:?}").to_lowercase(),
                    rep + 1,
                    s.reps
                ),
                Duration::from_secs_f64(traffic_estimate(s)),
            );
            let entry = samples.entry((path, target)).or_default();
            traffic_run(s, &node, path, target, programs.as_deref(), entry, out, &label)?;
        }
    }
    for ((path, target), got) in &samples {
        let at = Some((*path, *target));
        let mut push = |metric, values: &[f64]| {
            if let Some(sum) = summary(values) {
                out.records
                    .push(Record::new(mode.name(), services, at, metric, sum));
            }
        };
        push(Metric::ConnRate, &got.rate);
        push(Metric::LatencyP50Us, &got.p50);
        push(Metric::LatencyP99Us, &got.p99);
        push(Metric::BpfNsPerPkt, &got.bpf_ns);
    }

    if mode.external_only() {
        // Throughput, the later syncs and the one-service change would measure what
        // `xdp` measures: the same agent and maps, the same ClusterIP path.
        push_sync_record(out, mode, services, Metric::SyncFullS, &full_syncs);
        return Ok(());
    }
    let bulk = if mode == Mode::None {
        (Path::Direct, Target::First)
    } else {
        (Path::Clusterip, Target::First)
    };
    let mut gbps = Vec::new();
    for rep in 0..s.reps {
        progress.step(
            &format!("{label}: throughput rep {}/{}", rep + 1, s.reps),
            Duration::from_secs_f64(s.duration.as_secs_f64() + 0.5),
        );
        signals::check()?;
        cpu::quiet_gate(s.gate_max, GATE_WINDOW, GATE_BUSY);
        let (ns, addr) = node.target(bulk.0, bulk.1);
        gbps.push(load::throughput(ns, addr, s.duration)?);
    }
    if let Some(sum) = summary(&gbps) {
        out.records.push(Record::new(
            mode.name(),
            services,
            Some(bulk),
            Metric::ThroughputGbps,
            sum,
        ));
    }

    if mode == Mode::None {
        return Ok(());
    }
    let model_dir = node.model().context("agent modes have a model")?.dir.clone();
    for rep in 1..s.reps {
        if !worth_repeating(&full_syncs, s.cap) {
            break;
        }
        progress.step(
            &format!("{label}: full sync on a scratch node rep {}/{}", rep + 1, s.reps),
            Duration::from_secs_f64(1.5 + sync_estimate(mode, services, false, s.cap)),
        );
        signals::check()?;
        full_syncs.push(node::scratch_full_sync(
            mode,
            &model_dir,
            &node.config_path(),
            s.cap,
        )?);
    }
    push_sync_record(out, mode, services, Metric::SyncFullS, &full_syncs);

    let mut changes = Vec::new();
    for rep in 0..s.reps {
        if !worth_repeating(&changes, s.cap) {
            break;
        }
        progress.step(
            &format!("{label}: one-service change rep {}/{}", rep + 1, s.reps),
            Duration::from_secs_f64(sync_estimate(mode, services, true, s.cap)),
        );
        // Alternate the change and its revert, as the baseline did.
        changes.push(node.change_one_service(rep % 2 == 0, s.cap)?);
    }
    push_sync_record(out, mode, services, Metric::SyncOneS, &changes);
    Ok(())
}

/// The per-packet figures of `mode`'s program with `services` services, each the
/// median of `s.reps` repetitions.
fn per_packet_records(
    s: &Settings,
    mode: Mode,
    services: usize,
    progress: &mut Progress,
) -> anyhow::Result<Vec<Record>> {
    let mut samples: BTreeMap<Metric, Vec<f64>> = BTreeMap::new();
    for rep in 0..s.reps {
        progress.step(
            &format!("N={services} {mode}: per packet rep {}/{}", rep + 1, s.reps),
            Duration::from_secs_f64(per_packet_estimate(s, services)),
        );
        signals::check()?;
        cpu::quiet_gate(s.gate_max, GATE_WINDOW, GATE_BUSY);
        for (metric, ns) in per_packet::measure(mode, services, s.test_runs)? {
            samples.entry(metric).or_default().push(ns);
        }
    }
    Ok(samples
        .into_iter()
        .filter_map(|(metric, values)| {
            Some(Record::new(
                mode.name(),
                services,
                None,
                metric,
                summary(&values)?,
            ))
        })
        .collect())
}

/// Whether another repetition of a sync fits: every one so far finished, and one more
/// like the last keeps the time spent on this figure within the cap (iptables-nft at
/// 10 000 services takes tens of seconds per sync).
fn worth_repeating(so_far: &[SyncOutcome], cap: Duration) -> bool {
    let mut spent = Duration::ZERO;
    for outcome in so_far {
        match outcome {
            SyncOutcome::Done(took) => spent += *took,
            SyncOutcome::Capped(_) | SyncOutcome::Failed(_) => return false,
        }
    }
    let last = so_far.iter().rev().find_map(|o| match o {
        SyncOutcome::Done(took) => Some(*took),
        _ => None,
    });
    spent + last.unwrap_or_default() <= cap
}

fn single(mode: Mode, services: usize, metric: Metric, value: f64) -> Record {
    Record::new(
        mode.name(),
        services,
        None,
        metric,
        Summary {
            median: value,
            min: value,
            max: value,
            reps: 1,
        },
    )
}

/// One repetition for one (path, target): connection rate (with the BPF program's cost
/// per packet in eBPF modes), then sequential latency. A run during which other
/// processes took more than [`FOREIGN_LIMIT`] of the machine is repeated once.
#[allow(clippy::too_many_arguments)]
fn traffic_run(
    s: &Settings,
    node: &BenchNode,
    path: Path,
    target: Target,
    programs: Option<&[u64]>,
    samples: &mut TargetSamples,
    out: &mut Outcome,
    label: &str,
) -> anyhow::Result<()> {
    let (ns, addr) = node.target(path, target);
    let ours: Vec<u32> = node.agent_pid().into_iter().collect();
    let mut attempt = 0;
    let (rate, bpf_ns) = loop {
        signals::check()?;
        node.flush_conntrack();
        out.noise
            .busy_before
            .push(cpu::quiet_gate(s.gate_max, GATE_WINDOW, GATE_BUSY));
        let meter = cpu::ForeignMeter::start(&ours);
        let before = programs.and_then(|ids| ProgramRuns::read(ids).ok());
        let rate = load::conn_rate(ns, addr, s.concurrency, s.duration, s.max_connections)?;
        let after = programs.and_then(|ids| ProgramRuns::read(ids).ok());
        let foreign = meter.foreign_fraction();
        out.noise.foreign_during.push(foreign);
        let bpf_ns = match (before, after) {
            (Some(b), Some(a)) => a.ns_per_run_since(&b),
            _ => None,
        };
        if foreign > FOREIGN_LIMIT && attempt == 0 {
            attempt += 1;
            out.noise.repeated += 1;
            continue;
        }
        break (rate, bpf_ns);
    };
    if rate.errors > 0 {
        out.notes.push(format!(
            "{label} {path:?}/{target:?}: {} failed connections beside {} completed",
            rate.errors, rate.connections
        ));
    }
    samples.rate.push(rate.per_second());
    samples.bpf_ns.extend(bpf_ns);
    let micros = load::latencies(ns, addr, LATENCY_WARMUP, s.latency_count, s.latency_max)?;
    samples.p50.extend(percentile(&micros, 50.0));
    samples.p99.extend(percentile(&micros, 99.0));
    Ok(())
}
