//! The VPN gateway containers' tunnels: where each one's tunnel interface is, and whether it
//! is healthy, round after round.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use crate::{
    config::gluetun::GluetunAuth,
    domain::ContainerId,
    reconcile::{Container, Tunnel, gateways::names},
    tunnel::{
        HealthPolicy, TunnelHealth,
        probe::{FoundTunnel, GluetunCredentials, HealthJob, HealthRound, find_tunnel},
    },
};

/// One running gateway's tunnel.
#[derive(Clone, Debug)]
struct Tracked {
    pid: u32,
    policy: HealthPolicy,
    tunnel: FoundTunnel,
    health: TunnelHealth,
    carriers: BTreeSet<SocketAddr>,
}

/// What changed in a health round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The tunnel interface appeared, vanished or moved (down until proven healthy again).
    Moved {
        gateway: ContainerId,
        interface: Option<String>,
    },
    /// A kernel tunnel's peers changed (Gluetun picked another server).
    Carriers { gateway: ContainerId },
    /// The tunnel went up or down.
    Health {
        gateway: ContainerId,
        up: bool,
        reason: String,
    },
}

/// Every running gateway container's tunnel.
#[derive(Debug)]
pub struct GatewayTunnels {
    tracked: BTreeMap<ContainerId, Tracked>,
    /// Credentials for Gluetun control servers, the most specific first.
    auth: Vec<GluetunAuth>,
}

impl GatewayTunnels {
    pub fn new(auth: Vec<GluetunAuth>) -> Self {
        Self {
            tracked: BTreeMap::new(),
            auth,
        }
    }

    /// The configured credentials for `gateway`'s Gluetun control server: its own entry
    /// (one whose reference names this gateway and no other), and the default.
    fn gluetun_auth(
        &self,
        gateway: &Container,
        containers: &BTreeMap<ContainerId, Container>,
    ) -> GluetunCredentials {
        let own = self.auth.iter().find(|auth| {
            auth.gateway.as_deref().is_some_and(|reference| {
                let mut named = containers
                    .values()
                    .filter(|c| c.labels.is_gateway && names(reference, c));
                matches!((named.next(), named.next()), (Some(one), None) if one.id == gateway.id)
            })
        });
        let default = self.auth.iter().find(|auth| auth.gateway.is_none());
        GluetunCredentials {
            own: own.map(|auth| auth.method.clone()),
            default: default.map(|auth| auth.method.clone()),
        }
    }

    /// Follows the containers: a new gateway, a new process or a new tunnel interface starts
    /// down; a stopped or removed gateway is forgotten (its tunnel is down).
    pub fn sync(&mut self, containers: &BTreeMap<ContainerId, Container>) {
        self.tracked.retain(|id, _| {
            containers
                .get(id)
                .is_some_and(|c| c.labels.is_gateway && c.running.is_some())
        });
        for container in containers.values().filter(|c| c.labels.is_gateway) {
            let Some(instance) = &container.running else {
                continue;
            };
            let policy =
                container.labels.health.clone().unwrap_or_else(|| {
                    HealthPolicy::default_for(container.docker_healthy.is_some())
                });
            match self.tracked.get_mut(&container.id) {
                Some(tracked) if tracked.pid == instance.pid => tracked.policy = policy,
                _ => {
                    let tunnel = find_tunnel(instance.pid, &container.labels.tunnel_interfaces);
                    self.tracked.insert(
                        container.id.clone(),
                        Tracked {
                            pid: instance.pid,
                            policy,
                            tunnel,
                            health: TunnelHealth::default(),
                            carriers: BTreeSet::new(),
                        },
                    );
                }
            }
        }
    }

    /// The next round of checks, one per running gateway.
    pub fn jobs(&self, containers: &BTreeMap<ContainerId, Container>) -> Vec<HealthJob> {
        self.tracked
            .iter()
            .filter_map(|(id, tracked)| {
                let container = containers.get(id)?;
                Some(HealthJob {
                    id: id.clone(),
                    pid: tracked.pid,
                    names: container.labels.tunnel_interfaces.clone(),
                    policy: tracked.policy.clone(),
                    docker_healthy: container.docker_healthy,
                    gluetun_auth: self.gluetun_auth(container, containers),
                })
            })
            .collect()
    }

    /// Takes in a round's evidence; returns what changed.
    pub fn record(&mut self, round: HealthRound) -> Vec<Change> {
        let Some(tracked) = self.tracked.get_mut(&round.id) else {
            return Vec::new();
        };
        let mut changes = Vec::new();
        if round.tunnel != tracked.tunnel {
            changes.push(Change::Moved {
                gateway: round.id.clone(),
                interface: round.tunnel.as_ref().map(|(_, name)| name.clone()),
            });
            tracked.tunnel = round.tunnel;
            tracked.health = TunnelHealth::default();
        }
        if let Some(carriers) = round.carriers
            && carriers != tracked.carriers
        {
            changes.push(Change::Carriers {
                gateway: round.id.clone(),
            });
            tracked.carriers = carriers;
        }
        let verdict = tracked.policy.verdict(&round.evidence);
        if tracked.health.observe(&tracked.policy, verdict) {
            changes.push(Change::Health {
                gateway: round.id,
                up: tracked.health.up,
                reason: tracked.health.last_reason.clone(),
            });
        }
        changes
    }

    /// Each tracked gateway's tunnel, for the snapshot.
    pub fn tunnels(&self) -> BTreeMap<ContainerId, Tunnel> {
        self.tracked
            .iter()
            .map(|(id, tracked)| {
                (
                    id.clone(),
                    Tunnel {
                        interface: tracked.tunnel.as_ref().map(|(t, _)| *t),
                        up: tracked.health.up,
                        carriers: tracked.carriers.clone(),
                    },
                )
            })
            .collect()
    }

    /// The peers of the gateway's kernel tunnel.
    pub fn carriers(&self, id: &ContainerId) -> Vec<SocketAddr> {
        self.tracked
            .get(id)
            .map(|t| t.carriers.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether the gateway's tunnel is up (after hysteresis).
    pub fn is_up(&self, id: &ContainerId) -> bool {
        self.tracked.get(id).is_some_and(|t| t.health.up)
    }

    /// Why the tracked gateway's tunnel is down; `None` while it is up or not tracked.
    pub fn down_reason(&self, id: &ContainerId) -> Option<&str> {
        self.tracked
            .get(id)
            .filter(|t| !t.health.up)
            .map(|t| t.health.last_reason.as_str())
    }

    /// Why the gateway's tunnel last counted as down.
    pub fn last_reason(&self, id: &ContainerId) -> Option<&str> {
        self.tracked.get(id).map(|t| t.health.last_reason.as_str())
    }
}
