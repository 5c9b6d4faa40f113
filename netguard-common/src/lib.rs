//! Map keys and values shared by netguard's kernel programs and its agent.
//!
//! Every type is `#[repr(C)]` with explicit padding so that the kernel and user space agree
//! byte for byte; flags are `u32` rather than `bool` so that no `Pod` type has implicit
//! padding. Changing a layout here changes [`DATAPATH_ABI`].
#![no_std]

pub mod cache;
pub mod parse;

/// Layout version of the pinned maps. A pinned datapath whose version differs is not adopted.
pub const DATAPATH_ABI: u64 = 8;

/// How many cgroup levels below the root the programs walk for a policy; a cgroup deeper than
/// that is still found by its own entry.
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// Policy keys held in reserve: entries under keys no cgroup can have, which the classifier
/// frees when the policy map is full so that a new container's cgroup still gets its entry.
/// The agent puts them back.
pub const RESERVED_POLICY_KEYS: u64 = 64;

/// The `i`-th reserved policy key (no cgroup id comes near `u64::MAX`).
pub const fn reserved_policy_key(i: u64) -> u64 {
    u64::MAX - i
}

/// Whether `key` is a reserved policy key rather than a cgroup id.
pub const fn is_reserved_policy_key(key: u64) -> bool {
    key > u64::MAX - RESERVED_POLICY_KEYS
}

/// Gateway slots in [`maps::GATEWAYS`]; slot 0 means "no gateway".
pub const MAX_GATEWAYS: u32 = 256;

/// Blocked-flow events a cgroup may emit per second before they are suppressed (still counted).
pub const EVENTS_PER_SECOND: u64 = 64;

/// Names of the maps, as they appear in the eBPF object and under the pin directory.
pub mod maps {
    /// Per-cgroup policy: `u64` cgroup id -> [`crate::CgroupPolicy`].
    pub const POLICY: &str = "NG_POLICY";
    /// Internal IPv4 destinations: LPM `[scope | addr]` ([`crate::ScopedV4`]) -> `u32` (unused).
    pub const INTERNAL_V4: &str = "NG_INTERNAL_V4";
    /// Internal IPv6 destinations: LPM `[scope | addr]` ([`crate::ScopedV6`]) -> `u32`.
    pub const INTERNAL_V6: &str = "NG_INTERNAL_V6";
    /// VPN endpoints: [`crate::EndpointKey`] -> `u32` (unused).
    pub const ENDPOINTS: &str = "NG_ENDPOINTS";
    /// Gateway slots: array of [`crate::GatewayState`].
    pub const GATEWAYS: &str = "NG_GATEWAYS";
    /// Guarded network namespaces: `u64` netns cookie -> [`crate::NetnsGuard`]. A namespace
    /// with an entry has the backstop on its interfaces.
    pub const BACKSTOP: &str = "NG_BACKSTOP";
    /// The interfaces of guarded namespaces: [`crate::IfaceKey`] -> `u64` netns cookie. The
    /// backstop tells which namespace a frame leaves by the interface's index and its own
    /// MAC address (the frames the kernel sends carry it): `bpf_get_netns_cookie` on a
    /// frame without a socket of the namespace names the initial namespace instead.
    pub const GUARDED_IFACES: &str = "NG_GUARDED_IFACES";
    /// Processes stopped for opening a raw socket before their namespace's backstop was in
    /// place: `u32` tgid -> [`crate::StoppedTask`].
    pub const STOPPED: &str = "NG_STOPPED";
    /// The VPN carrier of a guarded namespace's kernel tunnels (kernel WireGuard's peers,
    /// found at run time): [`crate::CarrierKey`] -> `u32` (unused). The backstop lets them
    /// out whoever the sender (the encrypted packet keeps the inner packet's socket).
    pub const CARRIERS: &str = "NG_CARRIERS";
    /// Per-CPU counters: `u64` cgroup id -> [`crate::Counters`].
    pub const COUNTERS: &str = "NG_COUNTERS";
    /// Blocked-flow events ([`crate::BlockedFlow`]).
    pub const EVENTS: &str = "NG_EVENTS";
    /// Per-cgroup event budget: `u64` cgroup id -> [`crate::EventBudget`].
    pub const EVENT_BUDGET: &str = "NG_EVENT_BUDGET";
    /// Array of one `u64`: the [`crate::DATAPATH_ABI`] that created the pinned maps.
    pub const META: &str = "NG_META";
    /// Containers registered before their cgroup exists: [`crate::ContainerKey`] ->
    /// [`crate::CgroupPolicy`], applied by the cgroup_mkdir classifier.
    pub const CONTAINERS: &str = "NG_CONTAINERS";
    /// Scratch space for the classifier (one name buffer per CPU).
    pub const NAME_SCRATCH: &str = "NG_NAME_SCRATCH";
    /// Array of one [`crate::KernelLayout`]: where the running kernel keeps what the
    /// classifier reads, written by the agent from the kernel's BTF.
    pub const KERNEL_LAYOUT: &str = "NG_KERNEL_LAYOUT";
    /// Who each container cgroup belonged to: `u64` cgroup id -> [`crate::CgroupOwner`]
    /// (least recently used entries go). The classifier writes the id, the agent the name,
    /// so a blocked flow is named after its cgroup is gone and the agent restarted.
    pub const OWNERS: &str = "NG_OWNERS";
    /// The kernel programs' rare diagnostics (aya-log's ring buffer), forwarded to the
    /// agent's log.
    pub const LOGS: &str = "AYA_LOGS";
    /// Where each protected container's DNS goes: `u64` cgroup id -> [`crate::DnsSteer`],
    /// the agent's resolver in the container's own network namespace.
    pub const DNS: &str = "NG_DNS";
    /// Sockets whose DNS was steered: `u64` socket cookie -> [`crate::DnsPeer`], so that an
    /// answer reads as coming from the resolver the program asked (least recently used go).
    pub const DNS_PEERS: &str = "NG_DNS_PEERS";
    /// The agent's own sockets in guarded namespaces (its resolver's forwarding sockets):
    /// `u64` socket cookie -> `u32` (unused). The backstop lets them out even when the agent
    /// runs in the root cgroup, where a socket otherwise looks like the kernel's own.
    pub const AGENT_SOCKETS: &str = "NG_AGENT_SOCKETS";
    /// Whose each resolver port is: [`crate::DnsPortKey`] -> `u64` cgroup id. A protected
    /// container may not reach another container's resolver in a namespace they share (it
    /// would get that one's upstream, and be counted as it).
    pub const DNS_PORTS: &str = "NG_DNS_PORTS";
    /// Array of one `u64`: the policy stamp, which the agent increments after every write
    /// of [`POLICY`]. A cached policy lookup is valid only under the stamp it was made at.
    pub const POLICY_STAMP: &str = "NG_POLICY_STAMP";
    /// Which entry of [`POLICY`] applies to a cgroup, as found at a stamp: an array of
    /// [`crate::cache::POLICY_CACHE_SLOTS`] words ([`crate::cache::CachedPolicy`]), indexed
    /// by the cgroup id's low bits. It spares the walk over the cgroup's ancestors on every packet.
    pub const POLICY_CACHE: &str = "NG_POLICY_CACHE";

    /// Every map, in the order the agent pins them.
    pub const ALL: [&str; 24] = [
        POLICY,
        INTERNAL_V4,
        INTERNAL_V6,
        ENDPOINTS,
        GATEWAYS,
        BACKSTOP,
        GUARDED_IFACES,
        STOPPED,
        CARRIERS,
        COUNTERS,
        EVENTS,
        EVENT_BUDGET,
        META,
        CONTAINERS,
        NAME_SCRATCH,
        KERNEL_LAYOUT,
        OWNERS,
        LOGS,
        DNS,
        DNS_PEERS,
        AGENT_SOCKETS,
        DNS_PORTS,
        POLICY_STAMP,
        POLICY_CACHE,
    ];
}

/// Why a packet or a connection was stopped.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockReason {
    /// The destination is neither internal, nor a VPN endpoint, nor reached through the tunnel.
    NotAllowed = 0,
    /// The container's gateway tunnel is down.
    TunnelDown = 1,
    /// The packet could not be parsed, or carries headers that could reroute it.
    Malformed = 2,
    /// The traffic could not be tied to a known policy; blocked until it can.
    Unclassified = 3,
    /// DNS (TCP/UDP port 53, or anything to Docker's embedded resolver) that could not be
    /// steered to netguard's resolver: no resolver in the container's namespace (the agent
    /// has not set one up yet), or a packet that skipped the socket hooks.
    Dns = 4,
}

/// Number of [`BlockReason`] slots in [`Counters`].
pub const BLOCK_REASONS: usize = 5;

impl BlockReason {
    /// Every reason, in slot order.
    pub const ALL: [BlockReason; BLOCK_REASONS] = [
        BlockReason::NotAllowed,
        BlockReason::TunnelDown,
        BlockReason::Malformed,
        BlockReason::Unclassified,
        BlockReason::Dns,
    ];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            BlockReason::NotAllowed => "not_allowed",
            BlockReason::TunnelDown => "tunnel_down",
            BlockReason::Malformed => "malformed",
            BlockReason::Unclassified => "unclassified",
            BlockReason::Dns => "dns",
        }
    }

    /// The reason stored in slot `raw`, if any.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(BlockReason::NotAllowed),
            1 => Some(BlockReason::TunnelDown),
            2 => Some(BlockReason::Malformed),
            3 => Some(BlockReason::Unclassified),
            4 => Some(BlockReason::Dns),
            _ => None,
        }
    }
}

/// The way a packet let out left, by the rule that let it: through the gateway's tunnel, to
/// an internal destination, to one of the gateway's VPN endpoints, or (a count-only cgroup)
/// directly.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxPath {
    Tunnel = 0,
    Internal = 1,
    Endpoint = 2,
    Direct = 3,
}

/// Number of [`TxPath`] slots in [`Counters`].
pub const TX_PATHS: usize = 4;

impl TxPath {
    /// Every path, in slot order.
    pub const ALL: [TxPath; TX_PATHS] = [
        TxPath::Tunnel,
        TxPath::Internal,
        TxPath::Endpoint,
        TxPath::Direct,
    ];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            TxPath::Tunnel => "tunnel",
            TxPath::Internal => "internal",
            TxPath::Endpoint => "endpoint",
            TxPath::Direct => "direct",
        }
    }
}

/// Where a block happened.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// cgroup_skb egress: the packet was dropped.
    Egress = 0,
    /// cgroup connect4/6: `connect()` failed with EPERM.
    Connect = 1,
    /// cgroup sendmsg4/6: `sendto()` failed with EPERM.
    Sendmsg = 2,
    /// TC egress inside a guarded network namespace: a frame that bypassed the socket
    /// layer (AF_PACKET, or sent by the kernel for a protected namespace) was dropped.
    Backstop = 3,
    /// cgroup setsockopt: `PACKET_QDISC_BYPASS` (which skips TC) refused with EPERM.
    Setsockopt = 4,
    /// `socket(AF_PACKET, ...)` (the `sys_enter` tracepoint): a process opened an AF_PACKET
    /// socket while its namespace had no backstop yet; it was stopped (SIGSTOP) until the
    /// backstop is in place.
    SockCreate = 5,
}

impl Hook {
    /// The hook stored as `raw`, if any.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            0 => Some(Hook::Egress),
            1 => Some(Hook::Connect),
            2 => Some(Hook::Sendmsg),
            3 => Some(Hook::Backstop),
            4 => Some(Hook::Setsockopt),
            5 => Some(Hook::SockCreate),
            _ => None,
        }
    }

    /// A short name for logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Hook::Egress => "egress",
            Hook::Connect => "connect",
            Hook::Sendmsg => "sendmsg",
            Hook::Backstop => "backstop",
            Hook::Setsockopt => "setsockopt",
            Hook::SockCreate => "sock_create",
        }
    }
}

/// [`CgroupPolicy::flags`]: block every destination that is not allowed.
pub const POLICY_PROTECTED: u32 = 1;
/// [`CgroupPolicy::flags`] (with [`POLICY_PROTECTED`]): a container cgroup the agent has not
/// classified yet; every external destination is blocked with reason `unclassified`.
pub const POLICY_UNCLASSIFIED: u32 = 2;

/// Length of a Docker container id (hex).
pub const CONTAINER_ID_LEN: usize = 64;

/// A container id as written in its cgroup name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContainerKey {
    /// The 64 lowercase hex characters of the id.
    pub id: [u8; CONTAINER_ID_LEN],
}

/// Longest cgroup name (one path component, NAME_MAX plus its NUL) the classifier reads.
pub const NAME_SCRATCH_LEN: usize = 256;

/// Byte offsets of the kernel struct members the classifier reads of a new cgroup, from the
/// running kernel's BTF (so one build serves every kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelLayout {
    /// `struct cgroup`: `kn` (its kernfs node).
    pub cgroup_kn: u32,
    /// `struct cgroup`: `root` (its hierarchy).
    pub cgroup_root: u32,
    /// `struct kernfs_node`: `id` (the cgroup id).
    pub kernfs_node_id: u32,
    /// `struct kernfs_node`: `name` (the last path component).
    pub kernfs_node_name: u32,
    /// `struct kernfs_node`: `iattr` (set when the owner is not root).
    pub kernfs_node_iattr: u32,
    /// `struct kernfs_iattrs`: `ia_uid`.
    pub kernfs_iattrs_uid: u32,
    /// `struct cgroup_root`: `hierarchy_id` (0 for cgroup v2).
    pub cgroup_root_hierarchy_id: u32,
    /// `struct net`: `net_cookie`.
    pub net_cookie: u32,
    /// `struct task_struct`: `nsproxy`.
    pub task_nsproxy: u32,
    /// `struct nsproxy`: `net_ns`.
    pub nsproxy_net_ns: u32,
    /// Where in `struct task_struct` the flag of a 32-bit (compat) system call is: x86's
    /// `thread_info.status` (`TS_COMPAT`), arm64's `thread_info.flags` (`TIF_32BIT`).
    pub compat_flag_offset: u32,
    /// That flag's bit.
    pub compat_flag_mask: u32,
    pub _pad: u32,
    /// 1 once the agent has written the layout; the classifier does nothing before.
    pub valid: u32,
    /// Id of the cgroup2 root: the cgroup of sockets the kernel opens for itself.
    pub root_cgroup_id: u64,
}

/// The DNS port (UDP and TCP).
pub const DNS_PORT: u16 = 53;
/// Docker's embedded resolver on user-defined networks (every port of it: dockerd listens on
/// a random one, reached through a DNAT rule in the container's namespace).
pub const DOCKER_RESOLVER_V4: [u8; 4] = [127, 0, 0, 11];
/// The loopback address netguard's resolver listens on in a container's namespace, IPv4.
pub const RESOLVER_V4: [u8; 4] = [127, 0, 0, 1];

/// netguard's resolver for one protected container: sockets the agent holds in the
/// container's network namespace, on loopback (`127.0.0.1` and `::1`), UDP and TCP on the
/// same port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsSteer {
    /// The namespace the sockets are in; a process of the container in another one (it
    /// made its own) is refused instead.
    pub netns_cookie: u64,
    /// Port on `127.0.0.1` (host order); 0: none.
    pub port_v4: u16,
    /// Port on `::1` (host order); 0: none (the namespace has no IPv6 loopback).
    pub port_v6: u16,
    pub _pad: [u8; 4],
}

/// A resolver's port on loopback in a network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsPortKey {
    pub netns_cookie: u64,
    /// Host order.
    pub port: u16,
    /// [`FAMILY_V4`] (`127.0.0.1`) or [`FAMILY_V6`] (`::1`).
    pub family: u8,
    pub _pad: [u8; 5],
}

/// What a steered socket asked for, to give its answers that source back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsPeer {
    /// The address the program sent to; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// Its port (host order).
    pub port: u16,
    /// The resolver port it was steered to (host order).
    pub steered_port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`] (of `addr`).
    pub family: u8,
    pub _pad: [u8; 3],
}

/// A guarded network namespace: the backstop is attached to its interfaces.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsGuard {
    /// The cgroup whose policy judges frames the kernel sends without a process's socket
    /// (RST, ICMP errors) in this namespace; 0: they pass (the host's namespace).
    pub socketless_cgroup: u64,
}

/// A process stopped because it opened an AF_PACKET socket in a namespace without its
/// backstop: the agent continues it once the backstop is in place (or its cgroup is no
/// longer protected). Keyed by its process id (tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoppedTask {
    /// The cgroup it ran in.
    pub own_cgroup: u64,
    /// The cgroup whose protected policy applied.
    pub policy_cgroup: u64,
    /// Its network namespace's cookie.
    pub netns_cookie: u64,
    /// When it was stopped (`CLOCK_MONOTONIC`, ns).
    pub stopped_at_ns: u64,
}

/// An interface of a guarded namespace: its index and its MAC address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfaceKey {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// A destination of a kernel tunnel's encrypted packets leaving a guarded namespace (UDP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CarrierKey {
    /// The namespace's cookie.
    pub netns_cookie: u64,
    /// Address; IPv4 in the first four bytes, the rest zero.
    pub addr: [u8; 16],
    /// Destination UDP port in host order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 5],
}

/// What the datapath does for one cgroup (and its descendants without an entry of their own).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupPolicy {
    /// [`POLICY_PROTECTED`] or 0 (counted only).
    pub flags: u32,
    /// Gateway slot in [`maps::GATEWAYS`]; 0 for none.
    pub gateway: u32,
}

impl CgroupPolicy {
    /// Whether non-allowed destinations are blocked.
    pub const fn is_protected(&self) -> bool {
        self.flags & POLICY_PROTECTED != 0
    }

    /// Whether this is a container cgroup not classified yet.
    pub const fn is_unclassified(&self) -> bool {
        self.flags & POLICY_UNCLASSIFIED != 0
    }

    /// The policy the classifier gives a container cgroup it knows nothing about.
    pub const UNCLASSIFIED: CgroupPolicy = CgroupPolicy {
        flags: POLICY_PROTECTED | POLICY_UNCLASSIFIED,
        gateway: 0,
    };
}

/// Scope of an internal CIDR: 0 for every protected cgroup, else the cgroup id it belongs to.
pub const SCOPE_GLOBAL: u64 = 0;

/// LPM trie key data for IPv4: the scope (big-endian) followed by the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScopedV4 {
    /// [`SCOPE_GLOBAL`] or a cgroup id, big-endian so the trie matches it as a prefix.
    pub scope: [u8; 8],
    /// Network-order address.
    pub addr: [u8; 4],
}

/// LPM trie key data for IPv6: the scope (big-endian) followed by the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScopedV6 {
    /// [`SCOPE_GLOBAL`] or a cgroup id, big-endian.
    pub scope: [u8; 8],
    /// Network-order address.
    pub addr: [u8; 16],
}

/// Prefix bits taken by the scope in [`ScopedV4`] and [`ScopedV6`] keys.
pub const SCOPE_BITS: u32 = 64;

/// Address family values used in keys and events (the kernel's AF_INET / AF_INET6).
pub const FAMILY_V4: u8 = 2;
/// See [`FAMILY_V4`].
pub const FAMILY_V6: u8 = 10;

/// A VPN endpoint a gateway's containers may reach while the tunnel is down.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    /// Gateway slot.
    pub gateway: u32,
    /// Destination port in host order; 0 matches any port.
    pub port: u16,
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Address; IPv4 in the first four bytes, the rest zero.
    pub addr: [u8; 16],
}

/// [`GatewayState::tunnel_up`] value for an up tunnel.
pub const TUNNEL_UP: u32 = 1;

/// Name bytes kept with a gateway slot so a restarted agent can map names back to slots.
pub const GATEWAY_NAME_LEN: usize = 48;

/// One gateway slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayState {
    /// [`TUNNEL_UP`] or 0.
    pub tunnel_up: u32,
    /// Interface index of the tunnel in the gateway's network namespace; 0 for none.
    pub tunnel_ifindex: u32,
    /// Cookie of the network namespace `tunnel_ifindex` lives in.
    pub tunnel_netns_cookie: u64,
    /// 1 while the slot is in use.
    pub in_use: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Times the tunnel state changed (user space keeps it; the programs ignore it).
    pub transitions: u64,
    /// When it last changed, in seconds since the Unix epoch.
    pub last_change_secs: u64,
    /// Gateway name, NUL-padded.
    pub name: [u8; GATEWAY_NAME_LEN],
}

impl Default for GatewayState {
    fn default() -> Self {
        Self {
            tunnel_up: 0,
            tunnel_ifindex: 0,
            tunnel_netns_cookie: 0,
            in_use: 0,
            _pad: 0,
            transitions: 0,
            last_change_secs: 0,
            name: [0; GATEWAY_NAME_LEN],
        }
    }
}

/// Per-cgroup counters, one copy per CPU. Bytes are IP packet lengths (header + payload).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    /// Bytes let out by cgroup_skb egress.
    pub tx_bytes: u64,
    /// Packets let out by cgroup_skb egress.
    pub tx_packets: u64,
    /// Bytes received by the cgroup's sockets.
    pub rx_bytes: u64,
    /// Packets received by the cgroup's sockets.
    pub rx_packets: u64,
    /// Packets dropped, by [`BlockReason`] slot (cgroup egress and backstop).
    pub blocked_packets: [u64; BLOCK_REASONS],
    /// Bytes dropped, by [`BlockReason`] slot.
    pub blocked_bytes: [u64; BLOCK_REASONS],
    /// `connect()` / `sendto()` calls refused with EPERM, by [`BlockReason`] slot.
    pub refused_calls: [u64; BLOCK_REASONS],
    /// Blocked-flow events not emitted (rate limit or full ring buffer).
    pub events_suppressed: u64,
    /// `tx_bytes` by [`TxPath`] slot.
    pub tx_bytes_by_path: [u64; TX_PATHS],
    /// `tx_packets` by [`TxPath`] slot.
    pub tx_packets_by_path: [u64; TX_PATHS],
}

impl Counters {
    /// Adds `other` into `self` (summing per-CPU copies).
    pub fn accumulate(&mut self, other: &Counters) {
        self.tx_bytes += other.tx_bytes;
        self.tx_packets += other.tx_packets;
        self.rx_bytes += other.rx_bytes;
        self.rx_packets += other.rx_packets;
        for i in 0..BLOCK_REASONS {
            self.blocked_packets[i] += other.blocked_packets[i];
            self.blocked_bytes[i] += other.blocked_bytes[i];
            self.refused_calls[i] += other.refused_calls[i];
        }
        self.events_suppressed += other.events_suppressed;
        for i in 0..TX_PATHS {
            self.tx_bytes_by_path[i] += other.tx_bytes_by_path[i];
            self.tx_packets_by_path[i] += other.tx_packets_by_path[i];
        }
    }
}

/// A blocked flow, as sent to the agent through [`maps::EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BlockedFlow {
    /// Cgroup whose policy blocked it (0 if none was found).
    pub cgroup_id: u64,
    /// Destination address; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// Destination port in host order (0 when unknown).
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
    /// [`FAMILY_V4`], [`FAMILY_V6`] or 0 when unparseable.
    pub family: u8,
    /// [`BlockReason`] as `u8`.
    pub reason: u8,
    /// [`Hook`] as `u8`.
    pub hook: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
    /// Packet length (0 for refused calls).
    pub bytes: u32,
    /// Explicit padding.
    pub _pad2: u32,
    /// When it was blocked: `CLOCK_BOOTTIME` nanoseconds (`bpf_ktime_get_boot_ns`).
    pub at_boot_ns: u64,
}

/// Bytes of a container's name kept in [`CgroupOwner`] (Docker's names are shorter).
pub const OWNER_NAME_LEN: usize = 64;

/// Who a container cgroup belonged to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupOwner {
    /// The container's id, 64 lowercase hex characters.
    pub id: [u8; CONTAINER_ID_LEN],
    /// Its name, NUL-padded; all zero while only the classifier has seen it.
    pub name: [u8; OWNER_NAME_LEN],
}

impl Default for CgroupOwner {
    fn default() -> Self {
        Self {
            id: [0; CONTAINER_ID_LEN],
            name: [0; OWNER_NAME_LEN],
        }
    }
}

/// Rate-limit window for one cgroup's events.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EventBudget {
    /// Start of the current one-second window (`bpf_ktime_get_ns`).
    pub window_start_ns: u64,
    /// Events emitted in the window.
    pub emitted: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY: all are #[repr(C)], contain only integers and byte arrays, and have no
    // implicit padding (checked by the size assertions below).
    unsafe impl aya::Pod for CgroupPolicy {}
    unsafe impl aya::Pod for ScopedV4 {}
    unsafe impl aya::Pod for ScopedV6 {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for GatewayState {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for BlockedFlow {}
    unsafe impl aya::Pod for EventBudget {}
    unsafe impl aya::Pod for ContainerKey {}
    unsafe impl aya::Pod for KernelLayout {}
    unsafe impl aya::Pod for DnsSteer {}
    unsafe impl aya::Pod for DnsPeer {}
    unsafe impl aya::Pod for DnsPortKey {}
    unsafe impl aya::Pod for NetnsGuard {}
    unsafe impl aya::Pod for CarrierKey {}
    unsafe impl aya::Pod for IfaceKey {}
    unsafe impl aya::Pod for StoppedTask {}
    unsafe impl aya::Pod for CgroupOwner {}
}

// No implicit padding: each size equals the sum of its fields.
const _: () = {
    assert!(core::mem::size_of::<CgroupPolicy>() == 8);
    assert!(core::mem::size_of::<ScopedV4>() == 12);
    assert!(core::mem::size_of::<ScopedV6>() == 24);
    assert!(core::mem::size_of::<EndpointKey>() == 24);
    assert!(core::mem::size_of::<GatewayState>() == 40 + GATEWAY_NAME_LEN);
    assert!(core::mem::size_of::<Counters>() == 8 * (4 + 3 * BLOCK_REASONS + 1 + 2 * TX_PATHS));
    assert!(core::mem::size_of::<BlockedFlow>() == 48);
    assert!(core::mem::size_of::<DnsSteer>() == 16);
    assert!(core::mem::size_of::<DnsPeer>() == 24);
    assert!(core::mem::size_of::<DnsPortKey>() == 16);
    assert!(core::mem::size_of::<CgroupOwner>() == CONTAINER_ID_LEN + OWNER_NAME_LEN);
    assert!(core::mem::size_of::<EventBudget>() == 16);
    assert!(core::mem::size_of::<KernelLayout>() == 4 * 14 + 8);
    assert!(core::mem::size_of::<NetnsGuard>() == 8);
    assert!(core::mem::size_of::<CarrierKey>() == 8 + 16 + 2 + 1 + 5);
    assert!(core::mem::size_of::<IfaceKey>() == 4 + 6 + 2);
    assert!(core::mem::size_of::<StoppedTask>() == 32);
};

/// Where the 64-hex container id starts in a cgroup's name of `len` bytes held in `name`:
/// `<id>` (cgroupfs driver) or `docker-<id>.scope` (systemd driver). `None` for any other
/// name. Shared by the classifier and the agent; every index is masked so the BPF verifier
/// can bound it.
#[inline(always)]
pub fn container_id_start(name: &[u8; NAME_SCRATCH_LEN], len: usize) -> Option<usize> {
    const PREFIX: &[u8; 7] = b"docker-";
    const SUFFIX: &[u8; 6] = b".scope";
    const MASK: usize = NAME_SCRATCH_LEN - 1;
    let start = if len == CONTAINER_ID_LEN {
        0
    } else if len == PREFIX.len() + CONTAINER_ID_LEN + SUFFIX.len() {
        for (i, b) in PREFIX.iter().enumerate() {
            if name[i & MASK] != *b {
                return None;
            }
        }
        for (i, b) in SUFFIX.iter().enumerate() {
            if name[(PREFIX.len() + CONTAINER_ID_LEN + i) & MASK] != *b {
                return None;
            }
        }
        PREFIX.len()
    } else {
        return None;
    };
    for i in 0..CONTAINER_ID_LEN {
        let c = name[(start + i) & MASK];
        if !(c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
            return None;
        }
    }
    Some(start)
}

#[cfg(test)]
mod name_tests {
    extern crate std;

    use std::{format, string::String, string::ToString};

    use super::*;

    fn name(text: &str) -> ([u8; NAME_SCRATCH_LEN], usize) {
        let mut buf = [0u8; NAME_SCRATCH_LEN];
        buf[..text.len()].copy_from_slice(text.as_bytes());
        (buf, text.len())
    }

    #[test]
    fn container_names_of_both_drivers_are_recognised_and_nothing_else() {
        let id = "0123456789abcdef".repeat(4);
        let (buf, len) = name(&id);
        assert_eq!(container_id_start(&buf, len), Some(0));
        let scope = ["docker-", &id, ".scope"].concat();
        let (buf, len) = name(&scope);
        assert_eq!(container_id_start(&buf, len), Some(7));
        for other in [
            id.to_uppercase(),
            id[..63].to_string(),
            format!("{id}0"),
            ["podman-", &id, ".scope"].concat(),
            ["docker-", &id, ".slice"].concat(),
            "system.slice".to_string(),
            String::new(),
        ] {
            let (buf, len) = name(&other);
            assert_eq!(container_id_start(&buf, len), None, "{other}");
        }
    }
}
