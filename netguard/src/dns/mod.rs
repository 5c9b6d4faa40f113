//! netguard's resolver: where a protected container's DNS goes, whatever address it asked.
//!
//! The kernel steers every DNS query of a protected container (TCP/UDP port 53 to any
//! address, anything to Docker's embedded resolver 127.0.0.11) to sockets the agent holds on
//! loopback inside the container's own network namespace, and refuses it when there are
//! none (see `netguard-ebpf/src/dns.rs`). Here those sockets answer:
//! - Docker's names on the networks the container's namespace is on ([`names`]), as Docker's
//!   embedded resolver would, from the watcher's inventory;
//! - every other name is forwarded from inside its gateway's namespace to the gateway's
//!   resolver (Gluetun's own at 127.0.0.1:53 by default, `netguard.dns` on the gateway), a
//!   resolver that is not on loopback only through the tunnel interface (`SO_BINDTODEVICE`),
//!   and only while netguard counts the tunnel up; or to the resolver the operator allowed
//!   the container (`netguard.dns` on it) when that one is internal;
//! - without a gateway, or while its tunnel is down, refused at once (REFUSED).
//!
//! So nothing but the tunnel sees a protected container's query, and dockerd (which
//! forwards with its own sockets, from the container's namespace up to Docker 27 and from
//! the host's after) never gets one. With the agent down the sockets are gone and the
//! queries fail; nothing leaks.

mod forward;
pub mod names;
mod serve;
#[cfg(test)]
mod tests;
pub mod wire;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, RwLock},
};

use netguard_common::{DnsPortKey, DnsSteer, FAMILY_V4, FAMILY_V6};
use tracing::{info, warn};

use self::names::Directory;
use crate::{
    domain::{CgroupId, ContainerId},
    kernel::{AgentSockets, Maps},
    reconcile::{Container, DesiredState},
    report::Report,
};

/// A gateway's resolver unless `netguard.dns` names another: Gluetun's DNS server, in its
/// namespace.
pub const DEFAULT_GATEWAY_RESOLVER: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), netguard_common::DNS_PORT);

/// Where a protected container's external names go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// Nowhere: no gateway, and no resolver of its own it may reach. Local names only.
    LocalOnly,
    /// Its gateway's tunnel is down (or the gateway is not running): refused at once.
    TunnelDown { gateway: String },
    /// Sent from inside the namespace at `netns` to `resolver`, through the interface with
    /// index `through` (there) only, when set.
    Forward {
        netns: PathBuf,
        resolver: SocketAddr,
        through: Option<u32>,
    },
}

/// A protected container netguard resolves for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub container: ContainerId,
    pub name: String,
    pub netns: PathBuf,
    pub netns_cookie: u64,
    /// The Docker networks of its namespace (its own, or those of the container whose
    /// namespace it joins), by id.
    pub networks: BTreeSet<String>,
    pub upstream: Upstream,
}

/// The resolvers there should be: one per running protected container whose namespace is
/// known, by its cgroup.
pub fn plan(
    containers: &BTreeMap<ContainerId, Container>,
    desired: &DesiredState,
) -> BTreeMap<CgroupId, Client> {
    let mut clients = BTreeMap::new();
    for (id, decision) in &desired.decisions {
        let Some(container) = containers.get(id) else {
            continue;
        };
        let Some(instance) = &container.running else {
            continue;
        };
        let Some(netns) = &instance.netns else {
            continue;
        };
        if !decision.policy.is_protected() {
            continue;
        }
        let networks = containers
            .values()
            .filter(|c| {
                c.running
                    .as_ref()
                    .and_then(|i| i.netns.as_ref())
                    .is_some_and(|n| n.cookie == netns.cookie)
            })
            .flat_map(|c| c.networks.keys().cloned())
            .collect();
        let upstream = upstream(container, decision.policy.gateway(), containers, desired)
            .unwrap_or_else(|own| Upstream::Forward {
                netns: netns.path.clone(),
                resolver: own,
                through: None,
            });
        clients.insert(
            instance.cgroup,
            Client {
                container: id.clone(),
                name: container.name.clone(),
                netns: netns.path.clone(),
                netns_cookie: netns.cookie,
                networks,
                upstream,
            },
        );
    }
    clients
}

/// Where `container`'s external names go; `Err(resolver)`: to the internal resolver the
/// operator allowed it, from its own namespace.
fn upstream(
    container: &Container,
    gateway: Option<&str>,
    containers: &BTreeMap<ContainerId, Container>,
    desired: &DesiredState,
) -> Result<Upstream, SocketAddr> {
    let internal = |address: IpAddr| {
        desired
            .internal
            .iter()
            .chain(&container.labels.allow)
            .any(|net| net.contains(&address))
    };
    if let Some(own) = container.labels.dns
        && internal(own.ip())
        && !own.ip().is_loopback()
    {
        return Err(own);
    }
    let Some(gateway) = gateway else {
        return Ok(Upstream::LocalOnly);
    };
    let down = || Upstream::TunnelDown {
        gateway: gateway.to_string(),
    };
    let Some(gateway_container) = containers
        .values()
        .find(|c| c.labels.is_gateway && c.name == gateway)
    else {
        return Ok(down());
    };
    let (Some(netns), Some(plan)) = (
        gateway_container
            .running
            .as_ref()
            .and_then(|i| i.netns.as_ref()),
        desired.gateways.get(gateway),
    ) else {
        return Ok(down());
    };
    let Some(tunnel) = plan.tunnel.filter(|_| plan.up) else {
        return Ok(down());
    };
    let resolver = container
        .labels
        .dns
        .or(gateway_container.labels.dns)
        .unwrap_or(DEFAULT_GATEWAY_RESOLVER);
    Ok(Upstream::Forward {
        netns: netns.path.clone(),
        resolver,
        // The gateway's own resolver on loopback does its own upstream (through the
        // tunnel, under its firewall); any other address only through the tunnel.
        through: (!resolver.ip().is_loopback()).then_some(tunnel.ifindex),
    })
}

/// What the resolvers read at every query.
#[derive(Debug, Default)]
struct Shared {
    directory: Directory,
    clients: BTreeMap<CgroupId, Client>,
}

/// A running resolver.
struct Running {
    steer: DnsSteer,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The agent's resolvers, one per protected container, kept in line with the watcher's
/// plan; owned by the watcher.
pub struct Resolvers {
    shared: Arc<RwLock<Shared>>,
    running: BTreeMap<CgroupId, Running>,
    report: Arc<Report>,
    /// Where forwarding sockets are registered (see [`AgentSockets`]).
    sockets: Option<AgentSockets>,
}

impl Resolvers {
    pub fn new(report: Arc<Report>, pin_dir: &std::path::Path) -> Self {
        let sockets = AgentSockets::open(pin_dir)
            .inspect_err(|error| {
                warn!(
                    "{error:#}: an agent in the root cgroup cannot forward protected \
                     containers' DNS from a guarded namespace"
                )
            })
            .ok();
        Self {
            shared: Arc::default(),
            running: BTreeMap::new(),
            report,
            sockets,
        }
    }

    /// Starts the resolvers `clients` need and stops the others; the kernel steers to each
    /// once it listens, and no longer once it is stopped (or was a previous agent's).
    pub fn sync(
        &mut self,
        directory: Directory,
        clients: BTreeMap<CgroupId, Client>,
        maps: &mut Maps,
    ) {
        self.running.retain(|cgroup, running| {
            clients.get(cgroup).map(|c| c.netns_cookie) == Some(running.steer.netns_cookie)
        });
        for (cgroup, client) in &clients {
            if self.running.contains_key(cgroup) {
                continue;
            }
            // A new resolver answers nothing until `clients` is shared below, and the kernel
            // steers to it only once `write` has run.
            match serve::start(
                *cgroup,
                client,
                &self.shared,
                &self.report,
                self.sockets.as_ref(),
            ) {
                Ok((steer, tasks)) => {
                    info!(
                        container = client.name,
                        port_v4 = steer.port_v4,
                        port_v6 = steer.port_v6,
                        "resolver listening in the container's namespace"
                    );
                    self.running.insert(*cgroup, Running { steer, tasks });
                }
                Err(error) => warn!(
                    container = client.name,
                    "starting its resolver: {error:#} (its DNS is refused until it starts; \
                     retried at the next sync)"
                ),
            }
        }
        {
            let mut shared = self.shared.write().unwrap();
            shared.directory = directory;
            shared.clients = clients;
        }
        self.write(maps);
    }

    /// The kernel's steering entries, and whose each port is: exactly the running resolvers.
    fn write(&self, maps: &mut Maps) {
        let ports: BTreeMap<DnsPortKey, CgroupId> = self
            .running
            .iter()
            .flat_map(|(cgroup, running)| {
                let steer = running.steer;
                [(FAMILY_V4, steer.port_v4), (FAMILY_V6, steer.port_v6)]
                    .into_iter()
                    .filter(|(_, port)| *port != 0)
                    .map(move |(family, port)| {
                        let key = DnsPortKey {
                            netns_cookie: steer.netns_cookie,
                            port,
                            family,
                            _pad: [0; 5],
                        };
                        (key, *cgroup)
                    })
            })
            .collect();
        match maps.dns_ports() {
            Ok(entries) => {
                for (key, owner) in entries {
                    if ports.get(&key) != Some(&owner)
                        && let Err(error) = maps.remove_dns_port(key)
                    {
                        warn!(owner, "removing a resolver's port entry: {error:#}");
                    }
                }
            }
            Err(error) => warn!("reading the resolvers' port entries: {error:#}"),
        }
        for (key, cgroup) in ports {
            if let Err(error) = maps.set_dns_port(key, cgroup) {
                warn!(cgroup, "writing a resolver's port entry: {error:#}");
            }
        }
        match maps.dns_resolvers() {
            Ok(entries) => {
                for (cgroup, _) in entries {
                    if !self.running.contains_key(&cgroup)
                        && let Err(error) = maps.remove_dns_resolver(cgroup)
                    {
                        warn!(cgroup, "removing a resolver's steering entry: {error:#}");
                    }
                }
            }
            Err(error) => warn!("reading the resolvers' steering entries: {error:#}"),
        }
        for (cgroup, running) in &self.running {
            if let Err(error) = maps.set_dns_resolver(*cgroup, running.steer) {
                warn!(cgroup, "writing a resolver's steering entry: {error:#}");
            }
        }
    }
}
