//! What the agent tells its operators: the containers it knows (names, images, Compose
//! labels, which cgroups were theirs) and the blocked flows the kernel reported. The Docker
//! watcher and the event reader write it; `/metrics` and the API read it, together with the
//! counters, which stay in the kernel's maps and are read at scrape time.

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::{
        Mutex, RwLock,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use netguard_common::Counters;
use tokio::sync::broadcast;

use crate::{
    api::{BlockedFlowRecord, ContainerStatus, CounterSet, GatewayStatus, Readiness},
    cgroup::CgroupId,
    events::BlockedFlowEvent,
    maps::Maps,
    policy::ContainerId,
};

/// Blocked flows kept for `/api/v1/flows`.
const RECENT_FLOWS: usize = 1024;
/// Blocked flows kept per container for `/api/v1/containers`.
const RECENT_PER_CONTAINER: usize = 10;
/// Instances (cgroups) remembered per container.
const INSTANCES_KEPT: usize = 16;
/// Live subscribers that fall this far behind lose the oldest flows (and are told so).
const LIVE_BACKLOG: usize = 1024;

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

/// A container as Docker described it at its last reconcile.
#[derive(Clone, Debug, Default)]
pub struct ContainerFacts {
    pub name: String,
    pub image: String,
    pub compose_project: String,
    pub compose_service: String,
    pub vpn_required: bool,
    pub vpn_gateway: bool,
    pub gateway: Option<String>,
    /// The running instance's cgroup path (to tell whether an attached cgroup covers it).
    pub cgroup_path: Option<PathBuf>,
    pub running: bool,
}

#[derive(Debug)]
struct KnownContainer {
    facts: ContainerFacts,
    /// Every instance's cgroup, the running one last.
    cgroups: Vec<CgroupId>,
    /// Set when destroyed: its last counters, shown until the grace period ends.
    removed: Option<(Instant, Counters)>,
}

/// A cgroup protected by the static configuration.
#[derive(Clone, Debug)]
pub struct StaticCgroup {
    /// Path under the cgroup2 root.
    pub name: String,
    pub id: CgroupId,
}

#[derive(Debug, Default)]
struct Inventory {
    containers: HashMap<ContainerId, KnownContainer>,
    owner: HashMap<CgroupId, ContainerId>,
    static_cgroups: Vec<StaticCgroup>,
}

/// Shared by the watcher, the event reader and the HTTP server.
pub struct Report {
    inventory: RwLock<Inventory>,
    flows: Mutex<VecDeque<BlockedFlowRecord>>,
    live: broadcast::Sender<BlockedFlowRecord>,
    docker: AtomicU8,
    label_problems: AtomicU64,
    /// Cgroups the programs are attached at: a protected policy elsewhere is not enforced.
    attach_cgroups: Vec<PathBuf>,
    /// How long a destroyed container's series stay in `/metrics`.
    grace: Duration,
}

impl Report {
    pub fn new(attach_cgroups: Vec<PathBuf>, grace: Duration, docker: bool) -> Self {
        let (live, _) = broadcast::channel(LIVE_BACKLOG);
        let sync = if docker {
            DockerSync::Connecting
        } else {
            DockerSync::Disabled
        };
        Self {
            inventory: RwLock::default(),
            flows: Mutex::new(VecDeque::with_capacity(RECENT_FLOWS)),
            live,
            docker: AtomicU8::new(sync as u8),
            label_problems: AtomicU64::new(0),
            attach_cgroups,
            grace,
        }
    }

    pub fn set_static_cgroups(&self, cgroups: Vec<StaticCgroup>) {
        self.inventory.write().unwrap().static_cgroups = cgroups;
    }

    /// Records what Docker said about a container; `cgroup` is its running instance's.
    pub fn container_seen(
        &self,
        id: &ContainerId,
        facts: ContainerFacts,
        cgroup: Option<CgroupId>,
    ) {
        let mut inventory = self.inventory.write().unwrap();
        let known = inventory
            .containers
            .entry(id.clone())
            .or_insert_with(|| KnownContainer {
                facts: ContainerFacts::default(),
                cgroups: Vec::new(),
                removed: None,
            });
        known.facts = facts;
        known.removed = None;
        if let Some(cgroup) = cgroup {
            known.cgroups.retain(|c| *c != cgroup);
            known.cgroups.push(cgroup);
            // A crash loop makes a cgroup per start: remember the latest few (the others
            // are gone, and so are their flows).
            let forgotten: Vec<CgroupId> = known
                .cgroups
                .drain(..known.cgroups.len().saturating_sub(INSTANCES_KEPT))
                .collect();
            for old in forgotten {
                inventory.owner.remove(&old);
            }
            inventory.owner.insert(cgroup, id.clone());
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
        let (container, container_id) = {
            let inventory = self.inventory.read().unwrap();
            match inventory.owner.get(&event.cgroup_id) {
                Some(id) => (
                    inventory.containers[id].facts.name.clone(),
                    id.as_str().to_string(),
                ),
                None => inventory
                    .static_cgroups
                    .iter()
                    .find(|s| s.id == event.cgroup_id)
                    .map(|s| (s.name.clone(), String::new()))
                    .unwrap_or_default(),
            }
        };
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

    /// Every container (and static cgroup) with its counters from the kernel's maps, and
    /// with its recent blocked flows if `with_flows`.
    pub fn containers(&self, maps: &Maps, with_flows: bool) -> Result<Vec<ContainerStatus>> {
        self.expire();
        // Copied out, so that the map reads below do not hold up the watcher.
        type Known = (ContainerId, ContainerFacts, Vec<CgroupId>, Option<Counters>);
        let (statics, known): (Vec<StaticCgroup>, Vec<Known>) = {
            let inventory = self.inventory.read().unwrap();
            (
                inventory.static_cgroups.clone(),
                inventory
                    .containers
                    .iter()
                    .map(|(id, k)| {
                        (
                            id.clone(),
                            k.facts.clone(),
                            k.cgroups.clone(),
                            k.removed.map(|(_, last)| last),
                        )
                    })
                    .collect(),
            )
        };
        let policies: HashMap<CgroupId, bool> = maps
            .policies()?
            .into_iter()
            .map(|(cgroup, policy)| (cgroup, policy.is_protected()))
            .collect();
        let registered: HashMap<ContainerId, bool> = maps
            .registered_containers()?
            .into_iter()
            .map(|(id, policy)| (id, policy.is_protected()))
            .collect();
        let counters_of = |cgroup: Option<&CgroupId>| -> Result<Counters> {
            Ok(match cgroup {
                Some(cgroup) => maps.counters(*cgroup)?.unwrap_or_default(),
                None => Counters::default(),
            })
        };
        // One pass over the recent flows, not one per container.
        let mut recent: HashMap<CgroupId, Vec<BlockedFlowRecord>> = HashMap::new();
        if with_flows {
            for flow in self.recent_flows(RECENT_FLOWS) {
                recent.entry(flow.cgroup).or_default().push(flow);
            }
        }
        let recent_of = |cgroups: &[CgroupId]| -> Vec<BlockedFlowRecord> {
            let mut mine: Vec<BlockedFlowRecord> = cgroups
                .iter()
                .filter_map(|cgroup| recent.get(cgroup))
                .flatten()
                .cloned()
                .collect();
            // RFC 3339 times in one format sort as text.
            mine.sort_by(|a, b| a.time.cmp(&b.time));
            mine.split_off(mine.len().saturating_sub(RECENT_PER_CONTAINER))
        };

        let mut out = Vec::with_capacity(statics.len() + known.len());
        for cgroup in &statics {
            out.push(ContainerStatus {
                name: cgroup.name.clone(),
                id: String::new(),
                image: String::new(),
                compose_project: String::new(),
                compose_service: String::new(),
                vpn_required: true,
                protected: policies.get(&cgroup.id).copied().unwrap_or(false),
                vpn_gateway: false,
                gateway: None,
                running: true,
                removed: false,
                cgroups: vec![cgroup.id],
                counters: CounterSet::from(&counters_of(Some(&cgroup.id))?),
                recent_blocked: recent_of(&[cgroup.id]),
            });
        }
        for (id, facts, cgroups, removed) in known {
            let protected = match (facts.running, cgroups.last()) {
                (true, Some(cgroup)) => {
                    policies.get(cgroup).copied().unwrap_or(false)
                        && facts
                            .cgroup_path
                            .as_deref()
                            .is_some_and(|path| self.covered(path))
                }
                // Not running: what its next instance gets.
                _ => removed.is_none() && registered.get(&id).copied().unwrap_or(false),
            };
            // The current (or last) instance's: a restart starts them from zero, as cAdvisor's
            // do, which Prometheus reads as a counter reset. A sum over instances would drop
            // when an agent restart forgets the older ones, and be read as a false reset.
            let counters = match removed {
                Some(last) => last,
                None => counters_of(cgroups.last())?,
            };
            out.push(ContainerStatus {
                name: facts.name,
                id: id.as_str().to_string(),
                image: facts.image,
                compose_project: facts.compose_project,
                compose_service: facts.compose_service,
                vpn_required: facts.vpn_required,
                protected,
                vpn_gateway: facts.vpn_gateway,
                gateway: facts.gateway,
                running: facts.running,
                removed: removed.is_some(),
                recent_blocked: recent_of(&cgroups),
                cgroups,
                counters: CounterSet::from(&counters),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    fn covered(&self, path: &Path) -> bool {
        self.attach_cgroups.iter().any(|a| path.starts_with(a))
    }
}

/// Each gateway's tunnel as written in the pinned maps.
pub fn gateways(maps: &Maps) -> Result<Vec<GatewayStatus>> {
    Ok(maps
        .gateways()?
        .into_iter()
        .map(|(slot, name, state)| GatewayStatus {
            name,
            slot: slot.0,
            tunnel_up: state.tunnel_up == 1,
            transitions: state.transitions,
            last_change_secs: state.last_change_secs,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loop_does_not_grow_what_is_remembered() {
        let report = Report::new(Vec::new(), Duration::from_secs(1), true);
        let id: ContainerId = "a".repeat(64).parse().unwrap();
        for cgroup in 1..=100 {
            let facts = ContainerFacts {
                name: "looping".into(),
                running: true,
                ..ContainerFacts::default()
            };
            report.container_seen(&id, facts, Some(cgroup));
        }
        let inventory = report.inventory.read().unwrap();
        assert_eq!(
            inventory.containers[&id].cgroups,
            (85..=100).collect::<Vec<CgroupId>>()
        );
        assert_eq!(inventory.owner.len(), INSTANCES_KEPT);
        assert!(inventory.owner.contains_key(&100) && !inventory.owner.contains_key(&84));
    }
}
