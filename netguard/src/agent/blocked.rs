//! The log's account of blocked flows: live ones as they come, and those that waited in the
//! pinned ring buffer while no agent ran marked as such, with their real times; past the
//! first few, one summary line per batch.

use tracing::warn;

use crate::{api::BlockedFlowRecord, domain::BlockedFlowEvent};

/// Flows from before the start logged one by one; the rest are summed up.
const BACKLOG_LINES: u64 = 10;

#[derive(Debug, Default)]
pub struct BlockedLog {
    /// From before the start: logged one by one so far.
    backlog_logged: u64,
    /// From before the start, past the first few, in this batch: how many, and the oldest
    /// and newest times.
    unlogged: Option<(u64, String, String)>,
}

impl BlockedLog {
    pub fn flow(&mut self, record: &BlockedFlowRecord, event: &BlockedFlowEvent) {
        let who = record.who();
        if !record.before_start {
            warn!(target: "netguard::blocked", container = who, cgroup = record.cgroup, at = record.time, "blocked {event}");
            return;
        }
        if self.backlog_logged < BACKLOG_LINES {
            self.backlog_logged += 1;
            warn!(
                target: "netguard::blocked",
                container = who,
                cgroup = record.cgroup,
                at = record.time,
                "blocked {event} (before this agent started: read from the pinned ring buffer)"
            );
            return;
        }
        match &mut self.unlogged {
            Some((count, _, newest)) => {
                *count += 1;
                newest.clone_from(&record.time);
            }
            None => self.unlogged = Some((1, record.time.clone(), record.time.clone())),
        }
    }

    /// After a batch read from the ring buffer: the summary of what was not logged one by one.
    pub fn batch_end(&mut self) {
        if let Some((count, oldest, newest)) = self.unlogged.take() {
            warn!(
                target: "netguard::blocked",
                "{count} more flows blocked before this agent started, from {oldest} to {newest} \
                 (`netguard observe` and /api/v1/flows list them, marked before_start)"
            );
        }
    }
}
