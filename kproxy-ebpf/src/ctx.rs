//! The packet-context abstraction the datapath is written against (as Cilium's `ctx`):
//! reading headers by direct packet access and rewriting fields with their checksums.
//!
//! TC rewrites through the kernel's checksum helpers, which also keep `skb->csum` and
//! `CHECKSUM_PARTIAL` packets right; XDP (no skb, no helpers) rewrites in place with
//! RFC 1624 incremental updates (`kproxy_common::csum`). Callers never keep packet
//! pointers across a rewrite: the helpers invalidate them.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};
use kproxy_common::csum;

use crate::hdr::IP_CSUM_OFF;

/// Where a flow's L4 checksum is and how it treats zero.
#[derive(Clone, Copy)]
pub struct L4Csum {
    /// Offset of the TCP/UDP checksum field from the start of the frame.
    pub off: usize,
    /// UDP: a zero checksum means "none" and must stay zero.
    pub udp: bool,
}

/// A rewrite failed (offset outside the packet or a helper error); the packet may be
/// half rewritten and must be dropped.
pub struct RewriteError;

/// What the datapath needs from a program context.
pub trait Packet {
    /// Address of the first byte of the frame (direct packet access).
    fn start(&self) -> usize;
    /// Address one past the last directly accessible byte.
    fn end(&self) -> usize;
    /// Length of the whole packet in bytes (for counters).
    fn packet_len(&self) -> u32;
    /// Makes the first `len` bytes directly accessible; false if the packet is shorter.
    fn pull(&self, len: usize) -> bool;
    /// Overwrites the IPv4 address at `off` (`old` → `new`, network order), fixing the
    /// IPv4 header checksum and the L4 checksum (the address is in its pseudo header).
    fn rewrite_addr(&self, off: usize, old: u32, new: u32, l4: L4Csum) -> Result<(), RewriteError>;
    /// Overwrites the IPv4 address at `off` (`old` → `new`, network order), fixing only
    /// the IPv4 header checksum: for a packet without an L4 header (a later fragment).
    fn rewrite_ip_addr(&self, off: usize, old: u32, new: u32) -> Result<(), RewriteError>;
    /// Overwrites the port at `off` (`old` → `new`, network order), fixing the L4 checksum.
    fn rewrite_port(&self, off: usize, old: u16, new: u16, l4: L4Csum) -> Result<(), RewriteError>;
}

/// A pointer to a `T` at `off`, if the whole `T` is inside the accessible packet.
#[inline(always)]
pub fn ptr_at<C: Packet, T>(ctx: &C, off: usize) -> Option<*mut T> {
    let start = ctx.start();
    if start + off + core::mem::size_of::<T>() > ctx.end() {
        return None;
    }
    Some((start + off) as *mut T)
}

/// Reads a `T` at `off` (unaligned), if inside the packet.
#[inline(always)]
pub fn read_at<C: Packet, T: Copy>(ctx: &C, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the bytes are inside the packet.
    ptr_at::<C, T>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

impl Packet for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }

    #[inline(always)]
    fn packet_len(&self) -> u32 {
        self.len()
    }

    #[inline(always)]
    fn pull(&self, len: usize) -> bool {
        if self.data() + len <= self.data_end() {
            return true;
        }
        // Headers in paged data: make them linear (fails if the packet is shorter).
        self.pull_data(len as u32).is_ok() && self.data() + len <= self.data_end()
    }

    #[inline(always)]
    fn rewrite_addr(&self, off: usize, old: u32, new: u32, l4: L4Csum) -> Result<(), RewriteError> {
        let mangled = if l4.udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        self.l4_csum_replace(
            l4.off,
            old as u64,
            new as u64,
            BPF_F_PSEUDO_HDR as u64 | mangled | 4,
        )
        .map_err(|_| RewriteError)?;
        self.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4)
            .map_err(|_| RewriteError)?;
        self.store(off, &new, 0).map_err(|_| RewriteError)
    }

    #[inline(always)]
    fn rewrite_ip_addr(&self, off: usize, old: u32, new: u32) -> Result<(), RewriteError> {
        self.l3_csum_replace(IP_CSUM_OFF, old as u64, new as u64, 4)
            .map_err(|_| RewriteError)?;
        self.store(off, &new, 0).map_err(|_| RewriteError)
    }

    #[inline(always)]
    fn rewrite_port(&self, off: usize, old: u16, new: u16, l4: L4Csum) -> Result<(), RewriteError> {
        let mangled = if l4.udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        self.l4_csum_replace(l4.off, old as u64, new as u64, mangled | 2)
            .map_err(|_| RewriteError)?;
        self.store(off, &new, 0).map_err(|_| RewriteError)
    }
}

impl Packet for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }

    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }

    #[inline(always)]
    fn packet_len(&self) -> u32 {
        (self.data_end() - self.data()) as u32
    }

    #[inline(always)]
    fn pull(&self, len: usize) -> bool {
        // XDP sees the (linear part of the) frame directly; nothing to pull.
        self.data() + len <= self.data_end()
    }

    #[inline(always)]
    fn rewrite_addr(&self, off: usize, old: u32, new: u32, l4: L4Csum) -> Result<(), RewriteError> {
        let field = ptr_at::<Self, u32>(self, off).ok_or(RewriteError)?;
        let ip_check = ptr_at::<Self, u16>(self, IP_CSUM_OFF).ok_or(RewriteError)?;
        let l4_check = ptr_at::<Self, u16>(self, l4.off).ok_or(RewriteError)?;
        // SAFETY: all three pointers were bounds-checked against data_end just above.
        unsafe {
            let c = l4_check.read_unaligned();
            let c = if l4.udp {
                csum::replace4_udp(c, old, new)
            } else {
                csum::replace4(c, old, new)
            };
            l4_check.write_unaligned(c);
            ip_check.write_unaligned(csum::replace4(ip_check.read_unaligned(), old, new));
            field.write_unaligned(new);
        }
        Ok(())
    }

    #[inline(always)]
    fn rewrite_ip_addr(&self, off: usize, old: u32, new: u32) -> Result<(), RewriteError> {
        let field = ptr_at::<Self, u32>(self, off).ok_or(RewriteError)?;
        let ip_check = ptr_at::<Self, u16>(self, IP_CSUM_OFF).ok_or(RewriteError)?;
        // SAFETY: both pointers were bounds-checked against data_end just above.
        unsafe {
            ip_check.write_unaligned(csum::replace4(ip_check.read_unaligned(), old, new));
            field.write_unaligned(new);
        }
        Ok(())
    }

    #[inline(always)]
    fn rewrite_port(&self, off: usize, old: u16, new: u16, l4: L4Csum) -> Result<(), RewriteError> {
        let field = ptr_at::<Self, u16>(self, off).ok_or(RewriteError)?;
        let l4_check = ptr_at::<Self, u16>(self, l4.off).ok_or(RewriteError)?;
        // SAFETY: both pointers were bounds-checked against data_end just above.
        unsafe {
            let c = l4_check.read_unaligned();
            let c = if l4.udp {
                csum::replace2_udp(c, old, new)
            } else {
                csum::replace2(c, old, new)
            };
            l4_check.write_unaligned(c);
            field.write_unaligned(new);
        }
        Ok(())
    }
}
