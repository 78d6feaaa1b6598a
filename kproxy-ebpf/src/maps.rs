//! Every map the programs use, in one place, each with its purpose.
//! Names carry a version suffix so a layout change never reuses an old pinned map.

use aya_ebpf::{macros::map, maps::PerCpuHashMap};
use kproxy_common::{CounterKey, IfaceCounters};

/// Packets and bytes per (interface, hook), per CPU: what each program has seen.
#[map(name = "KPROXY_IFACE_STATS_V1")]
pub static IFACE_STATS: PerCpuHashMap<CounterKey, IfaceCounters> = PerCpuHashMap::with_max_entries(1024, 0);
