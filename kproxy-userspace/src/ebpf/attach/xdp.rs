//! XDP on an external interface: native (driver) mode where the device supports it,
//! generic (skb) mode otherwise, and which interfaces may take redirected frames.

use aya::programs::{Xdp, XdpMode};

use super::{
    AttachError, Attached, Iface, LinkPins,
    xdp_features::{self, XDP_ACT_BASIC},
};

/// How the XDP program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachMode {
    Native,
    Generic,
}

/// Attaches (or adopts) XDP on `iface`: native mode if its driver supports it, generic
/// mode otherwise or if native fails; returns how, in which mode, and why (for the log).
/// An adopted link keeps the mode it was attached in, which this policy chose from the
/// same driver: its mode is inferred the same way.
pub fn attach(
    pins: &LinkPins,
    program: &mut Xdp,
    iface: &Iface,
) -> Result<(Attached, XdpAttachMode, String), AttachError> {
    let native_ok = xdp_features::xdp_features(iface.index)? & XDP_ACT_BASIC != 0;
    let native_err = if native_ok {
        match pins.attach_xdp(program, iface, XdpMode::Driver) {
            Ok(how) => {
                return Ok((how, XdpAttachMode::Native, "native (driver) mode".into()));
            }
            Err(e) => crate::error_chain(&e),
        }
    } else {
        "the driver has no native XDP".to_string()
    };
    match pins.attach_xdp(program, iface, XdpMode::Skb) {
        Ok(how) => Ok((
            how,
            XdpAttachMode::Generic,
            format!("generic (skb) mode ({native_err})"),
        )),
        Err(generic) => Err(AttachError::XdpBothModes {
            iface: iface.name.clone(),
            native: native_err,
            generic: Box::new(generic),
        }),
    }
}

/// Whether `iface` can be a redirect target: any device while every XDP link is generic
/// (generic XDP redirects through the stack's transmit path), else only devices whose
/// driver takes frames from native XDP (a veth: while its peer has XDP or GRO).
pub fn accepts_redirects(iface: &Iface, all_generic: bool) -> Result<bool, AttachError> {
    Ok(all_generic || xdp_features::accepts_native_redirects(iface.index)?)
}
