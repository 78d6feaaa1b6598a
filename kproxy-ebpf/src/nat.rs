//! Address and port translation of a flow's packets, through the context's rewrites
//! (which keep the IPv4 and L4 checksums right).

use kproxy_common::{CtEntry, conntrack::CT_F_MASQ};

use crate::{
    ctx::{Packet, RewriteError},
    hdr::{IP_DST_OFF, IP_SRC_OFF, L4_DPORT_OFF, L4_SPORT_OFF},
    parse::Flow,
};

/// Client → backend: destination to the backend; source to the masquerade address and
/// port for a masqueraded flow (hairpin keeps the port, SNAT allocates one).
#[inline(always)]
pub fn dnat<C: Packet>(ctx: &C, flow: &Flow, e: &CtEntry) -> Result<(), RewriteError> {
    if e.backend_addr != flow.daddr {
        ctx.rewrite_addr(IP_DST_OFF, flow.daddr, e.backend_addr, flow.l4)?;
    }
    if e.backend_port != flow.dport {
        ctx.rewrite_port(L4_DPORT_OFF, flow.dport, e.backend_port, flow.l4)?;
    }
    if e.flags & CT_F_MASQ != 0 {
        if e.masq_addr != flow.saddr {
            ctx.rewrite_addr(IP_SRC_OFF, flow.saddr, e.masq_addr, flow.l4)?;
        }
        if e.masq_port != flow.sport {
            ctx.rewrite_port(L4_SPORT_OFF, flow.sport, e.masq_port, flow.l4)?;
        }
    }
    Ok(())
}

/// Backend → client: source back to the frontend the client used; destination back to
/// the client's address and port for a masqueraded flow.
#[inline(always)]
pub fn rev_nat<C: Packet>(ctx: &C, flow: &Flow, e: &CtEntry) -> Result<(), RewriteError> {
    if e.frontend_addr != flow.saddr {
        ctx.rewrite_addr(IP_SRC_OFF, flow.saddr, e.frontend_addr, flow.l4)?;
    }
    if e.frontend_port != flow.sport {
        ctx.rewrite_port(L4_SPORT_OFF, flow.sport, e.frontend_port, flow.l4)?;
    }
    if e.flags & CT_F_MASQ != 0 {
        if e.client_addr != flow.daddr {
            ctx.rewrite_addr(IP_DST_OFF, flow.daddr, e.client_addr, flow.l4)?;
        }
        if e.client_port != flow.dport {
            ctx.rewrite_port(L4_DPORT_OFF, flow.dport, e.client_port, flow.l4)?;
        }
    }
    Ok(())
}
