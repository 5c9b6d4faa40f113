//! Docker: containers are protected by their labels, kept in sync through the Engine API.
//!
//! A full listing at start-up and after every reconnect, then the event stream. Each
//! container is registered by id (so its cgroup is classified the moment it is created, see
//! the eBPF classifier), and each running one has its cgroup's policy and, when protected,
//! the backstop on its host-side veths. The daemon going away only pauses updates: what is
//! in the kernel keeps enforcing.

pub mod inventory;
pub mod labels;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result};
use bollard::{
    API_DEFAULT_VERSION, Docker,
    models::{EventMessage, EventMessageTypeEnum},
    query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder},
};
use futures_util::StreamExt as _;
use ipnet::IpNet;
use netguard_common::{CgroupPolicy, POLICY_PROTECTED};
use tracing::{debug, info, warn};

use crate::{
    cgroup::{Cgroup, CgroupId},
    datapath::Datapath,
    netns,
    policy::{ContainerId, GatewayId, GatewaySpec, TunnelInterface},
};
use labels::ContainerLabels;

pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often gateways' tunnel interfaces are looked at again.
const TUNNEL_REFRESH: Duration = Duration::from_secs(1);

/// What the watcher must leave alone and start from.
pub struct WatchOptions {
    pub socket: PathBuf,
    pub cgroup_root: PathBuf,
    /// Cgroups protected by the static configuration.
    pub static_cgroups: HashSet<CgroupId>,
    /// Backstops of the static configuration.
    pub static_backstops: HashSet<u32>,
    /// Built-in and configured internal CIDRs; Docker's subnets and the host's are added.
    pub base_internal: Vec<IpNet>,
}

/// A container as last reconciled.
#[derive(Debug, Default)]
struct Tracked {
    name: String,
    /// For a gateway: its process, labels and tunnel as last seen.
    gateway: Option<TrackedGateway>,
    cgroup: Option<CgroupId>,
    backstops: Vec<u32>,
    protected: bool,
    reported: HashSet<String>,
}

/// A tunnel interface and whether it is up and running.
type SeenTunnel = Option<(TunnelInterface, bool)>;

#[derive(Clone, Debug)]
struct TrackedGateway {
    pid: u32,
    labels: ContainerLabels,
    tunnel: SeenTunnel,
}

pub struct Watcher {
    datapath: Datapath,
    options: WatchOptions,
    containers: HashMap<ContainerId, Tracked>,
    gateways: HashMap<String, GatewayId>,
    /// Malformed or unknown labels seen on containers, for the operator (and metrics).
    pub label_problems: u64,
}

impl Watcher {
    pub fn new(datapath: Datapath, options: WatchOptions) -> Self {
        Self {
            datapath,
            options,
            containers: HashMap::new(),
            gateways: HashMap::new(),
            label_problems: 0,
        }
    }

    /// Follows Docker forever, reconnecting with backoff.
    pub async fn run(mut self) -> Result<()> {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.session(&mut backoff).await {
                Ok(()) => warn!("Docker event stream ended; reconnecting"),
                Err(error) => warn!(
                    "Docker at {}: {error:#}; retrying in {backoff:?} (enforcement in the kernel is unaffected)",
                    self.options.socket.display()
                ),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn session(&mut self, backoff: &mut Duration) -> Result<()> {
        let socket = self.options.socket.to_string_lossy().into_owned();
        let docker = Docker::connect_with_unix(&socket, 60, API_DEFAULT_VERSION)
            .with_context(|| {
                format!("connecting to {socket} (is dockerd running? is the socket mounted?)")
            })?
            .negotiate_version()
            .await
            .with_context(|| format!("talking to Docker at {socket}"))?;
        // Events from a moment before the listing on, so nothing between the two is missed.
        let since = (std::time::SystemTime::now() - Duration::from_secs(2))
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            .to_string();
        let filters = HashMap::from([("type", vec!["container", "network"])]);
        let mut events = docker.events(Some(
            EventsOptionsBuilder::default()
                .since(&since)
                .filters(&filters)
                .build(),
        ));
        self.full_sync(&docker).await?;
        *backoff = Duration::from_secs(1);
        let mut refresh = tokio::time::interval(TUNNEL_REFRESH);
        loop {
            tokio::select! {
                event = events.next() => {
                    let Some(event) = event else { return Ok(()) };
                    let event = event.context("reading the Docker event stream")?;
                    if let Err(error) = self.on_event(&docker, event).await {
                        warn!("handling a Docker event: {error:#}");
                    }
                }
                _ = refresh.tick() => {
                    if let Err(error) = self.refresh_tunnels() {
                        warn!("looking at gateways' tunnels: {error:#}");
                    }
                }
            }
        }
    }

    /// Reconciles every container and the internal networks with what Docker says now.
    pub async fn full_sync(&mut self, docker: &Docker) -> Result<()> {
        self.sync_internal(docker).await?;
        let listed = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default().all(true).build(),
            ))
            .await
            .context("listing containers")?;
        let mut seen = HashSet::new();
        // Gateways first, so containers behind them find their slot.
        let mut ids: Vec<(bool, ContainerId)> = listed
            .iter()
            .filter_map(|c| {
                let id: ContainerId = c.id.as_deref()?.parse().ok()?;
                let gateway = c
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.get(labels::ROLE).is_some());
                Some((!gateway, id))
            })
            .collect();
        ids.sort();
        for (_, id) in ids {
            seen.insert(id.clone());
            if let Err(error) = self.reconcile(docker, &id).await {
                warn!(container = id.short(), "reconciling: {error:#}");
            }
        }
        let gone: Vec<ContainerId> = self
            .containers
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.forget(&id)?;
        }
        for (id, _) in self.datapath.maps.registered_containers()? {
            if !seen.contains(&id) {
                self.datapath.maps.unregister_container(&id)?;
            }
        }
        self.collect_garbage()?;
        let protected = self.containers.values().filter(|t| t.protected).count();
        info!(
            containers = self.containers.len(),
            protected, "Docker: in sync"
        );
        Ok(())
    }

    async fn on_event(&mut self, docker: &Docker, event: EventMessage) -> Result<()> {
        let action = event.action.unwrap_or_default();
        let actor = event.actor.unwrap_or_default();
        let attributes = actor.attributes.unwrap_or_default();
        match event.typ {
            Some(EventMessageTypeEnum::CONTAINER) => {
                let Some(id) = actor
                    .id
                    .as_deref()
                    .and_then(|id| id.parse::<ContainerId>().ok())
                else {
                    return Ok(());
                };
                debug!(container = id.short(), action, "Docker event");
                match action.as_str() {
                    "create" => {
                        // Labels arrive with the event: register before the cgroup exists.
                        let parsed = ContainerLabels::parse(
                            attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                        );
                        let policy = self.policy_for(&parsed, None);
                        self.datapath.maps.register_container(&id, policy)?;
                        self.reconcile(docker, &id).await
                    }
                    "start" | "restart" | "unpause" | "rename" | "update" => {
                        self.reconcile(docker, &id).await
                    }
                    // A cgroup the classifier gave an entry may die before it was ever
                    // reconciled (crash loops): collect entries of vanished cgroups too.
                    "die" => {
                        self.stopped(&id)?;
                        self.collect_garbage()
                    }
                    "destroy" => {
                        self.forget(&id)?;
                        self.collect_garbage()
                    }
                    _ => Ok(()),
                }
            }
            Some(EventMessageTypeEnum::NETWORK) => match action.as_str() {
                "create" | "destroy" => self.sync_internal(docker).await,
                "connect" | "disconnect" => match attributes
                    .get("container")
                    .and_then(|c| c.parse::<ContainerId>().ok())
                {
                    Some(id) => self.reconcile(docker, &id).await,
                    None => Ok(()),
                },
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Makes the kernel's view of one container match Docker's.
    async fn reconcile(&mut self, docker: &Docker, id: &ContainerId) -> Result<()> {
        let info = match docker.inspect_container(id.as_str(), None).await {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return self.forget(id);
            }
            Err(error) => return Err(error).context("inspecting"),
        };
        let name = info
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let labels = info
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let parsed = ContainerLabels::parse(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let state = info.state.as_ref();
        let running = state.and_then(|s| s.running).unwrap_or(false);
        let pid = state
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .map(|p| p as u32);
        let network_mode = info
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.clone())
            .unwrap_or_default();

        let tracked = self.containers.entry(id.clone()).or_default();
        tracked.name = name.clone();
        for problem in &parsed.problems {
            if tracked.reported.insert(problem.clone()) {
                self.label_problems += 1;
                warn!(container = name, id = id.short(), "{problem}");
            }
        }
        if parsed.is_gateway {
            self.reconcile_gateway(id, &name, &parsed, pid.filter(|_| running))?;
        }
        let shared_with = network_mode.strip_prefix("container:").map(str::to_string);
        let policy = self.policy_for(&parsed, shared_with.as_deref());
        self.datapath.maps.register_container(id, policy)?;

        let (Some(pid), true) = (pid, running) else {
            return Ok(());
        };
        let cgroup = match inventory::process_cgroup(&self.options.cgroup_root, pid) {
            Ok(cgroup) => cgroup,
            // It exited between inspect and now; its die event follows.
            Err(error) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                debug!(
                    container = name,
                    "exited before it was classified: {error:#}"
                );
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        let previous = self.containers.get(id).and_then(|t| t.cgroup);
        if let Some(old) = previous.filter(|old| *old != cgroup.id) {
            self.datapath.maps.forget(old)?;
        }
        let gateway = (policy.gateway != 0).then_some(GatewayId(policy.gateway));
        if parsed.protected {
            self.datapath
                .maps
                .protect(cgroup.id, gateway, &parsed.allow)?;
        } else {
            self.datapath.maps.count_only(cgroup.id)?;
        }
        let backstops = if parsed.protected {
            self.attach_backstops(&name, pid, &network_mode, &cgroup)?
        } else {
            Vec::new()
        };
        if previous != Some(cgroup.id)
            || self
                .containers
                .get(id)
                .is_some_and(|t| t.protected != parsed.protected)
        {
            info!(
                container = name,
                id = id.short(),
                cgroup = cgroup.id,
                protected = parsed.protected,
                gateway = policy.gateway,
                "classified"
            );
        }
        let tracked = self.containers.entry(id.clone()).or_default();
        tracked.cgroup = Some(cgroup.id);
        tracked.protected = parsed.protected;
        tracked.backstops = backstops;
        Ok(())
    }

    /// Protected container policy (with its gateway slot) or count-only.
    fn policy_for(&self, parsed: &ContainerLabels, shared_with: Option<&str>) -> CgroupPolicy {
        if !parsed.protected {
            return CgroupPolicy::default();
        }
        let by_name = parsed
            .gateway
            .as_ref()
            .and_then(|name| self.gateways.get(name));
        let by_netns = shared_with.and_then(|other| {
            let name = self
                .containers
                .iter()
                .find(|(id, t)| {
                    id.as_str() == other || id.as_str().starts_with(other) || t.name == other
                })
                .map(|(_, t)| t.name.clone())?;
            self.gateways.get(&name)
        });
        let only = (self.gateways.len() == 1)
            .then(|| self.gateways.values().next())
            .flatten();
        let gateway = match &parsed.gateway {
            // A named gateway that does not exist: no tunnel allowance at all (stricter).
            Some(_) => by_name,
            None => by_netns.or(only),
        };
        CgroupPolicy {
            flags: POLICY_PROTECTED,
            gateway: gateway.map_or(0, |g| g.0),
        }
    }

    fn reconcile_gateway(
        &mut self,
        id: &ContainerId,
        name: &str,
        parsed: &ContainerLabels,
        pid: Option<u32>,
    ) -> Result<()> {
        let tunnel = pid.and_then(|pid| find_tunnel(pid, &parsed.tunnel_interfaces));
        let slot = self.apply_gateway(name, parsed, tunnel)?;
        if let Some(tracked) = self.containers.get_mut(id) {
            tracked.gateway = Some(TrackedGateway {
                pid: pid.unwrap_or(0),
                labels: parsed.clone(),
                tunnel,
            });
        }
        if self.gateways.insert(name.to_string(), slot).is_none() {
            info!(
                gateway = name,
                slot = slot.0,
                tunnel_up = tunnel.is_some_and(|(_, up)| up),
                "VPN gateway"
            );
        }
        Ok(())
    }

    /// Writes a gateway's slot: endpoints, tunnel interface, and (until tunnel health, a
    /// later issue, decides) "up" while the interface is present, up and running.
    fn apply_gateway(
        &mut self,
        name: &str,
        parsed: &ContainerLabels,
        tunnel: Option<(TunnelInterface, bool)>,
    ) -> Result<GatewayId> {
        let spec = GatewaySpec {
            tunnel: tunnel.map(|(t, _)| t),
            endpoints: parsed.endpoints.clone(),
        };
        let slot = self.datapath.maps.set_gateway(name, &spec)?;
        self.datapath
            .maps
            .set_tunnel_state(slot, tunnel.is_some_and(|(_, up)| up))?;
        Ok(slot)
    }

    /// Looks at every gateway's tunnel interface again and records changes.
    fn refresh_tunnels(&mut self) -> Result<()> {
        let gateways: Vec<(ContainerId, String, TrackedGateway)> = self
            .containers
            .iter()
            .filter_map(|(id, t)| Some((id.clone(), t.name.clone(), t.gateway.clone()?)))
            .filter(|(_, _, g)| g.pid != 0)
            .collect();
        for (id, name, mut gateway) in gateways {
            let now = find_tunnel(gateway.pid, &gateway.labels.tunnel_interfaces);
            if now != gateway.tunnel {
                info!(
                    gateway = name,
                    tunnel_up = now.is_some_and(|(_, up)| up),
                    "tunnel interface changed"
                );
                self.apply_gateway(&name, &gateway.labels, now)?;
                gateway.tunnel = now;
                if let Some(tracked) = self.containers.get_mut(&id) {
                    tracked.gateway = Some(gateway);
                }
            }
        }
        Ok(())
    }

    fn attach_backstops(
        &mut self,
        name: &str,
        pid: u32,
        network_mode: &str,
        cgroup: &Cgroup,
    ) -> Result<Vec<u32>> {
        if network_mode == "host" {
            warn!(
                container = name,
                "protected container uses the host network: its sockets are enforced, but raw \
                 frames cannot be stopped without a veth of its own"
            );
            return Ok(Vec::new());
        }
        let mut attached = Vec::new();
        for ifindex in inventory::host_side_veths(pid)? {
            self.datapath.attach_backstop_index(ifindex, cgroup)?;
            attached.push(ifindex);
        }
        Ok(attached)
    }

    /// The container stopped: its cgroup is gone; its registration stays so that a restart
    /// is classified at once; counters stay until it is destroyed.
    fn stopped(&mut self, id: &ContainerId) -> Result<()> {
        let Some(tracked) = self.containers.get_mut(id) else {
            return Ok(());
        };
        // A stopped gateway has no tunnel: down at once for everyone behind it.
        if let Some(gateway) = tracked.gateway.take() {
            let name = tracked.name.clone();
            self.apply_gateway(&name, &gateway.labels, None)?;
            info!(gateway = name, "gateway stopped: tunnel down");
        }
        let Some(tracked) = self.containers.get_mut(id) else {
            return Ok(());
        };
        for ifindex in std::mem::take(&mut tracked.backstops) {
            self.datapath.detach_backstop(ifindex)?;
        }
        if let Some(cgroup) = tracked.cgroup.take() {
            self.datapath.maps.unprotect(cgroup)?;
        }
        Ok(())
    }

    fn forget(&mut self, id: &ContainerId) -> Result<()> {
        if let Some(tracked) = self.containers.remove(id) {
            for ifindex in tracked.backstops {
                self.datapath.detach_backstop(ifindex)?;
            }
            if let Some(cgroup) = tracked.cgroup {
                self.datapath.maps.forget(cgroup)?;
            }
            if let Some(slot) = self.gateways.remove(&tracked.name) {
                self.datapath.maps.remove_gateway(slot)?;
            }
        }
        self.datapath.maps.unregister_container(id)
    }

    /// Drops policy entries whose cgroup no longer exists (left by containers that came and
    /// went while the agent was away). Entries of live cgroups stay, classified or not.
    fn collect_garbage(&mut self) -> Result<()> {
        let live: HashSet<CgroupId> = self.containers.values().filter_map(|t| t.cgroup).collect();
        for (cgroup, _) in self.datapath.maps.policies()? {
            if live.contains(&cgroup) || self.options.static_cgroups.contains(&cgroup) {
                continue;
            }
            if !inventory::cgroup_exists(&self.options.cgroup_root, cgroup)? {
                self.datapath.maps.forget(cgroup)?;
            }
        }
        let owned: HashSet<u32> = self
            .containers
            .values()
            .flat_map(|t| t.backstops.iter().copied())
            .chain(self.options.static_backstops.iter().copied())
            .collect();
        for ifindex in self.datapath.pinned_backstops()? {
            if !owned.contains(&ifindex) {
                self.datapath.detach_backstop(ifindex)?;
            }
        }
        Ok(())
    }

    /// Internal destinations: built-in and configured, Docker's network subnets, and the
    /// host's directly connected private subnets.
    async fn sync_internal(&mut self, docker: &Docker) -> Result<()> {
        let mut cidrs = self.options.base_internal.clone();
        for network in docker
            .list_networks(None)
            .await
            .context("listing networks")?
        {
            for config in network.ipam.and_then(|i| i.config).unwrap_or_default() {
                if let Some(subnet) = config.subnet.and_then(|s| s.parse::<IpNet>().ok()) {
                    cidrs.push(subnet);
                }
            }
        }
        cidrs.extend(inventory::connected_private_subnets()?);
        cidrs.sort();
        cidrs.dedup();
        self.datapath.maps.set_internal_cidrs(&cidrs)?;
        debug!(?cidrs, "internal networks");
        Ok(())
    }
}

/// The first of `names` present in the network namespace of `pid`, and whether it is up.
fn find_tunnel(pid: u32, names: &[String]) -> SeenTunnel {
    netns::run_in(&inventory::netns_of(pid), || {
        let cookie = netns::current_cookie().ok()?;
        names.iter().find_map(|name| {
            let ifindex = netns::ifindex(name).ok()?;
            let up = netns::interface_up(name).unwrap_or(false);
            Some((
                TunnelInterface {
                    ifindex,
                    netns_cookie: cookie,
                },
                up,
            ))
        })
    })
    .ok()
    .flatten()
}
