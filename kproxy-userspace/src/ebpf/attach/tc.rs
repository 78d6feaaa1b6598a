//! TC on an interface: the ingress link and the sysctl its reverse translation needs,
//! and the egress link (reverse NAT of replies that reach no ingress hook as replies).

use aya::programs::SchedClassifier;

use super::{AttachError, Attached, Iface, LinkPins};

/// Attaches (or adopts) TC ingress on `iface` and lets it accept the packets the program
/// rewrites.
pub fn attach(
    pins: &LinkPins,
    program: &mut SchedClassifier,
    iface: &Iface,
) -> Result<Attached, AttachError> {
    let how = pins.attach_tc(program, iface)?;
    accept_local_source(&iface.name)?;
    Ok(how)
}

/// Attaches (or adopts) TC egress on `iface`: replies generated on the node or
/// de-masqueraded by netfilter are reverse-translated where they leave toward the client.
pub fn attach_egress(
    pins: &LinkPins,
    program: &mut SchedClassifier,
    iface: &Iface,
) -> Result<Attached, AttachError> {
    pins.attach_tc_egress(program, iface)
}

/// Lets `iface` accept packets whose source is a node address. The TC program
/// reverse-translates NodePort replies at ingress, before routing, so a reply arriving
/// from a pod carries the node's address as source; the kernel drops such packets as
/// martians unless `accept_local` is set on the interface they arrive on.
fn accept_local_source(iface: &str) -> Result<(), AttachError> {
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
    std::fs::write(&path, "1").map_err(|source| AttachError::Sysctl { path, source })
}
