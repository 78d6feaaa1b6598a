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
    /// `iptables-save` → `iptables-nft-save`, `ip6tables` → `ip6tables-legacy`, …
    fn binary(self, tool: &str) -> String {
        let suffix = match self {
            Flavor::System => return tool.to_string(),
            Flavor::Nft => "-nft",
            Flavor::Legacy => "-legacy",
        };
        match tool.split_once('-') {
            Some((base, rest)) => format!("{base}{suffix}-{rest}"),
            None => format!("{tool}{suffix}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    #[error("run {command} (is its package installed? `cargo xtask setup` installs iptables and nftables)")]
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
    run_binary(&flavor.binary(tool), args, stdin)
}

fn run_binary(binary: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetfilterError> {
    let command = format!("{binary} {}", args.join(" "));
    let mut child = Command::new(binary)
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
    removal_payload(table, saved, is_kube_chain)
}

/// The payload removing the chains of `saved` that `owned` names, and every rule of the
/// other chains that jumps to one of them (or the chain could not be deleted).
fn removal_payload(table: &str, saved: &str, owned: impl Fn(&str) -> bool) -> Option<String> {
    let chains: Vec<&str> = saved
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| owned(c))
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
            .is_some_and(|t| owned(t.split_whitespace().next().unwrap_or("")));
        if !owned(chain) && jumps_to_kube {
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

/// The chains `kube-proxy --cleanup` removes (its `CleanupLeftovers`), by table. Not
/// KUBE-FIREWALL, KUBE-MARK-DROP nor KUBE-KUBELET-CANARY: kubelet owns those.
const KUBE_PROXY_CHAINS: &[(&str, &[&str])] = &[
    (
        "nat",
        &[
            "KUBE-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
            "KUBE-PROXY-CANARY",
        ],
    ),
    (
        "filter",
        &[
            "KUBE-SERVICES",
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-FORWARD",
            "KUBE-NODEPORTS",
            "KUBE-PROXY-FIREWALL",
            "KUBE-PROXY-CANARY",
        ],
    ),
    ("mangle", &["KUBE-PROXY-CANARY"]),
];

/// kube-proxy's per-service chains (nat): cluster and local policy, endpoint, firewall,
/// external, and the pre-1.26 `KUBE-XLB-`.
const KUBE_PROXY_SERVICE_CHAIN_PREFIXES: &[&str] = &[
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-SEP-",
    "KUBE-FW-",
    "KUBE-EXT-",
    "KUBE-XLB-",
];

/// The table kube-proxy's nftables mode keeps its state in, in families `ip` and `ip6`.
const KUBE_PROXY_NFT_TABLE: &str = "kube-proxy";

fn is_kube_proxy_chain(table: &str, chain: &str) -> bool {
    let named = KUBE_PROXY_CHAINS
        .iter()
        .any(|(t, chains)| *t == table && chains.contains(&chain));
    named
        || (table == "nat"
            && KUBE_PROXY_SERVICE_CHAIN_PREFIXES
                .iter()
                .any(|p| chain.starts_with(p)))
}

/// The payload removing kube-proxy's chains from one `iptables-save -t TABLE` listing,
/// with every rule of other chains jumping to them (kube-proxy's commented jumps from
/// the built-in chains, and any other: a referenced chain cannot be deleted).
pub fn kube_proxy_cleanup_payload(table: &str, saved: &str) -> Option<String> {
    removal_payload(table, saved, |chain| is_kube_proxy_chain(table, chain))
}

/// What [`cleanup_kube_proxy`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KubeProxyLeftovers {
    /// iptables chains, over both IP families.
    pub chains: usize,
    /// The IP families whose iptables could not be read (no kernel support), skipped.
    pub skipped_families: Vec<&'static str>,
}

/// Removes the iptables state an iptables-mode kube-proxy left (`kube-proxy --cleanup`):
/// its jumps from the built-in chains, its chains in nat, filter and mangle, for IPv4
/// and IPv6. kubelet's chains and every other chain stay.
pub fn cleanup_kube_proxy(flavor: Flavor) -> Result<KubeProxyLeftovers, NetfilterError> {
    let mut done = KubeProxyLeftovers::default();
    for (family, prefix) in [("IPv4", "iptables"), ("IPv6", "ip6tables")] {
        let save_tool = format!("{prefix}-save");
        let restore_tool = format!("{prefix}-restore");
        for (i, (table, _)) in KUBE_PROXY_CHAINS.iter().enumerate() {
            let saved = match run(flavor, &save_tool, &["-t", table], None) {
                Ok(saved) => saved,
                // As kube-proxy's best-effort family detection: a family whose first
                // table cannot be read is not there (e.g. no ip6_tables).
                Err(_) if i == 0 => {
                    done.skipped_families.push(family);
                    break;
                }
                Err(e) => return Err(e),
            };
            if let Some(payload) = kube_proxy_cleanup_payload(table, &saved) {
                done.chains += payload.lines().filter(|l| l.starts_with("-X ")).count();
                run(flavor, &restore_tool, &["--noflush"], Some(&payload))?;
            }
        }
    }
    Ok(done)
}

/// Whether the `nft` binary is installed.
pub fn nft_available() -> bool {
    run_binary("nft", &["--version"], None).is_ok()
}

/// Deletes kube-proxy's nftables-mode tables (`ip kube-proxy`, `ip6 kube-proxy`), as
/// its `--cleanup` does; returns the ones that existed. Other tables stay.
pub fn cleanup_kube_proxy_nft() -> Result<Vec<String>, NetfilterError> {
    let listed = run_binary("nft", &["list", "tables"], None)?;
    let mut deleted = Vec::new();
    for family in ["ip", "ip6"] {
        let present = listed.lines().any(|line| {
            line.split_whitespace()
                .eq(["table", family, KUBE_PROXY_NFT_TABLE])
        });
        if present {
            run_binary("nft", &["delete", "table", family, KUBE_PROXY_NFT_TABLE], None)?;
            deleted.push(format!("{family} {KUBE_PROXY_NFT_TABLE}"));
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::{Flavor, cleanup_payload, kube_proxy_cleanup_payload};

    #[test]
    fn flavors_name_both_families_binaries() {
        assert_eq!(Flavor::Nft.binary("iptables-restore"), "iptables-nft-restore");
        assert_eq!(Flavor::Legacy.binary("ip6tables-save"), "ip6tables-legacy-save");
        assert_eq!(Flavor::Nft.binary("ip6tables"), "ip6tables-nft");
        assert_eq!(Flavor::System.binary("ip6tables-save"), "ip6tables-save");
    }

    #[test]
    fn kube_proxy_cleanup_keeps_kubelet_and_foreign_chains() {
        let saved = "\
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-MARK-DROP - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:KUBE-SVC-ABC - [0:0]
:KUBE-SEP-DEF - [0:0]
:CNI-HOSTPORT - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A PREROUTING -j CNI-HOSTPORT
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000
-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-ABC
-A KUBE-SVC-ABC -j KUBE-SEP-DEF
COMMIT
";
        let payload = kube_proxy_cleanup_payload("nat", saved).expect("kube-proxy chains");
        assert_eq!(
            payload,
            "*nat
-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-D POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-ABC - [0:0]
:KUBE-SEP-DEF - [0:0]
-X KUBE-SERVICES
-X KUBE-POSTROUTING
-X KUBE-MARK-MASQ
-X KUBE-SVC-ABC
-X KUBE-SEP-DEF
COMMIT
"
        );
        // kubelet's KUBE-FIREWALL is not kube-proxy's to remove.
        let filter =
            "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n";
        assert_eq!(kube_proxy_cleanup_payload("filter", filter), None);
    }

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
