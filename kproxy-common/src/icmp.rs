//! The ICMP port unreachable a frontend without endpoints answers with (kube-proxy's
//! REJECT), the ICMP error types whose quote is translated with their flow, and the
//! token bucket that limits how many the datapath sends.

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// ICMP type destination unreachable.
pub const ICMP_DEST_UNREACH: u8 = 3;
/// ICMP type time exceeded.
pub const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMP code port unreachable (`iptables -j REJECT`'s default).
pub const ICMP_PORT_UNREACH: u8 = 3;
/// ICMP code fragmentation needed and DF set (PMTU discovery, RFC 1191).
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// TTL of the replies (Linux's default `ip_default_ttl`).
pub const REPLY_TTL: u8 = 64;
/// TOS of the replies: precedence "internetwork control", as Linux's `icmp_send` marks
/// its errors.
pub const REPLY_TOS: u8 = 0xc0;

/// Replies per second each CPU may send (Linux's `net.ipv4.icmp_msgs_per_sec`, which
/// limits the ICMP errors kube-proxy's REJECT makes the kernel send).
pub const REJECT_RATE_PER_SEC: u64 = 1000;
/// Replies a CPU may send at once after a quiet spell (`net.ipv4.icmp_msgs_burst`).
pub const REJECT_BURST: u64 = 50;
/// What one reply costs, in nanoseconds of refill.
pub const REJECT_COST_NS: u64 = 1_000_000_000 / REJECT_RATE_PER_SEC;

/// One CPU's token bucket for replies (the single entry of the per-CPU
/// `KPROXY_REJECT_RATE_V1`); tokens are counted in nanoseconds of refill time, so
/// refilling is an addition, never a division.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateBucket {
    /// Credit in ns, at most `REJECT_BURST * REJECT_COST_NS`.
    pub credit_ns: u64,
    /// When the credit was last topped up (`bpf_ktime_get_ns`); 0 = never (full bucket).
    pub last_ns: u64,
}
const _: () = assert!(size_of::<RateBucket>() == 16);

impl RateBucket {
    /// Takes one reply's credit at `now`, topping up first; false when it is spent.
    #[inline(always)]
    pub fn take(&mut self, now: u64) -> bool {
        let cap = REJECT_BURST * REJECT_COST_NS;
        let refill = now.saturating_sub(self.last_ns);
        self.credit_ns = if refill >= cap {
            cap
        } else {
            (self.credit_ns + refill).min(cap)
        };
        self.last_ns = now;
        if self.credit_ns < REJECT_COST_NS {
            return false;
        }
        self.credit_ns -= REJECT_COST_NS;
        true
    }
}

// SAFETY: repr(C), u64 fields only, no padding, size asserted above.
unsafe_impl_pod!(RateBucket);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_bucket_allows_a_burst_then_the_rate() {
        let mut b = RateBucket::default();
        let t0 = 5_000_000_000;
        assert_eq!(
            (0..REJECT_BURST + 10).filter(|_| b.take(t0)).count() as u64,
            REJECT_BURST
        );
        assert!(!b.take(t0 + REJECT_COST_NS - 1));
        assert!(b.take(t0 + REJECT_COST_NS));
        assert!(!b.take(t0 + REJECT_COST_NS));
    }

    #[test]
    fn a_last_time_in_the_future_refills_nothing() {
        let mut b = RateBucket {
            credit_ns: 0,
            last_ns: u64::MAX,
        };
        assert!(!b.take(1_000_000_000));
    }
}
