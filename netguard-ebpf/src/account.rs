//! Counting, and the one way every program settles a verdict: a pass is counted as sent
//! (packets) or left alone (calls), a block is counted with its reason and reported as a
//! blocked-flow event.

use aya_ebpf::helpers::{bpf_ktime_get_boot_ns, bpf_ktime_get_ns};
use netguard_common::{
    BlockReason, BlockedFlow, Counters, EVENTS_PER_SECOND, EventBudget, Hook, TxPath, parse::Flow,
};

use crate::maps::{COUNTERS, EVENT_BUDGET, EVENTS};

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
    // SAFETY: as above.
    COUNTERS.get_ptr_mut(cgroup).map(|ptr| unsafe { &mut *ptr })
}

/// Settles `verdict` for traffic of `cgroup` seen at `hook`: returns whether it may pass.
/// `bytes` is the IP packet's length (0 for a `connect()`/`sendto()` call).
#[inline(always)]
pub fn settle(
    cgroup: u64,
    verdict: Result<TxPath, BlockReason>,
    flow: Option<&Flow>,
    hook: Hook,
    bytes: u32,
) -> bool {
    let mut counters = counters(cgroup);
    let reason = match verdict {
        Ok(path) => {
            if let (Hook::Egress, Some(c)) = (hook, counters) {
                c.tx_packets += 1;
                c.tx_bytes += u64::from(bytes);
                let slot = path as usize;
                if slot < c.tx_packets_by_path.len() {
                    c.tx_packets_by_path[slot] += 1;
                    c.tx_bytes_by_path[slot] += u64::from(bytes);
                }
            }
            return true;
        }
        Err(reason) => reason,
    };
    let slot = reason as usize;
    if let Some(c) = counters.as_deref_mut()
        && slot < c.blocked_packets.len()
    {
        match hook {
            Hook::Connect | Hook::Sendmsg | Hook::Setsockopt | Hook::SockCreate => {
                c.refused_calls[slot] += 1
            }
            Hook::Egress | Hook::Backstop => {
                c.blocked_packets[slot] += 1;
                c.blocked_bytes[slot] += u64::from(bytes);
            }
        }
    }
    report(cgroup, flow, reason, hook, bytes, counters);
    false
}

/// Emits a blocked-flow event unless `cgroup` has used its budget for this second or the
/// ring buffer is full; either way the suppression is counted.
#[inline(always)]
fn report(
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
            // SAFETY: reads the boot-time clock (the agent converts it to wall-clock time).
            at_boot_ns: unsafe { bpf_ktime_get_boot_ns() },
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
