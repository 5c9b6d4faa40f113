//! Upkeep at every sync: entries of cgroups that are gone, cgroups named like containers
//! that the Docker daemon does not know, and protected containers frozen because their
//! policy could not be written.

use std::collections::BTreeSet;

use anyhow::Result;
use tracing::{debug, error, info, warn};

use super::Watcher;
use crate::{
    config::CGROUP_WALK_LIMIT,
    domain::CgroupId,
    reconcile::garbage::{self, Keep, KernelView},
    report::UnknownCgroup,
};

impl Watcher {
    /// A protected container whose policy could not be written has nothing enforcing it:
    /// its cgroup is frozen (it runs and sends nothing) until the write succeeds, and thawed
    /// then. Fail closed, and loud.
    pub(super) fn freeze_unenforced(&mut self, unwritten: &BTreeSet<CgroupId>) {
        let running: BTreeSet<CgroupId> = self
            .containers
            .values()
            .filter_map(|c| c.running.as_ref().map(|i| i.cgroup))
            .collect();
        let to_freeze: Vec<CgroupId> = unwritten
            .iter()
            .filter(|c| running.contains(c) && !self.frozen.contains(c))
            .copied()
            .collect();
        for cgroup in to_freeze {
            match self.hierarchy.freeze(cgroup, true) {
                Ok(_) => {
                    error!(
                        cgroup,
                        "the policy of a protected container could not be written (is the policy \
                         map full?): its cgroup is frozen until it can be"
                    );
                    self.frozen.insert(cgroup);
                }
                Err(error) => error!(
                    cgroup,
                    "the policy of a protected container could not be written, and freezing it \
                     failed too: {error:#}; it is NOT enforced: stop it"
                ),
            }
        }
        let to_thaw: Vec<CgroupId> = self
            .frozen
            .iter()
            .filter(|c| !unwritten.contains(c))
            .copied()
            .collect();
        for cgroup in to_thaw {
            if running.contains(&cgroup) {
                match self.hierarchy.freeze(cgroup, false) {
                    Ok(_) => info!(cgroup, "its policy is written: thawed"),
                    Err(error) => {
                        warn!(cgroup, "thawing: {error:#} (retried)");
                        continue;
                    }
                }
            }
            self.frozen.remove(&cgroup);
        }
        self.report.set_frozen(self.frozen.clone());
    }

    /// Drops the kernel entries of cgroups that no longer exist. At a full sync, a held cgroup
    /// Docker did not account for at two syncs running is not a Docker container: it stays
    /// held, and is reported as unknown.
    pub(super) fn collect_garbage(&mut self, full_sync: bool) -> Result<()> {
        let mut view = KernelView {
            policies: self.datapath.maps.policies()?,
            counted: self.datapath.maps.counted_cgroups()?,
            alive: BTreeSet::new(),
        };
        for cgroup in view.cgroups() {
            if self.hierarchy.exists(cgroup)? {
                view.alive.insert(cgroup);
            }
        }
        let keep = Keep::of(&self.statics, &self.containers);
        let garbage = garbage::collect(&view, &keep, &self.unaccounted, full_sync);
        if full_sync {
            self.report_unknown(&garbage.unknown, &view);
        }
        if !garbage.retire.is_empty() || !garbage.forget.is_empty() {
            debug!(retired = ?garbage.retire, forgotten = ?garbage.forget, "cgroups gone");
        }
        let applied = self.applier.collect(&garbage, &mut self.datapath);
        self.log_applied(applied);
        if full_sync {
            self.unaccounted = garbage.unaccounted.clone();
        }
        let stopped = garbage.mark_stopped(&mut self.containers);
        for id in &stopped {
            self.report.container_stopped(id);
        }
        if !stopped.is_empty() {
            self.reconcile();
        }
        Ok(())
    }

    /// Cgroups named like containers that the Docker daemon does not know: the held ones
    /// stay held, and the ones nothing holds (another user's, or older than the classifier)
    /// are found by a walk of the tree. The operator hears of each once, and sees them in
    /// status and metrics.
    fn report_unknown(&mut self, held: &BTreeSet<CgroupId>, view: &KernelView) {
        let with_policy: BTreeSet<CgroupId> = view.policies.iter().map(|(c, _)| *c).collect();
        let found = self.hierarchy.container_like(CGROUP_WALK_LIMIT);
        if !found.complete {
            debug!(
                limit = CGROUP_WALK_LIMIT,
                "the cgroup tree is larger than the walk looks at: unknown cgroups may be missed"
            );
        }
        let mut unknown: Vec<UnknownCgroup> = Vec::new();
        for cgroup in held {
            let path = self.hierarchy.name_of(*cgroup).ok().flatten();
            unknown.push(UnknownCgroup {
                cgroup: *cgroup,
                path: path.unwrap_or_else(|| format!("cgroup {cgroup}")),
                held: true,
                owner: 0,
            });
        }
        for like in found.cgroups {
            if with_policy.contains(&like.id) || self.containers.contains_key(&like.container) {
                continue;
            }
            unknown.push(UnknownCgroup {
                cgroup: like.id,
                path: like.path,
                held: false,
                owner: like.owner,
            });
        }
        for cgroup in &unknown {
            if self.unknown.contains(&cgroup.cgroup) {
                continue;
            }
            let (path, owner) = (&cgroup.path, cgroup.owner);
            if cgroup.held {
                warn!(
                    cgroup = cgroup.cgroup,
                    path,
                    "a cgroup named like a container, which the Docker daemon does not know \
                     (another engine, a second daemon?): it stays held, everything external \
                     blocked; give that engine a cgroup parent of its own, or remove the cgroup"
                );
            } else {
                warn!(
                    cgroup = cgroup.cgroup,
                    path,
                    owner,
                    "a cgroup named like a container, which the Docker daemon does not know and \
                     nothing holds (a rootless engine, or one started before netguard): netguard \
                     does not enforce it; run its containers under the Docker daemon netguard \
                     follows, or protect its cgroup in the configuration ([[protect]])"
                );
            }
        }
        self.unknown = unknown.iter().map(|u| u.cgroup).collect();
        self.report.set_unknown(unknown);
    }
}
