//! netguard's kernel programs.
//!
//! Every program finds the policy of the traffic's cgroup (the nearest ancestor with an
//! entry in `NG_POLICY`), computes one verdict with [`policy::decide`] and counts it.
//! Traffic of cgroups without a policy is not netguard's: it passes untouched.
#![no_std]
#![no_main]

mod account;
mod classify;
mod parse;
mod policy;

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_sock_addr},
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_skb_ancestor_cgroup_id,
    },
    macros::{cgroup_skb, cgroup_sock_addr, classifier, map, tracepoint},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{SkBuffContext, SockAddrContext, TcContext, TracePointContext},
};
use netguard_common::{
    BlockReason, CgroupPolicy, ContainerKey, Counters, EndpointKey, EventBudget, FAMILY_V4,
    FAMILY_V6, GatewayState, Hook, MAX_CGROUP_DEPTH, MAX_GATEWAYS, PATH_SCRATCH_LEN, ScopedV4,
    ScopedV6,
};

use crate::{
    account::{count_block, count_refusal, counters, report},
    parse::{ETH_P_ARP, Flow, parse_ip},
    policy::{Route, decide},
};

const BPF_F_NO_PREALLOC: u32 = 1;
const MAX_POLICIES: u32 = 65_536;
const MAX_CIDRS: u32 = 65_536;

#[map(name = "NG_POLICY")]
static POLICY: HashMap<u64, CgroupPolicy> = HashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "NG_INTERNAL_V4")]
static INTERNAL_V4: LpmTrie<ScopedV4, u32> =
    LpmTrie::with_max_entries(MAX_CIDRS, BPF_F_NO_PREALLOC);
#[map(name = "NG_INTERNAL_V6")]
static INTERNAL_V6: LpmTrie<ScopedV6, u32> =
    LpmTrie::with_max_entries(MAX_CIDRS, BPF_F_NO_PREALLOC);
#[map(name = "NG_ENDPOINTS")]
static ENDPOINTS: HashMap<EndpointKey, u32> = HashMap::with_max_entries(4096, 0);
#[map(name = "NG_GATEWAYS")]
static GATEWAYS: Array<GatewayState> = Array::with_max_entries(MAX_GATEWAYS, 0);
#[map(name = "NG_BACKSTOP")]
static BACKSTOP: HashMap<u32, u64> = HashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "NG_COUNTERS")]
static COUNTERS: PerCpuHashMap<u64, Counters> = PerCpuHashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "NG_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
#[map(name = "NG_EVENT_BUDGET")]
static EVENT_BUDGET: LruHashMap<u64, EventBudget> = LruHashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "NG_META")]
static META: Array<u64> = Array::with_max_entries(1, 0);
#[map(name = "NG_CONTAINERS")]
static CONTAINERS: HashMap<ContainerKey, CgroupPolicy> = HashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "NG_PATH_SCRATCH")]
static PATH_SCRATCH: PerCpuArray<[u8; PATH_SCRATCH_LEN]> = PerCpuArray::with_max_entries(1, 0);

const SKB_PASS: i32 = 1;
const SKB_DROP: i32 = 0;
const SOCK_ALLOW: i32 = 1;
const SOCK_REFUSE: i32 = 0;

/// The policy that applies to a cgroup: the shallowest protected one among it and its
/// ancestors (so no entry below a protected cgroup, count-only or not, can loosen it), else
/// the shallowest count-only one. Returns the owning cgroup's id with it.
#[inline(always)]
fn find_policy(ancestor: impl Fn(i32) -> u64) -> Option<(u64, CgroupPolicy)> {
    let mut counted_only = None;
    for level in 1..=MAX_CGROUP_DEPTH {
        let id = ancestor(level);
        if id == 0 {
            break;
        }
        // SAFETY: the value is copied out at once.
        if let Some(policy) = unsafe { POLICY.get(id) } {
            if policy.is_protected() {
                return Some((id, *policy));
            }
            if counted_only.is_none() {
                counted_only = Some((id, *policy));
            }
        }
    }
    counted_only
}

#[inline(always)]
fn skb_policy(skb: *mut __sk_buff) -> Option<(u64, CgroupPolicy)> {
    // SAFETY: helper on the program's own context.
    find_policy(|level| unsafe { bpf_skb_ancestor_cgroup_id(skb, level) })
}

#[cgroup_skb(egress)]
pub fn ng_egress(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    let Some((cgroup, policy)) = skb_policy(skb) else {
        return SKB_PASS;
    };
    // SAFETY: reading fields of the program's own context.
    let (protocol, ifindex) = unsafe { (u16::from_be((*skb).protocol as u16), (*skb).ifindex) };
    let netns_cookie = unsafe { bpf_get_netns_cookie(skb.cast()) };
    let bytes = ctx.len();
    let flow = parse_ip(&ctx, 0, protocol);
    let verdict = match &flow {
        Ok(flow) => decide(
            cgroup,
            &policy,
            flow,
            Route::Device {
                ifindex,
                netns_cookie,
            },
        ),
        Err(()) if policy.is_protected() => Err(BlockReason::Malformed),
        Err(()) => Ok(()),
    };
    let mut counters = counters(cgroup);
    match verdict {
        Ok(()) => {
            if let Some(c) = counters {
                c.tx_packets += 1;
                c.tx_bytes += u64::from(bytes);
            }
            SKB_PASS
        }
        Err(reason) => {
            if let Some(c) = counters.as_deref_mut() {
                count_block(c, reason, u64::from(bytes));
            }
            report(
                cgroup,
                flow.as_ref().ok(),
                reason,
                Hook::Egress,
                bytes,
                counters,
            );
            SKB_DROP
        }
    }
}

/// Counts what the cgroup's sockets receive. Never drops.
#[cgroup_skb(ingress)]
pub fn ng_ingress(ctx: SkBuffContext) -> i32 {
    if let Some((cgroup, _)) = skb_policy(ctx.skb.skb)
        && let Some(c) = counters(cgroup)
    {
        c.rx_packets += 1;
        c.rx_bytes += u64::from(ctx.len());
    }
    SKB_PASS
}

#[cgroup_sock_addr(connect4)]
pub fn ng_connect4(ctx: SockAddrContext) -> i32 {
    check_sock_addr(&ctx, FAMILY_V4, Hook::Connect)
}

#[cgroup_sock_addr(connect6)]
pub fn ng_connect6(ctx: SockAddrContext) -> i32 {
    check_sock_addr(&ctx, FAMILY_V6, Hook::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn ng_sendmsg4(ctx: SockAddrContext) -> i32 {
    check_sock_addr(&ctx, FAMILY_V4, Hook::Sendmsg)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn ng_sendmsg6(ctx: SockAddrContext) -> i32 {
    check_sock_addr(&ctx, FAMILY_V6, Hook::Sendmsg)
}

/// Refuses `connect()`/`sendto()` to a destination the egress hook would drop, so the
/// application gets EPERM at once instead of retrying SYNs into a black hole.
#[inline(always)]
fn check_sock_addr(ctx: &SockAddrContext, family: u8, hook: Hook) -> i32 {
    // SAFETY: helper callable from cgroup sock_addr programs.
    let Some((cgroup, policy)) =
        find_policy(|level| unsafe { bpf_get_current_ancestor_cgroup_id(level) })
    else {
        return SOCK_ALLOW;
    };
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: reading fields of the program's own context.
    let (ip4, ip6, port, proto) = unsafe {
        (
            (*sa).user_ip4,
            (*sa).user_ip6,
            (*sa).user_port,
            (*sa).protocol,
        )
    };
    let mut flow = Flow {
        family,
        addr: [0; 16],
        proto: proto as u8,
        port: u16::from_be(port as u16),
        port_known: true,
    };
    if family == FAMILY_V4 {
        flow.addr[..4].copy_from_slice(&ip4.to_ne_bytes());
    } else {
        let mut bytes = [0u8; 16];
        for (i, word) in ip6.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        // An IPv4-mapped address on an IPv6 socket leaves as IPv4: judge it as IPv4.
        if bytes[..10] == [0; 10] && bytes[10] == 0xff && bytes[11] == 0xff {
            flow.family = FAMILY_V4;
            flow.addr[..4].copy_from_slice(&bytes[12..16]);
        } else {
            flow.addr = bytes;
        }
    }
    match decide(cgroup, &policy, &flow, Route::NotYetRouted) {
        Ok(()) => SOCK_ALLOW,
        Err(reason) => {
            let mut counters = counters(cgroup);
            if let Some(c) = counters.as_deref_mut() {
                count_refusal(c, reason);
            }
            report(cgroup, Some(&flow), reason, hook, 0, counters);
            SOCK_REFUSE
        }
    }
}

/// The raw-socket backstop, on TC ingress of the host-side veth of a protected network
/// namespace: every frame leaving that namespace, including AF_PACKET frames that never
/// met a socket hook, must go to an allowed destination.
#[classifier]
pub fn ng_backstop(ctx: TcContext) -> i32 {
    const TC_NEXT: i32 = TC_ACT_UNSPEC;
    const TC_DROP: i32 = TC_ACT_SHOT;
    let skb = ctx.skb.skb;
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*skb).ifindex };
    // IP packet length, as everywhere else (frames carry a 14-byte Ethernet header).
    let bytes = ctx.len().saturating_sub(14);
    // Attached only where the agent registered the interface; no entry means the entry
    // was removed or never written: fail closed.
    // SAFETY: the value is copied out at once.
    let Some(cgroup) = (unsafe { BACKSTOP.get(ifindex) }).copied() else {
        return TC_DROP;
    };
    let ethertype = match ctx.load::<[u8; 2]>(12) {
        Ok(bytes) => u16::from_be_bytes(bytes),
        Err(_) => 0,
    };
    let (flow, verdict) = if ethertype == ETH_P_ARP {
        (None, Ok(()))
    } else {
        // SAFETY: the value is copied out at once.
        match (unsafe { POLICY.get(cgroup) }, parse_ip(&ctx, 14, ethertype)) {
            (None, flow) => (flow.ok(), Err(BlockReason::Unclassified)),
            (Some(policy), Ok(flow)) => (
                Some(flow),
                decide(cgroup, policy, &flow, Route::OutsideTunnel),
            ),
            (Some(policy), Err(())) if policy.is_protected() => (None, Err(BlockReason::Malformed)),
            (Some(_), Err(())) => (None, Ok(())),
        }
    };
    match verdict {
        Ok(()) => TC_NEXT,
        Err(reason) => {
            let mut counters = counters(cgroup);
            if let Some(c) = counters.as_deref_mut() {
                count_block(c, reason, u64::from(bytes));
            }
            report(
                cgroup,
                flow.as_ref(),
                reason,
                Hook::Backstop,
                bytes,
                counters,
            );
            TC_DROP
        }
    }
}

/// Classifies every new container cgroup before a process can join it (see `classify`).
#[tracepoint]
pub fn ng_cgroup_mkdir(ctx: TracePointContext) -> u32 {
    let _ = classify::classify_new_cgroup(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
