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
    sync::Arc,
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
    health::{self, Evidence, HealthPolicy, TunnelHealth},
    netns,
    policy::{ContainerId, GatewayId, GatewaySpec, TunnelInterface},
    report::{ContainerFacts, DockerSync, Report},
};
use labels::ContainerLabels;

pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often each gateway's tunnel health is checked (and its interface looked up again).
const TUNNEL_REFRESH: Duration = Duration::from_secs(1);
/// How often everything is reconciled again, whatever the events said (events can be lost;
/// a reconcile can fail).
const RESYNC: Duration = Duration::from_secs(30);

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
    /// The cgroup of the running instance.
    cgroup: Option<CgroupId>,
    /// Every cgroup its instances had (their counters go when the container is destroyed).
    history: Vec<CgroupId>,
    /// Host-side veths whose backstop it needs (shared with others in its namespace).
    backstops: Vec<u32>,
    protected: bool,
    reported: HashSet<String>,
}

/// A tunnel interface found in a gateway's namespace, and its name.
type SeenTunnel = Option<(TunnelInterface, String)>;

#[derive(Clone, Debug)]
struct TrackedGateway {
    pid: u32,
    labels: ContainerLabels,
    tunnel: SeenTunnel,
    policy: HealthPolicy,
    health: TunnelHealth,
    /// From Docker's health status, when the container has a HEALTHCHECK.
    docker_healthy: Option<bool>,
}

/// One gateway's health round, run off the event loop.
struct HealthJob {
    id: ContainerId,
    pid: u32,
    names: Vec<String>,
    policy: HealthPolicy,
    docker_healthy: Option<bool>,
}

struct HealthRound {
    id: ContainerId,
    tunnel: SeenTunnel,
    evidence: Vec<(&'static str, Evidence)>,
}

impl HealthJob {
    fn run(self) -> HealthRound {
        let tunnel = find_tunnel(self.pid, &self.names);
        let interface = tunnel.as_ref().map(|(_, name)| name.as_str());
        let evidence =
            health::probe_sources(&self.policy, self.pid, interface, self.docker_healthy);
        HealthRound {
            id: self.id,
            tunnel,
            evidence,
        }
    }
}

pub struct Watcher {
    datapath: Datapath,
    options: WatchOptions,
    containers: HashMap<ContainerId, Tracked>,
    gateways: HashMap<String, GatewayId>,
    /// Unclassified cgroups seen at the last full sync that Docker did not account for.
    unclassified_seen: HashSet<CgroupId>,
    /// Set when a gateway appeared or moved: containers behind it are reconciled again.
    resync_soon: bool,
    /// What operators see (API, metrics): containers' names, images and cgroups.
    report: Arc<Report>,
}

impl Watcher {
    pub fn new(datapath: Datapath, options: WatchOptions, report: Arc<Report>) -> Self {
        Self {
            datapath,
            options,
            containers: HashMap::new(),
            gateways: HashMap::new(),
            unclassified_seen: HashSet::new(),
            resync_soon: false,
            report,
        }
    }

    /// Follows Docker forever, reconnecting with backoff.
    pub async fn run(mut self) -> Result<()> {
        let mut backoff = Duration::from_secs(1);
        loop {
            let result = self.session(&mut backoff).await;
            self.report.set_docker(DockerSync::Connecting);
            match result {
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
        let mut rounds: tokio::task::JoinSet<Vec<HealthRound>> = tokio::task::JoinSet::new();
        let mut resync = tokio::time::interval(RESYNC);
        resync.tick().await;
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
                    if rounds.is_empty() {
                        let jobs = self.health_jobs();
                        rounds.spawn_blocking(move || jobs.into_iter().map(HealthJob::run).collect());
                    }
                    if std::mem::take(&mut self.resync_soon) {
                        self.full_sync(&docker).await?;
                    }
                }
                _ = resync.tick() => self.full_sync(&docker).await?,
                Some(done) = rounds.join_next() => {
                    let results = done.context("a health round panicked")?;
                    if let Err(error) = self.apply_health(results) {
                        warn!("applying tunnel health: {error:#}");
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
        self.collect_garbage(true)?;
        let protected = self.containers.values().filter(|t| t.protected).count();
        self.report.set_docker(DockerSync::InSync);
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
                    status if status.starts_with("health_status") => {
                        let healthy = status.ends_with("healthy") && !status.ends_with("unhealthy");
                        if let Some(gateway) = self
                            .containers
                            .get_mut(&id)
                            .and_then(|t| t.gateway.as_mut())
                        {
                            gateway.docker_healthy = Some(healthy);
                        }
                        Ok(())
                    }
                    "start" | "restart" | "unpause" | "rename" | "update" => {
                        self.reconcile(docker, &id).await
                    }
                    // A cgroup the classifier gave an entry may die before it was ever
                    // reconciled (crash loops): collect entries of vanished cgroups too.
                    "die" => {
                        self.stopped(&id)?;
                        self.collect_garbage(false)
                    }
                    "destroy" => {
                        self.forget(&id)?;
                        self.collect_garbage(false)
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
                self.report.label_problem();
                warn!(container = name, id = id.short(), "{problem}");
            }
        }
        if parsed.is_gateway {
            let docker_health = state
                .and_then(|s| s.health.as_ref())
                .and_then(|h| h.status)
                .map(|status| status == bollard::models::HealthStatusEnum::HEALTHY);
            self.reconcile_gateway(id, &name, &parsed, pid.filter(|_| running), docker_health)?;
        }
        let shared_with = network_mode.strip_prefix("container:").map(str::to_string);
        let policy = self.policy_for(&parsed, shared_with.as_deref());
        self.datapath.maps.register_container(id, policy)?;
        let label = |key: &str| labels.get(key).cloned();
        let mut facts = ContainerFacts {
            name: name.clone(),
            image: info
                .config
                .as_ref()
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            // Compose's labels, else a Swarm stack's.
            compose_project: label("com.docker.compose.project")
                .or_else(|| label("com.docker.stack.namespace"))
                .unwrap_or_default(),
            compose_service: label("com.docker.compose.service")
                .or_else(|| label("com.docker.swarm.service.name"))
                .unwrap_or_default(),
            vpn_required: parsed.protected,
            vpn_gateway: parsed.is_gateway,
            gateway: self
                .gateways
                .iter()
                .find(|(_, slot)| slot.0 == policy.gateway)
                .map(|(name, _)| name.clone()),
            cgroup_path: None,
            running: false,
        };

        let (Some(pid), true) = (pid, running) else {
            self.report.container_seen(id, facts, None);
            return Ok(());
        };
        let cgroup = match inventory::process_cgroup(&self.options.cgroup_root, pid, id.as_str()) {
            Ok(cgroup) => cgroup,
            // It exited between inspect and now; its die event follows.
            Err(error) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                debug!(
                    container = name,
                    "exited before it was classified: {error:#}"
                );
                self.report.container_seen(id, facts, None);
                return Ok(());
            }
            Err(error) => return Err(error),
        };
        let previous = self.containers.get(id).and_then(|t| t.cgroup);
        if let Some(old) = previous.filter(|old| *old != cgroup.id) {
            // A previous instance's cgroup: no process left to protect; counters kept.
            self.datapath.maps.unprotect(old)?;
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
        if !tracked.history.contains(&cgroup.id) {
            tracked.history.push(cgroup.id);
        }
        tracked.protected = parsed.protected;
        tracked.backstops = backstops;
        facts.running = true;
        facts.cgroup_path = Some(cgroup.path);
        self.report.container_seen(id, facts, Some(cgroup.id));
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
        docker_healthy: Option<bool>,
    ) -> Result<()> {
        // Renamed: the slot under the old name goes (its references rewritten first).
        let old_name = self
            .containers
            .get(id)
            .filter(|t| t.gateway.is_some() && t.name != name)
            .map(|t| t.name.clone());
        if let Some(old) = old_name.and_then(|old| self.gateways.remove(&old)) {
            self.datapath.maps.remove_gateway(old)?;
        }
        let policy = parsed.health.clone().unwrap_or_else(|| {
            // A container with a HEALTHCHECK (Gluetun has one) also needs to be healthy.
            let mut policy = HealthPolicy::default();
            if docker_healthy.is_some() {
                policy.sources.push(health::Source::DockerHealth);
            }
            policy
        });
        let tunnel = pid.and_then(|pid| find_tunnel(pid, &parsed.tunnel_interfaces));
        let previous = self.containers.get(id).and_then(|t| t.gateway.clone());
        // Health survives reconciles (a resync must not flap the tunnel); a moved or new
        // tunnel starts down until the next rounds say otherwise.
        let health = previous
            .as_ref()
            .filter(|g| g.tunnel == tunnel && g.pid == pid.unwrap_or(0))
            .map(|g| g.health.clone())
            .unwrap_or_default();
        let slot = self.apply_gateway(name, parsed, &tunnel, health.up)?;
        if let Some(tracked) = self.containers.get_mut(id) {
            tracked.gateway = Some(TrackedGateway {
                pid: pid.unwrap_or(0),
                labels: parsed.clone(),
                tunnel,
                policy,
                health,
                docker_healthy,
            });
        }
        if self.gateways.insert(name.to_string(), slot) != Some(slot) {
            // Containers that name it, or share its namespace, get its slot.
            self.resync_soon = true;
            info!(gateway = name, slot = slot.0, "VPN gateway");
        }
        Ok(())
    }

    /// Writes a gateway's slot: endpoints, tunnel interface and tunnel state.
    fn apply_gateway(
        &mut self,
        name: &str,
        parsed: &ContainerLabels,
        tunnel: &SeenTunnel,
        up: bool,
    ) -> Result<GatewayId> {
        let spec = GatewaySpec {
            tunnel: tunnel.as_ref().map(|(t, _)| *t),
            endpoints: parsed.endpoints.clone(),
        };
        let slot = self.datapath.maps.set_gateway(name, &spec)?;
        self.datapath
            .maps
            .set_tunnel_state(slot, up && tunnel.is_some())?;
        Ok(slot)
    }

    fn health_jobs(&self) -> Vec<HealthJob> {
        self.containers
            .iter()
            .filter_map(|(id, t)| {
                let gateway = t.gateway.as_ref().filter(|g| g.pid != 0)?;
                Some(HealthJob {
                    id: id.clone(),
                    pid: gateway.pid,
                    names: gateway.labels.tunnel_interfaces.clone(),
                    policy: gateway.policy.clone(),
                    docker_healthy: gateway.docker_healthy,
                })
            })
            .collect()
    }

    /// Applies a round of health evidence: a moved tunnel, and state changes (one map write
    /// each, for every container behind the gateway at once).
    fn apply_health(&mut self, rounds: Vec<HealthRound>) -> Result<()> {
        for round in rounds {
            let Some(tracked) = self.containers.get(&round.id) else {
                continue;
            };
            let Some(mut gateway) = tracked.gateway.clone() else {
                continue;
            };
            let name = tracked.name.clone();
            if round.tunnel != gateway.tunnel {
                info!(gateway = name, tunnel = ?round.tunnel.as_ref().map(|(_, n)| n), "tunnel interface changed");
                gateway.tunnel = round.tunnel.clone();
                gateway.health = TunnelHealth::default();
                self.apply_gateway(&name, &gateway.labels, &round.tunnel, false)?;
            }
            let verdict = gateway.policy.verdict(&round.evidence);
            if gateway.health.observe(&gateway.policy, verdict) {
                let slot = *self.gateways.get(&name).context("gateway slot")?;
                let up = gateway.health.up && gateway.tunnel.is_some();
                self.datapath.maps.set_tunnel_state(slot, up)?;
                if up {
                    info!(
                        gateway = name,
                        transitions = gateway.health.transitions,
                        "tunnel up"
                    );
                } else {
                    warn!(
                        gateway = name,
                        reason = gateway.health.last_reason,
                        transitions = gateway.health.transitions,
                        "tunnel down: traffic behind it is blocked (reason tunnel_down)"
                    );
                }
            }
            if let Some(tracked) = self.containers.get_mut(&round.id) {
                tracked.gateway = Some(gateway);
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
            match self.datapath.attach_backstop_index(ifindex, cgroup) {
                Ok(_) => attached.push(ifindex),
                // Retried at the next resync; sockets are enforced meanwhile.
                Err(error) => warn!(
                    container = name,
                    ifindex, "attaching the backstop: {error:#}"
                ),
            }
        }
        if attached.is_empty() && network_mode != "none" {
            warn!(
                container = name,
                "no veth of the container's namespace found on the host: raw frames from it are \
                 not stopped (sockets are)"
            );
        }
        Ok(attached)
    }

    /// The container stopped: its cgroup is gone; its registration stays so that a restart
    /// is classified at once; counters stay until it is destroyed.
    fn stopped(&mut self, id: &ContainerId) -> Result<()> {
        self.report.container_stopped(id);
        let Some(tracked) = self.containers.get_mut(id) else {
            return Ok(());
        };
        // A stopped gateway has no tunnel: down at once for everyone behind it.
        if let Some(gateway) = tracked.gateway.take() {
            let name = tracked.name.clone();
            self.apply_gateway(&name, &gateway.labels, &None, false)?;
            info!(gateway = name, "gateway stopped: tunnel down");
        }
        // Nothing else is removed here: a die event can be stale (the container may already
        // run again); entries go when their cgroup and interfaces are really gone (GC).
        Ok(())
    }

    /// The container is destroyed: its registration, every cgroup it had (policy and
    /// counters) and its gateway slot go; its backstops are re-pointed or detached by GC.
    fn forget(&mut self, id: &ContainerId) -> Result<()> {
        self.datapath.maps.unregister_container(id)?;
        let Some(tracked) = self.containers.get(id) else {
            return Ok(());
        };
        // Its last instance's counters stay visible for the metrics' grace period.
        let last = match tracked.history.last() {
            Some(cgroup) => self.datapath.maps.counters(*cgroup)?.unwrap_or_default(),
            None => netguard_common::Counters::default(),
        };
        self.report.container_removed(id, last);
        for cgroup in tracked.history.clone() {
            self.datapath.maps.forget(cgroup)?;
        }
        let name = tracked.name.clone();
        if tracked.gateway.is_some()
            && let Some(slot) = self.gateways.remove(&name)
        {
            self.datapath.maps.remove_gateway(slot)?;
        }
        self.containers.remove(id);
        Ok(())
    }

    /// Drops policy entries whose cgroup no longer exists (left by instances that came and
    /// went, or while the agent was away), and keeps each backstop pointing at a live
    /// protected owner of its interface, or detaches it when none is left. At a full sync,
    /// an unclassified cgroup Docker did not account for at two syncs running is not a
    /// Docker container: it is counted only from then on.
    fn collect_garbage(&mut self, full_sync: bool) -> Result<()> {
        let root = self.options.cgroup_root.clone();
        let running: HashSet<CgroupId> =
            self.containers.values().filter_map(|t| t.cgroup).collect();
        let history: HashSet<CgroupId> = self
            .containers
            .values()
            .flat_map(|t| t.history.iter().copied())
            .collect();
        let mut unclassified = HashSet::new();
        // Cgroups with a policy that still exist: asked of the kernel once per collection.
        let mut alive = HashSet::new();
        for (cgroup, policy) in self.datapath.maps.policies()? {
            if self.options.static_cgroups.contains(&cgroup) {
                continue;
            }
            if !inventory::cgroup_exists(&root, cgroup)? {
                if history.contains(&cgroup) {
                    self.datapath.maps.unprotect(cgroup)?;
                } else {
                    self.datapath.maps.forget(cgroup)?;
                }
                continue;
            }
            alive.insert(cgroup);
            if full_sync && policy.is_unclassified() && !running.contains(&cgroup) {
                if self.unclassified_seen.contains(&cgroup) {
                    warn!(
                        cgroup,
                        "a cgroup named like a container that Docker does not know: counting it only"
                    );
                    self.datapath.maps.count_only(cgroup)?;
                } else {
                    unclassified.insert(cgroup);
                }
            }
        }
        if full_sync {
            self.unclassified_seen = unclassified;
        }

        let mut owners: HashMap<u32, Vec<CgroupId>> = HashMap::new();
        for tracked in self.containers.values().filter(|t| t.protected) {
            // A protected cgroup always has a policy entry; one that is gone was just removed.
            if let Some(cgroup) = tracked.cgroup.filter(|cg| alive.contains(cg)) {
                for ifindex in &tracked.backstops {
                    owners.entry(*ifindex).or_default().push(cgroup);
                }
            }
        }
        let entries: HashMap<u32, CgroupId> = self.datapath.maps.backstops()?.into_iter().collect();
        let mut interfaces: HashSet<u32> = entries.keys().copied().collect();
        interfaces.extend(self.datapath.pinned_backstops()?);
        for ifindex in interfaces {
            if self.options.static_backstops.contains(&ifindex) {
                continue;
            }
            match owners.get(&ifindex) {
                Some(live) if inventory::interface_exists(ifindex) => {
                    if !entries
                        .get(&ifindex)
                        .is_some_and(|owner| live.contains(owner))
                    {
                        self.datapath.maps.set_backstop(ifindex, live[0])?;
                    }
                }
                _ => self.datapath.detach_backstop(ifindex)?,
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

/// The first of `names` present in the network namespace of `pid`.
fn find_tunnel(pid: u32, names: &[String]) -> SeenTunnel {
    netns::run_in(&inventory::netns_of(pid), || {
        let cookie = netns::current_cookie().ok()?;
        names.iter().find_map(|name| {
            let ifindex = netns::ifindex(name).ok()?;
            Some((
                TunnelInterface {
                    ifindex,
                    netns_cookie: cookie,
                },
                name.clone(),
            ))
        })
    })
    .ok()
    .flatten()
}
