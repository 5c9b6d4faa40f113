//! Reading blocked-flow events from the kernel's ring buffer.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use netguard_common::{BlockReason, BlockedFlow, FAMILY_V4, FAMILY_V6, Hook};
use tokio::io::unix::AsyncFd;
use tracing::warn;

use crate::report::Report;

/// A blocked flow in the user's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedFlowEvent {
    pub cgroup_id: u64,
    pub destination: Option<IpAddr>,
    pub port: u16,
    pub proto: u8,
    pub reason: Option<BlockReason>,
    pub hook: Option<Hook>,
    pub bytes: u32,
}

impl BlockedFlowEvent {
    pub fn from_raw(raw: &BlockedFlow) -> Self {
        let destination = match raw.family {
            FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(
                raw.addr[0],
                raw.addr[1],
                raw.addr[2],
                raw.addr[3],
            ))),
            FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(raw.addr))),
            _ => None,
        };
        Self {
            cgroup_id: raw.cgroup_id,
            destination,
            port: raw.port,
            proto: raw.proto,
            reason: BlockReason::from_raw(raw.reason),
            hook: Hook::from_raw(raw.hook),
            bytes: raw.bytes,
        }
    }
}

impl BlockedFlowEvent {
    /// `ip:port/proto`, `[ip]:port/proto` for IPv6.
    pub fn destination_text(&self) -> String {
        let proto = match self.proto {
            1 | 58 => "icmp".to_string(),
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            other => other.to_string(),
        };
        match self.destination {
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{}/{proto}", self.port),
            Some(ip) => format!("{ip}:{}/{proto}", self.port),
            None => "unparseable packet".to_string(),
        }
    }

    pub fn reason_text(&self) -> &'static str {
        self.reason.map_or("unknown", BlockReason::as_str)
    }

    pub fn hook_text(&self) -> &'static str {
        self.hook.map_or("unknown", Hook::as_str)
    }
}

impl fmt::Display for BlockedFlowEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cgroup={} reason={} hook={}",
            self.destination_text(),
            self.cgroup_id,
            self.reason_text(),
            self.hook_text()
        )
    }
}

/// Reports every blocked flow the kernel sends (log line, API, live stream) until the task
/// is dropped.
pub async fn report_blocked_flows(ring: RingBuf<MapData>, report: Arc<Report>) -> Result<()> {
    // SAFETY: the ring buffer owns its descriptor and keeps it open for as long as the
    // AsyncFd that owns the ring buffer lives.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|error| anyhow::anyhow!("watching the blocked-flow ring buffer: {error}"))?;
    loop {
        let mut guard = ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<BlockedFlow>() {
                continue;
            }
            // SAFETY: the kernel writes whole BlockedFlow records; read unaligned to be safe.
            let raw: BlockedFlow = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let event = BlockedFlowEvent::from_raw(&raw);
            let record = report.blocked(&event);
            warn!(
                target: "netguard::blocked",
                container = record.container,
                "blocked {event}"
            );
        }
        guard.clear_ready();
    }
}
