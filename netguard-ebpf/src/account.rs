//! Counting and blocked-flow events. Nothing here decides a verdict.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use netguard_common::{BlockReason, BlockedFlow, Counters, EVENTS_PER_SECOND, EventBudget, Hook};

use crate::{COUNTERS, EVENT_BUDGET, EVENTS, parse::Flow};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// This CPU's counters for `cgroup`, created on first use.
#[inline(always)]
pub fn counters(cgroup: u64) -> Option<&'static mut Counters> {
    if let Some(ptr) = COUNTERS.get_ptr_mut(cgroup) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        return Some(unsafe { &mut *ptr });
    }
    // BPF_NOEXIST: another CPU may have created it meanwhile; either way look it up again.
    let _ = COUNTERS.insert(cgroup, Counters::default(), 1);
    COUNTERS.get_ptr_mut(cgroup).map(|ptr| unsafe { &mut *ptr })
}

#[inline(always)]
pub fn count_block(counters: &mut Counters, reason: BlockReason, bytes: u64) {
    let slot = reason as usize;
    if slot < counters.blocked_packets.len() {
        counters.blocked_packets[slot] += 1;
        counters.blocked_bytes[slot] += bytes;
    }
}

#[inline(always)]
pub fn count_refusal(counters: &mut Counters, reason: BlockReason) {
    let slot = reason as usize;
    if slot < counters.refused_calls.len() {
        counters.refused_calls[slot] += 1;
    }
}

/// Emits a blocked-flow event unless `cgroup` has used its budget for this second or the
/// ring buffer is full; either way the suppression is counted.
#[inline(always)]
pub fn report(
    cgroup: u64,
    flow: Option<&Flow>,
    reason: BlockReason,
    hook: Hook,
    bytes: u32,
    counters: Option<&mut Counters>,
) {
    let emitted = within_budget(cgroup) && {
        let mut event = BlockedFlow {
            cgroup_id: cgroup,
            reason: reason as u8,
            hook: hook as u8,
            bytes,
            ..BlockedFlow::default()
        };
        if let Some(flow) = flow {
            event.addr = flow.addr;
            event.port = if flow.port_known { flow.port } else { 0 };
            event.proto = flow.proto;
            event.family = flow.family;
        }
        EVENTS.output::<BlockedFlow>(event, 0).is_ok()
    };
    if !emitted && let Some(counters) = counters {
        counters.events_suppressed += 1;
    }
}

#[inline(always)]
fn within_budget(cgroup: u64) -> bool {
    // SAFETY: reads the monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    match EVENT_BUDGET.get_ptr_mut(cgroup) {
        Some(ptr) => {
            // SAFETY: races between CPUs only make the budget approximate.
            let budget = unsafe { &mut *ptr };
            if now.wrapping_sub(budget.window_start_ns) >= NANOS_PER_SECOND {
                budget.window_start_ns = now;
                budget.emitted = 1;
                true
            } else if budget.emitted < EVENTS_PER_SECOND {
                budget.emitted += 1;
                true
            } else {
                false
            }
        }
        None => {
            let fresh = EventBudget {
                window_start_ns: now,
                emitted: 1,
            };
            EVENT_BUDGET.insert(cgroup, fresh, 0).is_ok()
        }
    }
}
