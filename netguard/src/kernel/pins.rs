//! What lives under the pin directory, and the filesystems it needs: which program a pinned
//! link runs, removing pins, unloading everything.

use std::{fs, io, path::Path};

use anyhow::{Context as _, Result, bail};
use aya::programs::{
    ProgramInfo,
    links::{FdLink, PinnedLink},
    loaded_programs,
};
use tracing::info;

use crate::sys;

/// The filesystem magic of bpffs.
pub const BPFFS_MAGIC: i64 = 0xcafe_4a11;

/// The cgroups programs are attached at under `pin_dir` (from the link pins `cg<id>_<program>`).
pub fn attach_cgroup_ids(pin_dir: &Path) -> Result<Vec<u64>> {
    let links = pin_dir.join("links");
    let mut ids = Vec::new();
    for entry in fs::read_dir(&links).with_context(|| format!("listing {}", links.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(id) = name
            .strip_prefix("cg")
            .and_then(|rest| rest.split('_').next())
            .and_then(|id| id.parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Whether the link pinned at `pin` exists and is attached.
pub fn link_is_live(pin: &Path) -> bool {
    PinnedLink::from_pin(pin).is_ok_and(|link| FdLink::from(link).info().is_ok())
}

/// Whether the raw-socket guard is pinned and live.
pub fn has_sock_guard(pin_dir: &Path) -> bool {
    link_is_live(&pin_dir.join("links").join(super::datapath::SOCK_GUARD_PIN))
}

/// Whether every cgroup program is pinned, and live, on attach cgroup `id`.
pub fn has_every_cgroup_program(pin_dir: &Path, id: u64) -> bool {
    super::datapath::CGROUP_PROGRAMS
        .iter()
        .all(|program| link_is_live(&pin_dir.join("links").join(format!("cg{id}_{program}"))))
}

/// Removes everything pinned under `pin_dir`: links first (detaching the programs), then
/// the maps. Returns false if there was nothing to remove.
pub fn unload(pin_dir: &Path) -> Result<bool> {
    if !pin_dir.exists() {
        return Ok(false);
    }
    let links = pin_dir.join("links");
    if links.exists() {
        for entry in fs::read_dir(&links)? {
            remove_pin(&entry?.path())?;
        }
        fs::remove_dir(&links).with_context(|| format!("removing {}", links.display()))?;
    }
    for entry in fs::read_dir(pin_dir)? {
        let path = entry?.path();
        remove_pin(&path)?;
    }
    fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    Ok(true)
}

/// What makes two loaded programs interchangeable.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ProgramIdentity {
    /// Instruction digest (map references excluded).
    tag: u64,
    /// The maps it uses: a program on maps that are no longer the pinned ones is stale.
    map_ids: Vec<u32>,
}

impl ProgramIdentity {
    pub(super) fn of(info: &ProgramInfo) -> Result<Self> {
        Ok(Self {
            tag: info.tag(),
            map_ids: sorted_map_ids(info)?,
        })
    }
}

fn sorted_map_ids(info: &ProgramInfo) -> Result<Vec<u32>> {
    let mut ids = info.map_ids()?.unwrap_or_default();
    ids.sort_unstable();
    Ok(ids)
}

/// The program behind the link pinned at `pin`.
pub(super) fn pinned_program(pin: &Path) -> Result<Option<ProgramIdentity>> {
    if !pin.exists() {
        return Ok(None);
    }
    let link = FdLink::from(
        PinnedLink::from_pin(pin)
            .with_context(|| format!("opening pinned link {}", pin.display()))?,
    );
    let program_id = link.info()?.program_id();
    for info in loaded_programs() {
        let info = info?;
        if info.id() == program_id {
            return Ok(Some(ProgramIdentity::of(&info)?));
        }
    }
    Ok(None)
}

pub(super) fn remove_pin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("removing pin {}", path.display())),
    }
}

/// Makes sure the directory that will hold `pin_dir` is on a bpffs, mounting one at
/// `/sys/fs/bpf` when nothing is mounted there (as systemd does at boot).
pub(super) fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if is_fs(parent, BPFFS_MAGIC)? {
        return Ok(());
    }
    if parent != Path::new("/sys/fs/bpf") {
        bail!(
            "{} is not on a bpf filesystem: mount one (`mount -t bpf bpf {}`) or choose a \
             --pin-dir under /sys/fs/bpf",
            parent.display(),
            parent.display()
        );
    }
    ensure_mounted(parent, "bpf", BPFFS_MAGIC)
}

/// Mounts a `fstype` filesystem at `path` unless one is there.
pub(super) fn ensure_mounted(path: &Path, fstype: &str, magic: i64) -> Result<()> {
    if is_fs(path, magic)? {
        return Ok(());
    }
    info!("mounting {fstype} at {}", path.display());
    // The syscall, not mount(8): the container image has no other binary.
    let failed = match sys::mount(fstype, path) {
        Err(error) => Some(error.to_string()),
        Ok(()) => (!is_fs(path, magic)?).then(|| "mounted, but not found there".to_string()),
    };
    if let Some(error) = failed {
        bail!(
            "could not mount {fstype} at {}: {error}: mount it (`mount -t {fstype} {fstype} {}`)",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Whether a filesystem with `magic` is mounted at `path`.
pub fn is_fs(path: &Path, magic: i64) -> Result<bool> {
    Ok(
        sys::filesystem_magic(path).with_context(|| format!("statfs {}", path.display()))?
            == Some(magic),
    )
}
