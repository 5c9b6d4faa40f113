//! Zero-leak container start: when a container's cgroup is created, give it a policy before
//! any process can be in it. The tracepoint `cgroup:cgroup_mkdir` carries the new cgroup's
//! id and path; a Docker container's cgroup is named by its id (`.../<64 hex>` with the
//! cgroupfs driver, `.../docker-<64 hex>.scope` with systemd). The id is looked up among the
//! containers the agent registered (from their labels, at create); an unknown container is
//! `unclassified`: everything external is blocked until the agent has classified it.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_probe_read_kernel_str_bytes, programs::TracePointContext,
};
use netguard_common::{CONTAINER_ID_LEN, CgroupPolicy, ContainerKey, PATH_SCRATCH_LEN};

use crate::{CONTAINERS, PATH_SCRATCH, POLICY};

/// Record layout of `cgroup:cgroup_mkdir` (events/cgroup/cgroup_mkdir/format).
const ROOT_OFFSET: usize = 8;
const ID_OFFSET: usize = 16;
const PATH_LOC_OFFSET: usize = 24;
/// Hierarchy id of cgroup v2 (the default hierarchy).
const CGROUP2_HIERARCHY: i32 = 0;

const SCOPE_PREFIX: &[u8; 7] = b"docker-";
const SCOPE_SUFFIX: &[u8; 6] = b".scope";
const MASK: usize = PATH_SCRATCH_LEN - 1;

pub fn classify_new_cgroup(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY: fixed offsets of this tracepoint's record.
    let root: i32 = unsafe { ctx.read_at(ROOT_OFFSET)? };
    if root != CGROUP2_HIERARCHY {
        return Ok(());
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
        return Ok(());
    };
    let mut key = ContainerKey {
        id: [0; CONTAINER_ID_LEN],
    };
    for i in 0..CONTAINER_ID_LEN {
        let c = buf[(start + i) & MASK];
        if !c.is_ascii_hexdigit() || c.is_ascii_uppercase() {
            return Ok(());
        }
        key.id[i] = c;
    }
    // SAFETY: the value is copied out at once.
    let policy = unsafe { CONTAINERS.get(key) }
        .copied()
        .unwrap_or(CgroupPolicy::UNCLASSIFIED);
    POLICY.insert(cgroup, policy, 0).map_err(i64::from)
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
