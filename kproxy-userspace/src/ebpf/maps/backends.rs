//! The backends map: endpoint addresses by backend id.

use std::net::SocketAddrV4;

use kproxy_common::{
    Backend,
    byteorder::{be_addr, be_port},
    map_names as names,
};

use super::{BackendId, DatapathMaps, MapOp, MapsError, frontend::sock, removed};

impl DatapathMaps {
    /// Creates or updates backend `id` (must be done before a service uses it).
    pub fn upsert_backend(&mut self, id: BackendId, addr: SocketAddrV4) -> Result<(), MapsError> {
        if id.0 == 0 {
            return Err(MapsError::ReservedBackendId);
        }
        let value = Backend {
            addr: be_addr(addr.ip().octets()),
            port: be_port(addr.port()),
            flags: 0,
            _pad: 0,
        };
        self.backends
            .insert(id.0, value, 0)
            .map_err(MapOp::Insert.on(names::BACKENDS))
    }

    /// Removes backend `id` and its counters. Flows still pointing at it choose a live
    /// backend on their next packet. Remove it from services first.
    pub fn remove_backend(&mut self, id: BackendId) -> Result<(), MapsError> {
        removed(self.backends.remove(&id.0), names::BACKENDS)?;
        removed(self.backend_stats.remove(&id.0), names::BACKEND_STATS)
    }

    /// Every backend.
    pub fn backends(&self) -> Result<Vec<(BackendId, SocketAddrV4)>, MapsError> {
        let mut out = Vec::new();
        for item in &self.backends {
            let (id, b) = item.map_err(MapOp::Iterate.on(names::BACKENDS))?;
            out.push((BackendId(id), sock(b.addr, b.port)));
        }
        out.sort();
        Ok(out)
    }
}
