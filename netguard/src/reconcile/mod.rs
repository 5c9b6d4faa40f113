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

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
};

use ipnet::IpNet;
use netguard_common::CarrierKey;

pub use self::gateways::GatewayChoice;
use crate::{
    config::INSTANCES_KEPT,
    domain::{CgroupId, ContainerId, Endpoint, Mac, NetworkPlace, TunnelInterface, carrier_key},
    labels::ContainerLabels,
};

/// A container as the watcher last saw it: Docker's facts and the host's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    pub id: ContainerId,
    /// Docker's name, without the leading `/`.
    pub name: String,
    /// Its Compose project (or Swarm stack) and service, from Docker's labels.
    pub project: Option<String>,
    pub service: Option<String>,
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
    /// The Docker networks it is on, by network id.
    pub networks: BTreeMap<String, NetworkPlace>,
}

impl Container {
    pub fn new(id: ContainerId, name: String, labels: ContainerLabels) -> Self {
        Self {
            id,
            name,
            project: None,
            service: None,
            labels,
            network_mode: String::new(),
            running: None,
            instances: Vec::new(),
            docker_healthy: None,
            networks: BTreeMap::new(),
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
    /// Its network namespace; `None` when it could not be read.
    pub netns: Option<Netns>,
}

/// A network namespace, as the host sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    /// `bpf_get_netns_cookie`'s value for it.
    pub cookie: u64,
    /// A file to enter it by (`/proc/<pid>/ns/net`, `/run/netns/<name>`).
    pub path: PathBuf,
    /// Its Ethernet interfaces: index -> MAC address.
    pub interfaces: BTreeMap<u32, Mac>,
    /// It is the host's own (`--network host`).
    pub host: bool,
}

/// What the tunnel health rounds last said about a gateway container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tunnel {
    /// Its tunnel interface, found in its network namespace.
    pub interface: Option<TunnelInterface>,
    /// Healthy, after hysteresis.
    pub up: bool,
    /// Where a kernel tunnel's encrypted packets go (kernel WireGuard's peers): they keep
    /// the socket of the packet they carry, so the backstop is told to let them out.
    pub carriers: BTreeSet<SocketAddr>,
}

/// What the static configuration protects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticPolicy {
    /// Built-in and configured internal destinations.
    pub internal: Vec<IpNet>,
    pub gateways: Vec<StaticGateway>,
    pub cgroups: Vec<StaticCgroup>,
    /// The host's interfaces that carry the backstop (`backstop_host_interfaces`); `None`:
    /// every one.
    pub host_interfaces: Option<Vec<String>>,
    /// The cookie of the host's network namespace (the agent's own).
    pub host_netns: u64,
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
    /// Its network namespace, to guard with the backstop (`backstop_netns`).
    pub netns: Option<Netns>,
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

/// A network namespace whose interfaces carry the backstop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardPlan {
    pub netns: PathBuf,
    /// Index -> MAC address.
    pub interfaces: BTreeMap<u32, Mac>,
    /// The protected cgroup whose policy judges what the kernel sends there without a
    /// process's socket; `None` in the host's namespace (the host is never blocked).
    pub socketless: Option<CgroupId>,
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
    /// Network namespaces with a protected process, by cookie: their interfaces carry the
    /// backstop, which judges every frame by its sender's policy.
    pub guards: BTreeMap<u64, GuardPlan>,
    /// Kernel tunnels' carriers the backstop lets out of their namespace.
    pub carriers: BTreeSet<CarrierKey>,
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
            .cloned()
            .unwrap_or_default();
        if let Some(interface) = tunnel.interface {
            desired.carriers.extend(
                tunnel
                    .carriers
                    .iter()
                    .map(|to| carrier_key(interface.netns_cookie, *to)),
            );
        }
        desired.gateways.insert(
            gateway.name.clone(),
            GatewayPlan {
                tunnel: tunnel.interface,
                endpoints: gateway.labels.endpoints.iter().copied().collect(),
                up: tunnel.up && tunnel.interface.is_some(),
            },
        );
    }

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
            if policy.is_protected()
                && let Some(netns) = &instance.netns
            {
                guard(&mut desired.guards, netns, instance.cgroup);
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
        if let Some(netns) = &cgroup.netns {
            guard(&mut desired.guards, netns, cgroup.id);
        }
    }
    desired
}

/// Guards `netns`, where protected cgroup `cgroup` sends from. Several protected containers
/// in one namespace: any of their policies is as strict for what the kernel sends there; the
/// lowest cgroup id keeps the choice stable.
fn guard(guards: &mut BTreeMap<u64, GuardPlan>, netns: &Netns, cgroup: CgroupId) {
    let plan = guards.entry(netns.cookie).or_insert_with(|| GuardPlan {
        netns: netns.path.clone(),
        interfaces: netns.interfaces.clone(),
        socketless: None,
    });
    if !netns.host {
        plan.socketless = Some(plan.socketless.map_or(cgroup, |c| c.min(cgroup)));
    }
}
