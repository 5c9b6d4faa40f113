//! What the agent tells its operators: the containers it knows (names, images, Compose
//! labels, which cgroups were theirs) and the blocked flows the kernel reported. The Docker
//! watcher and the event reader write it; `/metrics` and the API read it, together with the
//! counters, which stay in the kernel's maps and are read at scrape time.

mod dns;
mod status;
mod unknown;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    path::PathBuf,
    sync::{
        Mutex, RwLock,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use netguard_common::Counters;
use tokio::sync::broadcast;

pub use self::{
    dns::DnsOutcome,
    status::{gateways, status_from_pins},
    unknown::UnknownCgroup,
};
use crate::{
    api::{BlockedFlowRecord, Readiness},
    cgroup::{CgroupId, Hierarchy},
    config::{INSTANCES_KEPT, LIVE_BACKLOG, RECENT_FLOWS},
    domain::ContainerId,
    kernel::PinnedOwners,
    reconcile::StaticCgroup,
};

/// How far the agent is with Docker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DockerSync {
    Disabled = 0,
    Connecting = 1,
    InSync = 2,
}

impl DockerSync {
    pub fn as_str(self) -> &'static str {
        match self {
            DockerSync::Disabled => "disabled",
            DockerSync::Connecting => "connecting",
            DockerSync::InSync => "in_sync",
        }
    }
}

/// What the watcher decided about a container's gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decided {
    /// The gateway whose tunnel it may use.
    pub gateway: Option<String>,
    /// Its `netguard.gateway` reference, when that matches no gateway container.
    pub unresolved: Option<String>,
    /// The gateway whose old network namespace it is stuck in (the gateway got a new one).
    pub stranded: Option<String>,
}

/// A container as Docker described it at its last reconcile.
#[derive(Clone, Debug, Default)]
pub struct ContainerFacts {
    pub name: String,
    pub image: String,
    pub compose_project: String,
    pub compose_service: String,
    pub vpn_required: bool,
    pub vpn_gateway: bool,
    /// What the watcher decided (not Docker's fact: it stays across inspects).
    pub decided: Decided,
    /// The running instance's cgroup path (to tell whether an attached cgroup covers it).
    pub cgroup_path: Option<PathBuf>,
    pub running: bool,
    /// Docker's `--privileged`: it can leave its cgroup and undo netguard's programs, so it
    /// is never called protected.
    pub privileged: bool,
    /// Its label problems.
    pub problems: Vec<String>,
}

#[derive(Debug)]
struct KnownContainer {
    facts: ContainerFacts,
    /// Every instance's cgroup, the running one last.
    cgroups: Vec<CgroupId>,
    /// Set when destroyed: its last counters, shown until the grace period ends.
    removed: Option<(Instant, Counters)>,
}

#[derive(Debug, Default)]
struct Inventory {
    containers: HashMap<ContainerId, KnownContainer>,
    owner: HashMap<CgroupId, ContainerId>,
    static_cgroups: Vec<StaticCgroup>,
    /// Cgroups named like containers that the Docker daemon does not know.
    unknown: Vec<UnknownCgroup>,
    /// Protected containers' cgroups frozen because their policy could not be written.
    frozen: BTreeSet<CgroupId>,
}

/// Shared by the watcher, the event reader and the HTTP server.
pub struct Report {
    inventory: RwLock<Inventory>,
    /// To name the cgroup of a blocked flow the watcher has not attributed yet.
    hierarchy: Option<Hierarchy>,
    flows: Mutex<VecDeque<BlockedFlowRecord>>,
    live: broadcast::Sender<BlockedFlowRecord>,
    docker: AtomicU8,
    label_problems: AtomicU64,
    /// Why each gateway whose tunnel is down is down, by name.
    down_reasons: RwLock<BTreeMap<String, String>>,
    /// Cgroups the programs are attached at: a protected policy elsewhere is not enforced.
    attach_cgroups: Vec<PathBuf>,
    /// How long a destroyed container's series stay in `/metrics`.
    grace: Duration,
    /// When this agent started (`CLOCK_BOOTTIME`): a flow blocked earlier waited in the
    /// pinned ring buffer, and is said to be from before the start.
    started_boot_ns: u64,
    /// The pinned owners of container cgroups, to name flows whose cgroup is gone.
    owners: std::sync::OnceLock<Mutex<PinnedOwners>>,
    /// DNS queries netguard's resolver took, per container.
    dns: Mutex<HashMap<ContainerId, dns::DnsCounts>>,
}

impl Report {
    pub fn new(
        attach_cgroups: Vec<PathBuf>,
        grace: Duration,
        docker: bool,
        hierarchy: Option<Hierarchy>,
    ) -> Self {
        let (live, _) = broadcast::channel(LIVE_BACKLOG);
        let sync = if docker {
            DockerSync::Connecting
        } else {
            DockerSync::Disabled
        };
        Self {
            inventory: RwLock::default(),
            hierarchy,
            flows: Mutex::new(VecDeque::with_capacity(RECENT_FLOWS)),
            live,
            docker: AtomicU8::new(sync as u8),
            label_problems: AtomicU64::new(0),
            down_reasons: RwLock::new(BTreeMap::new()),
            attach_cgroups,
            grace,
            started_boot_ns: crate::sys::boottime_ns(),
            owners: std::sync::OnceLock::new(),
            dns: Mutex::default(),
        }
    }

    pub fn set_static_cgroups(&self, cgroups: Vec<StaticCgroup>) {
        self.inventory.write().unwrap().static_cgroups = cgroups;
    }

    /// The held cgroups named like containers that Docker does not know.
    pub fn set_frozen(&self, frozen: BTreeSet<CgroupId>) {
        self.inventory.write().unwrap().frozen = frozen;
    }

    pub fn set_unknown(&self, unknown: Vec<UnknownCgroup>) {
        self.inventory.write().unwrap().unknown = unknown;
    }

    /// Records what Docker said about a container; `cgroup` is its running instance's.
    pub fn container_seen(
        &self,
        id: &ContainerId,
        facts: ContainerFacts,
        cgroup: Option<CgroupId>,
    ) {
        let name = facts.name.clone();
        let mut inventory = self.inventory.write().unwrap();
        let known = inventory
            .containers
            .entry(id.clone())
            .or_insert_with(|| KnownContainer {
                facts: ContainerFacts::default(),
                cgroups: Vec::new(),
                removed: None,
            });
        // The gateway is the watcher's decision, not Docker's fact: it stays.
        let decided = std::mem::take(&mut known.facts.decided);
        known.facts = ContainerFacts { decided, ..facts };
        known.removed = None;
        let Some(cgroup) = cgroup else {
            return;
        };
        known.cgroups.retain(|c| *c != cgroup);
        known.cgroups.push(cgroup);
        // A crash loop makes a cgroup per start: remember the latest few (the others are
        // gone, and so are their flows).
        let excess = known.cgroups.len().saturating_sub(INSTANCES_KEPT);
        let forgotten: Vec<CgroupId> = known.cgroups.drain(..excess).collect();
        for old in forgotten {
            inventory.owner.remove(&old);
        }
        inventory.owner.insert(cgroup, id.clone());
        drop(inventory);
        self.attribute_recent(cgroup, id, &name);
    }

    /// The gateway whose tunnel the container may use, as last decided, and whether its
    /// reference matches none.
    pub fn set_gateway(
        &self,
        id: &ContainerId,
        gateway: Option<String>,
        unresolved: Option<String>,
    ) {
        if let Some(known) = self.inventory.write().unwrap().containers.get_mut(id) {
            known.facts.decided.gateway = gateway;
            known.facts.decided.unresolved = unresolved;
        }
    }

    /// Why each gateway's tunnel counts as down (only those that are down).
    pub fn set_down_reasons(&self, reasons: BTreeMap<String, String>) {
        *self.down_reasons.write().unwrap() = reasons;
    }

    /// Fills in why the gateways read from the maps are down.
    pub fn explain(&self, gateways: &mut [crate::api::GatewayStatus]) {
        let reasons = self.down_reasons.read().unwrap();
        for gateway in gateways.iter_mut().filter(|g| !g.tunnel_up) {
            gateway.down_reason = reasons.get(&gateway.name).cloned();
        }
    }

    /// The containers stuck in a gateway's old network namespace, with that gateway.
    pub fn set_stranded(&self, stranded: &BTreeMap<ContainerId, String>) {
        for (id, known) in self.inventory.write().unwrap().containers.iter_mut() {
            known.facts.decided.stranded = stranded.get(id).cloned();
        }
    }

    pub fn container_stopped(&self, id: &ContainerId) {
        if let Some(known) = self.inventory.write().unwrap().containers.get_mut(id) {
            known.facts.running = false;
        }
    }

    /// The container is destroyed: `last` are its final counters, kept for the grace
    /// period so that a scrape after the destroy still sees what it did last.
    pub fn container_removed(&self, id: &ContainerId, last: Counters) {
        if let Some(known) = self.inventory.write().unwrap().containers.get_mut(id) {
            known.facts.running = false;
            known.removed = Some((Instant::now(), last));
        }
    }

    /// Forgets containers whose grace period is over.
    fn expire(&self) {
        let mut inventory = self.inventory.write().unwrap();
        let grace = self.grace;
        let expired: Vec<ContainerId> = inventory
            .containers
            .iter()
            .filter(|(_, k)| k.removed.is_some_and(|(at, _)| at.elapsed() >= grace))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(known) = inventory.containers.remove(&id) {
                for cgroup in known.cgroups {
                    inventory.owner.remove(&cgroup);
                }
            }
        }
    }

    pub fn label_problem(&self) {
        self.label_problems.fetch_add(1, Ordering::Relaxed);
    }

    pub fn label_problems(&self) -> u64 {
        self.label_problems.load(Ordering::Relaxed)
    }

    pub fn set_docker(&self, sync: DockerSync) {
        self.docker.store(sync as u8, Ordering::Relaxed);
    }

    pub fn docker(&self) -> DockerSync {
        match self.docker.load(Ordering::Relaxed) {
            0 => DockerSync::Disabled,
            1 => DockerSync::Connecting,
            _ => DockerSync::InSync,
        }
    }

    pub fn readiness(&self) -> Readiness {
        let docker = self.docker();
        Readiness {
            ready: docker != DockerSync::Connecting,
            maps_loaded: true,
            docker: docker.as_str().to_string(),
        }
    }
}

mod flows;
#[cfg(test)]
mod tests;
