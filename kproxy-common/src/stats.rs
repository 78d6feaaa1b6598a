//! Packet counters.

/// Packets and bytes seen by one program on one interface (value of the per-CPU
/// `KPROXY_IFACE_STATS_V1` map, keyed by ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), two u64 fields, no padding.
unsafe impl aya::Pod for IfaceCounters {}

const _: () = assert!(core::mem::size_of::<IfaceCounters>() == 16);

/// Index of the XDP program's counters in a [`CounterKey`].
pub const HOOK_XDP: u32 = 0;
/// Index of the TC ingress program's counters in a [`CounterKey`].
pub const HOOK_TC_INGRESS: u32 = 1;

/// Key of the per-interface counter map: which hook, on which interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CounterKey {
    pub ifindex: u32,
    pub hook: u32,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), two u32 fields, no padding.
unsafe impl aya::Pod for CounterKey {}

const _: () = assert!(core::mem::size_of::<CounterKey>() == 8);
