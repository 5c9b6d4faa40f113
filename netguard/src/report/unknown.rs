//! Cgroups named like containers that the Docker daemon does not know: another engine's.

use crate::cgroup::CgroupId;

/// A cgroup named like a container that the Docker daemon does not know: another engine's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownCgroup {
    pub cgroup: CgroupId,
    /// Below the cgroup root.
    pub path: String,
    /// Held by the classifier (everything external blocked); otherwise not enforced at all
    /// (created by a user other than root, or before netguard's classifier was attached).
    pub held: bool,
    /// The user that created it.
    pub owner: u32,
}

impl UnknownCgroup {
    /// What the operator should know about it.
    pub fn problem(&self) -> String {
        if self.held {
            "named like a container, but the Docker daemon does not know it: held (everything \
             external blocked)"
                .into()
        } else {
            format!(
                "named like a container, but the Docker daemon does not know it, and it is not \
                 held: created by uid {} (a rootless engine?) or before netguard ran, so \
                 nothing enforces it",
                self.owner
            )
        }
    }
}
