//! The conntrack tables (established TCP flows; UDP flows and TCP handshakes): both
//! entries of every translated flow, decoded for inspection and written raw by tests;
//! and the ClientIP affinity map.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddrV4,
    path::Path,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};

use kproxy_common::{
    CtEntry, CtKey,
    conntrack::{
        CT_DIR_REPLY, CT_DIR_SERVICE, CT_F_MASQ, CT_ST_CLOSING, CT_ST_ESTABLISHED, CT_ST_FIN, CT_ST_PEER_FIN,
    },
    lb::{PROTO_TCP, PROTO_UDP},
    map_names as names,
};

use super::{BackendId, DatapathMaps, FrontendId, MapOp, MapsError, found, frontend::sock, removed};
use crate::model::UdpServing;

/// Direction of a conntrack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtDirection {
    /// Client → frontend (the entry the forward packets follow).
    Service,
    /// Backend → client (the entry replies are reverse-translated by).
    Reply,
}

/// A decoded conntrack entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtFlow {
    pub direction: CtDirection,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// The tuple packets of this direction carry.
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub client: SocketAddrV4,
    /// The frontend address the client used (for NodePort, the node address).
    pub frontend: SocketAddrV4,
    pub backend: SocketAddrV4,
    pub backend_id: BackendId,
    pub frontend_id: FrontendId,
    /// The source the backend sees, when masqueraded (hairpin).
    pub masquerade: Option<SocketAddrV4>,
    pub established: bool,
    /// Closed (a RST, or a FIN each way).
    pub closing: bool,
    /// Half-closed: a FIN one way (TCP's CLOSE_WAIT).
    pub half_closed: bool,
    /// The raw `CT_ST_*` bits (for the timeout, `CtTimeouts::timeout_ns`).
    pub state: u8,
    /// CLOCK_MONOTONIC ns (compare with [`super::ktime_now_ns`]).
    pub last_seen_ns: u64,
    pub created_ns: u64,
}

impl DatapathMaps {
    /// Every conntrack entry of both tables, raw.
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtEntry)>, MapsError> {
        let tcp = self
            .ct_tcp
            .iter()
            .map(|r| r.map_err(MapOp::Iterate.on(names::CT_TCP)));
        let any = self
            .ct_any
            .iter()
            .map(|r| r.map_err(MapOp::Iterate.on(names::CT_ANY)));
        tcp.chain(any).collect()
    }

    /// Copies the flows of an earlier agent's single conntrack table (`KPROXY_CT_V1`, the
    /// same key and value layout), if one is pinned under `pin_dir`, into the two tables,
    /// so that upgrading the agent keeps every connection. A flow's two entries go to one
    /// table: the established-TCP one once its client has completed the handshake.
    /// Returns the entries copied; the old pin is left to `unpin_retired`.
    pub fn adopt_retired_conntrack(&mut self, pin_dir: &Path) -> Result<usize, MapsError> {
        let path = pin_dir.join(names::RETIRED_CONNTRACK);
        if !path.exists() {
            return Ok(0);
        }
        let map = MapData::from_pin(&path)
            .and_then(Map::from_map_data)
            .map_err(|source| MapsError::OpenPinned {
                path,
                source: Box::new(source),
            })?;
        let old: BpfHashMap<MapData, CtKey, CtEntry> =
            map.try_into().map_err(|source| MapsError::Layout {
                map: names::RETIRED_CONNTRACK,
                source: Box::new(source),
            })?;
        let entries: HashMap<CtKey, CtEntry> = old
            .iter()
            .collect::<Result<_, _>>()
            .map_err(MapOp::Iterate.on(names::RETIRED_CONNTRACK))?;
        for (key, entry) in &entries {
            let service = if key.dir == CT_DIR_SERVICE {
                Some(entry)
            } else {
                entries.get(&entry.service_key(key.proto))
            };
            let established =
                key.proto == PROTO_TCP && service.is_some_and(|e| e.state & CT_ST_ESTABLISHED != 0);
            let (table, name) = if established {
                (&mut self.ct_tcp, names::CT_TCP)
            } else {
                (&mut self.ct_any, names::CT_ANY)
            };
            table.insert(key, entry, 0).map_err(MapOp::Insert.on(name))?;
        }
        Ok(entries.len())
    }

    /// Entries per table: (established TCP, UDP and TCP handshakes).
    pub fn conntrack_counts(&self) -> (usize, usize) {
        (self.ct_tcp.keys().count(), self.ct_any.keys().count())
    }

    /// Every conntrack entry, decoded.
    pub fn conntrack(&self) -> Result<Vec<CtFlow>, MapsError> {
        Ok(self
            .conntrack_entries()?
            .iter()
            .map(|(k, e)| CtFlow {
                direction: if k.dir == CT_DIR_REPLY {
                    CtDirection::Reply
                } else {
                    CtDirection::Service
                },
                proto: k.proto,
                src: sock(k.saddr, k.sport),
                dst: sock(k.daddr, k.dport),
                client: sock(e.client_addr, e.client_port),
                frontend: sock(e.frontend_addr, e.frontend_port),
                backend: sock(e.backend_addr, e.backend_port),
                backend_id: BackendId(e.backend_id),
                frontend_id: FrontendId(e.rev_nat_id),
                masquerade: (e.flags & CT_F_MASQ != 0).then(|| sock(e.masq_addr, e.masq_port)),
                established: e.state & CT_ST_ESTABLISHED != 0,
                closing: e.state & CT_ST_CLOSING != 0,
                half_closed: e.state & CT_ST_CLOSING == 0 && e.state & (CT_ST_FIN | CT_ST_PEER_FIN) != 0,
                state: e.state,
                last_seen_ns: e.last_seen_ns,
                created_ns: e.created_ns,
            })
            .collect())
    }

    /// One raw conntrack entry (the established-TCP table first, as the datapath looks).
    pub fn conntrack_get(&self, key: &CtKey) -> Result<Option<CtEntry>, MapsError> {
        if let Some(e) = found(self.ct_tcp.get(key, 0), names::CT_TCP)? {
            return Ok(Some(e));
        }
        found(self.ct_any.get(key, 0), names::CT_ANY)
    }

    /// Writes a raw conntrack entry (restoring state, tests): where `key` is now, else in
    /// the table the datapath would keep it in (established TCP, or the other).
    pub fn conntrack_insert(&mut self, key: CtKey, entry: CtEntry) -> Result<(), MapsError> {
        let in_tcp = found(self.ct_tcp.get(&key, 0), names::CT_TCP)?.is_some();
        let in_any = found(self.ct_any.get(&key, 0), names::CT_ANY)?.is_some();
        let tcp = in_tcp || (!in_any && key.proto == PROTO_TCP && entry.state & CT_ST_ESTABLISHED != 0);
        if tcp {
            self.ct_tcp
                .insert(key, entry, 0)
                .map_err(MapOp::Insert.on(names::CT_TCP))
        } else {
            self.ct_any
                .insert(key, entry, 0)
                .map_err(MapOp::Insert.on(names::CT_ANY))
        }
    }

    /// Deletes a raw conntrack entry from both tables (missing is fine).
    pub fn conntrack_remove(&mut self, key: &CtKey) -> Result<(), MapsError> {
        removed(self.ct_tcp.remove(key), names::CT_TCP)?;
        removed(self.ct_any.remove(key), names::CT_ANY)
    }

    /// Number of ClientIP affinity entries (for inspection).
    pub fn affinity_len(&self) -> usize {
        self.affinity.keys().count()
    }

    /// Deletes both entries of every UDP flow whose backend no longer serves the
    /// service the client sent it to (`rule`, kube-proxy's conntrack cleanup): its next
    /// datagram chooses a current endpoint. Returns the entries deleted.
    pub fn remove_stale_udp_flows(&mut self, rule: &UdpServing) -> Result<usize, MapsError> {
        if rule.is_empty() {
            return Ok(0);
        }
        let stale: Vec<CtKey> = self
            .conntrack_entries()?
            .into_iter()
            .filter(|(k, e)| {
                let frontend = sock(e.frontend_addr, e.frontend_port);
                let backend = sock(e.backend_addr, e.backend_port);
                k.proto == PROTO_UDP && rule.is_stale(frontend.into(), (*backend.ip()).into())
            })
            .map(|(k, _)| k)
            .collect();
        for key in &stale {
            self.conntrack_remove(key)?;
        }
        Ok(stale.len())
    }

    /// Deletes the ClientIP affinity entries that no longer lead to a backend of their
    /// frontend's current set (the endpoint left, or the frontend is gone and its id may
    /// be handed to another): a client is never sent back to a former endpoint. Returns
    /// the entries deleted.
    pub fn remove_stale_affinity(&mut self) -> Result<usize, MapsError> {
        let current: HashMap<u32, HashSet<u32>> = self
            .frontends()?
            .into_iter()
            .map(|f| (f.id.0, f.backends.iter().map(|b| b.0).collect()))
            .collect();
        let mut stale = Vec::new();
        for item in &self.affinity {
            let (key, value) = item.map_err(MapOp::Iterate.on(names::AFFINITY))?;
            let live = current
                .get(&key.rev_nat_id)
                .is_some_and(|ids| ids.contains(&value.backend_id));
            if !live {
                stale.push(key);
            }
        }
        for key in &stale {
            removed(self.affinity.remove(key), names::AFFINITY)?;
        }
        Ok(stale.len())
    }
}
