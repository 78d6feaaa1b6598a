//! Header layout of the frames the datapath handles: untagged Ethernet, IPv4 without
//! options (IHL 5), then TCP or UDP. Offsets count from the start of the frame.

/// Length of an untagged Ethernet header.
pub const ETH_LEN: usize = 14;
/// Offset of the EtherType.
pub const ETH_TYPE_OFF: usize = 12;
/// EtherType IPv4 in network order, as read natively from the frame.
pub const ETH_P_IP_BE: u16 = 0x0800u16.to_be();

/// Length of an IPv4 header without options.
pub const IPV4_LEN: usize = 20;
/// Offset of the IPv4 version and header length byte.
pub const IP_VIHL_OFF: usize = ETH_LEN;
/// Offset of the IPv4 TOS byte.
pub const IP_TOS_OFF: usize = ETH_LEN + 1;
/// Offset of the IPv4 total length.
pub const IP_TOT_LEN_OFF: usize = ETH_LEN + 2;
/// Offset of the IPv4 identification.
pub const IP_ID_OFF: usize = ETH_LEN + 4;
/// Offset of the IPv4 flags and fragment offset.
pub const IP_FRAG_OFF: usize = ETH_LEN + 6;
/// Offset of the IPv4 TTL and protocol (one checksummed 16-bit word).
pub const IP_TTL_PROTO_OFF: usize = ETH_LEN + 8;
/// Offset of the IPv4 protocol.
pub const IP_PROTO_OFF: usize = ETH_LEN + 9;
/// Offset of the IPv4 header checksum.
pub const IP_CSUM_OFF: usize = ETH_LEN + 10;
/// Offset of the IPv4 source address.
pub const IP_SRC_OFF: usize = ETH_LEN + 12;
/// Offset of the IPv4 destination address.
pub const IP_DST_OFF: usize = ETH_LEN + 16;

/// Offset of the L4 header (IHL 5 only).
pub const L4_OFF: usize = ETH_LEN + IPV4_LEN;
/// Offset of the L4 source port.
pub const L4_SPORT_OFF: usize = L4_OFF;
/// Offset of the L4 destination port.
pub const L4_DPORT_OFF: usize = L4_OFF + 2;

/// Length of a TCP header without options.
pub const TCP_MIN_LEN: usize = 20;
/// Offset of the TCP flags byte.
pub const TCP_FLAGS_OFF: usize = L4_OFF + 13;
/// Offset of the TCP checksum.
pub const TCP_CSUM_OFF: usize = L4_OFF + 16;
/// Length of a UDP header.
pub const UDP_LEN: usize = 8;
/// Offset of the UDP checksum.
pub const UDP_CSUM_OFF: usize = L4_OFF + 6;

/// TCP flag bits (in the byte at [`TCP_FLAGS_OFF`]).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
