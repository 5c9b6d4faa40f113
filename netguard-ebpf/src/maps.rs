//! Every map the programs share with the agent. The agent pins them all under one bpffs
//! directory, so a restarted agent (and the programs it leaves attached) keep the same state.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use netguard_common::{
    CarrierKey, CgroupOwner, CgroupPolicy, ContainerKey, Counters, DnsPeer, DnsPortKey, DnsSteer,
    EndpointKey, EventBudget, GatewayState, IfaceKey, KernelLayout, MAX_GATEWAYS, NAME_SCRATCH_LEN,
    NetnsGuard, ScopedV4, ScopedV6, StoppedTask, cache::POLICY_CACHE_SLOTS,
};

const BPF_F_NO_PREALLOC: u32 = 1;
const MAX_POLICIES: u32 = 65_536;
const MAX_CIDRS: u32 = 65_536;

#[map(name = "NG_POLICY")]
pub static POLICY: HashMap<u64, CgroupPolicy> = HashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "NG_INTERNAL_V4")]
pub static INTERNAL_V4: LpmTrie<ScopedV4, u32> =
    LpmTrie::with_max_entries(MAX_CIDRS, BPF_F_NO_PREALLOC);
#[map(name = "NG_INTERNAL_V6")]
pub static INTERNAL_V6: LpmTrie<ScopedV6, u32> =
    LpmTrie::with_max_entries(MAX_CIDRS, BPF_F_NO_PREALLOC);
#[map(name = "NG_ENDPOINTS")]
pub static ENDPOINTS: HashMap<EndpointKey, u32> = HashMap::with_max_entries(4096, 0);
#[map(name = "NG_GATEWAYS")]
pub static GATEWAYS: Array<GatewayState> = Array::with_max_entries(MAX_GATEWAYS, 0);
#[map(name = "NG_BACKSTOP")]
pub static BACKSTOP: HashMap<u64, NetnsGuard> = HashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "NG_GUARDED_IFACES")]
pub static GUARDED_IFACES: HashMap<IfaceKey, u64> = HashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "NG_STOPPED")]
pub static STOPPED: LruHashMap<u32, StoppedTask> = LruHashMap::with_max_entries(4096, 0);
#[map(name = "NG_CARRIERS")]
pub static CARRIERS: HashMap<CarrierKey, u32> = HashMap::with_max_entries(1024, 0);
#[map(name = "NG_COUNTERS")]
pub static COUNTERS: PerCpuHashMap<u64, Counters> =
    PerCpuHashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "NG_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
#[map(name = "NG_EVENT_BUDGET")]
pub static EVENT_BUDGET: LruHashMap<u64, EventBudget> =
    LruHashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "NG_META")]
pub static META: Array<u64> = Array::with_max_entries(1, 0);
#[map(name = "NG_CONTAINERS")]
pub static CONTAINERS: HashMap<ContainerKey, CgroupPolicy> =
    HashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "NG_NAME_SCRATCH")]
pub static NAME_SCRATCH: PerCpuArray<[u8; NAME_SCRATCH_LEN]> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "NG_OWNERS")]
pub static OWNERS: LruHashMap<u64, CgroupOwner> = LruHashMap::with_max_entries(8192, 0);
#[map(name = "NG_KERNEL_LAYOUT")]
pub static KERNEL_LAYOUT: Array<KernelLayout> = Array::with_max_entries(1, 0);
#[map(name = "NG_DNS")]
pub static DNS: HashMap<u64, DnsSteer> = HashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "NG_DNS_PEERS")]
pub static DNS_PEERS: LruHashMap<u64, DnsPeer> = LruHashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "NG_AGENT_SOCKETS")]
pub static AGENT_SOCKETS: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);
#[map(name = "NG_DNS_PORTS")]
pub static DNS_PORTS: HashMap<DnsPortKey, u64> = HashMap::with_max_entries(MAX_POLICIES, 0);
#[map(name = "NG_POLICY_STAMP")]
pub static POLICY_STAMP: Array<u64> = Array::with_max_entries(1, 0);
#[map(name = "NG_POLICY_CACHE")]
pub static POLICY_CACHE: Array<u64> = Array::with_max_entries(POLICY_CACHE_SLOTS, 0);
