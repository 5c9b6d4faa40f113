//! The whole decision, from Docker's facts to the kernel's maps, without root: each test
//! builds containers as the watcher would see them, decides, applies to a
//! [`MemoryKernel`], and checks what the kernel would enforce.

mod containers;
mod gateways;
mod guards;
mod references;

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::{
    Container, Instance, Netns, Snapshot, StaticPolicy, Tunnel,
    apply::{Applier, Prune},
    decide,
    garbage::{self, Keep, KernelView},
    memory::MemoryKernel,
};
use crate::{
    domain::{CgroupId, ContainerId, TunnelInterface},
    labels::ContainerLabels,
};

fn id(fill: char) -> ContainerId {
    fill.to_string().repeat(64).parse().unwrap()
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

/// The cookie of test network namespace `n`.
fn cookie(n: u32) -> u64 {
    100_000 + u64::from(n)
}

/// Test network namespace `n`: one Ethernet interface, index 2 (its eth0).
fn netns(n: u32) -> Netns {
    Netns {
        cookie: cookie(n),
        path: format!("/run/netns/test{n}").into(),
        interfaces: interfaces(n, &[2]),
        host: false,
    }
}

/// Interfaces of test namespace `n` by index, each with a MAC address of its own.
fn interfaces(n: u32, indexes: &[u32]) -> BTreeMap<u32, crate::domain::Mac> {
    indexes
        .iter()
        .map(|&i| (i, [2, 0, 0, n as u8, 0, i as u8]))
        .collect()
}

/// A lab of containers, the tunnels' health, and the kernel they are applied to.
struct World {
    statics: StaticPolicy,
    discovered: Vec<IpNet>,
    containers: BTreeMap<ContainerId, Container>,
    tunnels: BTreeMap<ContainerId, Tunnel>,
    kernel: MemoryKernel,
    applier: Applier,
    now: u64,
}

impl World {
    fn new() -> Self {
        let kernel = MemoryKernel::default();
        let applier = Applier::load(&kernel).unwrap();
        Self {
            statics: StaticPolicy {
                internal: vec![net("127.0.0.0/8")],
                ..StaticPolicy::default()
            },
            discovered: vec![net("172.17.0.0/16")],
            containers: BTreeMap::new(),
            tunnels: BTreeMap::new(),
            kernel,
            applier,
            now: 1_000,
        }
    }

    /// A container created with `labels`, running as cgroup `cgroup` in network namespace
    /// `netns` (see [`netns`]).
    fn run(
        &mut self,
        fill: char,
        name: &str,
        labels: &[(&str, &str)],
        cgroup: CgroupId,
        netns: u32,
    ) {
        let mut container = Container::new(
            id(fill),
            name.into(),
            ContainerLabels::parse(labels.iter().copied()),
        );
        container.started(Instance {
            pid: 100 + cgroup as u32,
            cgroup,
            netns: Some(self::netns(netns)),
        });
        self.containers.insert(id(fill), container);
    }

    /// The running instance of container `fill`.
    fn instance(&mut self, fill: char) -> &mut Instance {
        self.container(fill).running.as_mut().unwrap()
    }

    /// Guarded namespaces: cookie -> the cgroup judging what the kernel sends there.
    fn guards(&self) -> BTreeMap<u64, u64> {
        self.kernel
            .guards
            .iter()
            .map(|(cookie, guard)| (*cookie, guard.socketless_cgroup))
            .collect()
    }

    /// Backstop programs: (netns cookie, interface).
    fn links(&self) -> BTreeSet<(u64, u32)> {
        self.kernel.links.keys().copied().collect()
    }

    fn container(&mut self, fill: char) -> &mut Container {
        self.containers.get_mut(&id(fill)).unwrap()
    }

    /// The gateway container `fill`'s tunnel: interface 7 in a namespace of its own.
    fn tunnel(&mut self, fill: char, up: bool) {
        let interface = TunnelInterface {
            ifindex: 7,
            netns_cookie: 4000 + u64::from(fill as u8),
        };
        self.tunnels.insert(
            id(fill),
            Tunnel {
                interface: Some(interface),
                up,
                carriers: BTreeSet::new(),
            },
        );
    }

    fn decide(&self) -> super::DesiredState {
        decide(&Snapshot {
            statics: &self.statics,
            discovered_internal: &self.discovered,
            containers: &self.containers,
            tunnels: &self.tunnels,
        })
    }

    /// Decides and applies; panics on a failed write.
    fn apply(&mut self) -> super::apply::Applied {
        self.now += 1;
        let desired = self.decide();
        let applied = self
            .applier
            .apply(&desired, &mut self.kernel, Prune::Yes, self.now);
        assert!(applied.failures.is_empty(), "{:?}", applied.failures);
        applied
    }

    /// The kernel's policy for `cgroup`, with the gateway by name.
    fn policy(&self, cgroup: CgroupId) -> Option<(bool, Option<String>)> {
        let policy = self.kernel.policies.get(&cgroup)?;
        Some((policy.is_protected(), self.slot_name(policy.gateway)))
    }

    fn registration(&self, fill: char) -> Option<(bool, Option<String>)> {
        let policy = self.kernel.registrations.get(&id(fill))?;
        Some((policy.is_protected(), self.slot_name(policy.gateway)))
    }

    fn slot_name(&self, slot: u32) -> Option<String> {
        (slot != 0).then(|| crate::kernel::maps::gateway_name(&self.kernel.gateways[&slot]))
    }

    fn gateway_names(&self) -> BTreeSet<String> {
        self.kernel
            .gateways
            .values()
            .filter(|s| s.in_use != 0)
            .map(crate::kernel::maps::gateway_name)
            .collect()
    }

    /// Collects garbage as the watcher does, with every cgroup in `alive` still existing.
    fn collect(&mut self, alive: &[CgroupId]) {
        let view = KernelView {
            policies: self.kernel.policies.iter().map(|(c, p)| (*c, *p)).collect(),
            counted: self.kernel.counters.keys().copied().collect(),
            alive: alive.iter().copied().collect(),
        };
        let keep = Keep::of(&self.statics, &self.containers);
        let garbage = garbage::collect(&view, &keep, &BTreeSet::new(), false);
        let applied = self.applier.collect(&garbage, &mut self.kernel);
        assert!(applied.failures.is_empty(), "{:?}", applied.failures);
        // As the watcher does: an instance whose cgroup is gone runs no more.
        garbage.mark_stopped(&mut self.containers);
    }
}

pub(super) const GATEWAY: (&str, &str) = ("netguard.role", "vpn-gateway");
pub(super) const PROTECTED: (&str, &str) = ("vpn", "required");
