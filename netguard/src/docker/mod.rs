//! Docker: containers are protected by their labels, kept in sync through the Engine API.
//!
//! A full listing at start-up, every resync interval (`resync_secs`, 30 s) and after every
//! reconnect, then the
//! event stream. Each event updates what the watcher knows of a container (Docker's facts and
//! the host's: [`inspect`]); the kernel is then brought in line with the decision
//! ([`crate::reconcile`]) for everything at once. The daemon going away only pauses updates:
//! what is in the kernel keeps enforcing.

mod gateways;
mod heal;
mod inspect;
mod sync;
mod upkeep;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use bollard::{
    API_DEFAULT_VERSION, Docker,
    models::{EventMessage, EventMessageTypeEnum},
    query_parameters::EventsOptionsBuilder,
};
use futures_util::StreamExt as _;
use ipnet::IpNet;
use tracing::{debug, warn};

use self::gateways::GatewayTunnels;
use crate::{
    cgroup::Hierarchy,
    config::{DOCKER_MAX_BACKOFF, HEALTH_INTERVAL, gluetun::GluetunAuth},
    domain::{CgroupId, ContainerId},
    kernel::Datapath,
    reconcile::{Container, Decision, StaticPolicy, apply::Applier},
    report::{DockerSync, Report},
    tunnel::probe::{HealthJob, HealthRound},
};

/// How the watcher follows Docker.
pub struct Follow {
    pub socket: PathBuf,
    /// How often everything is reconciled again, whatever the events said.
    pub resync: Duration,
    /// Restart stranded containers unless labelled `netguard.heal=off`.
    pub heal_stranded: bool,
    pub gluetun_auth: Vec<GluetunAuth>,
}

/// Follows Docker and keeps the kernel in line with it.
pub struct Watcher {
    socket: PathBuf,
    /// How often everything is reconciled again, whatever the events said.
    resync: Duration,
    /// Containers stuck in a restarted gateway's old namespace, with the gateway.
    stranded: BTreeMap<ContainerId, String>,
    healer: heal::Healer,
    datapath: Datapath,
    applier: Applier,
    hierarchy: Hierarchy,
    statics: StaticPolicy,
    /// Every container Docker lists, as last seen.
    containers: BTreeMap<ContainerId, Container>,
    tunnels: GatewayTunnels,
    /// Docker's network subnets and the host's directly connected private subnets.
    discovered_internal: Vec<IpNet>,
    /// The last decision per container and its running cgroup (to log changes).
    decisions: BTreeMap<ContainerId, (Decision, Option<CgroupId>)>,
    /// Problems of the decision already logged.
    problems: HashSet<String>,
    /// Held cgroups no container explained at the last full sync.
    unaccounted: BTreeSet<CgroupId>,
    /// Held cgroups no container explained at two full syncs running (reported).
    unknown: BTreeSet<CgroupId>,
    /// Protected containers' cgroups frozen because their policy could not be written.
    frozen: BTreeSet<CgroupId>,
    /// Label problems already reported, per container.
    reported: HashMap<ContainerId, HashSet<String>>,
    /// Image labels, to tell a container's own labels from its image's.
    images: inspect::ImageCache,
    /// What operators see (API, metrics): containers' names, images and cgroups.
    report: Arc<Report>,
    /// netguard's resolver for each protected container.
    resolvers: crate::dns::Resolvers,
}

impl Watcher {
    pub fn new(
        follow: Follow,
        datapath: Datapath,
        applier: Applier,
        hierarchy: Hierarchy,
        statics: StaticPolicy,
        report: Arc<Report>,
    ) -> Self {
        let resolvers = crate::dns::Resolvers::new(report.clone(), datapath.pin_dir());
        Self {
            socket: follow.socket,
            resync: follow.resync,
            stranded: BTreeMap::new(),
            healer: heal::Healer::new(follow.heal_stranded),
            datapath,
            applier,
            hierarchy,
            statics,
            containers: BTreeMap::new(),
            tunnels: GatewayTunnels::new(follow.gluetun_auth),
            discovered_internal: Vec::new(),
            decisions: BTreeMap::new(),
            problems: HashSet::new(),
            unaccounted: BTreeSet::new(),
            unknown: BTreeSet::new(),
            frozen: BTreeSet::new(),
            reported: HashMap::new(),
            images: HashMap::new(),
            resolvers,
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
                    "Docker at {}: {error:#}; retrying in {backoff:?} (enforcement in the kernel \
                     is unaffected)",
                    self.socket.display()
                ),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(DOCKER_MAX_BACKOFF);
        }
    }

    async fn session(&mut self, backoff: &mut Duration) -> Result<()> {
        let socket = self.socket.to_string_lossy().into_owned();
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
        let mut health = tokio::time::interval(HEALTH_INTERVAL);
        let mut rounds: tokio::task::JoinSet<Vec<HealthRound>> = tokio::task::JoinSet::new();
        let mut resync = tokio::time::interval(self.resync);
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
                _ = health.tick() => {
                    if rounds.is_empty() {
                        let jobs = self.tunnels.jobs(&self.containers);
                        rounds.spawn_blocking(move || jobs.into_iter().map(HealthJob::run).collect());
                    }
                }
                _ = resync.tick() => self.full_sync(&docker).await?,
                Some(done) = rounds.join_next() => {
                    let rounds = done.context("a health round panicked")?;
                    self.on_health(rounds);
                    self.heal(&docker);
                }
            }
        }
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
                        self.created(&id, &attributes);
                        self.reconcile();
                        self.refresh(docker, &id).await
                    }
                    status if status.starts_with("health_status") => {
                        let healthy = status.ends_with("healthy") && !status.ends_with("unhealthy");
                        if let Some(container) = self.containers.get_mut(&id) {
                            container.docker_healthy = Some(healthy);
                        }
                        Ok(())
                    }
                    "start" | "restart" | "unpause" | "rename" | "update" => {
                        self.refresh(docker, &id).await
                    }
                    // A cgroup the classifier gave an entry may die before it was ever
                    // reconciled (crash loops): collect entries of vanished cgroups too.
                    "die" => {
                        // Docker's word on whether it already runs again. Without it, the
                        // instance counts as running (its namespace stays guarded) until its
                        // cgroup is gone: an event may be stale, the kernel is not.
                        if let Err(error) = self.refresh(docker, &id).await {
                            warn!(
                                container = id.short(),
                                "inspecting after its exit: {error:#} (it stays guarded until \
                                 its cgroup is gone)"
                            );
                        }
                        self.collect_garbage(false)
                    }
                    "destroy" => {
                        self.destroyed(&id)?;
                        self.reconcile();
                        self.collect_garbage(false)
                    }
                    _ => Ok(()),
                }
            }
            Some(EventMessageTypeEnum::NETWORK) => match action.as_str() {
                "create" | "destroy" => {
                    self.sync_internal(docker).await?;
                    self.reconcile();
                    Ok(())
                }
                "connect" | "disconnect" => match attributes
                    .get("container")
                    .and_then(|c| c.parse::<ContainerId>().ok())
                {
                    Some(id) => self.refresh(docker, &id).await,
                    None => Ok(()),
                },
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }
}
