//! kube-proxy's conntrack cleanup in iptables mode: after a sync, the kernel's UDP
//! conntrack entries of flows whose endpoint no longer serves their service are
//! deleted, so the next datagram is DNATed afresh (the rule is
//! [`UdpServing`]). Through ctnetlink: one dump, then one delete per stale entry.

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::{ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::model::UdpServing;

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("open a ctnetlink socket: `socket(AF_NETLINK, NETLINK_NETFILTER)` failed")]
    Socket(#[source] io::Error),
    #[error("{call} on the ctnetlink socket failed")]
    Io {
        call: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused the conntrack dump (is nf_conntrack_netlink available?)")]
    Dump(#[source] io::Error),
    #[error("decode a ctnetlink message: {0}")]
    Decode(String),
}

/// The original-direction tuple of a UDP conntrack entry and its reply source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UdpEntry {
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    reply_src: IpAddr,
}

/// Deletes the IPv4 UDP conntrack entries `rule` calls stale; returns how many.
pub fn remove_stale_udp(rule: &UdpServing) -> Result<usize, ConntrackError> {
    if rule.is_empty() {
        return Ok(0);
    }
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
    socket.bind_auto().map_err(|source| ConntrackError::Io {
        call: "`bind`",
        source,
    })?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|source| ConntrackError::Io {
            call: "`connect`",
            source,
        })?;
    let stale: Vec<UdpEntry> = dump_udp(&mut socket)?
        .into_iter()
        .filter(|e| rule.is_stale(e.dst, e.reply_src))
        .collect();
    let mut deleted = 0;
    for entry in &stale {
        if delete(&mut socket, entry)? {
            deleted += 1;
        }
    }
    Ok(deleted)
}

fn request(message: ConntrackMessage, flags: u16) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
            message,
        )),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

fn send(socket: &Socket, buf: &[u8]) -> Result<(), ConntrackError> {
    socket.send(buf, 0).map_err(|source| ConntrackError::Io {
        call: "`send`",
        source,
    })?;
    Ok(())
}

/// Receives messages until `on_message` says the exchange is over (a dump's DONE, an
/// ACK or an error).
fn receive(
    socket: &Socket,
    mut on_message: impl FnMut(NetlinkMessage<NetfilterMessage>) -> Result<bool, ConntrackError>,
) -> Result<(), ConntrackError> {
    let mut buf = vec![0; 1 << 16];
    loop {
        let size = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(|source| ConntrackError::Io {
                call: "`recv`",
                source,
            })?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..size])
                .map_err(|e| ConntrackError::Decode(e.to_string()))?;
            let length = message.header.length as usize;
            if on_message(message)? {
                return Ok(());
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// Every IPv4 UDP entry of the conntrack table.
fn dump_udp(socket: &mut Socket) -> Result<Vec<UdpEntry>, ConntrackError> {
    send(socket, &request(ConntrackMessage::Get(Vec::new()), NLM_F_DUMP))?;
    let mut entries = Vec::new();
    receive(socket, |message| match message.payload {
        NetlinkPayload::Done(_) => Ok(true),
        NetlinkPayload::Error(e) => Err(ConntrackError::Dump(e.to_io())),
        NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attributes)),
            ..
        }) => {
            entries.extend(udp_entry(&attributes));
            Ok(false)
        }
        _ => Ok(false),
    })?;
    Ok(entries)
}

/// Deletes `entry` by its original tuple; false if it was gone already.
fn delete(socket: &mut Socket, entry: &UdpEntry) -> Result<bool, ConntrackError> {
    let tuple = vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(entry.src.ip()),
            IPTuple::DestinationAddress(entry.dst.ip()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::Udp),
            ProtoTuple::SourcePort(entry.src.port()),
            ProtoTuple::DestinationPort(entry.dst.port()),
        ]),
    ];
    let message = ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(tuple)]);
    send(socket, &request(message, NLM_F_ACK))?;
    let mut outcome = Ok(true);
    receive(socket, |message| {
        if let NetlinkPayload::Error(e) = message.payload {
            // An ACK is an error message with code 0; ENOENT: it expired meanwhile.
            outcome = match e.code {
                None => Ok(true),
                Some(_) if e.to_io().raw_os_error() == Some(libc::ENOENT) => Ok(false),
                Some(_) => Err(ConntrackError::Io {
                    call: "`IPCTNL_MSG_CT_DELETE`",
                    source: e.to_io(),
                }),
            };
            return Ok(true);
        }
        Ok(false)
    })?;
    outcome
}

/// The UDP entry `attributes` describe (None: another protocol or a partial entry).
fn udp_entry(attributes: &[ConntrackAttribute]) -> Option<UdpEntry> {
    let mut orig = None;
    let mut reply = None;
    for attribute in attributes {
        match attribute {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(tuple_of(t)),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(tuple_of(t)),
            _ => {}
        }
    }
    let (orig, reply) = (orig?, reply?);
    (orig.proto == Some(Protocol::Udp)).then_some(UdpEntry {
        src: std::net::SocketAddr::new(orig.src?, orig.sport?),
        dst: std::net::SocketAddr::new(orig.dst?, orig.dport?),
        reply_src: reply.src?,
    })
}

/// One direction's addresses, ports and protocol.
#[derive(Default)]
struct Parsed {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    sport: Option<u16>,
    dport: Option<u16>,
    proto: Option<Protocol>,
}

fn tuple_of(tuple: &[Tuple]) -> Parsed {
    let mut out = Parsed::default();
    for part in tuple {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => out.src = Some(*a),
                        IPTuple::DestinationAddress(a) => out.dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(items) => {
                for item in items {
                    match item {
                        ProtoTuple::Protocol(p) => out.proto = Some(*p),
                        ProtoTuple::SourcePort(p) => out.sport = Some(*p),
                        ProtoTuple::DestinationPort(p) => out.dport = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    out
}
