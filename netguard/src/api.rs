//! The agent's read-only HTTP API as data: what `/api/v1/...` returns and what the CLI
//! (`netguard status`, `netguard observe`) reads. One set of types for both ends.

use std::collections::BTreeMap;

use netguard_common::{BlockReason, Counters, TxPath};
use serde::{Deserialize, Serialize};

/// Version prefix of every API path.
pub const PREFIX: &str = "/api/v1";

/// A container (or a cgroup protected by the static configuration) as the agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// Docker's name; for a statically configured cgroup, its path under the cgroup2 root.
    pub name: String,
    /// Docker's full container id; empty for a statically configured cgroup.
    pub id: String,
    pub image: String,
    pub compose_project: String,
    pub compose_service: String,
    /// Labelled `vpn=required` (or protected by the static configuration).
    pub vpn_required: bool,
    /// The kernel enforces the killswitch for it: its cgroup (or, stopped, its next one) has
    /// a protected policy under an attached cgroup.
    pub protected: bool,
    /// It is a VPN gateway (`netguard.role=vpn-gateway`).
    pub vpn_gateway: bool,
    /// The gateway whose tunnel it may use.
    pub gateway: Option<String>,
    /// Its `netguard.gateway` reference, when that matches no gateway container.
    #[serde(default)]
    pub gateway_unresolved: Option<String>,
    /// The gateway whose old network namespace it is stuck in.
    #[serde(default)]
    pub stranded: Option<String>,
    pub running: bool,
    /// Destroyed: shown with its last counters until the metrics' grace period ends.
    pub removed: bool,
    /// Cgroup ids of its instances seen by this agent, the running (or last) one last.
    pub cgroups: Vec<u64>,
    pub counters: CounterSet,
    /// Its most recent blocked flows, newest last.
    pub recent_blocked: Vec<BlockedFlowRecord>,
    /// A cgroup named like a container that the Docker daemon does not know (another
    /// engine's); `problems` says whether it is held (everything external blocked) or not
    /// enforced at all.
    #[serde(default)]
    pub unknown: bool,
    /// What the operator should know: labels ignored or malformed, why it is not protected.
    #[serde(default)]
    pub problems: Vec<String>,
}

impl ContainerStatus {
    /// A cgroup netguard knows only by its path (a static cgroup, an unknown container
    /// cgroup, an entry of the pinned maps): no Docker facts, counters to be filled in.
    pub fn bare(name: String, cgroup: u64) -> Self {
        Self {
            name,
            id: String::new(),
            image: String::new(),
            compose_project: String::new(),
            compose_service: String::new(),
            vpn_required: false,
            protected: false,
            vpn_gateway: false,
            gateway: None,
            gateway_unresolved: None,
            stranded: None,
            running: true,
            removed: false,
            cgroups: vec![cgroup],
            counters: CounterSet::default(),
            recent_blocked: Vec::new(),
            unknown: false,
            problems: Vec::new(),
        }
    }

    /// The first 12 hex digits of the id, as Docker shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// Traffic counters of the container's running (or last) instance, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterSet {
    pub transmit_bytes: u64,
    pub transmit_packets: u64,
    pub receive_bytes: u64,
    pub receive_packets: u64,
    /// By reason (`not_allowed`, `tunnel_down`, `malformed`, `unclassified`).
    pub blocked_packets: BTreeMap<String, u64>,
    pub blocked_bytes: BTreeMap<String, u64>,
    /// `connect()`/`sendto()` refused with EPERM, by reason.
    pub refused_calls: BTreeMap<String, u64>,
    /// Blocked flows the kernel did not report (rate limit or full ring buffer).
    pub events_suppressed: u64,
    /// `transmit_bytes` by the way they left (`tunnel`, `internal`, `endpoint`, `direct`).
    #[serde(default)]
    pub transmit_bytes_by_path: BTreeMap<String, u64>,
    #[serde(default)]
    pub transmit_packets_by_path: BTreeMap<String, u64>,
    /// Its DNS queries netguard's resolver took since the agent started, by outcome:
    /// `answered` (a Docker name, answered by netguard), `forwarded` (sent through the
    /// tunnel to the gateway's resolver, or to the one the operator allowed), `refused`.
    #[serde(default)]
    pub dns_queries: BTreeMap<String, u64>,
}

impl From<&Counters> for CounterSet {
    fn from(c: &Counters) -> Self {
        let by_path = |values: &[u64]| {
            TxPath::ALL
                .iter()
                .map(|p| (p.as_str().to_string(), values[*p as usize]))
                .collect()
        };
        let by_reason = |values: &[u64]| {
            BlockReason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), values[*r as usize]))
                .collect()
        };
        Self {
            transmit_bytes: c.tx_bytes,
            transmit_packets: c.tx_packets,
            receive_bytes: c.rx_bytes,
            receive_packets: c.rx_packets,
            blocked_packets: by_reason(&c.blocked_packets),
            blocked_bytes: by_reason(&c.blocked_bytes),
            refused_calls: by_reason(&c.refused_calls),
            events_suppressed: c.events_suppressed,
            transmit_bytes_by_path: by_path(&c.tx_bytes_by_path),
            transmit_packets_by_path: by_path(&c.tx_packets_by_path),
            dns_queries: BTreeMap::new(),
        }
    }
}

impl CounterSet {
    pub fn blocked_packets_total(&self) -> u64 {
        self.blocked_packets.values().sum()
    }

    pub fn refused_calls_total(&self) -> u64 {
        self.refused_calls.values().sum()
    }
}

/// A VPN gateway's tunnel, as written in its pinned slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub name: String,
    pub slot: u32,
    pub tunnel_up: bool,
    pub transitions: u64,
    /// Unix time of the last up/down change; 0 if it never changed.
    pub last_change_secs: u64,
    /// Why its tunnel counts as down, from its health sources (the agent's word; a refused
    /// control server says so).
    #[serde(default)]
    pub down_reason: Option<String>,
}

/// One blocked flow the kernel reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedFlowRecord {
    /// RFC 3339, UTC, milliseconds: when the kernel blocked it (its boot-time clock in the
    /// event, converted by the agent).
    pub time: String,
    /// The container's name (from what the agent or the pinned state knows, even once the
    /// cgroup is gone); `cgroup N (gone)` when nothing is; empty only while a live cgroup
    /// is not known yet.
    pub container: String,
    pub container_id: String,
    pub cgroup: u64,
    /// `ip:port/proto` (`[ip]:port/proto` for IPv6).
    pub destination: String,
    pub reason: String,
    /// Where it was stopped: `egress`, `connect`, `sendmsg`, `backstop`, ... or `resolver`
    /// (a DNS query netguard's resolver refused: `query` names it).
    pub hook: String,
    /// Size of the dropped packet; 0 for a refused call.
    pub bytes: u32,
    /// Blocked before this agent started (it waited in the pinned ring buffer): not live.
    #[serde(default)]
    pub before_start: bool,
    /// For a DNS query refused by netguard's resolver: the name asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

impl BlockedFlowRecord {
    /// Who was blocked, in the operator's words: the container's name and short id, else
    /// the cgroup (`unclassified cgroup N` when nothing names it yet).
    pub fn who(&self) -> String {
        let short = &self.container_id[..self.container_id.len().min(12)];
        match (self.container.as_str(), short) {
            ("", "") => format!("unclassified cgroup {}", self.cgroup),
            ("", id) => format!("container {id} (cgroup {})", self.cgroup),
            (name, "") => name.to_string(),
            (name, id) => format!("{name} ({id})"),
        }
    }
}

/// `/readyz`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    /// Always true: the server starts once the maps are loaded and the policy applied.
    pub maps_loaded: bool,
    /// `in_sync`, `connecting` or `disabled`.
    pub docker: String,
}

/// One line of `/api/v1/flows/stream` (newline-delimited JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FlowStreamLine {
    Flow(BlockedFlowRecord),
    /// The reader fell behind and this many flows were skipped (they are still counted).
    Lagged {
        lagged: u64,
    },
}

/// `netguard status --json`: the same shape whether the agent answered or only the pinned
/// maps could be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// `agent` (its API answered) or `pins` (read from the pinned maps: no Docker names,
    /// images or recent flows).
    pub source: String,
    pub gateways: Vec<GatewayStatus>,
    pub containers: Vec<ContainerStatus>,
}
