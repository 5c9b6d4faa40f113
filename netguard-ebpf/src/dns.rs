//! DNS steering. A protected container's DNS (see [`crate::policy::is_dns`]) never leaves for
//! the address it asked: `connect()`/`sendto()` are rewritten to netguard's resolver, which
//! the agent runs on loopback inside the container's own network namespace. So neither a LAN
//! resolver nor Docker's embedded one (which forwards with dockerd's sockets, from the
//! container's namespace up to Docker 27 and from the host's after) ever sees the query.
//! Without a resolver in that namespace the call is refused. Answers are given back the
//! source the program asked, so resolver libraries that check it accept them.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
};
use netguard_common::{DnsPeer, DnsPortKey, FAMILY_V4, RESOLVER_V4, parse::Flow};

use crate::{
    maps::{DNS, DNS_PEERS, DNS_PORTS},
    policy::is_loopback,
};

/// `::ffff:0:0/96`, the IPv4-mapped prefix, as the third word of an IPv6 address.
const MAPPED_WORD: u32 = 0x0000_ffff_u32.to_be();
/// The last word of `::1`.
const LOOPBACK_WORD: u32 = 1_u32.to_be();

/// Rewrites the destination of DNS from `cgroup` (protected) to its resolver; `false` when it
/// has none in the calling socket's namespace (the call is then refused). `socket_v6`: the
/// hook is connect6/sendmsg6.
#[inline(always)]
pub fn steer(sa: *mut bpf_sock_addr, cgroup: u64, flow: &Flow, socket_v6: bool) -> bool {
    // SAFETY: the value is copied out at once.
    let Some(resolver) = (unsafe { DNS.get(cgroup) }).copied() else {
        return false;
    };
    // SAFETY: helpers on the program's own context.
    let (netns, cookie) = unsafe {
        (
            bpf_get_netns_cookie(sa.cast()),
            bpf_get_socket_cookie(sa.cast()),
        )
    };
    if resolver.netns_cookie != netns {
        return false;
    }
    let port = if flow.family == FAMILY_V4 {
        resolver.port_v4
    } else {
        resolver.port_v6
    };
    if port == 0 {
        return false;
    }
    let peer = DnsPeer {
        addr: flow.addr,
        port: flow.port,
        steered_port: port,
        family: flow.family,
        _pad: [0; 3],
    };
    if DNS_PEERS.insert(cookie, peer, 0).is_err() {
        return false;
    }
    let loopback_v4 = u32::from_ne_bytes(RESOLVER_V4);
    // SAFETY: writing the fields the kernel lets these hooks rewrite.
    unsafe {
        if !socket_v6 {
            (*sa).user_ip4 = loopback_v4;
        } else if flow.family == FAMILY_V4 {
            // connect6 to an IPv4-mapped address: to the IPv4 resolver, mapped.
            (*sa).user_ip6[0] = 0;
            (*sa).user_ip6[1] = 0;
            (*sa).user_ip6[2] = MAPPED_WORD;
            (*sa).user_ip6[3] = loopback_v4;
        } else {
            (*sa).user_ip6[0] = 0;
            (*sa).user_ip6[1] = 0;
            (*sa).user_ip6[2] = 0;
            (*sa).user_ip6[3] = LOOPBACK_WORD;
        }
        (*sa).user_port = u32::from(port.to_be());
    }
    true
}

/// An answer from the resolver a socket was steered to reads as coming from the address the
/// program asked (recvmsg4/6; never refuses).
#[inline(always)]
pub fn unsteer(sa: *mut bpf_sock_addr, socket_v6: bool) {
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    // SAFETY: the value is copied out at once.
    let Some(peer) = (unsafe { DNS_PEERS.get(cookie) }).copied() else {
        return;
    };
    let loopback_v4 = u32::from_ne_bytes(RESOLVER_V4);
    let word = |i: usize| {
        u32::from_ne_bytes([
            peer.addr[i * 4],
            peer.addr[i * 4 + 1],
            peer.addr[i * 4 + 2],
            peer.addr[i * 4 + 3],
        ])
    };
    // SAFETY: reading and writing the fields the kernel lets recvmsg hooks rewrite.
    unsafe {
        if u16::from_be((*sa).user_port as u16) != peer.steered_port {
            return;
        }
        let peer_v4 = peer.family == FAMILY_V4;
        if !socket_v6 {
            if !peer_v4 || (*sa).user_ip4 != loopback_v4 {
                return;
            }
            (*sa).user_ip4 = word(0);
        } else {
            let ip6 = (*sa).user_ip6;
            let from_mapped = ip6 == [0, 0, MAPPED_WORD, loopback_v4];
            let from_v6 = ip6 == [0, 0, 0, LOOPBACK_WORD];
            if peer_v4 && from_mapped {
                (*sa).user_ip6[3] = word(0);
            } else if !peer_v4 && from_v6 {
                (*sa).user_ip6[0] = word(0);
                (*sa).user_ip6[1] = word(1);
                (*sa).user_ip6[2] = word(2);
                (*sa).user_ip6[3] = word(3);
            } else {
                return;
            }
        }
        (*sa).user_port = u32::from(peer.port.to_be());
    }
}

/// Whether `flow` from protected `cgroup` goes to another container's resolver in the
/// calling socket's namespace (a neighbour in a shared namespace can read its port in
/// `/proc/net/udp`): that one's upstream is not this one's.
#[inline(always)]
pub fn someone_elses_resolver(sa: *mut bpf_sock_addr, cgroup: u64, flow: &Flow) -> bool {
    if !is_loopback(flow) {
        return false;
    }
    let key = DnsPortKey {
        // SAFETY: helper on the program's own context.
        netns_cookie: unsafe { bpf_get_netns_cookie(sa.cast()) },
        port: flow.port,
        family: flow.family,
        _pad: [0; 5],
    };
    // SAFETY: the value is copied out at once.
    matches!(unsafe { DNS_PORTS.get(key) }, Some(owner) if *owner != cgroup)
}
