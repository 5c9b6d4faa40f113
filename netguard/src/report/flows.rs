//! Blocked flows as operators read them: when the kernel blocked them (not when the agent
//! read them: a flow blocked while no agent ran waits in the pinned ring buffer), whether
//! that was before this agent started, and whose they were, even once the cgroup is gone.

use std::{
    sync::Mutex,
    time::{Duration, SystemTime},
};

use tokio::sync::broadcast;

use super::Report;
use crate::{
    api::BlockedFlowRecord,
    cgroup::{CgroupId, container_of_path},
    domain::{BlockedFlowEvent, ContainerId},
    kernel::PinnedOwners,
    sys,
};

impl Report {
    /// Names flows after their cgroups are gone, from the owners pinned by the classifier
    /// and earlier agents.
    pub fn set_pinned_owners(&self, owners: PinnedOwners) {
        let _ = self.owners.set(Mutex::new(owners));
    }

    /// Records a blocked flow: kept for `/api/v1/flows`, sent to live streams.
    pub fn blocked(&self, event: &BlockedFlowEvent) -> BlockedFlowRecord {
        let (container, container_id) = self.attribute(event.cgroup_id);
        let record = BlockedFlowRecord {
            time: humantime::format_rfc3339_millis(wall_clock(event.at_boot_ns)).to_string(),
            container,
            container_id,
            cgroup: event.cgroup_id,
            destination: event.destination_text(),
            reason: event.reason_text().to_string(),
            hook: event.hook_text().to_string(),
            bytes: event.bytes,
            before_start: event.at_boot_ns != 0 && event.at_boot_ns < self.started_boot_ns,
            query: None,
        };
        self.keep(record)
    }

    /// Keeps a record for `/api/v1/flows` and sends it to live streams.
    pub(super) fn keep(&self, record: BlockedFlowRecord) -> BlockedFlowRecord {
        let mut flows = self.flows.lock().unwrap();
        if flows.len() == crate::config::RECENT_FLOWS {
            flows.pop_front();
        }
        flows.push_back(record.clone());
        drop(flows);
        // No subscriber is not an error.
        let _ = self.live.send(record.clone());
        record
    }

    /// The container (name, id) a cgroup belongs to: one the watcher linked to it, a static
    /// cgroup, the container its path names (a container whose start the watcher has not
    /// seen yet), else the pinned owner (a container gone, maybe before this agent ran).
    /// A cgroup gone with nothing known of it is `cgroup N (gone)`; empty only while a live
    /// cgroup is not known yet.
    pub(super) fn attribute(&self, cgroup: CgroupId) -> (String, String) {
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
        let path = self
            .hierarchy
            .as_ref()
            .map(|h| h.name_of(cgroup).ok().flatten());
        if let Some(id) = path.clone().flatten().and_then(|p| container_of_path(&p)) {
            let name = inventory
                .containers
                .get(&id)
                .map(|k| k.facts.name.clone())
                .unwrap_or_default();
            return (name, id.as_str().to_string());
        }
        let pinned = self
            .owners
            .get()
            .and_then(|owners| owners.lock().unwrap().get(cgroup));
        match (pinned, path) {
            (Some((name, id)), _) => {
                let name = match inventory.containers.get(&id) {
                    Some(known) => known.facts.name.clone(),
                    None if name.is_empty() => format!("container {}", id.short()),
                    None => name,
                };
                (name, id.as_str().to_string())
            }
            // The hierarchy says it no longer exists.
            (None, Some(None)) => (format!("cgroup {cgroup} (gone)"), String::new()),
            (None, _) => (String::new(), String::new()),
        }
    }

    /// Flows blocked before their cgroup was known to be the container's get its name now.
    pub(super) fn attribute_recent(&self, cgroup: CgroupId, id: &ContainerId, name: &str) {
        for flow in self.flows.lock().unwrap().iter_mut() {
            if flow.cgroup == cgroup && flow.container_id.is_empty() {
                flow.container = name.to_string();
                flow.container_id = id.as_str().to_string();
            }
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

/// The wall-clock time of a `CLOCK_BOOTTIME` instant (now, if unknown).
pub fn wall_clock(at_boot_ns: u64) -> SystemTime {
    let ago = sys::boottime_ns().saturating_sub(at_boot_ns);
    match at_boot_ns {
        0 => SystemTime::now(),
        _ => SystemTime::now() - Duration::from_nanos(ago),
    }
}
