//! Helpers for kproxy's privileged suites: network namespaces and veth pairs that the
//! test creates and removes (also when it fails), running code inside them, the seed
//! cluster topology, and the hello-app servers and clients.
//!
//! Names are unique per process and per call, so suites can run side by side.

pub mod agent;
pub mod cluster;
pub mod forwarding;
pub mod hello;
pub mod manifests;
pub mod netns;
pub mod packet;
pub mod pins;
pub mod prog_test_run;
pub mod tempdir;
pub mod topology;
