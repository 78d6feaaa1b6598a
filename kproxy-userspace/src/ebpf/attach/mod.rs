//! Putting the loaded programs on interfaces: which interfaces match the agent's globs
//! ([`iface`]), pinned links that outlive the agent and are adopted by the next one
//! ([`links`]), TC ingress and its sysctl ([`tc`]), and XDP's native/generic policy with
//! the redirect targets the kernel's `xdp_features` allow ([`xdp`], [`xdp_features`]);
//! the socket-LB programs on a cgroup, as pinned links too ([`cgroup`]).

pub mod cgroup;
pub mod iface;
pub mod links;
mod sys;
pub mod tc;
pub mod xdp;
pub mod xdp_features;

pub use cgroup::{CgroupError, CgroupLinks};
pub use iface::{Iface, IfaceError};
pub use links::{AttachError, Attached, Hook, LinkPins};
