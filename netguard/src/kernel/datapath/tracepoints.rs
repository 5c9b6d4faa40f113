//! The links on tracepoints, global rather than per cgroup: the container classifier
//! (`cgroup_mkdir`) and the raw-socket guard (`sys_enter`), and the kernel layout they read.

use anyhow::{Context as _, Result, bail};
use aya::programs::{Program, links::FdLink};

use super::{
    CLASSIFIER_PROGRAM, Datapath, KERNEL_BTF, LinkOutcome, SOCK_GUARD_PIN, SOCK_GUARD_PROGRAM,
    SOCK_GUARD_TRACEPOINT,
};
use crate::{
    domain::CgroupId,
    kernel::{btf::kernel_layout, pins::remove_pin},
};

impl Datapath {
    /// Attaches (or adopts) the cgroup_mkdir classifier, which gives every new container
    /// cgroup a policy before a process can join it, whether the agent runs or not. The
    /// kernel's struct layout it reads is written first; `root` is the cgroup2 root's id.
    pub(super) fn attach_classifier(&mut self, root: CgroupId) -> Result<LinkOutcome> {
        self.write_kernel_layout(root)?;
        let pin = self.pin_dir.join("links").join("tp_cgroup_mkdir");
        self.pin_link(&pin, CLASSIFIER_PROGRAM, |program| {
            let Program::BtfTracePoint(p) = program else {
                bail!("program {CLASSIFIER_PROGRAM} has an unexpected type");
            };
            let id = p
                .attach()
                .context("attaching to the cgroup_mkdir BTF tracepoint")?;
            Ok(FdLink::from(p.take_link(id)?))
        })
    }

    /// Attaches (or adopts) the raw-socket guard: on every socket the kernel makes, wherever
    /// (no cgroup hook sees AF_PACKET sockets being made).
    pub(super) fn attach_sock_guard(&mut self) -> Result<LinkOutcome> {
        let pin = self.pin_dir.join("links").join(SOCK_GUARD_PIN);
        self.pin_link(&pin, SOCK_GUARD_PROGRAM, |program| {
            let Program::BtfTracePoint(p) = program else {
                bail!("program {SOCK_GUARD_PROGRAM} has an unexpected type");
            };
            let id = p
                .attach()
                .with_context(|| format!("attaching to the {SOCK_GUARD_TRACEPOINT} tracepoint"))?;
            Ok(FdLink::from(p.take_link(id)?))
        })
    }

    /// Writes what the backstop needs to recognise the kernel's own frames, for an agent that
    /// runs without the classifier.
    pub fn set_root_cgroup(&mut self, root: CgroupId) -> Result<()> {
        self.write_kernel_layout(root)
    }

    /// Writes the offsets the programs read, from the kernel's BTF, with the cgroup2 root's
    /// id (the cgroup of the kernel's own sockets). Without them the raw-socket guard would
    /// hold every protected raw socket and the classifier nothing: a start fails instead.
    fn write_kernel_layout(&mut self, root: CgroupId) -> Result<()> {
        let btf = std::fs::read(KERNEL_BTF).with_context(|| {
            format!("reading {KERNEL_BTF}: netguard's tracepoint programs need the kernel's BTF")
        })?;
        let mut layout = kernel_layout(&btf).context("finding what the kernel programs read")?;
        layout.root_cgroup_id = root;
        self.maps.set_kernel_layout(layout)
    }

    /// Detaches the classifier, if a previous run pinned one.
    pub fn detach_classifier(&mut self) -> Result<()> {
        remove_pin(&self.pin_dir.join("links").join("tp_cgroup_mkdir"))
    }
}
