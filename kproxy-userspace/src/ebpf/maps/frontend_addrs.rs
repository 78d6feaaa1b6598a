//! `KPROXY_FRONTEND_ADDRS_V1`: the addresses of exact frontends (ClusterIP, externalIP,
//! LoadBalancer IP), each with how many frontends use it. The datapath drops a later
//! fragment whose first fragment it never saw when it is addressed to one (its
//! translation is unknown, and it must not leave untranslated). The counts are kept in
//! memory, rebuilt from the services map on open; the agent writes them all on load
//! (an adopted services map may predate this map), then as frontends come and go.

use std::collections::BTreeMap;

use kproxy_common::{ServiceKey, lb::SCOPE_EXACT, map_names as names};

use super::{DatapathMaps, MapOp, MapsError, removed};

/// Adds `delta` (±1) to the count of `key`'s address, if `key` is an exact frontend;
/// the address's new count.
pub(super) fn count(counts: &mut BTreeMap<u32, u32>, key: ServiceKey, delta: i32) -> Option<(u32, u32)> {
    if key.scope != SCOPE_EXACT {
        return None;
    }
    let n = counts.entry(key.addr).or_default();
    *n = n.saturating_add_signed(delta);
    let now = *n;
    if now == 0 {
        counts.remove(&key.addr);
    }
    Some((key.addr, now))
}

impl DatapathMaps {
    /// Writes every counted address and removes any other (the agent, on load).
    pub(super) fn write_frontend_addrs(&mut self) -> Result<(), MapsError> {
        let stale: Vec<u32> = self
            .frontend_addrs
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(MapOp::Iterate.on(names::FRONTEND_ADDRS))?
            .into_iter()
            .filter(|addr| !self.frontend_addr_counts.contains_key(addr))
            .collect();
        for addr in stale {
            removed(self.frontend_addrs.remove(&addr), names::FRONTEND_ADDRS)?;
        }
        for (&addr, &n) in &self.frontend_addr_counts {
            self.frontend_addrs
                .insert(addr, n, 0)
                .map_err(MapOp::Insert.on(names::FRONTEND_ADDRS))?;
        }
        Ok(())
    }

    /// A frontend `key` was created.
    pub(super) fn frontend_added(&mut self, key: ServiceKey) -> Result<(), MapsError> {
        if let Some((addr, n)) = count(&mut self.frontend_addr_counts, key, 1) {
            self.frontend_addrs
                .insert(addr, n, 0)
                .map_err(MapOp::Insert.on(names::FRONTEND_ADDRS))?;
        }
        Ok(())
    }

    /// A frontend `key` was removed.
    pub(super) fn frontend_removed(&mut self, key: ServiceKey) -> Result<(), MapsError> {
        match count(&mut self.frontend_addr_counts, key, -1) {
            Some((addr, 0)) => removed(self.frontend_addrs.remove(&addr), names::FRONTEND_ADDRS),
            Some((addr, n)) => self
                .frontend_addrs
                .insert(addr, n, 0)
                .map_err(MapOp::Insert.on(names::FRONTEND_ADDRS)),
            None => Ok(()),
        }
    }
}
