//! Why is this container protected, and what may it reach? The answer is [`decide`]: a pure
//! function from a [`Snapshot`] (what Docker, the host, the configuration and the tunnel
//! health say) to the [`DesiredState`] of the kernel (policies, allowances, gateways,
//! backstops). [`apply::Applier`] then writes only the difference through a small trait over
//! the maps, in an order that is never looser than either end state; [`garbage`] says which
//! entries of cgroups that are gone may go. Nothing here does I/O, so all of it runs in unit
//! tests against [`memory::MemoryKernel`].

pub mod apply;
pub mod garbage;
pub mod gateways;
pub mod memory;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

pub use self::gateways::GatewayChoice;
use crate::{
    config::INSTANCES_KEPT,
    domain::{CgroupId, ContainerId, Endpoint, TunnelInterface},
    labels::ContainerLabels,
};

/// A container as the watcher last saw it: Docker's facts and the host's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: ContainerId,
    /// Docker's name, without the leading `/`.
    pub name: String,
    pub labels: ContainerLabels,
    /// Docker's `HostConfig.NetworkMode`: `container:<id or name>` when it joins another
    /// container's network namespace.
    pub network_mode: String,
    /// The running instance; `None` while it is stopped.
    pub running: Option<Instance>,
    /// Cgroups of its instances this agent has seen, the latest last; at most
    /// [`INSTANCES_KEPT`] (a crash loop makes one per start).
    pub instances: Vec<CgroupId>,
    /// Docker's health status, for a container with a HEALTHCHECK; `None` without one.
    pub docker_healthy: Option<bool>,
}

impl Container {
    pub fn new(id: ContainerId, name: String, labels: ContainerLabels) -> Self {
        Self {
            id,
            name,
            labels,
            network_mode: String::new(),
            running: None,
            instances: Vec::new(),
            docker_healthy: None,
        }
    }

    /// Records that it runs as `instance`; returns the cgroups of instances it no longer
    /// remembers (the oldest, beyond [`INSTANCES_KEPT`]).
    pub fn started(&mut self, instance: Instance) -> Vec<CgroupId> {
        let cgroup = instance.cgroup;
        self.running = Some(instance);
        self.instances.retain(|c| *c != cgroup);
        self.instances.push(cgroup);
        let excess = self.instances.len().saturating_sub(INSTANCES_KEPT);
        self.instances.drain(..excess).collect()
    }

    /// The container the network namespace of this one belongs to, as Docker names it
    /// (`container:<ref>`).
    pub fn joins(&self) -> Option<&str> {
        self.network_mode.strip_prefix("container:")
    }
}

/// A running instance of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub pid: u32,
    pub cgroup: CgroupId,
    /// Host-side ends of the veths in its network namespace.
    pub veths: Vec<u32>,
}

/// What the tunnel health rounds last said about a gateway container.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tunnel {
    /// Its tunnel interface, found in its network namespace.
    pub interface: Option<TunnelInterface>,
    /// Healthy, after hysteresis.
    pub up: bool,
}

/// What the static configuration protects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticPolicy {
    /// Built-in and configured internal destinations.
    pub internal: Vec<IpNet>,
    pub gateways: Vec<StaticGateway>,
    pub cgroups: Vec<StaticCgroup>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticGateway {
    pub name: String,
    pub tunnel: Option<TunnelInterface>,
    pub endpoints: Vec<Endpoint>,
    pub tunnel_up: bool,
}

/// A cgroup protected by the configuration (`[[protect]]`, `--protect`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticCgroup {
    /// Its path below the cgroup2 root.
    pub name: String,
    pub id: CgroupId,
    pub gateway: Option<String>,
    pub allow: Vec<IpNet>,
    /// Host-side interfaces of its network namespace.
    pub backstops: Vec<u32>,
}

/// Everything [`decide`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    pub statics: &'a StaticPolicy,
    /// Docker's network subnets and the host's directly connected private subnets.
    pub discovered_internal: &'a [IpNet],
    pub containers: &'a BTreeMap<ContainerId, Container>,
    /// Keyed by gateway container.
    pub tunnels: &'a BTreeMap<ContainerId, Tunnel>,
}

/// What the datapath does for a cgroup, in the user's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Traffic is counted, never stopped.
    CountOnly,
    /// Only internal destinations, `allow`, and the gateway's endpoints and live tunnel.
    Protected {
        gateway: Option<String>,
        allow: BTreeSet<IpNet>,
    },
}

impl Policy {
    pub fn is_protected(&self) -> bool {
        matches!(self, Policy::Protected { .. })
    }

    pub fn gateway(&self) -> Option<&str> {
        match self {
            Policy::Protected { gateway, .. } => gateway.as_deref(),
            Policy::CountOnly => None,
        }
    }
}

/// A gateway's slot as it should be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayPlan {
    pub tunnel: Option<TunnelInterface>,
    pub endpoints: BTreeSet<Endpoint>,
    /// Its containers may use the tunnel.
    pub up: bool,
}

/// A container's policy and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub policy: Policy,
    pub gateway: GatewayChoice,
}

/// The kernel state netguard wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// Internal destinations of every protected cgroup.
    pub internal: BTreeSet<IpNet>,
    /// By name.
    pub gateways: BTreeMap<String, GatewayPlan>,
    /// Every known container, for the classifier to apply when its cgroup appears.
    pub registrations: BTreeMap<ContainerId, Policy>,
    /// Running containers' and static cgroups' policies.
    pub policies: BTreeMap<CgroupId, Policy>,
    /// Host-side interface -> the cgroup whose policy judges the frames leaving through it.
    pub backstops: BTreeMap<u32, CgroupId>,
    /// Each container's decision.
    pub decisions: BTreeMap<ContainerId, Decision>,
    /// What the operator should know about the decision (each said once).
    pub problems: Vec<String>,
}

/// The one decision: what every container and configured cgroup gets.
pub fn decide(snapshot: &Snapshot<'_>) -> DesiredState {
    let mut desired = DesiredState {
        internal: snapshot
            .statics
            .internal
            .iter()
            .chain(snapshot.discovered_internal)
            .map(IpNet::trunc)
            .collect(),
        ..DesiredState::default()
    };
    for gateway in &snapshot.statics.gateways {
        desired.gateways.insert(
            gateway.name.clone(),
            GatewayPlan {
                tunnel: gateway.tunnel,
                endpoints: gateway.endpoints.iter().copied().collect(),
                up: gateway.tunnel_up,
            },
        );
    }
    for gateway in snapshot.containers.values().filter(|c| c.labels.is_gateway) {
        if desired.gateways.contains_key(&gateway.name) {
            desired.problems.push(format!(
                "gateway container {} ({}) has the name of a gateway of the configuration: the \
                 configuration's gateway is used; rename one of them",
                gateway.name,
                gateway.id.short()
            ));
            continue;
        }
        // A stopped gateway has no tunnel: down for everyone behind it.
        let tunnel = gateway
            .running
            .as_ref()
            .and_then(|_| snapshot.tunnels.get(&gateway.id))
            .copied()
            .unwrap_or_default();
        desired.gateways.insert(
            gateway.name.clone(),
            GatewayPlan {
                tunnel: tunnel.interface,
                endpoints: gateway.labels.endpoints.iter().copied().collect(),
                up: tunnel.up && tunnel.interface.is_some(),
            },
        );
    }

    // Backstop candidates: every protected cgroup whose namespace leaves through the veth.
    let mut owners: BTreeMap<u32, BTreeSet<CgroupId>> = BTreeMap::new();
    for container in snapshot.containers.values() {
        let gateway = gateways::choose(container, snapshot.containers);
        let policy = if container.labels.protected {
            Policy::Protected {
                gateway: gateway.gateway().map(str::to_string),
                allow: container.labels.allow.iter().map(IpNet::trunc).collect(),
            }
        } else {
            Policy::CountOnly
        };
        if let Some(instance) = &container.running {
            desired.policies.insert(instance.cgroup, policy.clone());
            if policy.is_protected() {
                for veth in &instance.veths {
                    owners.entry(*veth).or_default().insert(instance.cgroup);
                }
            }
        }
        desired
            .registrations
            .insert(container.id.clone(), policy.clone());
        desired
            .decisions
            .insert(container.id.clone(), Decision { policy, gateway });
    }
    for cgroup in &snapshot.statics.cgroups {
        let policy = Policy::Protected {
            gateway: cgroup.gateway.clone(),
            allow: cgroup.allow.iter().map(IpNet::trunc).collect(),
        };
        desired.policies.insert(cgroup.id, policy);
        for ifindex in &cgroup.backstops {
            owners.entry(*ifindex).or_default().insert(cgroup.id);
        }
    }
    // Several protected containers in one namespace: any of their policies is as strict for
    // frames the socket hooks never saw; the lowest cgroup id keeps the choice stable.
    desired.backstops = owners
        .into_iter()
        .filter_map(|(ifindex, cgroups)| Some((ifindex, *cgroups.first()?)))
        .collect();
    desired
}
