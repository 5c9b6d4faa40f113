//! Zero-leak container start: when a container's cgroup is created, give it a policy before
//! any process can be in it. The tracepoint `cgroup:cgroup_mkdir` carries the new cgroup's
//! id and path; a Docker container's cgroup is named by its id (`.../<64 hex>` with the
//! cgroupfs driver, `.../docker-<64 hex>.scope` with systemd). The id is looked up among the
//! containers the agent registered (from their labels, at create); an unknown container is
//! `unclassified`: everything external is blocked until the agent has classified it.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_probe_read_kernel_str_bytes, programs::TracePointContext,
};
use aya_log_ebpf::{error, info};
use netguard_common::{CONTAINER_ID_LEN, CgroupPolicy, ContainerKey, PATH_SCRATCH_LEN};

use crate::maps::{CONTAINERS, PATH_SCRATCH, POLICY};

/// Record layout of `cgroup:cgroup_mkdir` (events/cgroup/cgroup_mkdir/format).
const ROOT_OFFSET: usize = 8;
const ID_OFFSET: usize = 16;
const PATH_LOC_OFFSET: usize = 24;
/// Hierarchy id of cgroup v2 (the default hierarchy).
const CGROUP2_HIERARCHY: i32 = 0;

const SCOPE_PREFIX: &[u8; 7] = b"docker-";
const SCOPE_SUFFIX: &[u8; 6] = b".scope";
const MASK: usize = PATH_SCRATCH_LEN - 1;

/// Gives the new cgroup of a container its policy, and says so in the agent's log (a rare
/// event: once per container start).
pub fn classify_new_cgroup(ctx: &TracePointContext) {
    let Ok(Some((cgroup, key, policy))) = container_policy(ctx) else {
        return;
    };
    let id = short_id(&key);
    let kind = if policy.is_unclassified() {
        "held (unclassified) until the agent classifies it"
    } else if policy.is_protected() {
        "protected"
    } else {
        "counted only"
    };
    match POLICY.insert(cgroup, policy, 0) {
        Ok(()) => info!(ctx, "cgroup {} of container {}: {}", cgroup, id, kind),
        Err(errno) => error!(
            ctx,
            "cgroup {} of container {}: writing its policy failed ({}): it is not enforced \
             until the agent classifies it",
            cgroup,
            id,
            errno
        ),
    }
}

/// The first 12 characters of the id, as Docker shows it.
#[inline(always)]
fn short_id(key: &ContainerKey) -> &str {
    // SAFETY: container_policy accepted only lowercase hex digits.
    unsafe { core::str::from_utf8_unchecked(&key.id[..12]) }
}

/// A new container cgroup, its container and the policy it gets; `None` for any other cgroup.
#[inline(always)]
fn container_policy(
    ctx: &TracePointContext,
) -> Result<Option<(u64, ContainerKey, CgroupPolicy)>, i64> {
    // SAFETY: fixed offsets of this tracepoint's record.
    let root: i32 = unsafe { ctx.read_at(ROOT_OFFSET)? };
    if root != CGROUP2_HIERARCHY {
        return Ok(None);
    }
    let cgroup: u64 = unsafe { ctx.read_at(ID_OFFSET)? };
    let path_loc: u32 = unsafe { ctx.read_at(PATH_LOC_OFFSET)? };
    let buf = PATH_SCRATCH.get_ptr_mut(0).ok_or(-1i64)?;
    // SAFETY: per-CPU scratch, used only while this program runs on this CPU.
    let buf: &mut [u8; PATH_SCRATCH_LEN] = unsafe { &mut *buf };
    let path = unsafe {
        let src = (ctx.as_ptr() as *const u8).add((path_loc & 0xffff) as usize);
        bpf_probe_read_kernel_str_bytes(src, buf).map_err(i64::from)?
    };
    let len = path.len();
    let Some(start) = container_id_start(buf, len) else {
        return Ok(None);
    };
    let mut key = ContainerKey {
        id: [0; CONTAINER_ID_LEN],
    };
    for i in 0..CONTAINER_ID_LEN {
        let c = buf[(start + i) & MASK];
        if !c.is_ascii_hexdigit() || c.is_ascii_uppercase() {
            return Ok(None);
        }
        key.id[i] = c;
    }
    // SAFETY: the value is copied out at once.
    let policy = unsafe { CONTAINERS.get(key) }
        .copied()
        .unwrap_or(CgroupPolicy::UNCLASSIFIED);
    Ok(Some((cgroup, key, policy)))
}

/// Where the container id starts in the path of `len` bytes, if it names a container.
#[inline(always)]
fn container_id_start(buf: &[u8; PATH_SCRATCH_LEN], len: usize) -> Option<usize> {
    let scoped = SCOPE_PREFIX.len() + CONTAINER_ID_LEN + SCOPE_SUFFIX.len();
    if len > scoped && len < PATH_SCRATCH_LEN && ends_with(buf, len, SCOPE_SUFFIX) {
        let prefix_at = len - scoped;
        for (i, b) in SCOPE_PREFIX.iter().enumerate() {
            if buf[(prefix_at + i) & MASK] != *b {
                return None;
            }
        }
        return Some(prefix_at + SCOPE_PREFIX.len());
    }
    if len > CONTAINER_ID_LEN
        && len < PATH_SCRATCH_LEN
        && buf[(len - CONTAINER_ID_LEN - 1) & MASK] == b'/'
    {
        return Some(len - CONTAINER_ID_LEN);
    }
    None
}

#[inline(always)]
fn ends_with(buf: &[u8; PATH_SCRATCH_LEN], len: usize, suffix: &[u8; 6]) -> bool {
    let at = len - suffix.len();
    suffix
        .iter()
        .enumerate()
        .all(|(i, b)| buf[(at + i) & MASK] == *b)
}
