//! Entries the kernel holds for cgroups that are gone, or that no container explains: which
//! may go. Entries are never removed on a container's word alone (a die event can be stale);
//! only once the kernel says the cgroup no longer exists.

use std::collections::{BTreeMap, BTreeSet};

use netguard_common::CgroupPolicy;

use super::{Container, StaticPolicy};
use crate::domain::{CgroupId, ContainerId};

/// The kernel's policy and counter entries, and which of their cgroups still exist.
#[derive(Clone, Debug, Default)]
pub struct KernelView {
    pub policies: Vec<(CgroupId, CgroupPolicy)>,
    /// Cgroups with counters (some may have no policy any more).
    pub counted: Vec<CgroupId>,
    pub alive: BTreeSet<CgroupId>,
}

impl KernelView {
    /// Every cgroup the view mentions, for asking the kernel which still exist.
    pub fn cgroups(&self) -> BTreeSet<CgroupId> {
        self.policies
            .iter()
            .map(|(cgroup, _)| *cgroup)
            .chain(self.counted.iter().copied())
            .collect()
    }
}

/// What the agent still needs.
#[derive(Clone, Debug, Default)]
pub struct Keep {
    /// Cgroups of the static configuration.
    pub statics: BTreeSet<CgroupId>,
    /// Every remembered instance of a known container (their counters are shown until the
    /// container is destroyed).
    pub instances: BTreeSet<CgroupId>,
    /// Running instances.
    pub running: BTreeSet<CgroupId>,
}

impl Keep {
    /// What the static configuration and the known containers still need.
    pub fn of(statics: &StaticPolicy, containers: &BTreeMap<ContainerId, Container>) -> Self {
        Self {
            statics: statics.cgroups.iter().map(|c| c.id).collect(),
            instances: containers
                .values()
                .flat_map(|c| c.instances.iter().copied())
                .collect(),
            running: containers
                .values()
                .filter_map(|c| c.running.as_ref().map(|i| i.cgroup))
                .collect(),
        }
    }
}

/// What may go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Garbage {
    /// Policy and allowances go; counters stay (an earlier instance of a known container).
    pub retire: Vec<CgroupId>,
    /// Policy, allowances and counters go.
    pub forget: Vec<CgroupId>,
    /// Held cgroups no container explained at this full sync.
    pub unaccounted: BTreeSet<CgroupId>,
    /// Held cgroups no container explained at two full syncs running: named like containers
    /// but not the Docker daemon's (another engine, a second daemon). They stay held —
    /// everything external blocked — and are reported, for the operator to decide.
    pub unknown: BTreeSet<CgroupId>,
    /// Instances Docker last said run whose cgroup is gone: they run no more, and own no
    /// backstop (one pointing at a cgroup without a policy would drop everything).
    pub stopped: Vec<CgroupId>,
}

impl Garbage {
    /// Marks the instances found stopped as not running (what Docker said last is stale).
    /// Returns the containers marked.
    pub fn mark_stopped(
        &self,
        containers: &mut BTreeMap<ContainerId, Container>,
    ) -> Vec<ContainerId> {
        let mut marked = Vec::new();
        for container in containers.values_mut() {
            if container
                .running
                .as_ref()
                .is_some_and(|i| self.stopped.contains(&i.cgroup))
            {
                container.running = None;
                marked.push(container.id.clone());
            }
        }
        marked
    }
}

/// Finds the garbage in `view`. Held cgroups are judged only at a `full_sync`, against the
/// ones `unaccounted_before` (the previous full sync's): a container being created is
/// unaccounted for a moment, never at two syncs 30 seconds apart.
pub fn collect(
    view: &KernelView,
    keep: &Keep,
    unaccounted_before: &BTreeSet<CgroupId>,
    full_sync: bool,
) -> Garbage {
    let mut garbage = Garbage::default();
    for (cgroup, policy) in &view.policies {
        if keep.statics.contains(cgroup) {
            continue;
        }
        if !view.alive.contains(cgroup) {
            if keep.running.contains(cgroup) {
                garbage.stopped.push(*cgroup);
            }
            if keep.instances.contains(cgroup) {
                garbage.retire.push(*cgroup);
            } else {
                garbage.forget.push(*cgroup);
            }
            continue;
        }
        if full_sync && policy.is_unclassified() && !keep.running.contains(cgroup) {
            garbage.unaccounted.insert(*cgroup);
            if unaccounted_before.contains(cgroup) {
                garbage.unknown.insert(*cgroup);
            }
        }
    }
    let with_policy: BTreeSet<CgroupId> = view.policies.iter().map(|(c, _)| *c).collect();
    for cgroup in &view.counted {
        let unneeded = !with_policy.contains(cgroup)
            && !keep.instances.contains(cgroup)
            && !keep.statics.contains(cgroup)
            && !view.alive.contains(cgroup);
        if unneeded {
            garbage.forget.push(*cgroup);
        }
    }
    garbage
}
