//! Helpers for kproxy's privileged suites: network namespaces and veth pairs that the
//! test creates and removes (also when it fails), and running code inside them.
//!
//! Names are unique per process and per call, so suites can run side by side.

pub mod netns;
pub mod packet;
pub mod pins;
