//! kproxy's test bed: what the privileged suites, the demo and the bench stand on.
//!
//! - Namespaces and topologies: [`netns`] (namespaces and veths removed on drop),
//!   [`topology`] (the seed cluster: a node, pods, an external client), [`forwarding`]
//!   (how external traffic crosses the node), [`cluster`] (the hello-app with a running
//!   agent), [`agent`] (the `kproxy` binary in a namespace), [`hello`] (servers and
//!   clients), [`http`] (a GET for the agent's health servers), [`manifests`]
//!   (Service and EndpointSlice YAML, the proxy configuration), [`two_node`] (the
//!   two-node cluster: host1 and host2 on a bridged LAN, an agent each), [`cgroup`]
//!   (a cgroup v2 directory of the test's own for the socket-LB programs, and the
//!   `kproxy-probe` client run inside it), [`apiserver`] (an in-process Kubernetes API
//!   server for cluster mode: list, watch, 410, 403, drops).
//! - Packets: [`packet`] (frames and checksums), [`prog_test_run`] (one frame through a
//!   program), [`fixture`] (the case harness the fixture tables run on), [`pins`] (a
//!   loaded datapath under its own pin directory).
//!
//! Names are unique per process and per call, so suites can run side by side.

pub mod agent;
pub mod apiserver;
pub mod cgroup;
pub mod cluster;
pub mod fixture;
pub mod forwarding;
pub mod hello;
pub mod http;
pub mod manifests;
pub mod netns;
pub mod packet;
pub mod pins;
pub mod prog_test_run;
pub mod tempdir;
pub mod topology;
pub mod two_node;
