//! Applying and removing iptables state with the system's binaries, the way
//! kube-proxy does: one `iptables-restore --noflush` per sync for its own chains,
//! jump rules from the built-in chains ensured one by one (`-C`, then `-I … 1`).
//!
//! The flavour is chosen explicitly so nft and legacy can be compared side by side.

use std::{
    fmt::Write as _,
    io::Write as _,
    process::{Command, Stdio},
};

/// Which iptables implementation to drive.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// Whatever `iptables` is on this system (nft-backed on Debian).
    #[default]
    System,
    /// iptables-nft.
    Nft,
    /// iptables-legacy (x_tables).
    Legacy,
}

impl Flavor {
    fn binary(self, tool: &str) -> String {
        match self {
            Flavor::System => tool.to_string(),
            Flavor::Nft => tool.replacen("iptables", "iptables-nft", 1),
            Flavor::Legacy => tool.replacen("iptables", "iptables-legacy", 1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    #[error("run {command} (is the iptables package installed? `cargo xtask setup` installs it)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("set sysctl {path}: `write` failed")]
    Sysctl {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The sysctl that lets packets to 127.0.0.0/8 be DNATed and routed off the host
/// (kube-proxy's `sysctlRouteLocalnet`).
pub const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";

/// Sets `net.ipv4.conf.all.route_localnet=1` unless it is already 1, as kube-proxy's
/// iptables proxier does (`EnsureSysctl`) when localhost NodePorts are on; true if it
/// was changed. Like kube-proxy, nothing ever sets it back.
pub fn ensure_route_localnet() -> Result<bool, NetfilterError> {
    let sysctl = |source| NetfilterError::Sysctl {
        path: ROUTE_LOCALNET,
        source,
    };
    if std::fs::read_to_string(ROUTE_LOCALNET).map_err(sysctl)?.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(ROUTE_LOCALNET, "1").map_err(sysctl)?;
    Ok(true)
}

fn run(flavor: Flavor, tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetfilterError> {
    let binary = flavor.binary(tool);
    let command = format!("{binary} {}", args.join(" "));
    let mut child = Command::new(&binary)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetfilterError::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| NetfilterError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| NetfilterError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(NetfilterError::Failed { command, stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Loads `payload` with `iptables-restore --noflush` (chains it declares are flushed
/// and refilled; other chains are left alone), as kube-proxy does on every sync.
pub fn restore(flavor: Flavor, payload: &str) -> Result<(), NetfilterError> {
    run(flavor, "iptables-restore", &["--noflush"], Some(payload)).map(|_| ())
}

/// What `iptables-save` prints for `table`.
pub fn save(flavor: Flavor, table: &str) -> Result<String, NetfilterError> {
    run(flavor, "iptables-save", &["-t", table], None)
}

/// Inserts the rule `args` at the top of `chain` in `table` unless an identical rule
/// exists (kube-proxy's `-C` then `-I CHAIN 1` for its jumps from built-in chains).
pub fn ensure_rule(flavor: Flavor, table: &str, chain: &str, args: &[String]) -> Result<(), NetfilterError> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut check = vec!["-w", "-t", table, "-C", chain];
    check.extend_from_slice(&args);
    if run(flavor, "iptables", &check, None).is_ok() {
        return Ok(());
    }
    let mut insert = vec!["-w", "-t", table, "-I", chain, "1"];
    insert.extend_from_slice(&args);
    run(flavor, "iptables", &insert, None).map(|_| ())
}

/// Whether this flavor's binaries are installed.
pub fn available(flavor: Flavor) -> bool {
    run(flavor, "iptables", &["--version"], None).is_ok()
}

/// Chains whose names mark them as kube-proxy's (and so kproxy's in iptables mode).
fn is_kube_chain(name: &str) -> bool {
    name.starts_with("KUBE-")
}

/// The `iptables-restore --noflush` payload that removes every `KUBE-*` chain of one
/// `iptables-save -t TABLE` listing and every rule jumping to them from other chains.
pub fn cleanup_payload(table: &str, saved: &str) -> Option<String> {
    let chains: Vec<&str> = saved
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| is_kube_chain(c))
        .collect();
    if chains.is_empty() {
        return None;
    }
    let mut out = format!("*{table}\n");
    // Jumps from chains we keep (built-in or foreign) into ours: delete them one by one.
    for line in saved.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let chain = rule.split_whitespace().next().unwrap_or_default();
        let jumps_to_kube = rule
            .split(" -j ")
            .nth(1)
            .is_some_and(|t| is_kube_chain(t.split_whitespace().next().unwrap_or("")));
        if !is_kube_chain(chain) && jumps_to_kube {
            let _ = writeln!(out, "-D {rule}");
        }
    }
    // Declaring a chain flushes it, so the deletes below find them empty and unreferenced.
    for chain in &chains {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for chain in &chains {
        let _ = writeln!(out, "-X {chain}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// Removes every `KUBE-*` chain and the jumps into them from the filter and nat
/// tables; returns how many chains were removed.
pub fn cleanup(flavor: Flavor) -> Result<usize, NetfilterError> {
    let mut removed = 0;
    for table in ["filter", "nat"] {
        let saved = save(flavor, table)?;
        if let Some(payload) = cleanup_payload(table, &saved) {
            removed += payload.lines().filter(|l| l.starts_with("-X ")).count();
            restore(flavor, &payload)?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::cleanup_payload;

    #[test]
    fn cleanup_deletes_jumps_then_flushes_and_removes_kube_chains() {
        let saved = "\
# Generated by iptables-save v1.8.9
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-X - [0:0]
:OTHER - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A PREROUTING -j OTHER
-A KUBE-SERVICES -d 10.0.0.1/32 -j KUBE-SVC-X
-A OTHER -j KUBE-SVC-X
COMMIT
";
        let payload = cleanup_payload("nat", saved).expect("there are KUBE chains");
        assert_eq!(
            payload,
            "*nat
-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-D OTHER -j KUBE-SVC-X
:KUBE-SERVICES - [0:0]
:KUBE-SVC-X - [0:0]
-X KUBE-SERVICES
-X KUBE-SVC-X
COMMIT
"
        );
        assert_eq!(
            cleanup_payload("filter", "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"),
            None
        );
    }
}
