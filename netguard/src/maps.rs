//! Typed handles on the datapath's maps: the agent's only channel to the kernel.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuHashMap, RingBuf},
};
use netguard_common::{
    CgroupPolicy, ContainerKey, Counters, DATAPATH_ABI, EndpointKey, GatewayState, ScopedV4,
    ScopedV6, maps,
};

/// Every map but the event ring buffer, which the event reader owns.
pub struct Maps {
    pub(crate) policy: HashMap<MapData, u64, CgroupPolicy>,
    pub(crate) internal_v4: LpmTrie<MapData, ScopedV4, u32>,
    pub(crate) internal_v6: LpmTrie<MapData, ScopedV6, u32>,
    pub(crate) endpoints: HashMap<MapData, EndpointKey, u32>,
    pub(crate) gateways: Array<MapData, GatewayState>,
    pub(crate) backstop: HashMap<MapData, u32, u64>,
    pub(crate) counters: PerCpuHashMap<MapData, u64, Counters>,
    pub(crate) meta: Array<MapData, u64>,
    pub(crate) containers: HashMap<MapData, ContainerKey, CgroupPolicy>,
}

impl Maps {
    /// Takes the maps out of a loaded object; returns them with the event ring buffer.
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
            counters: PerCpuHashMap::try_from(take(maps::COUNTERS)?)?,
            meta: Array::try_from(take(maps::META)?)?,
            containers: HashMap::try_from(take(maps::CONTAINERS)?)?,
        })
    }

    /// Fails unless the maps were created with this build's layout; stamps fresh maps.
    pub(crate) fn check_abi(&self) -> Result<()> {
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

    pub(crate) fn stamp_abi_if_fresh(&mut self) -> Result<()> {
        if self.meta.get(&0, 0)? == 0 {
            self.meta.set(0, DATAPATH_ABI, 0)?;
        }
        self.check_abi()
    }
}
