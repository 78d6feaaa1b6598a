//! The frontend maps: services (frontend key → id, slot count, options), slots (the
//! backends of each frontend, written make before break) and reverse NAT.

use std::{net::SocketAddrV4, time::Duration};

use kproxy_common::{
    ServiceValue, SlotKey,
    byteorder::{be_addr, be_port},
    lb::{
        MAX_BACKENDS_PER_SERVICE, SLOT_BASE_ALT, SVC_F_AFFINITY, SVC_F_DROP_NO_BACKEND, SVC_F_SOURCE_RANGES,
    },
    map_names as names,
};

use super::{
    BackendId, DatapathMaps, Frontend, FrontendEntry, FrontendId, FrontendOptions, MapOp, MapsError,
    Masquerade, found, frontend::sock, removed,
};

impl DatapathMaps {
    /// Points `frontend` at `backends` (in slot order; empty = reject its packets, or
    /// drop them with `drop_without_backends`), creating it if needed; returns its id.
    /// Make before break: the new slots and source ranges are written beside the old,
    /// then the service value flips to them in one update, then the old ones are
    /// deleted, so packets always see a complete set. Every backend must already exist
    /// ([`Self::upsert_backend`]).
    pub fn upsert_frontend(
        &mut self,
        frontend: Frontend,
        backends: &[BackendId],
        mut options: FrontendOptions,
    ) -> Result<FrontendId, MapsError> {
        options.source_ranges.sort();
        options.source_ranges.dedup();
        if backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
            return Err(MapsError::TooManyBackends {
                frontend,
                count: backends.len(),
            });
        }
        for &id in backends {
            if found(self.backends.get(&id.0, 0), names::BACKENDS)?.is_none() {
                return Err(MapsError::UnknownBackend { frontend, id });
            }
        }
        let key = frontend.key();
        let current = found(self.services.get(&key, 0), names::SERVICES)?;
        let (flags, affinity_timeout_s) = service_flags(&options);
        let (cluster_addr, cluster_port) = options
            .cluster_frontend
            .map_or((0, 0), |a| (be_addr(a.ip().octets()), be_port(a.port())));
        // The trie is read and written only where ranges are or were enforced (entries
        // count only under SVC_F_SOURCE_RANGES, which is set only with the wanted ones).
        let ranges_involved =
            !options.source_ranges.is_empty() || current.is_some_and(|c| c.flags & SVC_F_SOURCE_RANGES != 0);
        let (id, base) = if let Some(cur) = current {
            if cur.flags == flags
                && cur.affinity_timeout_s == affinity_timeout_s
                && (cur.cluster_addr, cur.cluster_port) == (cluster_addr, cluster_port)
                && self.slot_backends(&cur)? == backends
                && (!ranges_involved || self.source_ranges_of(cur.rev_nat_id)? == options.source_ranges)
            {
                return Ok(FrontendId(cur.rev_nat_id));
            }
            (cur.rev_nat_id, cur.slot_base ^ SLOT_BASE_ALT)
        } else {
            let id = self.allocate_id()?;
            // Leftovers of an id used before (a crash mid-removal) must not count.
            removed(self.service_stats.remove(&id), names::SERVICE_STATS)?;
            (id, 0)
        };
        for (i, b) in backends.iter().enumerate() {
            let slot = SlotKey {
                rev_nat_id: id,
                slot: base + i as u32,
            };
            self.slots
                .insert(slot, b.0, 0)
                .map_err(MapOp::Insert.on(names::SLOTS))?;
        }
        if ranges_involved {
            self.add_source_ranges(id, &options.source_ranges)?;
        }
        self.revnat
            .insert(id, frontend.rev_nat(), 0)
            .map_err(MapOp::Insert.on(names::REVNAT))?;
        let value = ServiceValue {
            rev_nat_id: id,
            count: backends.len() as u16,
            flags,
            slot_base: base,
            affinity_timeout_s,
            cluster_addr,
            cluster_port,
            _pad: 0,
        };
        self.services
            .insert(key, value, 0)
            .map_err(MapOp::Insert.on(names::SERVICES))?;
        self.used_ids.insert(id);
        if current.is_none() {
            self.frontend_added(key)?;
        }
        if let Some(old) = current {
            self.remove_slots(old.rev_nat_id, old.slot_base, old.count)?;
        }
        if ranges_involved {
            self.prune_source_ranges(id, &options.source_ranges)?;
        }
        Ok(FrontendId(id))
    }

    /// Removes `frontend`: new packets to it pass untranslated, replies of its existing
    /// flows are still translated until their conntrack entries expire.
    pub fn remove_frontend(&mut self, frontend: Frontend) -> Result<(), MapsError> {
        let key = frontend.key();
        let Some(cur) = found(self.services.get(&key, 0), names::SERVICES)? else {
            return Ok(());
        };
        removed(self.services.remove(&key), names::SERVICES)?;
        self.frontend_removed(key)?;
        self.remove_slots(cur.rev_nat_id, cur.slot_base, cur.count)?;
        removed(self.revnat.remove(&cur.rev_nat_id), names::REVNAT)?;
        self.prune_source_ranges(cur.rev_nat_id, &[])?;
        removed(self.service_stats.remove(&cur.rev_nat_id), names::SERVICE_STATS)?;
        self.used_ids.remove(&cur.rev_nat_id);
        Ok(())
    }

    /// The id of `frontend`, if present.
    pub fn frontend_id(&self, frontend: Frontend) -> Result<Option<FrontendId>, MapsError> {
        Ok(found(self.services.get(&frontend.key(), 0), names::SERVICES)?.map(|v| FrontendId(v.rev_nat_id)))
    }

    /// Every frontend with its backends (what an adopting agent diffs its model against).
    pub fn frontends(&self) -> Result<Vec<FrontendEntry>, MapsError> {
        let mut out = Vec::new();
        let mut ranges = self.all_source_ranges()?;
        for item in &self.services {
            let (key, v) = item.map_err(MapOp::Iterate.on(names::SERVICES))?;
            let Some(frontend) = Frontend::from_key(key) else {
                continue;
            };
            out.push(FrontendEntry {
                frontend,
                id: FrontendId(v.rev_nat_id),
                backends: self.slot_backends(&v)?,
                slot_count: v.count,
                options: FrontendOptions {
                    client_ip_affinity: (v.flags & SVC_F_AFFINITY != 0)
                        .then(|| Duration::from_secs(v.affinity_timeout_s as u64)),
                    masquerade: Masquerade::from_flags(v.flags),
                    drop_without_backends: v.flags & SVC_F_DROP_NO_BACKEND != 0,
                    // Entries without the flag are not checked: report what is enforced.
                    source_ranges: if v.flags & SVC_F_SOURCE_RANGES != 0 {
                        ranges.remove(&v.rev_nat_id).unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                    cluster_frontend: (v.cluster_addr != 0).then(|| sock(v.cluster_addr, v.cluster_port)),
                },
            });
        }
        out.sort_by_key(|s| s.frontend);
        Ok(out)
    }

    /// Deletes slots no live service points at (left by an agent that died mid-update).
    pub fn prune_orphan_slots(&mut self) -> Result<usize, MapsError> {
        let mut live = std::collections::HashMap::new();
        for item in &self.services {
            let (_, v) = item.map_err(MapOp::Iterate.on(names::SERVICES))?;
            live.insert(v.rev_nat_id, v);
        }
        let mut orphans = Vec::new();
        for key in self.slots.keys() {
            let key = key.map_err(MapOp::Iterate.on(names::SLOTS))?;
            let keep = live
                .get(&key.rev_nat_id)
                .is_some_and(|v| key.slot >= v.slot_base && key.slot < v.slot_base + v.count as u32);
            if !keep {
                orphans.push(key);
            }
        }
        for key in &orphans {
            removed(self.slots.remove(key), names::SLOTS)?;
        }
        Ok(orphans.len())
    }

    fn slot_backends(&self, v: &ServiceValue) -> Result<Vec<BackendId>, MapsError> {
        let mut out = Vec::with_capacity(v.count as usize);
        for i in 0..v.count as u32 {
            let key = SlotKey {
                rev_nat_id: v.rev_nat_id,
                slot: v.slot_base + i,
            };
            match found(self.slots.get(&key, 0), names::SLOTS)? {
                Some(b) => out.push(BackendId(b)),
                None => break,
            }
        }
        Ok(out)
    }

    fn remove_slots(&mut self, id: u32, base: u32, count: u16) -> Result<(), MapsError> {
        for i in 0..count as u32 {
            let key = SlotKey {
                rev_nat_id: id,
                slot: base + i,
            };
            removed(self.slots.remove(&key), names::SLOTS)?;
        }
        Ok(())
    }

    /// The id after the highest in use (constant time per frontend, so a full sync of
    /// N services stays linear); gaps are searched only once ids reach the top.
    fn allocate_id(&self) -> Result<u32, MapsError> {
        match self.used_ids.last() {
            None => Ok(1),
            Some(&max) if max < u32::MAX => Ok(max + 1),
            Some(_) => (1..=u32::MAX)
                .find(|id| !self.used_ids.contains(id))
                .ok_or(MapsError::NoFrontendId(self.used_ids.len())),
        }
    }

    /// The reverse-NAT entry of service `id`: the address replies are rewritten to come
    /// from (0.0.0.0 for a NodePort: the node address the client used).
    pub fn rev_nat(&self, id: FrontendId) -> Result<Option<SocketAddrV4>, MapsError> {
        Ok(found(self.revnat.get(&id.0, 0), names::REVNAT)?.map(|r| sock(r.addr, r.port)))
    }
}

/// The service value's flags and affinity timeout for `options`.
fn service_flags(options: &FrontendOptions) -> (u16, u32) {
    let (mut flags, timeout) = match options.client_ip_affinity {
        Some(t) => (SVC_F_AFFINITY, t.as_secs().min(u32::MAX as u64) as u32),
        None => (0, 0),
    };
    if options.drop_without_backends {
        flags |= SVC_F_DROP_NO_BACKEND;
    }
    if !options.source_ranges.is_empty() {
        flags |= SVC_F_SOURCE_RANGES;
    }
    (flags | options.masquerade.flags(), timeout)
}
