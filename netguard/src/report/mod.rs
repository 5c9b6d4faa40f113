//! What the agent tells its operators: the containers it knows (names, images, Compose
//! labels, which cgroups were theirs) and the blocked flows the kernel reported. The Docker
//! watcher and the event reader write it; `/metrics` and the API read it, together with the
//! counters, which stay in the kernel's maps and are read at scrape time.

mod status;
mod unknown;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    path::PathBuf,
    sync::{
        Mutex, RwLock,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use netguard_common::Counters;
use tokio::sync::broadcast;

pub use self::{
    status::{gateways, status_from_pins},
    unknown::UnknownCgroup,
};
use crate::{
    api::{BlockedFlowRecord, Readiness},
    cgroup::{CgroupId, Hierarchy, container_of_path},
    config::{INSTANCES_KEPT, LIVE_BACKLOG, RECENT_FLOWS},
    domain::{BlockedFlowEvent, ContainerId},
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

    /// Flows blocked before their cgroup was known to be the container's get its name now.
    fn attribute_recent(&self, cgroup: CgroupId, id: &ContainerId, name: &str) {
        for flow in self.flows.lock().unwrap().iter_mut() {
            if flow.cgroup == cgroup && flow.container_id.is_empty() {
                flow.container = name.to_string();
                flow.container_id = id.as_str().to_string();
            }
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

    /// Records a blocked flow for the API and the live stream; returns it in the user's
    /// words (container name rather than cgroup id).
    pub fn blocked(&self, event: &BlockedFlowEvent) -> BlockedFlowRecord {
        let (container, container_id) = self.attribute(event.cgroup_id);
        let record = BlockedFlowRecord {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            container,
            container_id,
            cgroup: event.cgroup_id,
            destination: event.destination_text(),
            reason: event.reason_text().to_string(),
            hook: event.hook_text().to_string(),
            bytes: event.bytes,
        };
        let mut flows = self.flows.lock().unwrap();
        if flows.len() == RECENT_FLOWS {
            flows.pop_front();
        }
        flows.push_back(record.clone());
        drop(flows);
        // No subscriber is not an error.
        let _ = self.live.send(record.clone());
        record
    }

    /// The container (name, id) a cgroup belongs to: one the watcher linked to it, a static
    /// cgroup, else the container its path names (a container whose start the watcher has
    /// not seen yet); empty when nothing is known.
    fn attribute(&self, cgroup: CgroupId) -> (String, String) {
        let inventory = self.inventory.read().unwrap();
        if let Some(id) = inventory.owner.get(&cgroup) {
            return (
                inventory.containers[id].facts.name.clone(),
                id.as_str().to_string(),
            );
        }
        if let Some(known) = inventory.static_cgroups.iter().find(|s| s.id == cgroup) {
            return (known.name.clone(), String::new());
        }
        let named = self
            .hierarchy
            .as_ref()
            .and_then(|h| h.name_of(cgroup).ok().flatten())
            .and_then(|path| container_of_path(&path));
        match named {
            Some(id) => {
                let name = inventory
                    .containers
                    .get(&id)
                    .map(|k| k.facts.name.clone())
                    .unwrap_or_default();
                (name, id.as_str().to_string())
            }
            None => (String::new(), String::new()),
        }
    }

    /// The most recent blocked flows, oldest first.
    pub fn recent_flows(&self, limit: usize) -> Vec<BlockedFlowRecord> {
        let flows = self.flows.lock().unwrap();
        flows
            .iter()
            .skip(flows.len().saturating_sub(limit))
            .cloned()
            .collect()
    }

    /// Blocked flows from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<BlockedFlowRecord> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests;
