//! Backstops: the entry of an interface before its program, the program detached before
//! its entry goes.

use std::collections::{BTreeMap, BTreeSet};

use super::{Applied, Applier, Prune};
use crate::{domain::CgroupId, kernel::Kernel};

impl Applier {
    pub(super) fn apply_backstops(
        &mut self,
        wanted: &BTreeMap<u32, CgroupId>,
        kernel: &mut impl Kernel,
        prune: Prune,
        applied: &mut Applied,
    ) {
        if prune == Prune::Yes {
            let stale: BTreeSet<u32> = self
                .mirror
                .links
                .iter()
                .chain(&self.mirror.inherited)
                .chain(self.mirror.backstops.keys())
                .filter(|ifindex| !wanted.contains_key(ifindex))
                .copied()
                .collect();
            for ifindex in stale {
                // Whatever the outcome, the program is no longer known to be ours: wanted
                // again, it is attached (or adopted) again.
                self.mirror.links.remove(&ifindex);
                match kernel.detach_backstop(ifindex) {
                    Ok(()) => {
                        self.mirror.inherited.remove(&ifindex);
                        self.mirror.backstops.remove(&ifindex);
                    }
                    Err(error) => applied.fail(format!("backstop on interface {ifindex}"), error),
                }
            }
        }
        for (&ifindex, &cgroup) in wanted {
            // The entry goes first: the program drops everything on an interface without one.
            let result = (|| {
                if self.mirror.backstops.get(&ifindex) != Some(&cgroup) {
                    kernel.set_backstop(ifindex, cgroup)?;
                    self.mirror.backstops.insert(ifindex, cgroup);
                }
                if !self.mirror.links.contains(&ifindex) {
                    kernel.attach_backstop(ifindex)?;
                    self.mirror.links.insert(ifindex);
                    self.mirror.inherited.remove(&ifindex);
                }
                Ok::<_, anyhow::Error>(())
            })();
            if let Err(error) = result {
                applied.fail(format!("backstop on interface {ifindex}"), error);
            }
        }
    }
}
