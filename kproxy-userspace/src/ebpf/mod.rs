//! The eBPF writer: the model → kproxy's own datapath (the twin of the iptables writer).
//!
//! - [`desired`]: what the maps should hold for a model (the same endpoint choices
//!   kube-proxy's rules make);
//! - [`sync`]: writing the difference into the maps, make before break;
//! - [`verify`]: every difference between the live maps and the model (drift);
//! - [`maps`]: typed handles on every map, by map family;
//! - [`loader`]: the embedded object, its programs and pinned maps;
//! - [`attach`]: interfaces, pinned TC and XDP links, XDP features.
//!
//! Order of operations a sync follows (make before break):
//! 1. [`DatapathMaps::set_node_addresses`] / [`DatapathMaps::set_masquerade_address`] /
//!    [`DatapathMaps::set_snat`];
//! 2. [`DatapathMaps::upsert_backend`] for every backend a frontend will use;
//! 3. [`DatapathMaps::upsert_frontend`] per frontend (writes the new slots beside the old
//!    ones, then flips the service value: no window with zero or missing backends);
//! 4. [`DatapathMaps::remove_frontend`] for frontends that are gone;
//! 5. [`DatapathMaps::remove_backend`] for backends no frontend uses any more (their
//!    flows then reselect a live backend).

pub mod attach;
pub mod desired;
pub mod loader;
pub mod maps;
pub mod sync;
pub mod verify;

pub use desired::{DesiredState, FrontendState, MasqueradePolicy, desired_state, node_port_addresses};
pub use loader::{
    ALL_PROGRAMS, DEFAULT_PIN_DIR, LoadOptions, Loaded, LoaderError, SOCK_PROGRAMS, TC_EGRESS_PROGRAM,
    TC_INGRESS_PROGRAM, XDP_PROGRAM, unpin_all, unpin_retired,
};
pub use maps::{
    BackendId, CtDirection, CtFlow, DatapathMaps, Frontend, FrontendEntry, FrontendId, FrontendOptions,
    MapsError, Masquerade, SnatSettings, SourceRange, ktime_now_ns,
};
pub use sync::{MapSync, SyncStats};
pub use verify::{Drift, verify};
