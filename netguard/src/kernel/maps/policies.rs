//! Policies: cgroup id -> what the datapath does for it; and the stamp that tells the
//! programs' policy cache the map changed.

use anyhow::{Context as _, Result};
use netguard_common::{
    CgroupPolicy, RESERVED_POLICY_KEYS,
    cache::{POLICY_CACHE_SLOTS, next_policy_stamp},
    is_reserved_policy_key, reserved_policy_key,
};

use super::{Maps, remove_if_present};
use crate::domain::CgroupId;

impl Maps {
    /// Every cgroup with a policy entry (the reserved keys are not cgroups).
    pub fn policies(&self) -> Result<Vec<(CgroupId, CgroupPolicy)>> {
        let mut found = Vec::new();
        for entry in self.policy.iter() {
            let (cgroup, policy) = entry?;
            if !is_reserved_policy_key(cgroup) {
                found.push((cgroup, policy));
            }
        }
        Ok(found)
    }

    /// Puts back the reserved policy keys the classifier gave up for containers while the map
    /// was full; returns how many are still missing (the map is full).
    pub fn restore_policy_reserves(&mut self) -> Result<u64> {
        const BPF_NOEXIST: u64 = 1;
        let mut missing = 0;
        for i in 0..RESERVED_POLICY_KEYS {
            let key = reserved_policy_key(i);
            if self.policy.get(&key, 0).is_ok() {
                continue;
            }
            if self
                .policy
                .insert(key, CgroupPolicy::default(), BPF_NOEXIST)
                .is_err()
            {
                missing += 1;
            }
        }
        Ok(missing)
    }

    pub fn set_policy(&mut self, cgroup: CgroupId, policy: CgroupPolicy) -> Result<()> {
        self.policy
            .insert(cgroup, policy, 0)
            .with_context(|| format!("writing the policy of cgroup {cgroup}"))?;
        self.publish_policies()
    }

    pub fn remove_policy(&mut self, cgroup: CgroupId) -> Result<()> {
        remove_if_present(self.policy.remove(&cgroup))?;
        self.publish_policies()
    }

    /// Makes the policy map's contents the ones every program judges by: increments the
    /// policy stamp, so that no cached lookup made before the write is used after it.
    ///
    /// On x86 a program that reads the new stamp reads the policy map after it (loads are not
    /// reordered with older loads). Elsewhere a CPU may have read the policy map early, so
    /// the agent waits for every program running now to finish (an RCU grace period, through
    /// `membarrier`) and increments the stamp again.
    fn publish_policies(&mut self) -> Result<()> {
        self.bump_policy_stamp()?;
        if cfg!(not(any(target_arch = "x86_64", target_arch = "x86"))) {
            crate::sys::wait_for_rcu_grace_period().context(
                "membarrier(MEMBARRIER_CMD_GLOBAL), which publishes policy writes on this CPU \
                 architecture (kernels with nohz_full refuse it)",
            )?;
            self.bump_policy_stamp()?;
        }
        Ok(())
    }

    /// Fresh maps start at stamp 0, under which the programs do not use the cache: moves
    /// them off it, so that even traffic of a host without any policy is spared the walk.
    /// One increment is enough (no grace period): no word was written under stamp 0, and no
    /// policy write of the agent precedes this.
    pub(super) fn start_policy_stamp(&mut self) -> Result<()> {
        if self.policy_stamp.get(&0, 0)? == 0 {
            self.bump_policy_stamp()?;
        }
        Ok(())
    }

    fn bump_policy_stamp(&mut self) -> Result<()> {
        let (stamp, wrapped) = next_policy_stamp(self.policy_stamp.get(&0, 0)?);
        if wrapped {
            // Words written 2^32 stamps ago would read as valid again.
            for slot in 0..POLICY_CACHE_SLOTS {
                self.policy_cache.set(slot, 0, 0)?;
            }
        }
        self.policy_stamp
            .set(0, stamp, 0)
            .context("writing the policy stamp")
    }
}
