//! Incremental Internet checksum updates (RFC 1624), for hooks without checksum helpers
//! (XDP) and for checking the helpers' results in tests.
//!
//! All values are the packet's bytes read in native order (`u16::from_ne_bytes`): the
//! one's-complement sum is byte-order independent as long as every word is read the same
//! way, so no swapping is needed.

#[inline(always)]
const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum of data whose words sum (one's complement, not yet folded) to `sum`,
/// such as `bpf_csum_diff`'s result.
#[inline(always)]
pub const fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// The Internet checksum of `words` (a header with its checksum field zero).
#[inline(always)]
pub fn checksum(words: &[u16]) -> u16 {
    let mut sum = 0u32;
    for w in words {
        sum += *w as u32;
    }
    finish(sum)
}

/// The checksum `check` after one 16-bit word changed from `old` to `new`
/// (RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')`).
#[inline(always)]
pub const fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold(!check as u32 + !old as u32 + new as u32)
}

/// The checksum `check` after a 32-bit field changed from `old` to `new`.
#[inline(always)]
pub const fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = !check as u32
        + !(old as u16) as u32
        + !((old >> 16) as u16) as u32
        + (new as u16) as u32
        + ((new >> 16) as u16) as u32;
    !fold(sum)
}

/// Like [`replace4`] for a UDP checksum: 0 means "no checksum" and stays 0, and a result
/// of 0 is sent as 0xffff (RFC 768), as the kernel's `BPF_F_MARK_MANGLED_0` does.
#[inline(always)]
pub const fn replace4_udp(check: u16, old: u32, new: u32) -> u16 {
    if check == 0 {
        return 0;
    }
    let c = replace4(check, old, new);
    if c == 0 { 0xffff } else { c }
}

/// Like [`replace2`] for a UDP checksum (see [`replace4_udp`]).
#[inline(always)]
pub const fn replace2_udp(check: u16, old: u16, new: u16) -> u16 {
    if check == 0 {
        return 0;
    }
    let c = replace2(check, old, new);
    if c == 0 { 0xffff } else { c }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Full Internet checksum of `bytes` (even length), as a native-order word.
    fn full(bytes: &[u8]) -> u16 {
        let mut sum = 0u32;
        for w in bytes.chunks(2) {
            sum += u16::from_ne_bytes([w[0], w[1]]) as u32;
        }
        !fold(sum)
    }

    fn header(dst: [u8; 4], port: [u8; 2]) -> [u8; 26] {
        let mut h = [
            0x45, 0, 0, 28, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xab,
            0xcd,
        ];
        h[16..20].copy_from_slice(&dst);
        h[20..22].copy_from_slice(&port);
        h
    }

    #[test]
    fn incremental_matches_full_recompute() {
        type Case = ([u8; 4], [u8; 4], [u8; 2], [u8; 2]);
        let cases: [Case; 4] = [
            ([10, 96, 0, 10], [10, 244, 1, 7], [0, 80], [0x1f, 0x90]),
            ([255, 255, 255, 255], [0, 0, 0, 0], [0xff, 0xff], [0, 0]),
            ([0, 0, 0, 0], [255, 255, 0, 1], [0, 0], [0xff, 0xfe]),
            ([192, 168, 1, 1], [192, 168, 1, 1], [1, 2], [1, 2]),
        ];
        for (old_ip, new_ip, old_port, new_port) in cases {
            let mut before = header(old_ip, old_port);
            let c = full(&before);
            before[10..12].copy_from_slice(&c.to_ne_bytes());
            let mut after = header(new_ip, new_port);
            after[10..12].copy_from_slice(&[0, 0]);
            let expected = full(&after);
            let step = replace4(c, u32::from_ne_bytes(old_ip), u32::from_ne_bytes(new_ip));
            let step = replace2(step, u16::from_ne_bytes(old_port), u16::from_ne_bytes(new_port));
            // 0x0000 and 0xffff are the same one's-complement value.
            assert!(
                step == expected || (step ^ expected) == 0xffff && (step == 0 || step == 0xffff),
                "{old_ip:?}->{new_ip:?}: {step:#x} != {expected:#x}"
            );
            after[10..12].copy_from_slice(&step.to_ne_bytes());
            assert!(full(&after) == 0 || full(&after) == 0xffff);
        }
    }

    #[test]
    fn udp_zero_stays_zero_and_zero_result_is_mangled() {
        assert_eq!(replace4_udp(0, 1, 2), 0);
        assert_eq!(replace2_udp(0, 1, 2), 0);
        // Pick a check whose update lands on 0: ~(~c + ~old + new) == 0.
        let c = replace4(0xffff, 0, 0);
        assert_eq!(replace4_udp(0xffff, 0, 0), if c == 0 { 0xffff } else { c });
    }
}
