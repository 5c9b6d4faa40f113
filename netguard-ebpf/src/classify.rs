//! Zero-leak container start: when a container's cgroup is created, give it a policy before
//! any process can be in it, whether the agent runs or not.
//!
//! A BTF tracepoint on `cgroup_mkdir` gets the new `struct cgroup`; the offsets of what it
//! reads come from the running kernel's BTF, written by the agent (`NG_KERNEL_LAYOUT`). Only
//! cgroups that root created are classified (container engines run as root; a user with a
//! delegated subtree cannot fill the policy map), by their own name — `<64 hex>` with the
//! cgroupfs driver, `docker-<64 hex>.scope` with systemd — whatever the length of their path.
//! A registered container gets its registered policy; any other is held (`unclassified`:
//! everything external blocked) until the agent classifies it. When the policy map is full, a
//! reserved key is given up for it.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    programs::BtfTracePointContext,
};
use aya_log_ebpf::{error, info, warn};
use netguard_common::{
    CONTAINER_ID_LEN, CgroupOwner, CgroupPolicy, ContainerKey, KernelLayout, NAME_SCRATCH_LEN,
    OWNER_NAME_LEN, RESERVED_POLICY_KEYS, container_id_start, reserved_policy_key,
};

use crate::maps::{CONTAINERS, KERNEL_LAYOUT, NAME_SCRATCH, OWNERS, POLICY};

/// Hierarchy id of cgroup v2 (the default hierarchy).
const CGROUP2_HIERARCHY: i32 = 0;
const MASK: usize = NAME_SCRATCH_LEN - 1;

/// Gives the new cgroup of a container its policy, and says so in the agent's log (a rare
/// event: once per container start).
pub fn classify_new_cgroup(ctx: &BtfTracePointContext) {
    let Ok(Some((cgroup, key))) = new_container(ctx) else {
        return;
    };
    // Whose it is, for naming its blocked flows after it is gone (best effort: the agent
    // adds the name).
    let owner = CgroupOwner {
        id: key.id,
        name: [0; OWNER_NAME_LEN],
    };
    let _ = OWNERS.insert(cgroup, owner, 0);
    // SAFETY: the value is copied out at once.
    let registered = unsafe { CONTAINERS.get(key) }.copied();
    let policy = registered.unwrap_or(CgroupPolicy::UNCLASSIFIED);
    let id = short_id(&key);
    let kind = if registered.is_none() {
        "held (unclassified) until the agent classifies it"
    } else if policy.is_protected() {
        "protected"
    } else {
        "counted only"
    };
    if POLICY.insert(cgroup, policy, 0).is_ok() {
        info!(ctx, "cgroup {} of container {}: {}", cgroup, id, kind);
        return;
    }
    // Full: give up a reserved key for it (the agent puts reserves back).
    for i in 0..RESERVED_POLICY_KEYS {
        if POLICY.remove(reserved_policy_key(i)).is_ok() {
            match POLICY.insert(cgroup, policy, 0) {
                Ok(()) => warn!(
                    ctx,
                    "cgroup {} of container {}: {} (the policy map is full: a reserve was used)",
                    cgroup,
                    id,
                    kind
                ),
                Err(errno) => error!(
                    ctx,
                    "cgroup {} of container {}: writing its policy failed ({}): it is not \
                     enforced until the agent classifies it",
                    cgroup,
                    id,
                    errno
                ),
            }
            return;
        }
    }
    error!(
        ctx,
        "cgroup {} of container {}: the policy map is full and no reserve is left: it is not \
         enforced until the agent classifies it",
        cgroup,
        id
    );
}

/// The first 12 characters of the id, as Docker shows it.
#[inline(always)]
fn short_id(key: &ContainerKey) -> &str {
    // SAFETY: container_id_start accepted only lowercase hex digits.
    unsafe { core::str::from_utf8_unchecked(&key.id[..12]) }
}

/// Reads a `T` at `base + offset` of kernel memory.
#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Result<T, i64> {
    // SAFETY: bpf_probe_read_kernel copes with any address (a fault is an error).
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.map_err(i64::from)
}

/// The new cgroup's id and container, if it is a container cgroup root created.
#[inline(always)]
fn new_container(ctx: &BtfTracePointContext) -> Result<Option<(u64, ContainerKey)>, i64> {
    let layout: KernelLayout = *KERNEL_LAYOUT.get(0).ok_or(-1i64)?;
    if layout.valid == 0 {
        return Ok(None);
    }
    let cgroup: u64 = ctx.arg(0);
    let root: u64 = read(cgroup, layout.cgroup_root)?;
    let hierarchy: i32 = read(root, layout.cgroup_root_hierarchy_id)?;
    if hierarchy != CGROUP2_HIERARCHY {
        return Ok(None);
    }
    let kn: u64 = read(cgroup, layout.cgroup_kn)?;
    // A cgroup a user created (in a delegated subtree) belongs to that user: not a
    // container engine's.
    let iattr: u64 = read(kn, layout.kernfs_node_iattr)?;
    if iattr != 0 {
        let owner: u32 = read(iattr, layout.kernfs_iattrs_uid)?;
        if owner != 0 {
            return Ok(None);
        }
    }
    let id: u64 = read(kn, layout.kernfs_node_id)?;
    let name: u64 = read(kn, layout.kernfs_node_name)?;
    let buf = NAME_SCRATCH.get_ptr_mut(0).ok_or(-1i64)?;
    // SAFETY: per-CPU scratch, used only while this program runs on this CPU.
    let buf: &mut [u8; NAME_SCRATCH_LEN] = unsafe { &mut *buf };
    // SAFETY: reads a NUL-terminated string of kernel memory into the buffer.
    let len = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, buf) }
        .map_err(i64::from)?
        .len();
    let Some(start) = container_id_start(buf, len) else {
        return Ok(None);
    };
    let mut key = ContainerKey {
        id: [0; CONTAINER_ID_LEN],
    };
    for i in 0..CONTAINER_ID_LEN {
        key.id[i] = buf[(start + i) & MASK];
    }
    Ok(Some((id, key)))
}
