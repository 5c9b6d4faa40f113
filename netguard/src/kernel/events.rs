//! Reading blocked-flow events from the kernel's ring buffer.

use aya::maps::{MapData, RingBuf};
use netguard_common::BlockedFlow;

use crate::{domain::BlockedFlowEvent, sys};

/// Hands every blocked flow the kernel reports to `on_flow`, and says when a batch (what
/// the ring held when it was read) is done, until the task is dropped.
pub async fn read_blocked_flows(
    ring: RingBuf<MapData>,
    mut on_flow: impl FnMut(BlockedFlowEvent),
    mut batch_end: impl FnMut(),
) -> anyhow::Result<()> {
    let mut ring = sys::readable_fd(ring)
        .map_err(|error| anyhow::anyhow!("watching the blocked-flow ring buffer: {error}"))?;
    loop {
        let mut guard = ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            // The kernel writes whole records; anything shorter is not one.
            if let Some(raw) = sys::read_pod::<BlockedFlow>(&item) {
                on_flow(BlockedFlowEvent::from(&raw));
            }
        }
        batch_end();
        guard.clear_ready();
    }
}
