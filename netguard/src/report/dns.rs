//! What netguard's resolver did with containers' DNS queries: counted per container for
//! `/metrics`, and each refused query kept with the blocked flows (so `netguard observe`
//! shows its name).

use std::collections::BTreeMap;

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

impl Report {
    /// Counts a query of `container`'s.
    pub fn dns_query(&self, container: &ContainerId, outcome: DnsOutcome) {
        self.dns
            .lock()
            .unwrap()
            .entry(container.clone())
            .or_default()[outcome as usize] += 1;
    }

    /// Counts a refused query of `cgroup` (`container`'s) for `name` (of type `kind`) and
    /// keeps it with the blocked flows; `why` is the reason shown (`tunnel_down`,
    /// `no_gateway`).
    pub fn dns_refused(
        &self,
        container: &ContainerId,
        cgroup: CgroupId,
        name: &str,
        kind: &str,
        why: &str,
    ) -> BlockedFlowRecord {
        self.dns_query(container, DnsOutcome::Refused);
        let (name_of_container, _) = self.attribute(cgroup);
        self.keep(BlockedFlowRecord {
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
        })
    }

    /// A container's counts, by outcome (every outcome, zeros included, once it asked).
    pub(super) fn dns_queries(&self, container: &ContainerId) -> BTreeMap<String, u64> {
        let counts = self.dns.lock().unwrap().get(container).copied();
        DnsOutcome::ALL
            .iter()
            .map(|o| (o.as_str().to_string(), counts.map_or(0, |c| c[*o as usize])))
            .collect()
    }
}
