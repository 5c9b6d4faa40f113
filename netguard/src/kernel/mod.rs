//! Everything that touches BPF: loading and pinning the programs, the maps, the ring
//! buffers. The applier ([`crate::reconcile::apply`]) writes through [`Kernel`].

pub mod btf;
pub mod datapath;
pub mod events;
pub mod log;
pub mod maps;
pub mod pins;

use std::path::Path;

use anyhow::Result;
use ipnet::IpNet;
use netguard_common::{CarrierKey, CgroupPolicy, EndpointKey, GatewayState, IfaceKey, NetnsGuard};

pub use self::{
    datapath::Datapath,
    maps::{AgentSocket, AgentSockets, Maps, PinnedOwners},
};
use crate::domain::{CgroupId, ContainerId, GatewayId};

/// The kernel as the applier sees it: typed reads and writes of the maps, and the backstop
/// programs on host interfaces. [`Datapath`] is the real one;
/// [`crate::reconcile::memory::MemoryKernel`] is the one unit tests use.
pub trait Kernel {
    fn policies(&self) -> Result<Vec<(CgroupId, CgroupPolicy)>>;
    fn set_policy(&mut self, cgroup: CgroupId, policy: CgroupPolicy) -> Result<()>;
    fn remove_policy(&mut self, cgroup: CgroupId) -> Result<()>;
    fn counted_cgroups(&self) -> Result<Vec<CgroupId>>;
    fn remove_counters(&mut self, cgroup: CgroupId) -> Result<()>;
    /// Internal CIDRs with their scope ([`netguard_common::SCOPE_GLOBAL`] or a cgroup id).
    fn cidrs(&self) -> Result<Vec<(u64, IpNet)>>;
    fn write_cidr(&mut self, scope: u64, cidr: IpNet, add: bool) -> Result<()>;
    fn registrations(&self) -> Result<Vec<(ContainerId, CgroupPolicy)>>;
    fn register(&mut self, id: &ContainerId, policy: CgroupPolicy) -> Result<()>;
    fn unregister(&mut self, id: &ContainerId) -> Result<()>;
    /// Slots in use.
    fn gateway_slots(&self) -> Result<Vec<(GatewayId, GatewayState)>>;
    fn set_gateway_slot(&mut self, slot: GatewayId, state: GatewayState) -> Result<()>;
    fn endpoints(&self) -> Result<Vec<EndpointKey>>;
    fn write_endpoint(&mut self, key: EndpointKey, add: bool) -> Result<()>;
    /// Guarded network namespaces: netns cookie -> its guard.
    fn guards(&self) -> Result<Vec<(u64, NetnsGuard)>>;
    fn set_guard(&mut self, netns: u64, guard: NetnsGuard) -> Result<()>;
    fn remove_guard(&mut self, netns: u64) -> Result<()>;
    /// Guarded namespaces' interfaces: (index, MAC) -> netns cookie.
    fn guarded_ifaces(&self) -> Result<Vec<(IfaceKey, u64)>>;
    fn write_guarded_iface(&mut self, key: IfaceKey, cookie: u64, add: bool) -> Result<()>;
    /// Kernel tunnels' peers the backstop lets out.
    fn carriers(&self) -> Result<Vec<CarrierKey>>;
    fn write_carrier(&mut self, key: CarrierKey, add: bool) -> Result<()>;
    /// Backstop programs attached: (netns cookie, interface index).
    fn backstop_links(&self) -> Result<Vec<(u64, u32)>>;
    /// Attaches the backstop on interface `ifindex` of the namespace file `netns`.
    /// `ethernet` false: the interface has no link-layer header (tun, WireGuard).
    fn attach_backstop(
        &mut self,
        netns: &Path,
        cookie: u64,
        ifindex: u32,
        ethernet: bool,
    ) -> Result<()>;
    fn detach_backstop(&mut self, cookie: u64, ifindex: u32) -> Result<()>;
}

impl Kernel for Datapath {
    fn policies(&self) -> Result<Vec<(CgroupId, CgroupPolicy)>> {
        self.maps.policies()
    }
    fn set_policy(&mut self, cgroup: CgroupId, policy: CgroupPolicy) -> Result<()> {
        self.maps.set_policy(cgroup, policy)
    }
    fn remove_policy(&mut self, cgroup: CgroupId) -> Result<()> {
        self.maps.remove_policy(cgroup)
    }
    fn counted_cgroups(&self) -> Result<Vec<CgroupId>> {
        self.maps.counted_cgroups()
    }
    fn remove_counters(&mut self, cgroup: CgroupId) -> Result<()> {
        self.maps.remove_counters(cgroup)
    }
    fn cidrs(&self) -> Result<Vec<(u64, IpNet)>> {
        self.maps.cidrs()
    }
    fn write_cidr(&mut self, scope: u64, cidr: IpNet, add: bool) -> Result<()> {
        self.maps.write_cidr(scope, cidr, add)
    }
    fn registrations(&self) -> Result<Vec<(ContainerId, CgroupPolicy)>> {
        self.maps.registrations()
    }
    fn register(&mut self, id: &ContainerId, policy: CgroupPolicy) -> Result<()> {
        self.maps.register(id, policy)
    }
    fn unregister(&mut self, id: &ContainerId) -> Result<()> {
        self.maps.unregister(id)
    }
    fn gateway_slots(&self) -> Result<Vec<(GatewayId, GatewayState)>> {
        self.maps.gateway_slots()
    }
    fn set_gateway_slot(&mut self, slot: GatewayId, state: GatewayState) -> Result<()> {
        self.maps.set_gateway_slot(slot, state)
    }
    fn endpoints(&self) -> Result<Vec<EndpointKey>> {
        self.maps.endpoints()
    }
    fn write_endpoint(&mut self, key: EndpointKey, add: bool) -> Result<()> {
        if add {
            self.maps.add_endpoint(key)
        } else {
            self.maps.remove_endpoint(key)
        }
    }
    fn guards(&self) -> Result<Vec<(u64, NetnsGuard)>> {
        self.maps.guards()
    }
    fn set_guard(&mut self, netns: u64, guard: NetnsGuard) -> Result<()> {
        self.maps.set_guard(netns, guard)
    }
    fn remove_guard(&mut self, netns: u64) -> Result<()> {
        self.maps.remove_guard(netns)
    }
    fn guarded_ifaces(&self) -> Result<Vec<(IfaceKey, u64)>> {
        self.maps.guarded_ifaces()
    }
    fn write_guarded_iface(&mut self, key: IfaceKey, cookie: u64, add: bool) -> Result<()> {
        self.maps.write_guarded_iface(key, cookie, add)
    }
    fn carriers(&self) -> Result<Vec<CarrierKey>> {
        self.maps.carriers()
    }
    fn write_carrier(&mut self, key: CarrierKey, add: bool) -> Result<()> {
        self.maps.write_carrier(key, add)
    }
    fn backstop_links(&self) -> Result<Vec<(u64, u32)>> {
        self.pinned_backstops()
    }
    fn attach_backstop(
        &mut self,
        netns: &Path,
        cookie: u64,
        ifindex: u32,
        ethernet: bool,
    ) -> Result<()> {
        let outcome = Datapath::attach_backstop(self, netns, cookie, ifindex, ethernet)?;
        tracing::info!(netns = %netns.display(), ifindex, ?outcome, "backstop");
        Ok(())
    }
    fn detach_backstop(&mut self, cookie: u64, ifindex: u32) -> Result<()> {
        Datapath::detach_backstop(self, cookie, ifindex)
    }
}
