//! What netguard's resolver did with containers' DNS queries: counted per container for
//! `/metrics`, and each refused query kept with the blocked flows (so `netguard observe`
//! shows its name).

use std::collections::BTreeMap;

use netguard_common::EVENTS_PER_SECOND;

use super::Report;
use crate::{api::BlockedFlowRecord, cgroup::CgroupId, domain::ContainerId};

/// What became of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsOutcome {
    /// A Docker name, answered by netguard.
    Answered = 0,
    /// Sent on to the gateway's resolver through the tunnel (or to the operator's).
    Forwarded = 1,
    /// Refused: no gateway, or its tunnel is down.
    Refused = 2,
}

impl DnsOutcome {
    pub const ALL: [DnsOutcome; 3] = [
        DnsOutcome::Answered,
        DnsOutcome::Forwarded,
        DnsOutcome::Refused,
    ];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DnsOutcome::Answered => "answered",
            DnsOutcome::Forwarded => "forwarded",
            DnsOutcome::Refused => "refused",
        }
    }
}

/// One container's queries.
#[derive(Debug, Default)]
pub(super) struct DnsCounts {
    by_outcome: [u64; DnsOutcome::ALL.len()],
    /// Refused queries kept as records in the current second (monotonic seconds): at most
    /// [`EVENTS_PER_SECOND`], as for the kernel's blocked flows, so that one container
    /// cannot push every other out of the recent flows.
    second: u64,
    recorded: u64,
}

impl Report {
    /// Counts a query of `container`'s.
    pub fn dns_query(&self, container: &ContainerId, outcome: DnsOutcome) {
        let mut counts = self.dns.lock().unwrap();
        counts.entry(container.clone()).or_default().by_outcome[outcome as usize] += 1;
    }

    /// Counts a refused query of `cgroup` (`container`'s) for `name` (of type `kind`) and
    /// keeps it with the blocked flows (up to [`EVENTS_PER_SECOND`] a second); `why` is the
    /// reason shown (`tunnel_down`, `no_gateway`).
    pub fn dns_refused(
        &self,
        container: &ContainerId,
        cgroup: CgroupId,
        name: &str,
        kind: &str,
        why: &str,
    ) -> Option<BlockedFlowRecord> {
        let second = crate::sys::monotonic_ns() / 1_000_000_000;
        {
            let mut counts = self.dns.lock().unwrap();
            let counts = counts.entry(container.clone()).or_default();
            counts.by_outcome[DnsOutcome::Refused as usize] += 1;
            if counts.second != second {
                (counts.second, counts.recorded) = (second, 0);
            }
            if counts.recorded >= EVENTS_PER_SECOND {
                return None;
            }
            counts.recorded += 1;
        }
        let (name_of_container, _) = self.attribute(cgroup);
        Some(self.keep(BlockedFlowRecord {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            container: name_of_container,
            container_id: container.as_str().to_string(),
            cgroup,
            destination: format!("DNS {name} {kind}"),
            reason: why.to_string(),
            hook: "resolver".to_string(),
            bytes: 0,
            before_start: false,
            query: Some(name.to_string()),
        }))
    }

    /// A container's counts, by outcome (every outcome, zeros included).
    pub(super) fn dns_queries(&self, container: &ContainerId) -> BTreeMap<String, u64> {
        let counts = self
            .dns
            .lock()
            .unwrap()
            .get(container)
            .map(|c| c.by_outcome);
        DnsOutcome::ALL
            .iter()
            .map(|o| (o.as_str().to_string(), counts.map_or(0, |c| c[*o as usize])))
            .collect()
    }
}
