//! The policy cache's word: which entry of the policy map applies to a cgroup, as found at
//! one policy stamp, packed in one `u64` so that it is read and written whole (an aligned
//! 8-byte load or store is single-copy atomic: a reader sees one writer's word, never a mix).
//!
//! From the low bits up: where the policy is (5 bits), 27 bits of the cgroup id above the
//! slot's index (two cgroups that share a slot are told apart: together with the index, 43
//! bits of the id must match), and the low 32 bits of the stamp. The programs use the cache
//! only under a stamp whose low 32 bits are not 0 (fresh maps start at 0, and the agent skips
//! it), so a zeroed slot is never valid.

use crate::MAX_CGROUP_DEPTH;

/// Slots of the policy cache; the slot of a cgroup is its id's low bits.
pub const POLICY_CACHE_SLOTS: u32 = 1 << SLOT_BITS;
const SLOT_BITS: u32 = 16;
const WHERE_BITS: u32 = 5;
const ECHO_BITS: u32 = 27;
const STAMP_SHIFT: u32 = WHERE_BITS + ECHO_BITS;
const WHERE_OWN: u64 = MAX_CGROUP_DEPTH as u64 + 1;

/// Where the policy of a cgroup is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyAt {
    /// Neither the cgroup nor an ancestor has an entry: the traffic is not netguard's.
    Nowhere,
    /// The entry of the cgroup's ancestor at this level (1 is the root's child; a cgroup is
    /// its own ancestor at its own level).
    Level(i32),
    /// The cgroup's own entry, the cgroup being deeper than the walk goes.
    Own,
}

/// One slot of the policy cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedPolicy(pub u64);

impl CachedPolicy {
    /// The slot of `cgroup`.
    pub const fn slot(cgroup: u64) -> u32 {
        (cgroup as u32) & (POLICY_CACHE_SLOTS - 1)
    }

    pub const fn new(stamp: u64, cgroup: u64, at: PolicyAt) -> Self {
        let place = match at {
            PolicyAt::Nowhere => 0,
            PolicyAt::Level(level) => level as u64 & ((1 << WHERE_BITS) - 1),
            PolicyAt::Own => WHERE_OWN,
        };
        Self((stamp as u32 as u64) << STAMP_SHIFT | echo(cgroup) << WHERE_BITS | place)
    }

    /// Where the policy of `cgroup` is, if this word was written for it at `stamp`.
    pub const fn at(self, stamp: u64, cgroup: u64) -> Option<PolicyAt> {
        if self.0 >> STAMP_SHIFT != stamp as u32 as u64
            || (self.0 >> WHERE_BITS) & ((1 << ECHO_BITS) - 1) != echo(cgroup)
        {
            return None;
        }
        match self.0 & ((1 << WHERE_BITS) - 1) {
            0 => Some(PolicyAt::Nowhere),
            WHERE_OWN => Some(PolicyAt::Own),
            level if level <= MAX_CGROUP_DEPTH as u64 => Some(PolicyAt::Level(level as i32)),
            _ => None,
        }
    }
}

/// The bits of the id above the slot's that the word keeps.
const fn echo(cgroup: u64) -> u64 {
    (cgroup >> SLOT_BITS) & ((1 << ECHO_BITS) - 1)
}

/// Whether the cache may be read and written under `stamp` (see the module's note).
pub const fn cache_usable(stamp: u64) -> bool {
    stamp as u32 != 0
}

/// The stamp after `stamp`: its low 32 bits are never 0. `wrapped` says the low 32 bits
/// went round, so that words written 2^32 stamps ago would read as valid again: the agent
/// clears the cache before it publishes such a stamp.
pub const fn next_policy_stamp(stamp: u64) -> (u64, bool) {
    let next = stamp.wrapping_add(1);
    if next as u32 == 0 {
        (next.wrapping_add(1), true)
    } else {
        (next, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_is_valid_only_for_its_cgroup_at_its_stamp() {
        let cgroup = 0x0000_0001_0002_1234;
        for at in [
            PolicyAt::Nowhere,
            PolicyAt::Level(1),
            PolicyAt::Level(16),
            PolicyAt::Own,
        ] {
            let word = CachedPolicy::new(7, cgroup, at);
            assert_eq!(word.at(7, cgroup), Some(at));
            assert_eq!(word.at(8, cgroup), None, "another stamp");
            // Same slot, another cgroup.
            assert_eq!(word.at(7, cgroup + (1 << 16)), None);
            assert_eq!(word.at(7, cgroup + (1 << 42)), None);
        }
        // A zeroed slot is valid under no stamp the cache is used at.
        assert_eq!(CachedPolicy(0).at(1, 0), None);
        assert!(!cache_usable(0) && !cache_usable(1 << 32) && cache_usable(1));
        assert_eq!(next_policy_stamp(0), (1, false));
        assert_eq!(next_policy_stamp(u32::MAX as u64), ((1 << 32) + 1, true));
        assert_eq!(CachedPolicy(0).at((1 << 32) + 1, 0), None);
    }
}
