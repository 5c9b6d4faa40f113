//! Loading the kernel programs, pinning them, and adopting what a previous agent pinned.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/netguard`):
//! - `NG_*`: the maps (see `netguard_common::maps`), reused by every agent start;
//! - `links/cg<cgroup id>_<program>`: cgroup links, one per program per attach cgroup;
//! - `links/tc<ifindex>`: backstop links on host-side veths.
//!
//! Links are pinned, so enforcement outlives the agent (exit, SIGTERM, kill -9). A new agent
//! adopts a pinned link whose program is identical to its own and leaves it attached; a
//! different program is attached next to the old one and then atomically renamed over its
//! pin, which detaches the old link: there is never a moment without a program.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, LinkOrder, Program, SchedClassifier,
        TcAttachType, links::FdLink, tc::TcAttachOptions,
    },
};
use netguard_common::maps as map_names;

use super::{
    log::KernelLog,
    maps::Maps,
    pins::{
        self, ProgramIdentity, TRACEFS, TRACEFS_MAGIC, ensure_bpffs, ensure_mounted,
        pinned_program, remove_pin,
    },
};
use crate::{EBPF_OBJECT, cgroup::Cgroup, netns};

/// The cgroup programs, each attached to every attach cgroup.
const CGROUP_PROGRAMS: [&str; 6] = [
    "ng_egress",
    "ng_ingress",
    "ng_connect4",
    "ng_connect6",
    "ng_sendmsg4",
    "ng_sendmsg6",
];
const BACKSTOP_PROGRAM: &str = "ng_backstop";
const CLASSIFIER_PROGRAM: &str = "ng_cgroup_mkdir";

/// How a program's pinned link came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkOutcome {
    /// A previous agent's identical program was left in place.
    Adopted,
    /// Newly attached (nothing was pinned).
    Attached,
    /// A different program was pinned; the new one replaced it without a gap.
    Replaced,
}

/// The loaded programs and the maps, pinned under one directory.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    pub maps: Maps,
    events: Option<RingBuf<MapData>>,
    logs: Option<aya_log::EbpfLogger<KernelLog>>,
}

impl Datapath {
    /// Loads the programs with the maps pinned under `pin_dir` (reusing them if present).
    /// Attaches nothing yet.
    pub fn load(pin_dir: &Path) -> Result<Self> {
        ensure_bpffs(pin_dir)?;
        fs::create_dir_all(pin_dir.join("links"))
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&str, PathBuf)> = map_names::ALL
            .iter()
            .map(|name| (*name, pin_dir.join(name)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading netguard's eBPF object (needs root or CAP_BPF + CAP_NET_ADMIN)")?;
        Self::new(ebpf, pin_dir.to_path_buf())
    }

    /// Loads the programs with private, unpinned maps (verdict tests; nothing is attached).
    pub fn load_unpinned() -> Result<Self> {
        let ebpf = Ebpf::load(EBPF_OBJECT).context("loading netguard's eBPF object")?;
        Self::new(ebpf, PathBuf::new())
    }

    fn new(mut ebpf: Ebpf, pin_dir: PathBuf) -> Result<Self> {
        let (mut maps, events) = Maps::take_from(&mut ebpf)?;
        maps.stamp_abi_if_fresh()?;
        let logs = aya_log::EbpfLogger::init_with_logger(&mut ebpf, KernelLog)
            .context("opening the kernel programs' log")?;
        Ok(Self {
            ebpf,
            pin_dir,
            maps,
            events: Some(events),
            logs: Some(logs),
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Hands the blocked-flow ring buffer to its reader (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Hands the kernel programs' log to its reader (once).
    pub fn take_logs(&mut self) -> Option<aya_log::EbpfLogger<KernelLog>> {
        self.logs.take()
    }

    /// The loaded cgroup_skb egress program, for `BPF_PROG_TEST_RUN`.
    pub fn egress_program(&mut self) -> Result<&mut CgroupSkb> {
        let program = program(&mut self.ebpf, "ng_egress")?;
        load_program(program)?;
        Ok(program.try_into()?)
    }

    /// The loaded backstop program, for `BPF_PROG_TEST_RUN`.
    pub fn backstop_program(&mut self) -> Result<&mut SchedClassifier> {
        let program = program(&mut self.ebpf, BACKSTOP_PROGRAM)?;
        load_program(program)?;
        Ok(program.try_into()?)
    }

    /// Attaches (or adopts) every cgroup program on `cgroup`, which covers it and every
    /// cgroup created below it later.
    pub fn attach_cgroup(&mut self, cgroup: &Cgroup) -> Result<Vec<(&'static str, LinkOutcome)>> {
        let mut outcomes = Vec::new();
        for name in CGROUP_PROGRAMS {
            let pin = self
                .pin_dir
                .join("links")
                .join(format!("cg{}_{name}", cgroup.id));
            let outcome = self.pin_link(&pin, name, |program| {
                let file = fs::File::open(&cgroup.path)
                    .with_context(|| format!("opening cgroup {}", cgroup.path.display()))?;
                let link = match program {
                    Program::CgroupSkb(p) => {
                        let kind = if name == "ng_ingress" {
                            CgroupSkbAttachType::Ingress
                        } else {
                            CgroupSkbAttachType::Egress
                        };
                        // Through bpf_link_create (kernel >= 5.7) cgroup links always coexist
                        // with other programs; the kernel wants flags 0 there.
                        let id = p.attach(&file, kind, CgroupAttachMode::Single)?;
                        FdLink::try_from(p.take_link(id)?)?
                    }
                    Program::CgroupSockAddr(p) => {
                        let id = p.attach(&file, CgroupAttachMode::Single)?;
                        FdLink::try_from(p.take_link(id)?)?
                    }
                    _ => bail!("program {name} has an unexpected type"),
                };
                Ok(link)
            })?;
            outcomes.push((name, outcome));
        }
        Ok(outcomes)
    }

    /// Attaches (or adopts) the backstop on the host side of the veth `ifindex` (in this
    /// process's network namespace). Its entry must be written first: the program drops
    /// every frame of an interface without one.
    pub fn attach_backstop(&mut self, ifindex: u32) -> Result<LinkOutcome> {
        let interface = netns::interface_name(ifindex)
            .with_context(|| format!("backstop interface {ifindex}: it is gone"))?;
        let pin = self.pin_dir.join("links").join(format!("tc{ifindex}"));
        self.pin_link(&pin, BACKSTOP_PROGRAM, |program| {
            let Program::SchedClassifier(p) = program else {
                bail!("program {BACKSTOP_PROGRAM} has an unexpected type");
            };
            // First in the tcx chain: an earlier program returning "pass" would skip it.
            let order = TcAttachOptions::TcxOrder(LinkOrder::first());
            let id = p
                .attach_with_options(&interface, TcAttachType::Ingress, order)
                .with_context(|| format!("attaching the backstop to {interface}"))?;
            Ok(FdLink::try_from(p.take_link(id)?)?)
        })
    }

    /// Attaches (or adopts) the cgroup_mkdir classifier, which gives every new container
    /// cgroup a policy before a process can join it, whether the agent runs or not.
    pub fn attach_classifier(&mut self) -> Result<LinkOutcome> {
        ensure_mounted(Path::new(TRACEFS), "tracefs", TRACEFS_MAGIC)?;
        let pin = self.pin_dir.join("links").join("tp_cgroup_mkdir");
        self.pin_link(&pin, CLASSIFIER_PROGRAM, |program| {
            let Program::TracePoint(p) = program else {
                bail!("program {CLASSIFIER_PROGRAM} has an unexpected type");
            };
            let id = p
                .attach("cgroup", "cgroup_mkdir")
                .context("attaching to the cgroup:cgroup_mkdir tracepoint")?;
            Ok(FdLink::try_from(p.take_link(id)?)?)
        })
    }

    /// Detaches the classifier, if a previous run pinned one.
    pub fn detach_classifier(&mut self) -> Result<()> {
        remove_pin(&self.pin_dir.join("links").join("tp_cgroup_mkdir"))
    }

    /// Removes the backstop from `ifindex`: the link first, then its entry (an attached
    /// backstop without an entry drops everything).
    pub fn detach_backstop(&mut self, ifindex: u32) -> Result<()> {
        let pin = self.pin_dir.join("links").join(format!("tc{ifindex}"));
        remove_pin(&pin)?;
        self.maps.remove_backstop(ifindex)
    }

    /// Pins a link of program `name` at `pin`, adopting or replacing what is there.
    fn pin_link(
        &mut self,
        pin: &Path,
        name: &str,
        attach: impl FnOnce(&mut Program) -> Result<FdLink>,
    ) -> Result<LinkOutcome> {
        let program = program(&mut self.ebpf, name)?;
        load_program(program).with_context(|| format!("loading program {name}"))?;
        let ours = ProgramIdentity::of(&program.info()?)?;
        // Same instructions on the same (pinned) maps: leave the running link alone.
        let outcome = match pinned_program(pin)? {
            Some(theirs) if theirs == ours => return Ok(LinkOutcome::Adopted),
            Some(_) => LinkOutcome::Replaced,
            None => LinkOutcome::Attached,
        };
        // bpffs refuses names with a dot.
        let mut staging = pin.as_os_str().to_owned();
        staging.push("_staging");
        let staging = PathBuf::from(staging);
        remove_pin(&staging)?;
        let link = attach(program)?;
        link.pin(&staging)
            .with_context(|| format!("pinning link at {}", staging.display()))?;
        // Atomic: the old pin (if any) is replaced, dropping the old link only now.
        fs::rename(&staging, pin)
            .with_context(|| format!("renaming link pin to {}", pin.display()))?;
        Ok(outcome)
    }

    /// Detaches the cgroup links pinned by an earlier configuration for cgroups not in
    /// `keep`. Call only once every protected cgroup is known to lie under a kept one.
    pub fn detach_other_cgroups(&mut self, keep: &[Cgroup]) -> Result<Vec<PathBuf>> {
        let mut detached = Vec::new();
        for entry in fs::read_dir(self.pin_dir.join("links"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_prefix("cg")
                .and_then(|rest| rest.split('_').next())
            else {
                continue;
            };
            if !keep.iter().any(|c| c.id.to_string() == id) {
                remove_pin(&entry.path())?;
                detached.push(entry.path());
            }
        }
        Ok(detached)
    }

    /// The cgroups the programs are attached at, as pinned.
    pub fn attach_cgroups(&self) -> Result<Vec<u64>> {
        pins::attach_cgroup_ids(&self.pin_dir)
    }

    /// Pinned backstop links and their interface index (none for a datapath loaded unpinned).
    pub fn pinned_backstops(&self) -> Result<Vec<u32>> {
        let mut found = Vec::new();
        let links = self.pin_dir.join("links");
        if !links.exists() {
            return Ok(found);
        }
        for entry in fs::read_dir(&links)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(ifindex) = name.strip_prefix("tc").and_then(|i| i.parse().ok()) {
                found.push(ifindex);
            }
        }
        Ok(found)
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))
}

fn load_program(program: &mut Program) -> Result<()> {
    if program.fd().is_ok() {
        return Ok(());
    }
    match program {
        Program::CgroupSkb(p) => p.load()?,
        Program::CgroupSockAddr(p) => p.load()?,
        Program::SchedClassifier(p) => p.load()?,
        Program::TracePoint(p) => p.load()?,
        _ => bail!("unexpected program type in netguard's eBPF object"),
    }
    Ok(())
}
