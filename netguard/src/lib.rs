//! netguard: an eBPF egress killswitch and per-container traffic monitor for Docker hosts.
//!
//! The agent keeps the kernel's maps in line with the desired policy; the kernel programs
//! (netguard-ebpf) enforce it per packet. See `docs/design.md` for the architecture; in
//! short: [`docker`] follows Docker into facts, [`reconcile`] decides and applies, [`kernel`]
//! is the only channel to the datapath, [`report`] and [`http`] tell operators.
#![deny(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod config;
pub mod dns;
pub mod docker;
pub mod doctor;
pub mod domain;
pub mod host;
pub mod http;
pub mod kernel;
pub mod labels;
pub mod metrics;
pub mod netns;
pub mod reconcile;
pub mod report;
pub mod sys;
pub mod tunnel;

/// The compiled kernel programs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netguard"));
