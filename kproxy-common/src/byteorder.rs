//! Byte order of the maps' addresses and ports.
//!
//! They are stored in network byte order: the packet's bytes read as a native integer
//! (`u32::from_ne_bytes(octets)`, `u16::from_ne_bytes(bytes)`), so the datapath compares
//! and copies them without swapping. These helpers convert.

/// Converts an address to the maps' network-order representation.
#[inline(always)]
pub const fn be_addr(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// The octets of a network-order address from the maps.
#[inline(always)]
pub const fn addr_octets(addr: u32) -> [u8; 4] {
    addr.to_ne_bytes()
}

/// Converts a host-order port to the maps' network order.
#[inline(always)]
pub const fn be_port(port: u16) -> u16 {
    port.to_be()
}

/// Converts a network-order port from the maps to host order.
#[inline(always)]
pub const fn host_port(port: u16) -> u16 {
    u16::from_be(port)
}
