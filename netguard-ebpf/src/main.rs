//! netguard's kernel programs.
//!
//! Every program finds the policy of the traffic's cgroup (the nearest ancestor with an
//! entry in `NG_POLICY`, see [`policy::find_policy`]), computes one verdict with
//! [`policy::decide`] and settles it with [`account::settle`], which counts it and reports a
//! block. Traffic of cgroups without a policy is not netguard's: it passes untouched.
#![no_std]
#![no_main]

mod account;
mod classify;
mod maps;
mod packet;
mod policy;

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_sock_addr},
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_skb_ancestor_cgroup_id,
    },
    macros::{cgroup_skb, cgroup_sock_addr, classifier, tracepoint},
    programs::{SkBuffContext, SockAddrContext, TcContext, TracePointContext},
};
use netguard_common::{
    BlockReason, CgroupPolicy, FAMILY_V4, FAMILY_V6, Hook,
    parse::{ETH_P_ARP, Flow, parse_ip},
};

use crate::{
    account::{counters, settle},
    maps::{BACKSTOP, POLICY},
    packet::Buffer,
    policy::{Route, decide, find_policy},
};

const SKB_PASS: i32 = 1;
const SKB_DROP: i32 = 0;
const SOCK_ALLOW: i32 = 1;
const SOCK_REFUSE: i32 = 0;
const TC_NEXT: i32 = TC_ACT_UNSPEC;
const TC_DROP: i32 = TC_ACT_SHOT;
/// Ethernet header in front of the IP packet on a veth.
const ETH_HLEN: usize = 14;

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
    // SAFETY: helper on the program's own context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(skb.cast()) };
    let flow = parse_ip(&Buffer(&ctx.skb), 0, protocol);
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
        Err(_) if policy.is_protected() => Err(BlockReason::Malformed),
        Err(_) => Ok(()),
    };
    if settle(cgroup, verdict, flow.as_ref().ok(), Hook::Egress, ctx.len()) {
        SKB_PASS
    } else {
        SKB_DROP
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
    let flow = sock_addr_flow(ctx.sock_addr, family);
    let verdict = decide(cgroup, &policy, &flow, Route::NotYetRouted);
    if settle(cgroup, verdict, Some(&flow), hook, 0) {
        SOCK_ALLOW
    } else {
        SOCK_REFUSE
    }
}

/// The destination of a `connect()`/`sendto()` call.
#[inline(always)]
fn sock_addr_flow(sa: *mut bpf_sock_addr, family: u8) -> Flow {
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
    flow
}

/// The raw-socket backstop, on TC ingress of the host-side veth of a protected network
/// namespace: every frame leaving that namespace, including AF_PACKET frames that never
/// met a socket hook, must go to an allowed destination.
#[classifier]
pub fn ng_backstop(ctx: TcContext) -> i32 {
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // IP packet length, as everywhere else.
    let bytes = ctx.len().saturating_sub(ETH_HLEN as u32);
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
        match (
            unsafe { POLICY.get(cgroup) },
            parse_ip(&Buffer(&ctx.skb), ETH_HLEN, ethertype),
        ) {
            (None, flow) => (flow.ok(), Err(BlockReason::Unclassified)),
            (Some(policy), Ok(flow)) => (
                Some(flow),
                decide(cgroup, policy, &flow, Route::OutsideTunnel),
            ),
            (Some(policy), Err(_)) if policy.is_protected() => (None, Err(BlockReason::Malformed)),
            (Some(_), Err(_)) => (None, Ok(())),
        }
    };
    if settle(cgroup, verdict, flow.as_ref(), Hook::Backstop, bytes) {
        TC_NEXT
    } else {
        TC_DROP
    }
}

/// Classifies every new container cgroup before a process can join it (see `classify`).
#[tracepoint]
pub fn ng_cgroup_mkdir(ctx: TracePointContext) -> u32 {
    classify::classify_new_cgroup(&ctx);
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
