//! kube-proxy's conntrack setup at startup, in every mode: the kernel's conntrack table
//! sized and its TCP and UDP timeouts set from the configuration's `conntrack` section,
//! so flows through the node (translated by kproxy or not) live as long as under
//! kube-proxy. The timeouts are per network namespace; the table size is global, so it
//! is only ever raised, as kube-proxy does.

use std::{fs, io, time::Duration};

use log::{info, warn};

use crate::config::ConntrackConfig;

const NETFILTER: &str = "/proc/sys/net/netfilter";
const HASHSIZE: &str = "/sys/module/nf_conntrack/parameters/hashsize";

#[derive(Debug, thiserror::Error)]
pub enum ConntrackSetupError {
    #[error("read {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("write {value} to {path}")]
    Write {
        path: String,
        value: u64,
        #[source]
        source: io::Error,
    },
}

/// Applies `config` (each failure is logged; the agent serves on with the kernel's
/// values, as they only shape flows kproxy does not track itself).
pub fn apply(config: &ConntrackConfig) {
    let mut results = Vec::new();
    if let Some(max) = config.max_flows(cpus()) {
        results.push(raise(&format!("{NETFILTER}/nf_conntrack_max"), u64::from(max)));
        // kube-proxy keeps the hash table at a quarter of the table (buckets of four).
        results.push(raise(HASHSIZE, u64::from(max / 4)));
    }
    let timeouts = [
        (
            "nf_conntrack_tcp_timeout_established",
            config.tcp_established_timeout,
        ),
        (
            "nf_conntrack_tcp_timeout_close_wait",
            config.tcp_close_wait_timeout,
        ),
        ("nf_conntrack_udp_timeout", config.udp_timeout),
        ("nf_conntrack_udp_timeout_stream", config.udp_stream_timeout),
    ];
    for (name, timeout) in timeouts.iter().filter(|(_, t)| !t.is_zero()) {
        results.push(set(&format!("{NETFILTER}/{name}"), seconds(*timeout)));
    }
    if config.tcp_be_liberal {
        results.push(set(&format!("{NETFILTER}/nf_conntrack_tcp_be_liberal"), 1));
    }
    for err in results.into_iter().filter_map(Result::err) {
        warn!("conntrack setup: {}", crate::error_chain(&err));
    }
}

/// The CPUs this agent may run on (kube-proxy's `runtime.NumCPU`).
pub(super) fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
}

fn seconds(d: Duration) -> u64 {
    d.as_secs().max(1)
}

fn read(path: &str) -> Result<u64, ConntrackSetupError> {
    let read_err = |source| ConntrackSetupError::Read {
        path: path.into(),
        source,
    };
    let text = fs::read_to_string(path).map_err(read_err)?;
    text.trim()
        .parse()
        .map_err(|e| read_err(io::Error::new(io::ErrorKind::InvalidData, e)))
}

fn write(path: &str, value: u64) -> Result<(), ConntrackSetupError> {
    fs::write(path, value.to_string()).map_err(|source| ConntrackSetupError::Write {
        path: path.into(),
        value,
        source,
    })?;
    info!("conntrack: set {path} = {value}");
    Ok(())
}

/// Sets `path` to `value` unless it holds that already.
fn set(path: &str, value: u64) -> Result<(), ConntrackSetupError> {
    if read(path)? == value {
        return Ok(());
    }
    write(path, value)
}

/// Raises `path` to `value` if it holds less (never lowers a global setting).
fn raise(path: &str, value: u64) -> Result<(), ConntrackSetupError> {
    if read(path)? >= value {
        return Ok(());
    }
    write(path, value)
}
