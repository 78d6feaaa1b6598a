//! One benchmarked node: a fresh topology (the e2e builder) with two backend pods, a
//! client pod and the external client, the backend servers, the N-service model, and
//! `kproxy run` programming one datapath from it. Each (mode, N) gets its own, so no
//! mode sees another's netfilter tables or maps; dropping it stops the agent (and any
//! iptables-restore still running under it), removes the pins and the agent's state
//! record, and deletes the namespaces (with every rule inside them).

use std::{
    fs,
    net::{SocketAddr, SocketAddrV4},
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use kproxy_testbed::{
    agent::{Agent, run_kproxy},
    cgroup::TestCgroup,
    cluster, manifests,
    netns::{NetNs, unique_name},
    pins::PinDir,
    tempdir::TempDir,
    topology::{EXTERNAL_IFACE_PREFIX, NODE_IP, Topology},
};

use crate::{
    model::{self, BenchModel},
    modes::Mode,
    report::{Path as TrafficPath, Target},
    server::Backends,
    signals,
};

/// The agent logs as in production: debug logging would cost the measured datapath.
const AGENT_LOG: &str = "info";

/// How a sync ended.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncOutcome {
    /// The datapath took this long to program (the agent's own measurement).
    Done(Duration),
    /// Still running at the cap: stopped there (the figure is a lower bound).
    Capped(Duration),
    Failed(String),
}

pub struct BenchNode {
    pub mode: Mode,
    pub services: usize,
    agent: Option<Agent>,
    /// The agent's socket-LB cgroup: the bench's own, holding no process.
    cgroup: TestCgroup,
    pins: PinDir,
    model: Option<BenchModel>,
    dir: TempDir,
    syncs: usize,
    _servers: Backends,
    topo: Topology,
}

/// Sysctls of the baseline's TIME_WAIT fix: without them the backends' TIME_WAIT
/// sockets collide with masqueraded source ports and short connections collapse.
fn time_wait_fix(ns: &NetNs, client: bool) -> anyhow::Result<()> {
    ns.run(|| {
        fs::write("/proc/sys/net/ipv4/tcp_max_tw_buckets", "0")?;
        if client {
            fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535")?;
        }
        Ok::<_, std::io::Error>(())
    })
    .with_context(|| format!("TIME_WAIT sysctls in {}", ns.name()))
}

impl BenchNode {
    /// Builds the node; with an agent mode, writes the model and starts `kproxy run`
    /// (the full sync is then awaited with [`BenchNode::wait_sync`]).
    pub fn start(mode: Mode, services: usize) -> anyhow::Result<Self> {
        let topo = Topology::new(&[
            ("be-a", model::BACKEND_A),
            ("be-b", model::BACKEND_B),
            ("client", model::CLIENT_POD),
            ("bystander", model::BYSTANDER_POD),
        ]);
        for pod in &topo.pods {
            time_wait_fix(&pod.ns, !pod.name.starts_with("be-"))?;
        }
        time_wait_fix(&topo.external, true)?;
        external_forwarding(&topo, mode);
        let port = model::TARGET_PORT;
        let servers = Backends::start(&[
            (&topo.pod("be-a").ns, sock(model::BACKEND_A, port)),
            (&topo.pod("be-b").ns, sock(model::BACKEND_B, port)),
        ])?;
        let dir = TempDir::new("bench");
        let pins = PinDir::new("bnch");
        let mut node = BenchNode {
            mode,
            services,
            agent: None,
            cgroup: TestCgroup::new("bnch"),
            pins,
            model: None,
            dir,
            syncs: 0,
            _servers: servers,
            topo,
        };
        if mode != Mode::None {
            let model_dir = node.dir.path().join("model");
            node.model = Some(BenchModel::write(&model_dir, services)?);
            let config = node.config_path();
            let text = manifests::proxy_config(model::NODE_NAME, model::CLUSTER_CIDR);
            fs::write(&config, text).context("write config")?;
            let args = agent_args(
                mode,
                &model_dir,
                &config,
                node.pins.path(),
                node.cgroup.path(),
                false,
            )?;
            node.agent = Some(Agent::start_logging(&node.topo.node, &args, AGENT_LOG));
        }
        Ok(node)
    }

    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().and_then(Agent::pid)
    }

    pub fn pin_dir(&self) -> &Path {
        self.pins.path()
    }

    pub fn model(&self) -> Option<&BenchModel> {
        self.model.as_ref()
    }

    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// Waits for the agent's next sync, stopping at `cap`.
    pub fn wait_sync(&mut self, cap: Duration) -> anyhow::Result<SyncOutcome> {
        let agent = self.agent.as_mut().context("no agent in mode none")?;
        self.syncs += 1;
        wait_for_sync(agent, self.syncs, cap)
    }

    /// Applies (or reverts) the one-service change and times the agent's sync of it.
    pub fn change_one_service(&mut self, changed: bool, cap: Duration) -> anyhow::Result<SyncOutcome> {
        self.model
            .as_ref()
            .context("no model in mode none")?
            .set_changed(changed)?;
        self.wait_sync(cap)
    }

    /// Where the client for `path`/`target` runs and what it dials.
    pub fn target(&self, path: TrafficPath, target: Target) -> (&NetNs, SocketAddr) {
        let service = match target {
            Target::First => 0,
            Target::Last => self.services.saturating_sub(1),
        };
        let client = &self.topo.pod("client").ns;
        match path {
            TrafficPath::Clusterip => (client, sock(model::cluster_ip(service), model::SERVICE_PORT)),
            TrafficPath::Nodeport => (&self.topo.external, sock(NODE_IP, model::node_port(service))),
            TrafficPath::Direct => (
                &self.topo.pod("bystander").ns,
                sock(model::BACKEND_A, model::TARGET_PORT),
            ),
        }
    }

    /// Empties the node's kernel conntrack table (as the baseline did before every
    /// traffic run), so no run inherits the last one's TIME_WAIT entries.
    pub fn flush_conntrack(&self) -> bool {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.topo.node.name()))
            .args(["--", "conntrack", "-F"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// How the agent set XDP up, in its own words: the mode of each XDP link and the
    /// redirect targets (the XDP variants are only what they claim if these agree).
    pub fn xdp_setup(&self) -> Option<String> {
        let log = self.agent.as_ref()?.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("xdp on ") || l.contains("xdp redirect targets"))
            .filter_map(|l| l.split_once("] ").map(|(_, message)| message))
            .collect();
        (!lines.is_empty()).then(|| lines.join("; "))
    }

    /// The agent's resident memory in MB.
    pub fn agent_rss_mb(&self) -> Option<f64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.agent_pid()?)).ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }
}

fn sock(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

impl Drop for BenchNode {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            if let Some(pid) = agent.pid() {
                kill_restore_children(pid);
            }
            agent.stop();
        }
        if self.mode.is_ebpf() {
            // Links, maps and the state record; the PinDir guard below removes what is left.
            let pin = self.pins.path().display().to_string();
            let _ = run_kproxy(&self.topo.node, &["cleanup", "--pin-path", &pin]);
        }
        let _ = kproxy::record::remove(self.pins.path());
        // The iptables rules die with the node namespace (dropped last).
    }
}

/// The last `(datapath X ms)` of the agent's `sync #n:` line, if it has logged it.
pub fn datapath_time(log: &str, n: usize) -> Option<Duration> {
    let needle = format!("sync #{n}:");
    let line = log.lines().find(|l| l.contains(&needle))?;
    let after = line.rsplit_once("(datapath ")?.1;
    let ms: f64 = after.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_secs_f64(ms / 1000.0))
}

/// `kproxy run` arguments for `mode` on a bench node (pod veths `kpv*`, external `kpe*`).
fn agent_args(
    mode: Mode,
    model_dir: &Path,
    config: &Path,
    pins: &Path,
    cgroup: &Path,
    once: bool,
) -> anyhow::Result<Vec<String>> {
    let Some((datapath, extra)) = mode.agent() else {
        bail!("mode none runs no agent");
    };
    let mut args = cluster::run_args(datapath, model_dir, config, pins, cgroup);
    args.extend(extra.iter().map(ToString::to_string));
    if once {
        args.push("--once".into());
    }
    Ok(args)
}

/// What the XDP variants change on the node before the agent starts, so that its own
/// policy picks the forwarding they measure.
fn external_forwarding(topo: &Topology, mode: Mode) {
    match mode {
        // A veth takes natively redirected frames only while its peer has NAPI.
        Mode::XdpRedirect => {
            for pod in &topo.pods {
                pod.ns.ethtool(&["-K", "eth0", "gro", "on"]);
            }
        }
        // Native XDP on a veth refuses a peer MTU above a page's worth of frame; the
        // frames themselves stay at the node side's 1500.
        Mode::XdpGeneric => topo.external.ip(&["link", "set", "eth0", "mtu", "4000"]),
        _ => {}
    }
}

/// Waits for `agent` to log `sync #n`, or a sync failure, or exit; at `cap`, kills the
/// iptables-restore still running under it and reports the cap as a lower bound.
pub fn wait_for_sync(agent: &mut Agent, n: usize, cap: Duration) -> anyhow::Result<SyncOutcome> {
    let started = Instant::now();
    let failures_before = agent.log().matches("sync failed").count();
    loop {
        signals::check()?;
        let log = agent.log();
        if let Some(took) = datapath_time(&log, n) {
            return Ok(SyncOutcome::Done(took));
        }
        if log.matches("sync failed").count() > failures_before {
            let line = log
                .lines()
                .rev()
                .find(|l| l.contains("sync failed"))
                .unwrap_or_default();
            return Ok(SyncOutcome::Failed(line.to_string()));
        }
        if agent.exited() {
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Ok(SyncOutcome::Failed(format!(
                "agent exited before sync #{n}: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )));
        }
        if started.elapsed() >= cap {
            if let Some(pid) = agent.pid() {
                kill_restore_children(pid);
            }
            return Ok(SyncOutcome::Capped(cap));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Kills (by pid) the iptables processes the agent `pid` started and still waits for.
fn kill_restore_children(pid: u32) {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for task in tasks.filter_map(Result::ok) {
        let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for child in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
            let comm = fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if comm.contains("iptables") || comm.contains("xtables") {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A full sync from empty state on a scratch node (a namespace with only the node's
/// address, fresh pins): `kproxy run --once` with the same model and mode.
pub fn scratch_full_sync(
    mode: Mode,
    model_dir: &Path,
    config: &Path,
    cap: Duration,
) -> anyhow::Result<SyncOutcome> {
    let ns = NetNs::new("scr");
    let link = unique_name(EXTERNAL_IFACE_PREFIX);
    // A veth with both ends inside (this kernel has no dummy links) carries the node's address.
    let peer = unique_name("kpx");
    ns.ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
    ns.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", &link]);
    ns.ip(&["link", "set", &link, "up"]);
    ns.ip(&["link", "set", &peer, "up"]);
    let pins = PinDir::new("scr");
    let cgroup = TestCgroup::new("scr");
    let args = agent_args(mode, model_dir, config, pins.path(), cgroup.path(), true)?;
    let mut agent = Agent::start_logging(&ns, &args, AGENT_LOG);
    let outcome = wait_for_sync(&mut agent, 1, cap);
    if let Some(pid) = agent.pid() {
        kill_restore_children(pid);
    }
    agent.stop();
    if mode.is_ebpf() {
        let pin = pins.path().display().to_string();
        let _ = run_kproxy(&ns, &["cleanup", "--pin-path", &pin]);
    }
    let _ = kproxy::record::remove(pins.path());
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datapath_time_comes_from_the_numbered_sync_line() {
        let log = "[INFO kproxy::agent] sync #1: 1 services, 1 ports, 2 endpoints; maps: 2 frontends; 12.5 ms (datapath 3.5 ms)\n\
                   [INFO kproxy::agent] sync #2: 1 services, 1 ports, 1 endpoints; maps: 2 frontends; 9.0 ms (datapath 0.25 ms)\n";
        assert_eq!(datapath_time(log, 1), Some(Duration::from_micros(3500)));
        assert_eq!(datapath_time(log, 2), Some(Duration::from_micros(250)));
        assert_eq!(datapath_time(log, 3), None);
    }
}
