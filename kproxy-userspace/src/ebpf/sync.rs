//! Applying a desired state to the maps incrementally: each sync writes only the
//! difference from the last, make before break (see the module docs of [`super`]).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddrV4,
};

use super::{
    desired::DesiredState,
    maps::{BackendId, DatapathMaps, Frontend, FrontendOptions, MapsError},
};

/// What one sync changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub frontends: usize,
    pub backends: usize,
    pub frontends_added: usize,
    pub frontends_updated: usize,
    pub frontends_removed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
}

impl SyncStats {
    pub fn changes(&self) -> usize {
        self.frontends_added
            + self.frontends_updated
            + self.frontends_removed
            + self.backends_added
            + self.backends_removed
    }
}

/// Applies desired states to the maps, remembering what they hold so each sync writes
/// only the difference. Adopts whatever a previous agent left in pinned maps.
pub struct MapSync {
    backend_ids: HashMap<SocketAddrV4, BackendId>,
    /// What each frontend was last written with.
    applied: BTreeMap<Frontend, (Vec<SocketAddrV4>, FrontendOptions)>,
    /// Next backend id to hand out; 0 = search for a free one (after wrapping).
    next_backend_id: u32,
}

impl MapSync {
    /// Reads the maps' current contents (empty for fresh maps).
    pub fn adopt(maps: &DatapathMaps) -> Result<Self, MapsError> {
        let by_id: HashMap<BackendId, SocketAddrV4> = maps.backends()?.into_iter().collect();
        let backend_ids = by_id.iter().map(|(id, addr)| (*addr, *id)).collect();
        let applied = maps
            .frontends()?
            .into_iter()
            .map(|s| {
                let backends = s
                    .backends
                    .iter()
                    .filter_map(|id| by_id.get(id).copied())
                    .collect();
                (s.frontend, (backends, s.options))
            })
            .collect();
        let next_backend_id = by_id
            .keys()
            .map(|id| id.0)
            .max()
            .map_or(1, |max| max.wrapping_add(1));
        Ok(MapSync {
            backend_ids,
            applied,
            next_backend_id,
        })
    }

    /// The id after the highest in use (ids of removed backends are not reused until
    /// the top is reached, so a full sync stays linear).
    fn allocate_backend_id(&mut self) -> BackendId {
        if self.next_backend_id == 0 {
            let used: BTreeSet<u32> = self.backend_ids.values().map(|id| id.0).collect();
            self.next_backend_id = (1..=u32::MAX)
                .find(|n| !used.contains(n))
                .expect("fewer than 2^32 backends");
        }
        let id = BackendId(self.next_backend_id);
        self.next_backend_id = self.next_backend_id.wrapping_add(1);
        id
    }

    /// Brings the maps to `desired`, make before break: new backends first, then every
    /// changed frontend (each flips to its new slot set atomically), then removals.
    pub fn apply(&mut self, maps: &mut DatapathMaps, desired: &DesiredState) -> Result<SyncStats, MapsError> {
        let mut stats = SyncStats::default();
        let wanted_backends = desired.backends();
        for addr in &wanted_backends {
            if !self.backend_ids.contains_key(addr) {
                let id = self.allocate_backend_id();
                maps.upsert_backend(id, *addr)?;
                self.backend_ids.insert(*addr, id);
                stats.backends_added += 1;
            }
        }
        for (frontend, state) in &desired.frontends {
            let want = (state.backends.clone(), state.options.clone());
            match self.applied.get(frontend) {
                Some(have) if *have == want => continue,
                Some(_) => stats.frontends_updated += 1,
                None => stats.frontends_added += 1,
            }
            let ids: Vec<BackendId> = state.backends.iter().map(|a| self.backend_ids[a]).collect();
            maps.upsert_frontend(*frontend, &ids, state.options.clone())?;
            self.applied.insert(*frontend, want);
        }
        let gone: Vec<Frontend> = self
            .applied
            .keys()
            .filter(|f| !desired.frontends.contains_key(f))
            .copied()
            .collect();
        for frontend in gone {
            maps.remove_frontend(frontend)?;
            self.applied.remove(&frontend);
            stats.frontends_removed += 1;
        }
        let unused: Vec<SocketAddrV4> = self
            .backend_ids
            .keys()
            .filter(|a| !wanted_backends.contains(a))
            .copied()
            .collect();
        for addr in unused {
            if let Some(id) = self.backend_ids.remove(&addr) {
                maps.remove_backend(id)?;
                stats.backends_removed += 1;
            }
        }
        stats.frontends = desired.frontends.len();
        stats.backends = wanted_backends.len();
        Ok(stats)
    }

    /// The backend id the maps use for `addr`.
    pub fn backend_id(&self, addr: &SocketAddrV4) -> Option<BackendId> {
        self.backend_ids.get(addr).copied()
    }
}
