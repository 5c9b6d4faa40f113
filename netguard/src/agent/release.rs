//! Processes the raw-socket guard stopped (they opened an AF_PACKET socket in a namespace
//! whose backstop was not in place yet, most often in a container's first instant): each is
//! continued once the backstop is there, or once its cgroup is no longer protected (a new
//! container the agent classified count-only). Until then it stays stopped, agent or not.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use anyhow::Result;
use netguard_common::{CgroupPolicy, StoppedTask};
use tracing::{info, warn};

use crate::{
    cgroup::{CgroupId, cgroup_of_process},
    config::STOPPED_POLL,
    kernel::Maps,
    sys,
};

/// What becomes of a stopped process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    /// Continue it, for this reason.
    Continue(&'static str),
    /// Gone, or no longer the process that was stopped (its pid reused): forget it.
    Forget,
    /// Keep it stopped.
    Wait,
}

/// The decision for `task`, now in cgroup `now_in` (`None`: gone), in a namespace that is
/// `guarded` or not, under `policy` (of the cgroup whose policy stopped it).
fn release(
    task: &StoppedTask,
    now_in: Option<CgroupId>,
    guarded: bool,
    policy: Option<CgroupPolicy>,
) -> Release {
    if now_in != Some(task.own_cgroup) {
        return Release::Forget;
    }
    if guarded {
        return Release::Continue("its namespace's backstop is in place");
    }
    if !policy.is_some_and(|p| p.is_protected()) {
        return Release::Continue("its cgroup is no longer protected");
    }
    Release::Wait
}

/// Looks at the stopped processes every [`STOPPED_POLL`], for ever.
pub async fn release_stopped(pin_dir: PathBuf, root: PathBuf) -> Result<()> {
    let mut maps = Maps::open_pinned(&pin_dir)?;
    let mut waiting: HashSet<u32> = HashSet::new();
    let mut tick = tokio::time::interval(STOPPED_POLL);
    loop {
        tick.tick().await;
        for (tgid, task) in maps.stopped()? {
            let decision = release(
                &task,
                cgroup_of_process(&root, tgid),
                maps.guarded(task.netns_cookie)?,
                maps.policy(task.policy_cgroup)?,
            );
            act(&mut maps, &root, tgid, &task, decision, &mut waiting)?;
        }
    }
}

fn act(
    maps: &mut Maps,
    root: &Path,
    tgid: u32,
    task: &StoppedTask,
    decision: Release,
    waiting: &mut HashSet<u32>,
) -> Result<()> {
    let cgroup = task.own_cgroup;
    match decision {
        Release::Wait => {
            if waiting.insert(tgid) {
                warn!(
                    pid = tgid,
                    cgroup,
                    "a protected process opened a raw (AF_PACKET) socket before its network \
                     namespace's backstop was in place: stopped until it is (a container's \
                     namespace is guarded once the agent has seen it start; for a cgroup of the \
                     configuration, set backstop_netns)"
                );
            }
            return Ok(());
        }
        Release::Continue(reason) => {
            // Checked again just before: the pid must still be that process.
            if cgroup_of_process(root, tgid) == Some(cgroup) {
                let held_ms = sys::monotonic_ns().saturating_sub(task.stopped_at_ns) / 1_000_000;
                match sys::kill(tgid, libc::SIGCONT) {
                    Ok(()) => info!(
                        pid = tgid,
                        cgroup, held_ms, "raw-socket hold over, continued: {reason}"
                    ),
                    Err(error) => warn!(pid = tgid, "continuing it: {error}"),
                }
            }
        }
        Release::Forget => {}
    }
    waiting.remove(&tgid);
    maps.forget_stopped(tgid)
}

#[cfg(test)]
mod tests {
    use netguard_common::POLICY_PROTECTED;

    use super::*;

    const TASK: StoppedTask = StoppedTask {
        own_cgroup: 11,
        policy_cgroup: 10,
        netns_cookie: 7,
        stopped_at_ns: 0,
    };
    const PROTECTED: CgroupPolicy = CgroupPolicy {
        flags: POLICY_PROTECTED,
        gateway: 0,
    };

    #[test]
    fn a_stopped_process_waits_for_its_backstop_or_the_end_of_its_protection() {
        assert_eq!(
            release(&TASK, Some(11), false, Some(PROTECTED)),
            Release::Wait
        );
        assert_eq!(
            release(&TASK, Some(11), false, Some(CgroupPolicy::UNCLASSIFIED)),
            Release::Wait,
            "held, not yet classified"
        );
        assert!(matches!(
            release(&TASK, Some(11), true, Some(PROTECTED)),
            Release::Continue(_)
        ));
        assert!(matches!(
            release(&TASK, Some(11), false, Some(CgroupPolicy::default())),
            Release::Continue(_)
        ));
        assert!(matches!(
            release(&TASK, Some(11), false, None),
            Release::Continue(_)
        ));
    }

    #[test]
    fn a_process_gone_or_elsewhere_is_forgotten_never_signalled() {
        assert_eq!(release(&TASK, None, true, Some(PROTECTED)), Release::Forget);
        assert_eq!(
            release(&TASK, Some(99), true, Some(PROTECTED)),
            Release::Forget,
            "its pid now names another process"
        );
    }
}
