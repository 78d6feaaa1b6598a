//! Socket-level load balancing (the cgroup `connect4`/`sendmsg4`/`recvmsg4`/
//! `getpeername4` programs): the reverse translation a socket's replies and
//! `getpeername` get, keyed by the socket and the backend it was sent to.
//!
//! Addresses and ports are in network byte order ([`crate::byteorder`]).

/// A socket and the backend its connect/sendmsg was translated to (key of
/// `KPROXY_SOCK_REVNAT_V1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockRevNatKey {
    /// `bpf_get_socket_cookie` of the socket.
    pub cookie: u64,
    /// Backend address (network order).
    pub addr: u32,
    /// Backend port (network order).
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<SockRevNatKey>() == 16);

/// The frontend the socket dialled (value of `KPROXY_SOCK_REVNAT_V1`): what recvmsg and
/// getpeername show instead of the backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRevNat {
    /// Frontend address the socket dialled (network order; for a NodePort, the node
    /// address or 127.0.0.1 it used).
    pub addr: u32,
    /// Frontend port (network order).
    pub port: u16,
    pub _pad: u16,
    /// The frontend's reverse-NAT id.
    pub rev_nat_id: u32,
}
const _: () = assert!(size_of::<SockRevNat>() == 12);

// SAFETY: repr(C), integer fields only, padding spelled out as fields, sizes asserted above.
unsafe_impl_pod!(SockRevNatKey, SockRevNat);
