//! Typed handles on the datapath's maps: the agent's only channel to the kernel. Every read
//! and write of a map is here; what to write, and in which order, is the applier's
//! ([`crate::reconcile::apply`]).

use std::{net::IpAddr, path::Path};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuHashMap, RingBuf, lpm_trie::Key,
    },
};
use ipnet::IpNet;
use netguard_common::{
    CarrierKey, CgroupOwner, CgroupPolicy, ContainerKey, Counters, DATAPATH_ABI, DnsPortKey,
    DnsSteer, EndpointKey, GatewayState, IfaceKey, KernelLayout, NetnsGuard, SCOPE_BITS, ScopedV4,
    ScopedV6, StoppedTask, maps,
};

use crate::domain::{CgroupId, ContainerId};

mod dns;
mod gateways;
mod guards;
mod owners;
mod policies;

pub use self::{
    gateways::{gateway_name, set_tunnel},
    owners::{AgentSocket, AgentSockets, PinnedOwners},
};

/// The text of a NUL-padded byte field.
fn nul_terminated(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Every map but the two ring buffers (blocked flows, kernel log), which their readers own.
pub struct Maps {
    policy: HashMap<MapData, u64, CgroupPolicy>,
    internal_v4: LpmTrie<MapData, ScopedV4, u32>,
    internal_v6: LpmTrie<MapData, ScopedV6, u32>,
    endpoints: HashMap<MapData, EndpointKey, u32>,
    gateways: Array<MapData, GatewayState>,
    backstop: HashMap<MapData, u64, NetnsGuard>,
    carriers: HashMap<MapData, CarrierKey, u32>,
    guarded_ifaces: HashMap<MapData, IfaceKey, u64>,
    stopped: HashMap<MapData, u32, StoppedTask>,
    kernel_layout: Array<MapData, KernelLayout>,
    counters: PerCpuHashMap<MapData, u64, Counters>,
    meta: Array<MapData, u64>,
    containers: HashMap<MapData, ContainerKey, CgroupPolicy>,
    owners: HashMap<MapData, u64, CgroupOwner>,
    dns: HashMap<MapData, u64, DnsSteer>,
    dns_ports: HashMap<MapData, DnsPortKey, u64>,
    policy_stamp: Array<MapData, u64>,
    policy_cache: Array<MapData, u64>,
}

impl Maps {
    /// Takes the maps out of a loaded object; returns them with the blocked-flow ring buffer.
    pub fn take_from(ebpf: &mut Ebpf) -> Result<(Self, RingBuf<MapData>)> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the eBPF object"))
        };
        let maps = Self::from_maps(&mut take)?;
        let events = RingBuf::try_from(take(maps::EVENTS)?)?;
        Ok((maps, events))
    }

    /// Opens the maps pinned under `pin_dir` by a running (or stopped) agent.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        let mut open = |name: &str| -> Result<Map> {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path).with_context(|| {
                format!(
                    "no pinned map at {}: is the agent running (netguard run) with --pin-dir {}?",
                    path.display(),
                    pin_dir.display()
                )
            })?;
            Ok(Map::from_map_data(data)?)
        };
        let maps = Self::from_maps(&mut open)?;
        maps.check_abi()?;
        Ok(maps)
    }

    fn from_maps(take: &mut impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            policy: HashMap::try_from(take(maps::POLICY)?)?,
            internal_v4: LpmTrie::try_from(take(maps::INTERNAL_V4)?)?,
            internal_v6: LpmTrie::try_from(take(maps::INTERNAL_V6)?)?,
            endpoints: HashMap::try_from(take(maps::ENDPOINTS)?)?,
            gateways: Array::try_from(take(maps::GATEWAYS)?)?,
            backstop: HashMap::try_from(take(maps::BACKSTOP)?)?,
            carriers: HashMap::try_from(take(maps::CARRIERS)?)?,
            guarded_ifaces: HashMap::try_from(take(maps::GUARDED_IFACES)?)?,
            stopped: HashMap::try_from(take(maps::STOPPED)?)?,
            kernel_layout: Array::try_from(take(maps::KERNEL_LAYOUT)?)?,
            counters: PerCpuHashMap::try_from(take(maps::COUNTERS)?)?,
            meta: Array::try_from(take(maps::META)?)?,
            containers: HashMap::try_from(take(maps::CONTAINERS)?)?,
            owners: HashMap::try_from(take(maps::OWNERS)?)?,
            dns: HashMap::try_from(take(maps::DNS)?)?,
            dns_ports: HashMap::try_from(take(maps::DNS_PORTS)?)?,
            policy_stamp: Array::try_from(take(maps::POLICY_STAMP)?)?,
            policy_cache: Array::try_from(take(maps::POLICY_CACHE)?)?,
        })
    }

    /// Fails unless the maps were created with this build's layout.
    fn check_abi(&self) -> Result<()> {
        let found = self.meta.get(&0, 0)?;
        if found != DATAPATH_ABI {
            bail!(
                "the pinned maps have datapath layout {found}, this netguard uses \
                 {DATAPATH_ABI}: stop the old agent and run `netguard unload` before starting \
                 this version (protection is off until it starts)"
            );
        }
        Ok(())
    }

    /// Stamps fresh maps with this build's layout (and moves the policy stamp off 0); fails on
    /// maps of another layout.
    pub(crate) fn stamp_abi_if_fresh(&mut self) -> Result<()> {
        if self.meta.get(&0, 0)? == 0 {
            self.meta.set(0, DATAPATH_ABI, 0)?;
        }
        self.check_abi()?;
        self.start_policy_stamp()
    }

    // Internal CIDRs: (scope, prefix) in two LPM tries; scope 0 is every protected cgroup's.

    /// Every internal CIDR with its scope.
    pub fn cidrs(&self) -> Result<Vec<(u64, IpNet)>> {
        let mut cidrs = trie_cidrs(&self.internal_v4)?;
        cidrs.extend(trie_cidrs(&self.internal_v6)?);
        Ok(cidrs)
    }

    /// Adds (`add`) or removes the internal CIDR `cidr` of `scope`.
    pub fn write_cidr(&mut self, scope: u64, cidr: IpNet, add: bool) -> Result<()> {
        let scope_bytes = scope.to_be_bytes();
        let prefix = SCOPE_BITS + u32::from(cidr.prefix_len());
        let result = match cidr.network() {
            IpAddr::V4(addr) => {
                let data = ScopedV4 {
                    scope: scope_bytes,
                    addr: addr.octets(),
                };
                write_trie(&mut self.internal_v4, Key::new(prefix, data), add)
            }
            IpAddr::V6(addr) => {
                let data = ScopedV6 {
                    scope: scope_bytes,
                    addr: addr.octets(),
                };
                write_trie(&mut self.internal_v6, Key::new(prefix, data), add)
            }
        };
        let verb = if add { "adding" } else { "removing" };
        result.with_context(|| format!("{verb} internal CIDR {cidr} (scope {scope})"))
    }

    // Container registrations: applied by the cgroup_mkdir classifier.

    /// Every registered container.
    pub fn registrations(&self) -> Result<Vec<(ContainerId, CgroupPolicy)>> {
        let mut found = Vec::new();
        for entry in self.containers.iter() {
            let (key, policy) = entry?;
            if let Ok(id) = ContainerId::try_from(&key.id[..]) {
                found.push((id, policy));
            }
        }
        Ok(found)
    }

    pub fn register(&mut self, id: &ContainerId, policy: CgroupPolicy) -> Result<()> {
        self.containers
            .insert(id.key(), policy, 0)
            .with_context(|| format!("registering container {}", id.short()))
    }

    pub fn unregister(&mut self, id: &ContainerId) -> Result<()> {
        remove_if_present(self.containers.remove(&id.key()))
    }

    // The kernel's struct layout, for the classifier.

    pub fn set_kernel_layout(&mut self, layout: KernelLayout) -> Result<()> {
        Ok(self.kernel_layout.set(0, layout, 0)?)
    }

    // Counters: per cgroup, per CPU.

    /// The counters of `cgroup`, summed over CPUs, if it has any.
    pub fn counters(&self, cgroup: CgroupId) -> Result<Option<Counters>> {
        match self.counters.get(&cgroup, 0) {
            Ok(per_cpu) => {
                let mut total = Counters::default();
                for counters in per_cpu.iter() {
                    total.accumulate(counters);
                }
                Ok(Some(total))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Cgroups with counters.
    pub fn counted_cgroups(&self) -> Result<Vec<CgroupId>> {
        Ok(self.counters.keys().collect::<Result<_, _>>()?)
    }

    pub fn remove_counters(&mut self, cgroup: CgroupId) -> Result<()> {
        remove_if_present(self.counters.remove(&cgroup))
    }
}

/// The data of an internal-CIDR trie key: a scope, then an address of either family.
trait ScopedKey: aya::Pod {
    fn scope(&self) -> [u8; 8];
    fn addr(&self) -> IpAddr;
}

impl ScopedKey for ScopedV4 {
    fn scope(&self) -> [u8; 8] {
        self.scope
    }
    fn addr(&self) -> IpAddr {
        IpAddr::from(self.addr)
    }
}

impl ScopedKey for ScopedV6 {
    fn scope(&self) -> [u8; 8] {
        self.scope
    }
    fn addr(&self) -> IpAddr {
        IpAddr::from(self.addr)
    }
}

/// Every key of an internal-CIDR trie as `(scope, CIDR)`: the scope takes the key's first
/// [`SCOPE_BITS`].
fn trie_cidrs<K: ScopedKey>(trie: &LpmTrie<MapData, K, u32>) -> Result<Vec<(u64, IpNet)>> {
    let mut cidrs = Vec::new();
    for key in trie.keys() {
        let key = key?;
        let prefix = (key.prefix_len() - SCOPE_BITS) as u8;
        let data = key.data();
        cidrs.push((
            u64::from_be_bytes(data.scope()),
            IpNet::new(data.addr(), prefix)?,
        ));
    }
    Ok(cidrs)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn write_trie<K: aya::Pod>(
    trie: &mut LpmTrie<MapData, K, u32>,
    key: Key<K>,
    add: bool,
) -> Result<()> {
    if add {
        Ok(trie.insert(&key, 1, 0)?)
    } else {
        remove_if_present(trie.remove(&key))
    }
}

fn remove_if_present(result: Result<(), MapError>) -> Result<()> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        // Some map types report a missing key as the syscall's ENOENT.
        Err(MapError::SyscallError(error))
            if error.io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use netguard_common::TUNNEL_UP;

    use super::*;

    #[test]
    fn a_tunnel_change_is_counted_once_and_timed() {
        let mut state = GatewayState::default();
        set_tunnel(&mut state, false, 10);
        assert_eq!(
            (state.transitions, state.last_change_secs),
            (0, 0),
            "no change"
        );
        set_tunnel(&mut state, true, 20);
        set_tunnel(&mut state, true, 30);
        assert_eq!(
            (state.tunnel_up, state.transitions, state.last_change_secs),
            (TUNNEL_UP, 1, 20)
        );
        set_tunnel(&mut state, false, 40);
        assert_eq!((state.tunnel_up, state.transitions), (0, 2));
    }
}
