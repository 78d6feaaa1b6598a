//! What a network device can do with XDP, as the kernel reports it through the `netdev`
//! generic netlink family (`xdp_features`, kernel 6.3+): above all whether it accepts
//! frames redirected to it from native XDP (`ndo_xdp_xmit`). A veth does only while its
//! peer has NAPI (an XDP program, or GRO on); a frame redirected where it cannot go is
//! lost, so the agent redirects from native XDP only to devices that say they can.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// XDP runs natively (in the driver) on the device.
pub const XDP_ACT_BASIC: u64 = 1;
/// The device accepts frames redirected to it from native XDP.
pub const XDP_ACT_NDO_XMIT: u64 = 4;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_HDR_LEN: usize = 16;
const GENL_HDR_LEN: usize = 4;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;

#[derive(Debug, thiserror::Error)]
pub enum XdpFeaturesError {
    #[error("open a generic netlink socket: `socket` failed")]
    Socket(#[source] io::Error),
    #[error("`{op}` on the generic netlink socket failed")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("generic netlink family \"netdev\" not found (kernel older than 6.3?)")]
    NoFamily(#[source] io::Error),
    #[error("netdev DEV_GET of ifindex {ifindex} failed")]
    Device {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("malformed generic netlink reply: {0}")]
    Malformed(&'static str),
}

/// The XDP feature bits (`XDP_ACT_*`) of device `ifindex` in the caller's namespace.
pub fn xdp_features(ifindex: u32) -> Result<u64, XdpFeaturesError> {
    let sock = GenlSocket::open()?;
    let mut name = b"netdev".to_vec();
    name.push(0);
    let mut attrs = Vec::new();
    put_attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, &name);
    let family = sock
        .request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, &attrs)?
        .map_err(XdpFeaturesError::NoFamily)?;
    let family = find_attr(&family, CTRL_ATTR_FAMILY_ID)
        .and_then(|v| Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?)))
        .ok_or(XdpFeaturesError::Malformed("no family id"))?;
    let mut attrs = Vec::new();
    put_attr(&mut attrs, NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes());
    let dev = sock
        .request(family, NETDEV_CMD_DEV_GET, &attrs)?
        .map_err(|source| XdpFeaturesError::Device { ifindex, source })?;
    find_attr(&dev, NETDEV_A_DEV_XDP_FEATURES)
        .and_then(|v| Some(u64::from_ne_bytes(v.get(..8)?.try_into().ok()?)))
        .ok_or(XdpFeaturesError::Malformed("no xdp_features"))
}

/// Whether native XDP can redirect frames to device `ifindex`.
pub fn accepts_native_redirects(ifindex: u32) -> Result<bool, XdpFeaturesError> {
    Ok(xdp_features(ifindex)? & XDP_ACT_NDO_XMIT != 0)
}

/// Appends a netlink attribute (header, value, padding to 4 bytes).
fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = (4 + value.len()) as u16;
    buf.extend_from_slice(&len.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// The value of the first attribute of `kind` in `attrs` (nested attributes are skipped).
fn find_attr(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        // The top bits of the type are flags (nested, byte order).
        let k = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if k == kind {
            return Some(&attrs[4..len]);
        }
        attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

struct GenlSocket(OwnedFd);

impl GenlSocket {
    fn open() -> Result<Self, XdpFeaturesError> {
        // SAFETY: plain socket(2); the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(XdpFeaturesError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd nobody else owns.
        let sock = GenlSocket(unsafe { OwnedFd::from_raw_fd(fd) });
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a timeval of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(sock)
    }

    /// Sends one request and returns the attributes of the reply, or the kernel's error.
    fn request(
        &self,
        family: u16,
        cmd: u8,
        attrs: &[u8],
    ) -> Result<Result<Vec<u8>, io::Error>, XdpFeaturesError> {
        let len = NLMSG_HDR_LEN + GENL_HDR_LEN + attrs.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&family.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel assigns it
        msg.extend_from_slice(&[cmd, 1, 0, 0]); // command, version, reserved
        msg.extend_from_slice(attrs);
        // SAFETY: zeroed sockaddr_nl is valid; family set below (pid 0: the kernel).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: msg and addr are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(XdpFeaturesError::Io {
                op: "sendto",
                source: io::Error::last_os_error(),
            });
        }
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: buf is valid for its length.
        let got = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got < 0 {
            return Err(XdpFeaturesError::Io {
                op: "recv",
                source: io::Error::last_os_error(),
            });
        }
        buf.truncate(got as usize);
        parse_reply(&buf)
    }
}

/// The attributes of a generic netlink reply, or the kernel's error.
fn parse_reply(buf: &[u8]) -> Result<Result<Vec<u8>, io::Error>, XdpFeaturesError> {
    let short = XdpFeaturesError::Malformed("short message");
    let header = buf.get(..NLMSG_HDR_LEN).ok_or(short)?;
    let len = u32::from_ne_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let kind = u16::from_ne_bytes([header[4], header[5]]);
    let body = buf
        .get(NLMSG_HDR_LEN..len)
        .ok_or(XdpFeaturesError::Malformed("length past the data"))?;
    if kind == NLMSG_ERROR {
        let errno = i32::from_ne_bytes(
            body.get(..4)
                .ok_or(XdpFeaturesError::Malformed("short error"))?
                .try_into()
                .expect("4 bytes"),
        );
        return Ok(Err(io::Error::from_raw_os_error(-errno)));
    }
    Ok(Ok(body.get(GENL_HDR_LEN..).unwrap_or_default().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_with_padding() {
        let mut attrs = Vec::new();
        put_attr(&mut attrs, 2, b"netdev\0");
        put_attr(&mut attrs, 1, &7u32.to_ne_bytes());
        put_attr(&mut attrs, 3, &0x4_0005u64.to_ne_bytes());
        assert_eq!(attrs.len(), 12 + 8 + 12);
        assert_eq!(find_attr(&attrs, 2), Some(&b"netdev\0"[..]));
        assert_eq!(find_attr(&attrs, 1), Some(&7u32.to_ne_bytes()[..]));
        assert_eq!(find_attr(&attrs, 3), Some(&0x4_0005u64.to_ne_bytes()[..]));
        assert_eq!(find_attr(&attrs, 9), None);
    }

    #[test]
    fn truncated_attributes_are_not_read_past_the_end() {
        let mut attrs = Vec::new();
        put_attr(&mut attrs, 1, &7u32.to_ne_bytes());
        attrs[0] = 200;
        assert_eq!(find_attr(&attrs, 1), None);
    }

    #[test]
    fn an_error_reply_carries_the_errno() {
        let mut msg = Vec::new();
        msg.extend_from_slice(&36u32.to_ne_bytes());
        msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&(-libc::ENODEV).to_ne_bytes());
        msg.extend_from_slice(&[0; 16]);
        let err = parse_reply(&msg).unwrap().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENODEV));
    }
}
