//! The kernel's maps and backstop programs as plain collections: what unit tests run the
//! whole decision against, without root.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use ipnet::IpNet;
use netguard_common::{
    CarrierKey, CgroupPolicy, Counters, EndpointKey, GatewayState, IfaceKey, MAX_GATEWAYS,
    NetnsGuard,
};

use crate::{
    domain::{CgroupId, ContainerId, GatewayId},
    kernel::{Kernel, maps::gateway_name},
};

/// Every map the applier writes, in memory.
#[derive(Clone, Debug, Default)]
pub struct MemoryKernel {
    pub policies: BTreeMap<CgroupId, CgroupPolicy>,
    pub counters: BTreeMap<CgroupId, Counters>,
    pub cidrs: BTreeSet<(u64, IpNet)>,
    pub registrations: BTreeMap<ContainerId, CgroupPolicy>,
    pub gateways: BTreeMap<u32, GatewayState>,
    pub endpoints: HashSet<EndpointKey>,
    pub guards: BTreeMap<u64, NetnsGuard>,
    pub carriers: BTreeSet<CarrierKey>,
    pub guarded_ifaces: BTreeMap<IfaceKey, u64>,
    /// Backstop programs: (netns cookie, interface) -> the namespace file it was attached by.
    pub links: BTreeMap<(u64, u32), PathBuf>,
    /// Writes whose journal line contains one of these fail (a full map, say), and are not
    /// journaled.
    pub failing: Vec<String>,
    /// Every write, in order, for tests of ordering.
    pub journal: Vec<String>,
}

impl MemoryKernel {
    /// The slot named `name` and its state.
    pub fn gateway(&self, name: &str) -> Option<(GatewayId, GatewayState)> {
        self.gateways
            .iter()
            .find(|(_, state)| state.in_use != 0 && gateway_name(state) == name)
            .map(|(slot, state)| (GatewayId(*slot), *state))
    }

    /// The internal CIDRs of `scope`.
    pub fn scope(&self, scope: u64) -> BTreeSet<IpNet> {
        self.cidrs
            .iter()
            .filter(|(s, _)| *s == scope)
            .map(|(_, cidr)| *cidr)
            .collect()
    }

    /// Journals a write, or fails it if a test asked for that.
    fn write(&mut self, entry: String) -> Result<()> {
        if self
            .failing
            .iter()
            .any(|pattern| entry.contains(pattern.as_str()))
        {
            bail!("{entry}: no space left (the map is full)");
        }
        self.journal.push(entry);
        Ok(())
    }
}

impl Kernel for MemoryKernel {
    fn policies(&self) -> Result<Vec<(CgroupId, CgroupPolicy)>> {
        Ok(self.policies.iter().map(|(c, p)| (*c, *p)).collect())
    }
    fn set_policy(&mut self, cgroup: CgroupId, policy: CgroupPolicy) -> Result<()> {
        self.write(format!("policy {cgroup} {policy:?}"))?;
        self.policies.insert(cgroup, policy);
        Ok(())
    }
    fn remove_policy(&mut self, cgroup: CgroupId) -> Result<()> {
        self.write(format!("remove policy {cgroup}"))?;
        self.policies.remove(&cgroup);
        Ok(())
    }
    fn counted_cgroups(&self) -> Result<Vec<CgroupId>> {
        Ok(self.counters.keys().copied().collect())
    }
    fn remove_counters(&mut self, cgroup: CgroupId) -> Result<()> {
        self.write(format!("remove counters {cgroup}"))?;
        self.counters.remove(&cgroup);
        Ok(())
    }
    fn cidrs(&self) -> Result<Vec<(u64, IpNet)>> {
        Ok(self.cidrs.iter().copied().collect())
    }
    fn write_cidr(&mut self, scope: u64, cidr: IpNet, add: bool) -> Result<()> {
        self.write(format!(
            "{} cidr {scope} {cidr}",
            if add { "add" } else { "remove" }
        ))?;
        if add {
            self.cidrs.insert((scope, cidr));
        } else {
            self.cidrs.remove(&(scope, cidr));
        }
        Ok(())
    }
    fn registrations(&self) -> Result<Vec<(ContainerId, CgroupPolicy)>> {
        Ok(self
            .registrations
            .iter()
            .map(|(id, p)| (id.clone(), *p))
            .collect())
    }
    fn register(&mut self, id: &ContainerId, policy: CgroupPolicy) -> Result<()> {
        self.write(format!("register {} {policy:?}", id.short()))?;
        self.registrations.insert(id.clone(), policy);
        Ok(())
    }
    fn unregister(&mut self, id: &ContainerId) -> Result<()> {
        self.write(format!("unregister {}", id.short()))?;
        self.registrations.remove(id);
        Ok(())
    }
    fn gateway_slots(&self) -> Result<Vec<(GatewayId, GatewayState)>> {
        Ok(self
            .gateways
            .iter()
            .filter(|(_, s)| s.in_use != 0)
            .map(|(slot, s)| (GatewayId(*slot), *s))
            .collect())
    }
    fn set_gateway_slot(&mut self, slot: GatewayId, state: GatewayState) -> Result<()> {
        if slot.0 == 0 || slot.0 >= MAX_GATEWAYS {
            bail!("no gateway slot {}", slot.0);
        }
        self.write(format!(
            "gateway slot {} {:?} up={}",
            slot.0,
            gateway_name(&state),
            state.tunnel_up
        ))?;
        self.gateways.insert(slot.0, state);
        Ok(())
    }
    fn endpoints(&self) -> Result<Vec<EndpointKey>> {
        Ok(self.endpoints.iter().copied().collect())
    }
    fn write_endpoint(&mut self, key: EndpointKey, add: bool) -> Result<()> {
        self.write(format!(
            "{} endpoint {key:?}",
            if add { "add" } else { "remove" }
        ))?;
        if add {
            self.endpoints.insert(key);
        } else {
            self.endpoints.remove(&key);
        }
        Ok(())
    }
    fn guards(&self) -> Result<Vec<(u64, NetnsGuard)>> {
        Ok(self.guards.iter().map(|(c, g)| (*c, *g)).collect())
    }
    fn set_guard(&mut self, netns: u64, guard: NetnsGuard) -> Result<()> {
        self.write(format!("guard {netns} {}", guard.socketless_cgroup))?;
        self.guards.insert(netns, guard);
        Ok(())
    }
    fn remove_guard(&mut self, netns: u64) -> Result<()> {
        self.write(format!("remove guard {netns}"))?;
        self.guards.remove(&netns);
        Ok(())
    }
    fn guarded_ifaces(&self) -> Result<Vec<(IfaceKey, u64)>> {
        Ok(self.guarded_ifaces.iter().map(|(k, c)| (*k, *c)).collect())
    }
    fn write_guarded_iface(&mut self, key: IfaceKey, cookie: u64, add: bool) -> Result<()> {
        self.write(format!(
            "{} iface {} of {cookie}",
            if add { "add" } else { "remove" },
            key.ifindex
        ))?;
        if add {
            self.guarded_ifaces.insert(key, cookie);
        } else {
            self.guarded_ifaces.remove(&key);
        }
        Ok(())
    }
    fn carriers(&self) -> Result<Vec<CarrierKey>> {
        Ok(self.carriers.iter().copied().collect())
    }
    fn write_carrier(&mut self, key: CarrierKey, add: bool) -> Result<()> {
        self.write(format!(
            "{} carrier {} port {}",
            if add { "add" } else { "remove" },
            key.netns_cookie,
            key.port
        ))?;
        if add {
            self.carriers.insert(key);
        } else {
            self.carriers.remove(&key);
        }
        Ok(())
    }
    fn backstop_links(&self) -> Result<Vec<(u64, u32)>> {
        Ok(self.links.keys().copied().collect())
    }
    fn attach_backstop(
        &mut self,
        netns: &Path,
        cookie: u64,
        ifindex: u32,
        _ethernet: bool,
    ) -> Result<()> {
        self.write(format!("attach backstop {cookie} {ifindex}"))?;
        self.links.insert((cookie, ifindex), netns.to_path_buf());
        Ok(())
    }
    fn detach_backstop(&mut self, cookie: u64, ifindex: u32) -> Result<()> {
        self.write(format!("detach backstop {cookie} {ifindex}"))?;
        self.links.remove(&(cookie, ifindex));
        Ok(())
    }
}
