//! Building test packets (with correct checksums, by etherparse).

use etherparse::PacketBuilder;

/// An Ethernet + IPv4 + UDP frame from `src` to `dst` carrying `payload`.
pub fn udp4(src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.0, dst.0, 64)
        .udp(src.1, dst.1);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload).expect("write UDP frame");
    frame
}
