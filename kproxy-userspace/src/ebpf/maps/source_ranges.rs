//! The source-range map: the `loadBalancerSourceRanges` each frontend accepts, as
//! (frontend id, prefix) entries of one LPM trie.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use aya::maps::lpm_trie::Key;
use kproxy_common::{
    SourceRangeKey, SourceRangeValue,
    byteorder::{addr_octets, be_addr},
    lb::SOURCE_RANGE_ID_BITS,
    map_names as names,
};

use super::{DatapathMaps, MapOp, MapsError, SourceRange, removed};

fn key(id: u32, r: SourceRange) -> Key<SourceRangeKey> {
    Key::new(
        SOURCE_RANGE_ID_BITS + u32::from(r.prefix),
        SourceRangeKey {
            rev_nat_id: id,
            addr: be_addr(r.addr.octets()),
        },
    )
}

fn range(k: &Key<SourceRangeKey>) -> Option<(u32, SourceRange)> {
    let prefix = k.prefix_len().checked_sub(SOURCE_RANGE_ID_BITS)?;
    let data = k.data();
    let addr = Ipv4Addr::from(addr_octets(data.addr));
    Some((
        data.rev_nat_id,
        SourceRange::new(addr, u8::try_from(prefix).ok()?),
    ))
}

impl DatapathMaps {
    /// Every frontend id's accepted source ranges, sorted.
    pub(super) fn all_source_ranges(&self) -> Result<BTreeMap<u32, Vec<SourceRange>>, MapsError> {
        let mut out: BTreeMap<u32, Vec<SourceRange>> = BTreeMap::new();
        for k in self.source_ranges.keys() {
            let k = k.map_err(MapOp::Iterate.on(names::SOURCE_RANGES))?;
            if let Some((id, r)) = range(&k) {
                out.entry(id).or_default().push(r);
            }
        }
        for ranges in out.values_mut() {
            ranges.sort();
        }
        Ok(out)
    }

    /// The source ranges frontend `id` accepts, sorted.
    pub(super) fn source_ranges_of(&self, id: u32) -> Result<Vec<SourceRange>, MapsError> {
        Ok(self.all_source_ranges()?.remove(&id).unwrap_or_default())
    }

    /// Adds the entries of `want` that frontend `id` lacks (before its service value
    /// flips: a new range is accepted once the value asks for the check).
    pub(super) fn add_source_ranges(&mut self, id: u32, want: &[SourceRange]) -> Result<(), MapsError> {
        let have: BTreeSet<SourceRange> = self.source_ranges_of(id)?.into_iter().collect();
        for r in want.iter().filter(|r| !have.contains(r)) {
            self.source_ranges
                .insert(&key(id, *r), SourceRangeValue::default(), 0)
                .map_err(MapOp::Insert.on(names::SOURCE_RANGES))?;
        }
        Ok(())
    }

    /// Deletes the entries of frontend `id` not in `keep` (after its service value
    /// flipped, so a range stops being accepted only once nothing asks for it).
    pub(super) fn prune_source_ranges(&mut self, id: u32, keep: &[SourceRange]) -> Result<(), MapsError> {
        for r in self.source_ranges_of(id)? {
            if !keep.contains(&r) {
                removed(self.source_ranges.remove(&key(id, r)), names::SOURCE_RANGES)?;
            }
        }
        Ok(())
    }
}
