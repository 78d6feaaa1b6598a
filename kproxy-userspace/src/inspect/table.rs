//! `-o table`: the reports for people, aligned in columns.

use std::fmt::Write as _;

use crate::{ebpf::Drift, record::Mode};

use super::{
    conntrack::FlowReport,
    explain::Explanation,
    report::{Counters, Report, ServiceReport},
};

/// Left-aligns `rows` into columns two spaces apart, each line prefixed by `indent`.
fn columns(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..width)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = indent.to_string();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn counter_cells(c: &Counters) -> [String; 3] {
    [
        c.packets.to_string(),
        c.bytes.to_string(),
        c.new_flows.to_string(),
    ]
}

fn service(out: &mut String, svc: &ServiceReport, maps: bool) {
    let _ = writeln!(out, "\n{} ({})", svc.service, svc.protocol);
    let chains = &svc.chains;
    let named: Vec<&str> = [&chains.cluster, &chains.local, &chains.external, &chains.firewall]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    let _ = writeln!(
        out,
        "  iptables chains: {}",
        if named.is_empty() {
            "(none: no endpoints)".to_string()
        } else {
            named.join("  ")
        }
    );
    for sep in &chains.endpoints {
        let _ = writeln!(out, "    {}  {}", sep.chain, sep.endpoint);
    }
    let _ = writeln!(out, "  iptables rules:");
    for rule in &svc.rules {
        let _ = writeln!(out, "    {rule}");
    }
    if !maps {
        let _ = writeln!(out, "  BPF maps: none (the agent runs in iptables mode)");
        return;
    }
    let _ = writeln!(out, "  BPF maps:");
    let mut rows = vec![
        [
            "frontend", "kind", "id", "slots", "iptables", "packets", "bytes", "flows", "live",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for f in &svc.frontends {
        let target = f.iptables_target.clone().unwrap_or_else(|| "-".into());
        let mut row = vec![f.frontend.clone(), f.kind.to_string()];
        match &f.map {
            Some(m) => {
                row.extend([m.service_id.to_string(), m.slot_count.to_string(), target]);
                row.extend(counter_cells(&m.counters));
                row.push(m.conntrack_flows.to_string());
            }
            None => row.extend(["MISSING".to_string(), "-".into(), target]),
        }
        rows.push(row);
    }
    columns(out, "    ", &rows);
    for f in &svc.frontends {
        let Some(m) = &f.map else {
            let _ = writeln!(
                out,
                "    {}: not in the maps (expected backends: {})",
                f.frontend,
                f.expected_backends.join(", ")
            );
            continue;
        };
        let rev = m.rev_nat.as_deref().unwrap_or("MISSING");
        let _ = writeln!(out, "    {}  rev-nat {rev}", f.frontend);
        if m.backends.is_empty() {
            let _ = writeln!(out, "      no backends: packets are dropped (kube-proxy: REJECT)");
            continue;
        }
        let mut rows = vec![
            [
                "slot", "backend", "address", "iptables", "packets", "bytes", "flows",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for b in &m.backends {
            let mut row = vec![
                b.slot.to_string(),
                b.backend_id.to_string(),
                b.address.clone().unwrap_or_else(|| "MISSING".into()),
                b.chain.clone().unwrap_or_else(|| "-".into()),
            ];
            row.extend(counter_cells(&b.counters));
            rows.push(row);
        }
        columns(out, "      ", &rows);
    }
    let c = &svc.counters;
    let _ = writeln!(
        out,
        "  total: {} packets, {} bytes, {} flows created, {} live, {} dropped without backend, \
         {} rejected (ICMP), {} denied by source range",
        c.packets,
        c.bytes,
        c.new_flows,
        svc.conntrack_flows,
        c.no_backend_drops,
        c.rejects,
        c.source_range_drops
    );
}

/// `kproxy inspect`.
pub fn report(report: &Report) -> String {
    let mut out = String::new();
    let agent = &report.agent;
    let _ = writeln!(
        out,
        "pins {} ({} mode, node {}, sync #{})",
        report.pin_path, agent.mode, agent.node_name, agent.sync
    );
    let _ = writeln!(
        out,
        "node addresses (NodePorts): {}   masquerade (hairpin) source: {}",
        if agent.node_addresses.is_empty() {
            "-".to_string()
        } else {
            agent.node_addresses.join(", ")
        },
        agent.masquerade_address.as_deref().unwrap_or("-")
    );
    let maps = agent.mode != Mode::Iptables;
    for svc in &report.services {
        service(&mut out, svc, maps);
    }
    if !report.unsupported.is_empty() {
        let _ = writeln!(out, "\nnot handled by the eBPF datapath:");
        for line in &report.unsupported {
            let _ = writeln!(out, "  {line}");
        }
    }
    out.push_str("\nbackend counters count every frontend using the endpoint.\n");
    out
}

/// `kproxy inspect conntrack`.
pub fn flows(flows: &[FlowReport]) -> String {
    let mut rows = vec![
        [
            "proto",
            "client",
            "frontend",
            "backend",
            "state",
            "age",
            "idle",
            "service",
            "backend chain",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for f in flows {
        let backend = match &f.masquerade {
            Some(m) => format!("{} (from {m})", f.backend),
            None => f.backend.clone(),
        };
        rows.push(vec![
            f.protocol.clone(),
            f.client.clone(),
            f.frontend.clone(),
            backend,
            f.state.to_string(),
            format!("{:.1}s", f.age_s),
            format!("{:.1}s", f.idle_s),
            f.service.clone().unwrap_or_else(|| "-".into()),
            f.backend_chain.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut out = String::new();
    columns(&mut out, "", &rows);
    let _ = writeln!(out, "{} flows", flows.len());
    out
}

/// `kproxy inspect --verify`.
pub fn drift(drift: &[Drift]) -> String {
    if drift.is_empty() {
        return "maps match the recorded model: no drift\n".into();
    }
    let mut rows = Vec::new();
    for d in drift {
        rows.push(vec![d.kind().to_string(), d.map().to_string(), d.to_string()]);
    }
    let mut out = String::new();
    columns(&mut out, "", &rows);
    let _ = writeln!(out, "{} differences", drift.len());
    out
}

/// `kproxy explain`.
pub fn explanation(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "packet {} (new flow){}",
        e.packet,
        e.service
            .as_ref()
            .map(|s| format!(", service {s}"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "\niptables (kube-proxy's rules for the recorded model):");
    for line in &e.iptables.trace {
        let _ = writeln!(out, "  {line}");
    }
    for c in &e.iptables.choices {
        let _ = writeln!(
            out,
            "  -> {} via {} ({:.1}%){}",
            c.backend,
            c.chain,
            c.probability * 100.0,
            if c.masquerade { ", masqueraded" } else { "" }
        );
    }
    let _ = writeln!(out, "  verdict: {}", e.iptables.verdict);
    match &e.bpf {
        Some(bpf) => {
            let _ = writeln!(out, "\nBPF (the live maps):");
            for line in &bpf.trace {
                let _ = writeln!(out, "  {line}");
            }
            let _ = writeln!(out, "  verdict: {}", bpf.verdict);
        }
        None => {
            let _ = writeln!(out, "\nBPF: no maps (the agent runs in iptables mode)");
        }
    }
    match e.agree {
        Some(true) => out.push_str("\nboth views agree\n"),
        Some(false) => out.push_str("\nthe views DIFFER\n"),
        None => {}
    }
    out
}
