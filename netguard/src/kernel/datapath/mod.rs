//! Loading the kernel programs, pinning them, and adopting what a previous agent pinned.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/netguard`):
//! - `NG_*`: the maps (see `netguard_common::maps`), reused by every agent start;
//! - `links/cg<cgroup id>_<program>`: cgroup links, one per program per attach cgroup;
//! - `links/tc<netns cookie>_<ifindex>`: backstop links, on TC egress of the interfaces of a
//!   guarded network namespace;
//! - `links/tp_cgroup_mkdir`: the classifier;
//! - `links/tp_sys_enter`: the raw-socket guard (stops a protected process that opens
//!   an AF_PACKET socket before its namespace's backstop is in place).
//!
//! Links are pinned, so enforcement outlives the agent (exit, SIGTERM, kill -9). A new agent
//! adopts a pinned link whose program is identical to its own and leaves it attached; a
//! different program is attached next to the old one and then atomically renamed over its
//! pin, which detaches the old link: there is never a moment without a program.

use std::{
    fs,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Program, SchedClassifier,
        links::{FdLink, PinnedLink},
    },
};
use netguard_common::maps as map_names;

use super::{
    log::KernelLog,
    maps::Maps,
    pins::{self, ProgramIdentity, ensure_bpffs, pinned_program, remove_pin},
};
use crate::{EBPF_OBJECT, cgroup::Cgroup, domain::CgroupId, sys};

mod backstop;
mod tracepoints;

/// The cgroup programs, each attached to every attach cgroup.
pub(super) const CGROUP_PROGRAMS: [&str; 9] = [
    "ng_egress",
    "ng_ingress",
    "ng_connect4",
    "ng_connect6",
    "ng_sendmsg4",
    "ng_sendmsg6",
    "ng_recvmsg4",
    "ng_recvmsg6",
    "ng_setsockopt",
];
/// The raw-socket guard, on the tracepoint every system call passes.
const SOCK_GUARD_PROGRAM: &str = "ng_sock_create";
const SOCK_GUARD_TRACEPOINT: &str = "sys_enter";
/// Its link's pin, under `links/`.
pub(super) const SOCK_GUARD_PIN: &str = "tp_sys_enter";
/// The kernel's BTF, for the classifier's tracepoint and the layout it reads.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";
const BACKSTOP_PROGRAM: &str = "ng_backstop";
const BACKSTOP_L3_PROGRAM: &str = "ng_backstop_l3";
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
        load_program(program, "ng_egress")?;
        Ok(program.try_into()?)
    }

    /// The loaded backstop program (for Ethernet frames, or for packets without a link
    /// header), for `BPF_PROG_TEST_RUN`.
    pub fn backstop_program(&mut self, ethernet: bool) -> Result<&mut SchedClassifier> {
        let name = if ethernet {
            BACKSTOP_PROGRAM
        } else {
            BACKSTOP_L3_PROGRAM
        };
        let program = program(&mut self.ebpf, name)?;
        load_program(program, name)?;
        Ok(program.try_into()?)
    }

    /// Attaches (or adopts) the classifier (with the cgroup2 root's id, when following
    /// Docker) and every cgroup program on each of `cgroups`, as one step: if any of it
    /// fails, what this call newly attached is detached again, so a failed start never
    /// leaves the classifier holding containers without the programs that enforce, or the
    /// reverse. Links adopted or replaced from an earlier agent stay.
    pub fn attach_enforcement(
        &mut self,
        classifier: Option<CgroupId>,
        cgroups: &[Cgroup],
    ) -> Result<Vec<(String, LinkOutcome)>> {
        let mut new_pins = Vec::new();
        let mut outcomes = Vec::new();
        let mut attach = || -> Result<()> {
            let outcome = self.attach_sock_guard()?;
            if outcome == LinkOutcome::Attached {
                new_pins.push(self.pin_dir.join("links").join(SOCK_GUARD_PIN));
            }
            outcomes.push((SOCK_GUARD_PROGRAM.to_string(), outcome));
            if let Some(root) = classifier {
                let outcome = self.attach_classifier(root)?;
                if outcome == LinkOutcome::Attached {
                    new_pins.push(self.pin_dir.join("links").join("tp_cgroup_mkdir"));
                }
                outcomes.push((CLASSIFIER_PROGRAM.to_string(), outcome));
            }
            for cgroup in cgroups {
                for (name, outcome) in self.attach_cgroup(cgroup, &mut new_pins)? {
                    outcomes.push((format!("{name} on {}", cgroup.path.display()), outcome));
                }
            }
            Ok(())
        };
        if let Err(error) = attach() {
            for pin in &new_pins {
                remove_pin(pin)?;
            }
            return Err(error.context(format!(
                "attaching the programs (the {} attached by this start were detached again)",
                new_pins.len()
            )));
        }
        Ok(outcomes)
    }

    /// Attaches (or adopts) every cgroup program on `cgroup`, which covers it and every
    /// cgroup created below it later; the pins of links it attaches anew go to `new_pins`.
    fn attach_cgroup(
        &mut self,
        cgroup: &Cgroup,
        new_pins: &mut Vec<PathBuf>,
    ) -> Result<Vec<(&'static str, LinkOutcome)>> {
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
                    // aya's link of this type cannot be pinned: made with the syscall.
                    Program::CgroupSockopt(p) => raw_cgroup_link(p.fd()?.as_fd(), &file, &pin)?,
                    _ => bail!("program {name} has an unexpected type"),
                };
                Ok(link)
            })?;
            if outcome == LinkOutcome::Attached {
                new_pins.push(pin);
            }
            outcomes.push((name, outcome));
        }
        Ok(outcomes)
    }

    /// Pins a link of program `name` at `pin`, adopting or replacing what is there.
    fn pin_link(
        &mut self,
        pin: &Path,
        name: &str,
        attach: impl FnOnce(&mut Program) -> Result<FdLink>,
    ) -> Result<LinkOutcome> {
        let program = program(&mut self.ebpf, name)?;
        load_program(program, name).with_context(|| format!("loading program {name}"))?;
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
        if let Err(error) = fs::rename(&staging, pin) {
            // Not left attached under a name nobody looks for.
            let _ = remove_pin(&staging);
            return Err(error).with_context(|| format!("renaming link pin to {}", pin.display()));
        }
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

    /// Puts back the policy keys the classifier gave up while the map was full, and says so
    /// if it still is.
    pub fn restore_reserves(&mut self) {
        match self.maps.restore_policy_reserves() {
            Ok(0) => {}
            Ok(missing) => tracing::error!(
                missing,
                "the policy map is full: {missing} of {} reserved entries could not be put \
                 back; a container started while it stays full may not be enforced (`netguard \
                 status` shows it UNPROTECTED)",
                netguard_common::RESERVED_POLICY_KEYS
            ),
            Err(error) => tracing::error!("putting back the policy map's reserves: {error:#}"),
        }
    }
}

/// `BPF_CGROUP_SETSOCKOPT`, the attach type of the setsockopt program.
const BPF_CGROUP_SETSOCKOPT: u32 = 22;

/// A cgroup link made with the syscall, as an [`FdLink`] (through a pin beside `pin`, removed
/// at once: the returned link holds it).
fn raw_cgroup_link(program: BorrowedFd<'_>, cgroup: &fs::File, pin: &Path) -> Result<FdLink> {
    let link = sys::bpf_link_create(program, cgroup.as_fd(), BPF_CGROUP_SETSOCKOPT)
        .context("creating the setsockopt link")?;
    let mut raw = pin.as_os_str().to_owned();
    raw.push("_raw");
    let raw = PathBuf::from(raw);
    remove_pin(&raw)?;
    sys::bpf_obj_pin(link.as_fd(), &raw).context("pinning the setsockopt link")?;
    let opened = PinnedLink::from_pin(&raw).context("opening the setsockopt link");
    remove_pin(&raw)?;
    Ok(FdLink::from(opened?))
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))
}

fn load_program(program: &mut Program, name: &str) -> Result<()> {
    if program.fd().is_ok() {
        return Ok(());
    }
    match program {
        Program::CgroupSkb(p) => p.load()?,
        Program::CgroupSockAddr(p) => p.load()?,
        Program::SchedClassifier(p) => p.load()?,
        Program::CgroupSockopt(p) => p.load()?,
        Program::BtfTracePoint(p) => {
            let tracepoint = if name == SOCK_GUARD_PROGRAM {
                SOCK_GUARD_TRACEPOINT
            } else {
                "cgroup_mkdir"
            };
            p.load(tracepoint, &Btf::from_sys_fs()?)?
        }
        _ => bail!("unexpected program type in netguard's eBPF object"),
    }
    Ok(())
}
