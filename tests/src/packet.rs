//! Building test packets (with correct checksums, by etherparse) and checking the
//! checksums of packets a program rewrote, with an independent one's-complement sum.

use std::net::SocketAddrV4;

use etherparse::{
    Icmpv4Type, IpDscp, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, PacketBuilder,
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
};

const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// An Ethernet + IPv4 + UDP frame from `src` to `dst` carrying `payload`.
pub fn udp4(src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src.0, dst.0, 64)
        .udp(src.1, dst.1);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).expect("write UDP frame");
    frame
}

/// [`udp4`] with socket addresses.
pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    udp4(
        (src.ip().octets(), src.port()),
        (dst.ip().octets(), dst.port()),
        payload,
    )
}

/// TCP flags of a test segment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tcp {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

pub const SYN: Tcp = Tcp {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
};
pub const SYN_ACK: Tcp = Tcp {
    syn: true,
    ack: true,
    fin: false,
    rst: false,
};
pub const ACK: Tcp = Tcp {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
};
pub const FIN_ACK: Tcp = Tcp {
    syn: false,
    ack: true,
    fin: true,
    rst: false,
};

/// An Ethernet + IPv4 + TCP frame from `src` to `dst` with `flags` and `payload`
/// (fixed sequence numbers and window, so two frames differ only where asked).
pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: Tcp, payload: &[u8]) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .tcp(src.port(), dst.port(), 1000, 64240);
    if flags.syn {
        b = b.syn();
    }
    if flags.ack {
        b = b.ack(2000);
    }
    if flags.fin {
        b = b.fin();
    }
    if flags.rst {
        b = b.rst();
    }
    let mut frame = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut frame, payload).expect("write TCP frame");
    frame
}

/// The ICMP port unreachable that answers `frame` (Ethernet + IPv4 without options +
/// TCP/UDP), as the datapath builds it: MACs swapped, from the address `frame` was sent
/// to back to its source, TTL 64, TOS 0xc0, DF, quoting the IPv4 header and the first
/// `l4_quote` bytes of the transport header.
pub fn port_unreachable(frame: &[u8], l4_quote: usize) -> Vec<u8> {
    let (src, dst): ([u8; 4], [u8; 4]) = (
        frame[30..34].try_into().expect("IPv4 destination"),
        frame[26..30].try_into().expect("IPv4 source"),
    );
    let mut ip = Ipv4Header::new(0, 64, IpNumber::ICMP, src, dst).expect("IPv4 header");
    ip.dscp = IpDscp::try_new(0xc0 >> 2).expect("DSCP");
    let b = PacketBuilder::ethernet2(
        frame[..6].try_into().expect("MAC"),
        frame[6..12].try_into().expect("MAC"),
    )
    .ip(IpHeaders::Ipv4(ip, Ipv4Extensions::default()))
    .icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port));
    let quote = &frame[14..34 + l4_quote];
    let mut out = Vec::with_capacity(b.size(quote.len()));
    b.write(&mut out, quote).expect("write ICMP frame");
    out
}

/// An IPv6 + TCP frame.
pub fn tcp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(src, dst, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut frame = Vec::with_capacity(b.size(0));
    b.write(&mut frame, &[]).expect("write TCP/IPv6 frame");
    frame
}

/// An ARP request frame (who-has `target`).
pub fn arp(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

fn sum16(bytes: &[u8], mut sum: u32) -> u32 {
    for w in bytes.chunks(2) {
        let hi = w[0] as u32;
        let lo = if w.len() > 1 { w[1] as u32 } else { 0 };
        sum += (hi << 8) | lo;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Recomputes the IPv4 header checksum of `frame` in place (after editing the header).
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = (frame[14] & 0x0f) as usize * 4;
    frame[24] = 0;
    frame[25] = 0;
    let c = !fold(sum16(&frame[14..14 + ihl], 0));
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

/// `frame` (IPv4) with 4 bytes of NOP options inserted in its IPv4 header; every
/// checksum stays valid (options are not in the L4 pseudo header).
pub fn with_ipv4_options(frame: &[u8]) -> Vec<u8> {
    let mut f = frame[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 1]);
    f.extend_from_slice(&frame[34..]);
    f[14] = 0x46;
    let tot = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    f
}

/// `frame` (IPv4) marked as a fragment: more-fragments set and `offset` (8-byte units).
pub fn as_fragment(frame: &[u8], more: bool, offset: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    let v = (if more { 0x2000 } else { 0 }) | offset;
    f[20..22].copy_from_slice(&v.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    f
}

/// The fragments of `frame` (Ethernet + IPv4 without options, not fragmented), as a
/// host fragments it: IP id `id`, `chunk` bytes of IP payload each (a multiple of 8; the
/// last takes the rest), the L4 header in the first; every IPv4 header checksum right.
pub fn fragments(frame: &[u8], id: u16, chunk: usize) -> Vec<Vec<u8>> {
    assert!(
        chunk.is_multiple_of(8) && chunk >= 8,
        "fragment payload must be a multiple of 8"
    );
    assert_eq!(frame[14], 0x45, "IPv4 without options");
    let payload = &frame[34..];
    let pieces: Vec<&[u8]> = payload.chunks(chunk).collect();
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut f = frame[..34].to_vec();
            f.extend_from_slice(piece);
            f[16..18].copy_from_slice(&((20 + piece.len()) as u16).to_be_bytes());
            f[18..20].copy_from_slice(&id.to_be_bytes());
            let more = if i + 1 < pieces.len() { 0x2000 } else { 0 };
            f[20..22].copy_from_slice(&(more | (i * chunk / 8) as u16).to_be_bytes());
            fix_ipv4_checksum(&mut f);
            f
        })
        .collect()
}

/// The datagram `frags` (fragments of one, in any order) reassemble to, as the receiver
/// sees it: the first fragment's Ethernet and IPv4 header (flags and offset cleared),
/// the payloads in offset order. Panics on a gap or mismatched headers.
pub fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let offset = |f: &[u8]| (u16::from_be_bytes([f[20], f[21]]) & 0x1fff) as usize * 8;
    let mut sorted: Vec<&Vec<u8>> = frags.iter().collect();
    sorted.sort_by_key(|f| offset(f));
    let first = sorted.first().expect("no fragments");
    let mut out = first[..34].to_vec();
    for f in &sorted {
        assert_eq!(
            f[26..34],
            first[26..34],
            "fragments of one datagram differ in addresses"
        );
        assert_eq!(
            f[18..20],
            first[18..20],
            "fragments of one datagram differ in IP id"
        );
        assert_eq!(offset(f), out.len() - 34, "gap or overlap in the fragments");
        let tot = u16::from_be_bytes([f[16], f[17]]) as usize;
        out.extend_from_slice(&f[34..14 + tot]);
    }
    let tot = (out.len() - 14) as u16;
    out[16..18].copy_from_slice(&tot.to_be_bytes());
    out[20..22].copy_from_slice(&[0, 0]);
    fix_ipv4_checksum(&mut out);
    out
}

/// Panics unless the IPv4 header checksum and the TCP/UDP/ICMP checksum of `frame` are
/// valid (a UDP checksum of 0 means none and is accepted; ICMP has no pseudo header).
/// For an ICMP error (destination unreachable, time exceeded) the quoted IPv4 header's
/// checksum is checked too, and the quoted TCP/UDP checksum when the whole packet is
/// quoted. A fragment's L4 checksum covers its whole datagram: only its IPv4 header
/// checksum is checked (check the L4 checksum on [`reassemble`]'s result).
pub fn assert_checksums_valid(frame: &[u8]) {
    assert!(frame.len() >= 34, "frame too short for IPv4");
    assert_eq!(&frame[12..14], &[0x08, 0x00], "not IPv4");
    assert_ipv4_checksums_valid(&frame[14..], true);
}

/// The checks of [`assert_checksums_valid`] on the IPv4 packet `ip`; `whole`: `ip` is
/// not cut short (a quote may be), so its L4 checksum can be checked.
fn assert_ipv4_checksums_valid(ip: &[u8], whole: bool) {
    let ihl = (ip[0] & 0x0f) as usize * 4;
    assert_eq!(fold(sum16(&ip[..ihl], 0)), 0xffff, "bad IPv4 header checksum");
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return;
    }
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if !whole && tot != ip.len() {
        return;
    }
    let l4 = &ip[ihl..tot];
    let proto = ip[9];
    if proto == 17 && l4[6] == 0 && l4[7] == 0 {
        return;
    }
    if proto == 1 {
        assert_eq!(fold(sum16(l4, 0)), 0xffff, "bad ICMP checksum");
        if matches!(l4[0], 3 | 11) && l4.len() >= 8 + 20 {
            assert_ipv4_checksums_valid(&l4[8..], false);
        }
        return;
    }
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    let s = sum16(l4, sum16(&pseudo, 0));
    assert_eq!(fold(s), 0xffff, "bad L4 (proto {proto}) checksum");
}

/// What an ICMP error in a test reports.
#[derive(Clone, Copy, Debug)]
pub enum IcmpError {
    /// Destination unreachable, port unreachable.
    PortUnreachable,
    /// Destination unreachable, fragmentation needed, with the next hop's MTU.
    FragNeeded(u16),
    /// Time exceeded in transit.
    TimeExceeded,
}

/// An ICMP error `kind` from `src` to `dst` (TTL 64) about `about` (Ethernet + IPv4 +
/// TCP/UDP), quoting its whole IPv4 packet (as Linux does, up to 576 bytes), or with
/// `l4_quote`, its IPv4 header and the first `l4_quote` bytes of its transport header.
pub fn icmp_error(
    src: [u8; 4],
    dst: [u8; 4],
    kind: IcmpError,
    about: &[u8],
    l4_quote: Option<usize>,
) -> Vec<u8> {
    let ty = match kind {
        IcmpError::PortUnreachable => Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
        IcmpError::FragNeeded(next_hop_mtu) => {
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu })
        }
        IcmpError::TimeExceeded => Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit),
    };
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src, dst, 64)
        .icmpv4(ty);
    let quote = match l4_quote {
        Some(n) => &about[14..34 + n],
        None => &about[14..],
    };
    let mut out = Vec::with_capacity(b.size(quote.len()));
    b.write(&mut out, quote).expect("write ICMP error");
    out
}
