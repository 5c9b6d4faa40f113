//! The one decision: which policy applies to a cgroup, and may this flow leave under it?

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::__sk_buff, helpers::generated::bpf_get_netns_cookie, maps::lpm_trie::Key,
};
use netguard_common::{
    BlockReason, CgroupPolicy, DNS_PORT, DOCKER_RESOLVER_V4, EndpointKey, FAMILY_V4,
    MAX_CGROUP_DEPTH, SCOPE_BITS, SCOPE_GLOBAL, ScopedV4, ScopedV6, TUNNEL_UP, TxPath,
    cache::{CachedPolicy, PolicyAt, cache_usable},
    parse::{Flow, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::maps::{
    ENDPOINTS, GATEWAYS, INTERNAL_V4, INTERNAL_V6, POLICY, POLICY_CACHE, POLICY_STAMP,
};

/// The policy that applies to cgroup `own`: the shallowest protected one among it and its
/// ancestors (so no entry below a protected cgroup, count-only or not, can loosen it), else
/// the shallowest count-only one. Returns the owning cgroup's id with it. The walk from the
/// root covers [`MAX_CGROUP_DEPTH`] levels; a cgroup deeper than that is still found by its
/// own entry, so a container's cgroup is enforced at any depth.
///
/// Where the walk found it is kept in `NG_POLICY_CACHE` under the policy stamp, which the
/// agent increments after every write of `NG_POLICY`: until the next write, the cgroup's
/// packets look up one entry instead of one per level.
#[inline(always)]
pub fn find_policy(ancestor: impl Fn(i32) -> u64, own: u64) -> Option<(u64, CgroupPolicy)> {
    // The stamp is read before the policy map, and the agent writes it after: a word
    // written under this stamp saw every policy write before it.
    // SAFETY: an aligned word of an array map, read whole.
    let stamp = POLICY_STAMP
        .get_ptr(0)
        .map_or(0, |ptr| unsafe { read_volatile(ptr) });
    let slot = POLICY_CACHE
        .get_ptr_mut(CachedPolicy::slot(own))
        .filter(|_| cache_usable(stamp));
    if let Some(slot) = slot {
        // SAFETY: as above.
        let word = CachedPolicy(unsafe { read_volatile(slot) });
        let owner = match word.at(stamp, own) {
            Some(PolicyAt::Nowhere) => return None,
            Some(PolicyAt::Level(level)) => ancestor(level),
            Some(PolicyAt::Own) => own,
            // Another cgroup's, or an older stamp's: walk.
            None => 0,
        };
        // An entry gone since the stamp was read: walk.
        if owner != 0
            && let Some(found) = lookup(owner)
        {
            return Some(found);
        }
    }
    let (found, at) = walk(ancestor, own);
    if let Some(slot) = slot {
        // SAFETY: an aligned word of an array map, written whole.
        unsafe { write_volatile(slot, CachedPolicy::new(stamp, own, at).0) };
    }
    found
}

/// [`find_policy`]'s answer from the policy map itself, and where it was found.
#[inline(always)]
fn walk(ancestor: impl Fn(i32) -> u64, own: u64) -> (Option<(u64, CgroupPolicy)>, PolicyAt) {
    let mut counted_only = None;
    let mut reached_own = false;
    for level in 1..=MAX_CGROUP_DEPTH {
        let id = ancestor(level);
        if id == 0 {
            reached_own = true;
            break;
        }
        if let Some(found) = lookup(id) {
            if found.1.is_protected() {
                return (Some(found), PolicyAt::Level(level));
            }
            if counted_only.is_none() {
                counted_only = Some((found, PolicyAt::Level(level)));
            }
        }
    }
    if !reached_own
        && let Some(found) = lookup(own)
        && (found.1.is_protected() || counted_only.is_none())
    {
        return (Some(found), PolicyAt::Own);
    }
    match counted_only {
        Some((found, at)) => (Some(found), at),
        None => (None, PolicyAt::Nowhere),
    }
}

#[inline(always)]
fn lookup(id: u64) -> Option<(u64, CgroupPolicy)> {
    // SAFETY: the value is copied out at once.
    unsafe { POLICY.get(id) }.map(|policy| (id, *policy))
}

/// What is known of the route the flow takes.
#[derive(Clone, Copy)]
pub enum Route {
    /// cgroup_skb egress: the device the packet is leaving through, in the socket's netns.
    Device { ifindex: u32, netns: Netns },
    /// connect()/sendto(): not routed yet. The tunnel allowance applies while the tunnel is
    /// up; the packet is checked again at egress, which is the enforcement of record.
    NotYetRouted,
}

/// The network namespace a packet leaves, known or asked of the packet when needed
/// (`bpf_get_netns_cookie` costs every packet that calls it).
#[derive(Clone, Copy)]
pub enum Netns {
    Cookie(u64),
    OfPacket(*mut __sk_buff),
}

impl Netns {
    #[inline(always)]
    fn cookie(self) -> u64 {
        match self {
            Netns::Cookie(cookie) => cookie,
            // SAFETY: a helper on the running program's own context.
            Netns::OfPacket(skb) => unsafe { bpf_get_netns_cookie(skb.cast()) },
        }
    }
}

/// `Ok(the way it leaves)` to let the flow out, `Err(reason)` to block it. `scope` is the
/// cgroup id owning `policy` (its per-container allowances are stored under that scope).
#[inline(always)]
pub fn decide(
    scope: u64,
    policy: &CgroupPolicy,
    flow: &Flow,
    route: Route,
) -> Result<TxPath, BlockReason> {
    if !policy.is_protected() {
        return Ok(TxPath::Direct);
    }
    // A protected container's DNS goes to netguard's resolver only, steered there by the
    // socket hooks; what reaches this point as DNS skipped them (or found no resolver).
    if is_dns(flow) {
        return Err(BlockReason::Dns);
    }
    // Loopback is internal only on the loopback device: a socket bound to eth0
    // (SO_BINDTODEVICE, IP_UNICAST_IF) sends 127.0.0.1 out through the default route.
    if let Route::Device { ifindex, .. } = route
        && ifindex != LOOPBACK_IFINDEX
        && is_loopback(flow)
    {
        return Err(BlockReason::NotAllowed);
    }
    if is_internal(SCOPE_GLOBAL, flow) || is_internal(scope, flow) {
        return Ok(TxPath::Internal);
    }
    if policy.is_unclassified() {
        return Err(BlockReason::Unclassified);
    }
    if policy.gateway == 0 {
        return Err(BlockReason::NotAllowed);
    }
    if is_endpoint(policy.gateway, flow) {
        return Ok(TxPath::Endpoint);
    }
    // A missing slot is treated as a tunnel that is down: fail closed.
    let Some(gateway) = GATEWAYS.get(policy.gateway) else {
        return Err(BlockReason::TunnelDown);
    };
    if gateway.tunnel_up != TUNNEL_UP {
        return Err(BlockReason::TunnelDown);
    }
    match route {
        Route::NotYetRouted => Ok(TxPath::Tunnel),
        // The namespace is asked last, and only of a packet leaving by the tunnel's index.
        Route::Device { ifindex, netns }
            if gateway.tunnel_ifindex != 0
                && ifindex == gateway.tunnel_ifindex
                && netns.cookie() == gateway.tunnel_netns_cookie =>
        {
            Ok(TxPath::Tunnel)
        }
        Route::Device { .. } => Err(BlockReason::NotAllowed),
    }
}

/// The loopback device's index: the first device of every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Whether `flow` goes to a loopback address (127.0.0.0/8, ::1).
#[inline(always)]
pub fn is_loopback(flow: &Flow) -> bool {
    if flow.family == FAMILY_V4 {
        flow.addr[0] == 127
    } else {
        flow.addr[..15] == [0; 15] && flow.addr[15] == 1
    }
}

/// Whether `flow` is DNS as netguard steers it: TCP or UDP to port 53 (any address: a LAN
/// resolver forwards in the clear), or anything to Docker's embedded resolver (its real
/// port is a random one, and it forwards with dockerd's own sockets, out of netguard's sight).
#[inline(always)]
pub fn is_dns(flow: &Flow) -> bool {
    (flow.port_known
        && flow.port == DNS_PORT
        && (flow.proto == IPPROTO_UDP || flow.proto == IPPROTO_TCP))
        || (flow.family == FAMILY_V4 && flow.addr[..4] == DOCKER_RESOLVER_V4)
}

#[inline(always)]
fn is_internal(scope: u64, flow: &Flow) -> bool {
    let scope = scope.to_be_bytes();
    if flow.family == FAMILY_V4 {
        let mut addr = [0u8; 4];
        addr.copy_from_slice(&flow.addr[..4]);
        let key = Key::new(SCOPE_BITS + 32, ScopedV4 { scope, addr });
        INTERNAL_V4.get(&key).is_some()
    } else {
        let key = Key::new(
            SCOPE_BITS + 128,
            ScopedV6 {
                scope,
                addr: flow.addr,
            },
        );
        INTERNAL_V6.get(&key).is_some()
    }
}

#[inline(always)]
fn is_endpoint(gateway: u32, flow: &Flow) -> bool {
    let mut key = EndpointKey {
        gateway,
        port: 0,
        proto: flow.proto,
        family: flow.family,
        addr: flow.addr,
    };
    // SAFETY: plain lookups; the values are never dereferenced.
    if unsafe { ENDPOINTS.get(key) }.is_some() {
        return true;
    }
    if !flow.port_known {
        return false;
    }
    key.port = flow.port;
    unsafe { ENDPOINTS.get(key) }.is_some()
}
