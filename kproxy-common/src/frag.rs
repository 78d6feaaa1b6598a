//! IPv4 fragments: the ports of a datagram's first fragment (the only one carrying the
//! L4 header), kept for its later fragments so every fragment gets the same translation
//! (as Cilium's `ipv4_handle_fragmentation`).
//!
//! Addresses and ports are in network byte order ([`crate::byteorder`]).

/// A fragmented datagram as its fragments arrive (key of `KPROXY_FRAGS_V1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address (network order).
    pub saddr: u32,
    /// Destination address (network order).
    pub daddr: u32,
    /// IPv4 identification (network order).
    pub id: u16,
    /// IP protocol (TCP or UDP).
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<FragKey>() == 12);

/// The L4 ports of the first fragment (value of `KPROXY_FRAGS_V1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragPorts {
    /// Source port (network order).
    pub sport: u16,
    /// Destination port (network order).
    pub dport: u16,
}
const _: () = assert!(size_of::<FragPorts>() == 4);

// SAFETY: repr(C), integer fields only, padding spelled out as fields, sizes asserted above.
unsafe_impl_pod!(FragKey, FragPorts);
