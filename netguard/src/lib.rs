//! netguard: an eBPF egress killswitch and per-container traffic monitor for Docker hosts.
//!
//! The agent keeps the kernel's maps in line with the desired policy; the kernel programs
//! (netguard-ebpf) enforce it per packet. See `DESIGN.md` for the architecture.

pub mod agent;
pub mod api;
pub mod cgroup;
pub mod client;
pub mod config;
pub mod datapath;
pub mod docker;
pub mod doctor;
pub mod events;
pub mod health;
pub mod host;
pub mod http;
pub mod maps;
pub mod metrics;
pub mod netns;
pub mod policy;
pub mod report;

/// The compiled kernel programs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netguard"));

/// Default bpffs directory holding every pinned map and link.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/netguard";
