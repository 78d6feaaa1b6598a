//! Addresses the way kube-proxy reads them: IPv4 octets may carry leading zeros
//! (`172.30.0.041` is `172.30.0.41`, as Go's `ParseIPSloppy` reads it), IPv4-mapped
//! IPv6 addresses are IPv4, and CIDRs are kept as their network.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

/// The address family one proxier instance serves (kube-proxy runs one per family).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IpFamily {
    #[default]
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    pub fn contains(self, ip: &IpAddr) -> bool {
        IpFamily::of(ip) == self
    }

    /// The spelling of EndpointSlice `addressType` and Service `ipFamilies`.
    pub fn api_name(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }

    /// The all-addresses network of this family (`0.0.0.0/0`, `::/0`).
    pub fn any(self) -> Cidr {
        match self {
            IpFamily::V4 => Cidr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            IpFamily::V6 => Cidr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        }
    }

    pub fn max_prefix(self) -> u8 {
        match self {
            IpFamily::V4 => 32,
            IpFamily::V6 => 128,
        }
    }
}

impl FromStr for IpFamily {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "IPv4" | "ipv4" | "4" => Ok(IpFamily::V4),
            "IPv6" | "ipv6" | "6" => Ok(IpFamily::V6),
            other => Err(format!("unknown IP family {other:?} (IPv4 or IPv6)")),
        }
    }
}

/// Parses an address as kube-proxy does; `None` when it is not one.
pub fn parse_ip_sloppy(text: &str) -> Option<IpAddr> {
    if let Some(v4) = parse_ipv4_sloppy(text) {
        return Some(IpAddr::V4(v4));
    }
    let v6 = Ipv6Addr::from_str(text).ok()?;
    Some(match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    })
}

fn parse_ipv4_sloppy(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Leading zeros are decimal, not octal; only the value is bounded.
        let value = part.bytes().try_fold(0u32, |acc, b| {
            acc.checked_mul(10)?.checked_add(u32::from(b - b'0'))
        })?;
        *octet = u8::try_from(value).ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// An IP network: the address is always the network address (host bits cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `ip/prefix` (host bits cleared); `prefix` is clamped to the family's width.
    pub fn new(ip: IpAddr, prefix: u8) -> Self {
        let prefix = prefix.min(IpFamily::of(&ip).max_prefix());
        let network = match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        Cidr { network, prefix }
    }

    /// The single-address network of `ip`.
    pub fn host(ip: IpAddr) -> Self {
        Cidr::new(ip, IpFamily::of(&ip).max_prefix())
    }

    /// Parses `ip/len` as kube-proxy does (Go's `ParseCIDRSloppy`); `None` when invalid.
    pub fn parse_sloppy(text: &str) -> Option<Self> {
        let (ip, len) = text.split_once('/')?;
        let ip = parse_ip_sloppy(ip)?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let len: u32 = len.parse().ok()?;
        let len = u8::try_from(len).ok()?;
        (len <= IpFamily::of(&ip).max_prefix()).then(|| Cidr::new(ip, len))
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.network)
    }

    /// True when the network holds a single address (`/32`, `/128`).
    pub fn is_host(&self) -> bool {
        self.prefix == self.family().max_prefix()
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        IpFamily::of(ip) == self.family() && Cidr::new(*ip, self.prefix).network == self.network
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// `ip:port`, with brackets around IPv6 addresses (Go's `JoinHostPort`).
pub fn join_host_port(ip: &IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sloppy_addresses_parse_like_kube_proxy() {
        let cases = [
            ("172.30.0.041", Some("172.30.0.41")),
            ("010.000.000.001", Some("10.0.0.1")),
            ("1.2.3.256", None),
            ("1.2.3", None),
            ("1.2.3.4.5", None),
            ("", None),
            (" 1.2.3.4", None),
            ("fd00:10:96::0001", Some("fd00:10:96::1")),
            ("::ffff:1.2.3.4", Some("1.2.3.4")),
            ("not-an-ip", None),
        ];
        for (input, expected) in cases {
            let got = parse_ip_sloppy(input).map(|ip| ip.to_string());
            assert_eq!(got.as_deref(), expected, "parse_ip_sloppy({input:?})");
        }
    }

    #[test]
    fn cidrs_are_kept_as_their_network() {
        let cases = [
            ("203.0.113.000/025", Some("203.0.113.0/25")),
            ("10.1.2.3/8", Some("10.0.0.0/8")),
            ("10.1.2.3/33", None),
            ("10.1.2.3", None),
            ("fd00::1/64", Some("fd00::/64")),
            ("0.0.0.0/0", Some("0.0.0.0/0")),
            ("1.2.3.4/", None),
        ];
        for (input, expected) in cases {
            let got = Cidr::parse_sloppy(input).map(|c| c.to_string());
            assert_eq!(got.as_deref(), expected, "Cidr::parse_sloppy({input:?})");
        }
        let net = Cidr::parse_sloppy("10.0.0.0/8").unwrap();
        assert!(net.contains(&"10.255.0.1".parse().unwrap()));
        assert!(!net.contains(&"11.0.0.1".parse().unwrap()));
        assert!(!net.contains(&"::1".parse().unwrap()));
    }

    #[test]
    fn host_port_brackets_ipv6() {
        assert_eq!(join_host_port(&"10.0.0.1".parse().unwrap(), 80), "10.0.0.1:80");
        assert_eq!(join_host_port(&"fd00::1".parse().unwrap(), 80), "[fd00::1]:80");
    }
}
