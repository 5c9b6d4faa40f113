//! netguard's kernel programs.
//!
//! Every program finds the policy of the traffic's cgroup (the nearest ancestor with an
//! entry in `NG_POLICY`, see [`policy::find_policy`]), computes one verdict with
//! [`policy::decide`] and settles it with [`account::settle`], which counts it and reports a
//! block. Traffic of cgroups without a policy is not netguard's: it passes untouched.
#![no_std]
#![no_main]

mod abi;
mod account;
mod classify;
mod dns;
mod maps;
mod packet;
mod policy;

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_SHOT, TC_ACT_UNSPEC, bpf_sock_addr},
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id,
            bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_socket_cookie,
            bpf_ktime_get_ns, bpf_send_signal, bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id,
        },
    },
    macros::{btf_tracepoint, cgroup_skb, cgroup_sock_addr, cgroup_sockopt, classifier},
    programs::{BtfTracePointContext, SkBuffContext, SockAddrContext, SockoptContext, TcContext},
};
use netguard_common::{
    BlockReason, CarrierKey, CgroupPolicy, FAMILY_V4, FAMILY_V6, Hook, IfaceKey, StoppedTask,
    TxPath,
    parse::{ETH_P_ARP, Flow, IPPROTO_UDP, parse_ip},
};

use crate::{
    account::{counters, settle},
    maps::{AGENT_SOCKETS, BACKSTOP, CARRIERS, GUARDED_IFACES, KERNEL_LAYOUT, POLICY, STOPPED},
    packet::Buffer,
    policy::{Netns, Route, decide, find_policy},
};

const SKB_PASS: i32 = 1;
const SKB_DROP: i32 = 0;
const SOCK_ALLOW: i32 = 1;
const SOCK_REFUSE: i32 = 0;
const TC_NEXT: i32 = TC_ACT_UNSPEC;
const TC_DROP: i32 = TC_ACT_SHOT;
/// Ethernet header in front of the IP packet (the backstop is only on Ethernet devices).
const ETH_HLEN: usize = 14;

const AF_PACKET: u32 = 17;
const AF_INET: u32 = 2;
/// The old way to a packet socket: `socket(AF_INET, SOCK_PACKET, ...)`.
const SOCK_PACKET: u32 = 10;
const SIGSTOP: u32 = 19;
const SIGKILL: u32 = 9;
const SOL_PACKET: i32 = 263;
const PACKET_QDISC_BYPASS: i32 = 20;
const SOL_XDP: i32 = 283;

/// The policy of the cgroup of the packet's socket.
#[inline(always)]
fn skb_policy(skb: *mut __sk_buff) -> Option<(u64, CgroupPolicy)> {
    // SAFETY: helpers on the program's own context.
    let own = unsafe { bpf_skb_cgroup_id(skb) };
    find_policy(
        // SAFETY: as above.
        |level| unsafe { bpf_skb_ancestor_cgroup_id(skb, level) },
        own,
    )
}

/// The cgroup whose protected policy applies to the calling task, if one does.
#[inline(always)]
fn current_protected() -> Option<u64> {
    current_policy()
        .filter(|(_, policy)| policy.is_protected())
        .map(|(cgroup, _)| cgroup)
}

/// Counts and reports a call of `cgroup` refused at `hook` (through the one settling path).
#[inline(always)]
fn refuse(cgroup: u64, hook: Hook) {
    settle(cgroup, Err(BlockReason::NotAllowed), None, hook, 0);
}

/// The policy of the calling task's cgroup.
#[inline(always)]
fn current_policy() -> Option<(u64, CgroupPolicy)> {
    // SAFETY: helpers that read the current task's cgroup.
    let own = unsafe { bpf_get_current_cgroup_id() };
    find_policy(
        // SAFETY: as above.
        |level| unsafe { bpf_get_current_ancestor_cgroup_id(level) },
        own,
    )
}

#[cgroup_skb(egress)]
pub fn ng_egress(ctx: SkBuffContext) -> i32 {
    let skb = ctx.skb.skb;
    let Some((cgroup, policy)) = skb_policy(skb) else {
        return SKB_PASS;
    };
    // SAFETY: reading fields of the program's own context.
    let (protocol, ifindex) = unsafe { (u16::from_be((*skb).protocol as u16), (*skb).ifindex) };
    let flow = parse_ip(&Buffer(&ctx.skb), 0, protocol);
    let verdict = match &flow {
        Ok(flow) => decide(
            cgroup,
            &policy,
            flow,
            Route::Device {
                ifindex,
                netns: Netns::OfPacket(skb),
            },
        ),
        Err(_) if policy.is_protected() => Err(BlockReason::Malformed),
        Err(_) => Ok(TxPath::Direct),
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

/// Answers from netguard's resolver read as coming from the resolver the program asked.
#[cgroup_sock_addr(recvmsg4)]
pub fn ng_recvmsg4(ctx: SockAddrContext) -> i32 {
    dns::unsteer(ctx.sock_addr, false);
    SOCK_ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn ng_recvmsg6(ctx: SockAddrContext) -> i32 {
    dns::unsteer(ctx.sock_addr, true);
    SOCK_ALLOW
}

/// Refuses `connect()`/`sendto()` to a destination the egress hook would drop, so the
/// application gets EPERM at once instead of retrying SYNs into a black hole; steers a
/// protected container's DNS to netguard's resolver (see `dns`).
#[inline(always)]
fn check_sock_addr(ctx: &SockAddrContext, family: u8, hook: Hook) -> i32 {
    let Some((cgroup, policy)) = current_policy() else {
        return SOCK_ALLOW;
    };
    let flow = sock_addr_flow(ctx.sock_addr, family);
    let verdict = match decide(cgroup, &policy, &flow, Route::NotYetRouted) {
        // DNS is steered to netguard's resolver, not refused, when the container has one.
        Err(BlockReason::Dns) if dns::steer(ctx.sock_addr, cgroup, &flow, family == FAMILY_V6) => {
            return SOCK_ALLOW;
        }
        Ok(_)
            if policy.is_protected()
                && dns::someone_elses_resolver(ctx.sock_addr, cgroup, &flow) =>
        {
            Err(BlockReason::NotAllowed)
        }
        verdict => verdict,
    };
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

/// The backstop, on TC egress of every interface of a guarded network namespace (one with
/// a protected process): frames that never met a socket hook (AF_PACKET, raw and dgram,
/// through TX rings) still carry their socket there, so each is judged by its sender's
/// policy. Unprotected senders (a gateway, a neighbour) pass. Frames the kernel sends on
/// nobody's behalf (RST, ICMP errors, answers to what reached the namespace) are judged by
/// the namespace's protected policy when it has one; a kernel tunnel's carrier to one of
/// its peers passes whoever the sender. This one is for Ethernet devices.
#[classifier]
pub fn ng_backstop(ctx: TcContext) -> i32 {
    let ethertype = match ctx.load::<[u8; 2]>(12) {
        Ok(bytes) => u16::from_be_bytes(bytes),
        Err(_) => 0,
    };
    let mac = ctx.load::<[u8; 6]>(6).ok();
    backstop(&ctx, ETH_HLEN, ethertype, mac)
}

/// The backstop for devices without a link-layer header (tun, WireGuard, ppp): the packet
/// starts at the IP header; the agent registers such an interface with an all-zero MAC.
#[classifier]
pub fn ng_backstop_l3(ctx: TcContext) -> i32 {
    // SAFETY: reading a field of the program's own context.
    let protocol = u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16);
    backstop(&ctx, 0, protocol, Some([0; 6]))
}

/// The backstop's verdict on a packet at `offset` of ethertype `ethertype` leaving the
/// interface whose MAC address is `mac` (as far as the frame says).
#[inline(always)]
fn backstop(ctx: &TcContext, offset: usize, ethertype: u16, mac: Option<[u8; 6]>) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: helper on the program's own context.
    let own = unsafe { bpf_skb_cgroup_id(skb) };
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*skb).ifindex };
    // Looked up only for frames the backstop judges (not an unprotected sender's).
    let lookup_netns = || mac.and_then(|mac| interface_netns(ifindex, mac));
    let (cgroup, policy, by_sender, netns_cookie) = match find_policy(
        // SAFETY: as above.
        |level| unsafe { bpf_skb_ancestor_cgroup_id(skb, level) },
        own,
    ) {
        Some((cgroup, policy)) if policy.is_protected() => (cgroup, policy, true, lookup_netns()),
        Some(_) => return TC_NEXT,
        None if !sent_by_kernel(own) || agent_socket(skb) => return TC_NEXT,
        None => {
            let netns_cookie = lookup_netns();
            match netns_cookie.and_then(socketless_policy) {
                Some((cgroup, policy)) => (cgroup, policy, false, netns_cookie),
                None => return TC_NEXT,
            }
        }
    };
    let flow = if ethertype == ETH_P_ARP {
        // The kernel's own address resolution passes; a protected process's ARP frame (it
        // can carry anything to any neighbour) does not.
        if !by_sender {
            return TC_NEXT;
        }
        Err(BlockReason::NotAllowed)
    } else {
        parse_ip(&Buffer(&ctx.skb), offset, ethertype).map_err(|_| BlockReason::Malformed)
    };
    if let (Ok(flow), Some(cookie)) = (&flow, netns_cookie)
        && is_carrier(cookie, flow)
    {
        return TC_NEXT;
    }
    let verdict = match &flow {
        Ok(flow) => decide(
            cgroup,
            &policy,
            flow,
            Route::Device {
                ifindex,
                netns: Netns::Cookie(netns_cookie.unwrap_or(0)),
            },
        ),
        Err(reason) => Err(*reason),
    };
    // IP packet length, as everywhere else.
    let bytes = ctx.len().saturating_sub(offset as u32);
    if settle(cgroup, verdict, flow.as_ref().ok(), Hook::Backstop, bytes) {
        TC_NEXT
    } else {
        TC_DROP
    }
}

/// The guarded namespace a frame leaves, by its interface's index and the interface's own
/// MAC address as the frame's source (every frame the kernel builds there carries it).
#[inline(always)]
fn interface_netns(ifindex: u32, mac: [u8; 6]) -> Option<u64> {
    let key = IfaceKey {
        ifindex,
        mac,
        _pad: [0; 2],
    };
    // SAFETY: the value is copied out at once.
    unsafe { GUARDED_IFACES.get(key) }.copied()
}

/// Whether the frame was built by the kernel itself: no socket, or one of the kernel's own
/// (whose cgroup is the root).
#[inline(always)]
fn sent_by_kernel(own: u64) -> bool {
    own == 0
        || KERNEL_LAYOUT
            .get(0)
            .is_some_and(|l| l.root_cgroup_id == own)
}

/// Whether the frame's socket is one of the agent's own (its resolver forwarding a query from
/// a gateway's namespace): an agent in the root cgroup would otherwise look like the kernel.
#[inline(always)]
fn agent_socket(skb: *mut __sk_buff) -> bool {
    // SAFETY: helper on the program's own context; 0 when the frame has no socket.
    let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
    // SAFETY: a plain lookup; the value is never dereferenced.
    cookie != 0 && unsafe { AGENT_SOCKETS.get(cookie) }.is_some()
}

/// The protected policy that judges what the kernel sends in namespace `cookie`, if any.
#[inline(always)]
fn socketless_policy(cookie: u64) -> Option<(u64, CgroupPolicy)> {
    // SAFETY: the values are copied out at once.
    let cgroup = unsafe { BACKSTOP.get(cookie) }?.socketless_cgroup;
    let policy = *unsafe { POLICY.get(cgroup) }?;
    policy.is_protected().then_some((cgroup, policy))
}

/// Whether `flow` is the encrypted carrier of a kernel tunnel of namespace `cookie` (kernel
/// WireGuard to one of its peers): it keeps the socket of the packet it carries, or has none.
#[inline(always)]
fn is_carrier(netns_cookie: u64, flow: &Flow) -> bool {
    if flow.proto != IPPROTO_UDP || !flow.port_known {
        return false;
    }
    let key = CarrierKey {
        netns_cookie,
        addr: flow.addr,
        port: flow.port,
        family: flow.family,
        _pad: [0; 5],
    };
    // SAFETY: a plain lookup; the value is never dereferenced.
    unsafe { CARRIERS.get(key) }.is_some()
}

/// The raw-socket guard, on the `sys_enter` tracepoint (no cgroup hook sees AF_PACKET
/// sockets being made, and cgroup setsockopt programs never see compat calls). A protected
/// process that opens a packet socket in a namespace whose backstop is not in place yet (a
/// container's first instant, before the agent has attached it) is stopped (SIGSTOP, which
/// it cannot catch) as its `socket()` call begins, before it can use the socket; the agent
/// continues it (SIGCONT) once the backstop is there. This holds ordinary programs; a
/// container bent on it can continue itself (see the README's limitations). A protected
/// compat process that sets an option skipping TC is killed.
#[btf_tracepoint(function = "sys_enter")]
pub fn ng_sock_create(ctx: BtfTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    // Every system call passes here: one comparison for all but the few that matter.
    if !abi::maybe(id) {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    match socket_call(regs, id) {
        Some(SocketCall::PacketSocket) => hold_raw_socket(),
        Some(SocketCall::CompatSetsockopt { level, optname }) if bypasses_tc(level, optname) => {
            refuse_compat_bypass()
        }
        // Its arguments are in user memory, which another thread may change once read here:
        // a protected 32-bit program may not set socket options through it at all.
        Some(SocketCall::MultiplexedSetsockopt) => refuse_compat_bypass(),
        _ => {}
    }
    0
}

/// What a socket-related system call does, as far as the guard cares.
enum SocketCall {
    /// Makes a packet socket (AF_PACKET, or AF_INET with the old SOCK_PACKET type), or a
    /// socket whose family could not be read.
    PacketSocket,
    /// Makes some other socket.
    OtherSocket,
    /// A compat program sets a socket option (cgroup setsockopt programs never see it).
    CompatSetsockopt { level: i32, optname: i32 },
    /// The same through ia32 `socketcall`.
    MultiplexedSetsockopt,
}

/// Whether a socket option would let frames skip TC (see [`ng_setsockopt`]).
#[inline(always)]
fn bypasses_tc(level: i32, optname: i32) -> bool {
    (level == SOL_PACKET && optname == PACKET_QDISC_BYPASS) || level == SOL_XDP
}

/// Whether `socket(family, kind, ...)` makes a packet socket.
#[inline(always)]
fn packet_socket(family: u64, kind: u64) -> bool {
    family as u32 == AF_PACKET || (family as u32 == AF_INET && kind as u32 & 0xf == SOCK_PACKET)
}

/// Stops a protected process that makes an AF_PACKET socket in a namespace without its
/// backstop, until the agent continues it.
#[inline(always)]
fn hold_raw_socket() {
    let Some(cgroup) = current_protected() else {
        return;
    };
    let cookie = current_netns_cookie().unwrap_or(0);
    // SAFETY: the value is only tested.
    if cookie != 0 && unsafe { BACKSTOP.get(cookie) }.is_some() {
        return;
    }
    let task = StoppedTask {
        // SAFETY: helper reading the current task's cgroup.
        own_cgroup: unsafe { bpf_get_current_cgroup_id() },
        policy_cgroup: cgroup,
        netns_cookie: cookie,
        // SAFETY: plain helper.
        stopped_at_ns: unsafe { bpf_ktime_get_ns() },
    };
    // SAFETY: helper reading the current task's ids.
    let tgid = (unsafe { bpf_get_current_pid_tgid() } >> 32) as u32;
    let _ = STOPPED.insert(tgid, task, 0);
    // SAFETY: signals the current process (its whole thread group).
    unsafe { bpf_send_signal(SIGSTOP) };
    refuse(cgroup, Hook::SockCreate);
}

/// A protected 32-bit process setting an option that skips TC: the call cannot be refused
/// from here, so the process is killed before it returns to user space.
#[inline(always)]
fn refuse_compat_bypass() {
    let Some(cgroup) = current_protected() else {
        return;
    };
    // SAFETY: signals the current process (its whole thread group).
    unsafe { bpf_send_signal(SIGKILL) };
    refuse(cgroup, Hook::Setsockopt);
}

/// What system call `id` does, read from its arguments. `None` when it does not matter (or,
/// for a call that may make a socket, never: an unreadable family counts as a packet one).
#[inline(always)]
fn socket_call(regs: u64, id: i64) -> Option<SocketCall> {
    let layout = KERNEL_LAYOUT.get(0).filter(|l| l.valid != 0)?;
    // SAFETY: reads through bpf_probe_read_kernel/user, which cope with any address.
    unsafe {
        let task = bpf_get_current_task();
        let flags: u32 =
            bpf_probe_read_kernel((task + u64::from(layout.compat_flag_offset)) as *const u32)
                .ok()?;
        let compat = flags & layout.compat_flag_mask != 0;
        let word = |at: u64| bpf_probe_read_kernel((regs + at) as *const u64).ok();
        let user = |at: u64| bpf_probe_read_user(at as *const u32).ok().map(u64::from);
        let socket = |family: Option<u64>, kind: Option<u64>| match (family, kind) {
            (Some(family), Some(kind)) if !packet_socket(family, kind) => SocketCall::OtherSocket,
            _ => SocketCall::PacketSocket,
        };
        match abi::call(id, compat)? {
            abi::Call::Socket { family_at, type_at } => {
                Some(socket(word(family_at), word(type_at)))
            }
            abi::Call::CompatSetsockopt {
                level_at,
                optname_at,
            } => Some(SocketCall::CompatSetsockopt {
                level: word(level_at)? as i32,
                optname: word(optname_at)? as i32,
            }),
            abi::Call::Multiplexed { call_at, args_at } => {
                let args = word(args_at).unwrap_or(0) & 0xffff_ffff;
                match word(call_at)? {
                    abi::SOCKETCALL_SOCKET => Some(socket(user(args), user(args + 4))),
                    abi::SOCKETCALL_SETSOCKOPT => Some(SocketCall::MultiplexedSetsockopt),
                    _ => None,
                }
            }
        }
    }
}

/// The current task's network namespace cookie (`current->nsproxy->net_ns->net_cookie`),
/// through the offsets the agent read from the kernel's BTF.
#[inline(always)]
fn current_netns_cookie() -> Option<u64> {
    let layout = KERNEL_LAYOUT.get(0).filter(|l| l.valid != 0)?;
    // SAFETY: helper returning the current task; reads through bpf_probe_read_kernel, which
    // copes with any address.
    unsafe {
        let task = bpf_get_current_task();
        let nsproxy: u64 =
            bpf_probe_read_kernel((task + u64::from(layout.task_nsproxy)) as *const u64).ok()?;
        let net: u64 =
            bpf_probe_read_kernel((nsproxy + u64::from(layout.nsproxy_net_ns)) as *const u64)
                .ok()?;
        bpf_probe_read_kernel((net + u64::from(layout.net_cookie)) as *const u64).ok()
    }
}

/// Two ways to send frames straight to the driver, past TC and so past the backstop: a
/// packet socket's `PACKET_QDISC_BYPASS`, and AF_XDP sockets (which need `SOL_XDP` options,
/// the UMEM first, before they can send). A protected cgroup may set neither.
#[cgroup_sockopt(setsockopt)]
pub fn ng_setsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: reading fields of the program's own context.
    let (level, optname) = unsafe { ((*ctx.sockopt).level, (*ctx.sockopt).optname) };
    if !bypasses_tc(level, optname) {
        return SOCK_ALLOW;
    }
    match current_protected() {
        Some(cgroup) => {
            refuse(cgroup, Hook::Setsockopt);
            SOCK_REFUSE
        }
        None => SOCK_ALLOW,
    }
}

/// Classifies every new container cgroup before a process can join it (see `classify`).
#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn ng_cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
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
