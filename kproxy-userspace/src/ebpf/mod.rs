//! The kernel datapath's maps from userspace: loading the programs with their maps pinned
//! (and re-adopting them after a restart), and typed operations on every map for the
//! model → maps sync.
//!
//! Order of operations the sync should follow (make before break):
//! 1. [`DatapathMaps::set_node_addresses`] / [`DatapathMaps::set_masquerade_address`];
//! 2. [`DatapathMaps::upsert_backend`] for every backend a service will use;
//! 3. [`DatapathMaps::upsert_service`] per frontend (writes the new slots beside the old
//!    ones, then flips the service value: no window with zero or missing backends);
//! 4. [`DatapathMaps::remove_service`] for frontends that are gone;
//! 5. [`DatapathMaps::remove_backend`] for backends no frontend uses any more (their
//!    flows then reselect a live backend).

pub mod loader;
pub mod maps;

pub use loader::{DEFAULT_PIN_DIR, Datapath, LoadOptions, LoaderError, unpin_all};
pub use maps::{
    BackendId, CtDirection, CtFlow, DatapathMaps, Frontend, MapsError, Protocol, ServiceEntry, ServiceId,
    ServiceOptions, ktime_now_ns,
};
