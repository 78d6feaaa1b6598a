//! The results: one record per figure (written to `results.json`), and the table with
//! the eBPF/iptables ratio beside each figure.

use std::{collections::BTreeSet, fmt::Write as _};

use serde::{Deserialize, Serialize};

use crate::stats::Summary;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    Clusterip,
    Nodeport,
    Direct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    First,
    Last,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ConnRate,
    LatencyP50Us,
    LatencyP99Us,
    ThroughputGbps,
    SyncFullS,
    SyncOneS,
    BpfNsPerPkt,
    RssMb,
    MapMb,
    /// The program's own time per run of one frame (BPF_PROG_TEST_RUN), by kind.
    TestRunTcpEstablishedNs,
    TestRunUdpEstablishedNs,
    TestRunTcpNewFlowNs,
    TestRunNotServiceNs,
}

impl Metric {
    pub fn unit(self) -> &'static str {
        match self {
            Metric::ConnRate => "conn/s",
            Metric::LatencyP50Us | Metric::LatencyP99Us => "us",
            Metric::ThroughputGbps => "Gbit/s",
            Metric::SyncFullS | Metric::SyncOneS => "s",
            Metric::BpfNsPerPkt
            | Metric::TestRunTcpEstablishedNs
            | Metric::TestRunUdpEstablishedNs
            | Metric::TestRunTcpNewFlowNs
            | Metric::TestRunNotServiceNs => "ns",
            Metric::RssMb | Metric::MapMb => "MB",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Metric::ConnRate => "conn/s",
            Metric::LatencyP50Us => "latency p50 µs",
            Metric::LatencyP99Us => "latency p99 µs",
            Metric::ThroughputGbps => "throughput Gbit/s",
            Metric::SyncFullS => "full sync s",
            Metric::SyncOneS => "1-service change s",
            Metric::BpfNsPerPkt => "BPF ns/packet",
            Metric::RssMb => "agent RSS MB",
            Metric::MapMb => "BPF map MB",
            Metric::TestRunTcpEstablishedNs => "test_run ns, TCP established",
            Metric::TestRunUdpEstablishedNs => "test_run ns, UDP established",
            Metric::TestRunTcpNewFlowNs => "test_run ns, TCP SYN (new flow)",
            Metric::TestRunNotServiceNs => "test_run ns, not for a service",
        }
    }
}

/// One figure: the median of `reps` repetitions, their range, and whether the
/// measurement hit its cap (then `value` is a lower bound).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub mode: String,
    pub services: usize,
    pub path: Option<Path>,
    pub target: Option<Target>,
    pub metric: Metric,
    pub value: f64,
    pub unit: String,
    pub reps: usize,
    pub min: f64,
    pub max: f64,
    #[serde(default)]
    pub lower_bound: bool,
}

impl Record {
    pub fn new(
        mode: &str,
        services: usize,
        at: Option<(Path, Target)>,
        metric: Metric,
        summary: Summary,
    ) -> Self {
        Record {
            mode: mode.to_string(),
            services,
            path: at.map(|a| a.0),
            target: at.map(|a| a.1),
            metric,
            value: summary.median,
            unit: metric.unit().to_string(),
            reps: summary.reps,
            min: summary.min,
            max: summary.max,
            lower_bound: false,
        }
    }

    pub fn capped(mut self) -> Self {
        self.lower_bound = true;
        self
    }
}

/// A number in a few significant digits.
fn short(value: f64) -> String {
    let a = value.abs();
    if a >= 100_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else if a >= 10_000.0 {
        format!("{:.1}k", value / 1000.0)
    } else if a >= 100.0 {
        format!("{value:.0}")
    } else if a >= 10.0 {
        format!("{value:.1}")
    } else if a >= 1.0 {
        format!("{value:.2}")
    } else if a == 0.0 {
        "0".into()
    } else {
        // Two significant digits for small times (a map update is well under a millisecond).
        let decimals = (1 - a.log10().floor() as i32).clamp(3, 7) as usize;
        format!("{value:.decimals$}")
    }
}

fn cell(record: &Record) -> String {
    if record.lower_bound {
        return format!(">{}", short(record.value));
    }
    if record.reps > 1 && record.max > record.min {
        format!(
            "{} [{}–{}]",
            short(record.value),
            short(record.min),
            short(record.max)
        )
    } else {
        short(record.value)
    }
}

/// eBPF ÷ iptables, with `<` when the iptables figure is a lower bound of a time.
fn ratio(ebpf: &Record, iptables: &Record) -> String {
    if iptables.value == 0.0 || ebpf.lower_bound {
        return "–".into();
    }
    let r = ebpf.value / iptables.value;
    let text = if r >= 100.0 {
        format!("{r:.0}")
    } else if r >= 0.1 {
        format!("{r:.2}")
    } else {
        format!("{r:.4}")
    };
    if iptables.lower_bound {
        format!("<{text}")
    } else {
        text
    }
}

/// The table for all records: per N, one row per (path, target, metric), one column per
/// mode, then eBPF/iptables ratios (for each eBPF mode against each iptables mode).
pub fn table(records: &[Record], modes: &[String]) -> String {
    let ebpf: Vec<&String> = modes.iter().filter(|m| *m == "tc" || *m == "xdp").collect();
    let iptables: Vec<&String> = modes.iter().filter(|m| m.starts_with("iptables")).collect();
    let mut ratio_columns = Vec::new();
    for e in &ebpf {
        for i in &iptables {
            ratio_columns.push((*e, *i));
        }
    }
    let mut out = String::new();
    let _ = write!(out, "| N | path | target | metric |");
    for m in modes {
        let _ = write!(out, " {m} |");
    }
    for (e, i) in &ratio_columns {
        let _ = write!(out, " {e}/{i} |");
    }
    out.push('\n');
    out.push_str(&"|---".repeat(4 + modes.len() + ratio_columns.len()));
    out.push_str("|\n");
    let rows: BTreeSet<(usize, Option<Path>, Option<Target>, Metric)> = records
        .iter()
        .map(|r| (r.services, r.path, r.target, r.metric))
        .collect();
    for (services, path, target, metric) in rows {
        let find = |mode: &str| {
            records.iter().find(|r| {
                r.mode == mode
                    && r.services == services
                    && r.path == path
                    && r.target == target
                    && r.metric == metric
            })
        };
        let name = |v: Option<String>| v.unwrap_or_else(|| "–".into());
        let _ = write!(
            out,
            "| {services} | {} | {} | {} |",
            name(path.map(|p| format!("{p:?}").to_lowercase())),
            name(target.map(|t| format!("{t:?}").to_lowercase())),
            metric.label()
        );
        for m in modes {
            let _ = write!(out, " {} |", find(m).map_or_else(String::new, cell));
        }
        for (e, i) in &ratio_columns {
            let text = match (find(e), find(i)) {
                (Some(e), Some(i)) => ratio(e, i),
                _ => String::new(),
            };
            let _ = write!(out, " {text} |");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(mode: &str, value: f64) -> Record {
        Record::new(
            mode,
            1000,
            Some((Path::Nodeport, Target::Last)),
            Metric::ConnRate,
            Summary {
                median: value,
                min: value * 0.9,
                max: value * 1.1,
                reps: 3,
            },
        )
    }

    #[test]
    fn json_record_has_the_documented_fields() {
        let json = serde_json::to_value(record("tc", 5000.0)).expect("json");
        assert_eq!(json["mode"], "tc");
        assert_eq!(json["services"], 1000);
        assert_eq!(json["path"], "nodeport");
        assert_eq!(json["target"], "last");
        assert_eq!(json["metric"], "conn_rate");
        assert_eq!(json["value"], 5000.0);
        assert_eq!(json["unit"], "conn/s");
        assert_eq!(json["reps"], 3);
        let sync = Record::new(
            "iptables",
            10,
            None,
            Metric::SyncOneS,
            Summary {
                median: 60.0,
                min: 60.0,
                max: 60.0,
                reps: 1,
            },
        )
        .capped();
        let json = serde_json::to_value(&sync).expect("json");
        assert_eq!(json["path"], serde_json::Value::Null);
        assert_eq!(json["metric"], "sync_one_s");
        assert_eq!(json["lower_bound"], true);
        let back: Record = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, sync);
    }

    #[test]
    fn table_puts_the_ratio_beside_each_figure() {
        let records = vec![record("iptables", 1000.0), record("tc", 5000.0)];
        let text = table(&records, &["iptables".into(), "tc".into()]);
        let row = text.lines().nth(2).expect("one data row");
        assert_eq!(
            row,
            "| 1000 | nodeport | last | conn/s | 1000 [900–1100] | 5000 [4500–5500] | 5.00 |"
        );
        let mut capped = record("iptables", 60.0).capped();
        capped.metric = Metric::SyncOneS;
        let mut fast = record("tc", 0.006);
        fast.metric = Metric::SyncOneS;
        let text = table(&[capped, fast], &["iptables".into(), "tc".into()]);
        assert!(text.contains("| >60.0 |"), "{text}");
        assert!(text.contains("<0.0001 |"), "{text}");
    }
}
