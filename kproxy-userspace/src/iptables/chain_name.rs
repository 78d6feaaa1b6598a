//! kube-proxy's chain names: `PREFIX` + the first 16 characters of the base32 (RFC 4648,
//! upper case) SHA-256 of the service port name, the protocol and, for endpoint chains,
//! the endpoint's `ip:port`, concatenated without separators.

use sha2::{Digest, Sha256};

use crate::model::ServicePortName;

const BASE32_ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// 16 base32 characters: the first 80 bits of the digest.
fn hash16(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    let bits = digest[..10]
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    (0..16)
        .map(|i| char::from(BASE32_ALPHABET[((bits >> (75 - 5 * i)) & 0x1f) as usize]))
        .collect()
}

/// The hash shared by a service port's KUBE-SVC/SVL/EXT/FW chains.
pub fn service_hash(port: &ServicePortName) -> String {
    hash16(&format!("{port}{}", port.protocol.lower()))
}

/// `KUBE-SEP-…` for one endpoint (`ip:port`, IPv6 in brackets) of a service port.
pub fn endpoint_chain(port: &ServicePortName, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!("{port}{}{endpoint}", port.protocol.lower()))
    )
}

/// The four per-service-port chains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceChains {
    /// KUBE-SVC: cluster-policy endpoints.
    pub cluster: String,
    /// KUBE-SVL: local-policy endpoints.
    pub local: String,
    /// KUBE-EXT: traffic from outside (NodePort, external IPs, LoadBalancer IPs).
    pub external: String,
    /// KUBE-FW: LoadBalancer source ranges.
    pub firewall: String,
}

impl ServiceChains {
    pub fn of(port: &ServicePortName) -> Self {
        let hash = service_hash(port);
        ServiceChains {
            cluster: format!("KUBE-SVC-{hash}"),
            local: format!("KUBE-SVL-{hash}"),
            external: format!("KUBE-EXT-{hash}"),
            firewall: format!("KUBE-FW-{hash}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn spn(namespace: &str, name: &str, port: &str, protocol: Protocol) -> ServicePortName {
        ServicePortName {
            namespace: namespace.into(),
            name: name.into(),
            port: port.into(),
            protocol,
        }
    }

    /// Names from the seed article, upstream kube-proxy's tests and real clusters.
    #[test]
    fn names_match_kube_proxy() {
        let hello = spn("default", "hello-app-service", "", Protocol::Tcp);
        let svc1 = spn("ns1", "svc1", "p80", Protocol::Tcp);
        let cases = [
            (ServiceChains::of(&hello).cluster, "KUBE-SVC-YG6ZEOBCLVGD3AJB"),
            (ServiceChains::of(&hello).external, "KUBE-EXT-YG6ZEOBCLVGD3AJB"),
            (
                endpoint_chain(&hello, "172.16.166.130:8080"),
                "KUBE-SEP-7I3URQ2O437FVP5U",
            ),
            (
                endpoint_chain(&hello, "172.16.192.89:8080"),
                "KUBE-SEP-PSPHHDAXPY5YRT7B",
            ),
            (
                ServiceChains::of(&spn("default", "hello-app-service", "http", Protocol::Tcp)).cluster,
                "KUBE-SVC-DQZ6JMTZL3UFWMRX",
            ),
            (ServiceChains::of(&svc1).cluster, "KUBE-SVC-XPGD46QRK7WJZT7O"),
            (
                endpoint_chain(&svc1, "10.180.0.1:80"),
                "KUBE-SEP-SXIVWICOYRO3J4NJ",
            ),
            (
                endpoint_chain(&svc1, "[fd00:10:180::1]:80"),
                "KUBE-SEP-OGYCNMB4EMRUSJ6N",
            ),
            (
                ServiceChains::of(&spn("default", "kubernetes", "https", Protocol::Tcp)).cluster,
                "KUBE-SVC-NPX46M4PTMTKRN6Y",
            ),
            (
                ServiceChains::of(&spn("kube-system", "kube-dns", "dns", Protocol::Udp)).cluster,
                "KUBE-SVC-TCOU7JCQXEZGVUNU",
            ),
        ];
        for (got, expected) in cases {
            assert_eq!(got, expected);
        }
    }
}
