//! Where the running kernel keeps what the programs read of its structs (a new cgroup's name
//! and owner for the classifier, a task's network namespace and system-call ABI for the
//! raw-socket guard): offsets of a few struct members, from the kernel's own BTF
//! (`/sys/kernel/btf/vmlinux`). The programs read them from a map (`NG_KERNEL_LAYOUT`), so
//! one build serves every kernel layout.

use std::collections::HashMap;

use anyhow::{Context as _, Result, bail};
use netguard_common::KernelLayout;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// The `thread_info` member that says a 32-bit system call is running, and its bit.
#[cfg(target_arch = "x86_64")]
const COMPAT_FLAG: (&str, u32) = ("status", 0x2); // TS_COMPAT
#[cfg(target_arch = "aarch64")]
const COMPAT_FLAG: (&str, u32) = ("flags", 1 << 22); // TIF_32BIT
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const COMPAT_FLAG: (&str, u32) = ("flags", 0);

/// Members of one struct: name -> byte offset.
type Members = HashMap<String, u32>;

/// The struct members the classifier needs, from BTF data (`/sys/kernel/btf/vmlinux`).
pub fn kernel_layout(btf: &[u8]) -> Result<KernelLayout> {
    let structs = structs(
        btf,
        &[
            "cgroup",
            "kernfs_node",
            "kernfs_iattrs",
            "cgroup_root",
            "net",
            "task_struct",
            "nsproxy",
            "thread_info",
        ],
    )?;
    let member = |name: &str, candidates: &[&str]| -> Result<u32> {
        let members = structs
            .get(name)
            .with_context(|| format!("struct {name} not in the kernel's BTF"))?;
        candidates
            .iter()
            .find_map(|c| members.get(*c).copied())
            .with_context(|| format!("struct {name} has none of {candidates:?}"))
    };
    Ok(KernelLayout {
        cgroup_kn: member("cgroup", &["kn"])?,
        cgroup_root: member("cgroup", &["root"])?,
        kernfs_node_id: member("kernfs_node", &["id"])?,
        kernfs_node_name: member("kernfs_node", &["name"])?,
        kernfs_node_iattr: member("kernfs_node", &["iattr"])?,
        kernfs_iattrs_uid: member("kernfs_iattrs", &["ia_uid"])?,
        cgroup_root_hierarchy_id: member("cgroup_root", &["hierarchy_id"])?,
        net_cookie: member("net", &["net_cookie"])?,
        task_nsproxy: member("task_struct", &["nsproxy"])?,
        nsproxy_net_ns: member("nsproxy", &["net_ns"])?,
        compat_flag_offset: member("task_struct", &["thread_info"])?
            + member("thread_info", &[COMPAT_FLAG.0])?,
        compat_flag_mask: COMPAT_FLAG.1,
        _pad: 0,
        valid: 1,
        root_cgroup_id: 0,
    })
}

/// The named structs (or unions) of `btf` with their members' byte offsets.
fn structs(btf: &[u8], wanted: &[&str]) -> Result<HashMap<String, Members>> {
    let u16_at = |at: usize| -> Result<u16> {
        Ok(u16::from_le_bytes(
            btf.get(at..at + 2).context("BTF truncated")?.try_into()?,
        ))
    };
    let u32_at = |at: usize| -> Result<u32> {
        Ok(u32::from_le_bytes(
            btf.get(at..at + 4).context("BTF truncated")?.try_into()?,
        ))
    };
    if u16_at(0)? != BTF_MAGIC {
        bail!("not BTF data (or not little-endian)");
    }
    let header_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let types = header_len + type_off;
    let strings = header_len + str_off;
    let name_at = |offset: u32| -> String {
        let start = strings + offset as usize;
        let bytes = btf.get(start..).unwrap_or_default();
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    };
    let mut found = HashMap::new();
    let mut at = types;
    while at < types + type_len {
        let name = u32_at(at)?;
        let info = u32_at(at + 4)?;
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        let kind_flag = info >> 31 == 1;
        at += 12;
        let record = match kind {
            1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG: one u32
            3 => 12,                      // ARRAY
            4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
            6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
            2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF, modifiers, FUNC, FLOAT, TYPE_TAG
            other => bail!("unknown BTF kind {other}"),
        };
        if matches!(kind, KIND_STRUCT | KIND_UNION) {
            let struct_name = name_at(name);
            if wanted.contains(&struct_name.as_str()) && !found.contains_key(&struct_name) {
                let mut members = Members::new();
                for i in 0..vlen {
                    let member = at + 12 * i;
                    let offset = u32_at(member + 8)?;
                    // With kind_flag, the high byte is a bitfield size.
                    let bits = if kind_flag {
                        offset & 0x00ff_ffff
                    } else {
                        offset
                    };
                    members.insert(name_at(u32_at(member)?), bits / 8);
                }
                found.insert(struct_name, members);
            }
        }
        at += record;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with one struct `cgroup { kn @ 256; level @ 216 }` and a typedef.
    fn blob() -> Vec<u8> {
        let strings = b"\0cgroup\0kn\0level\0t\0".to_vec();
        let mut types = Vec::new();
        let push = |out: &mut Vec<u8>, words: &[u32]| {
            for w in words {
                out.extend_from_slice(&w.to_le_bytes());
            }
        };
        // [1] INT "t"(off 18), size 4, encoding
        push(&mut types, &[18, 1 << 24, 4, 32]);
        // [2] STRUCT "cgroup"(1) vlen 2, size 300: kn(8) @ 2048 bits, level(11) @ 1728 bits
        push(
            &mut types,
            &[1, (4 << 24) | 2, 300, 8, 1, 2048, 11, 1, 1728],
        );
        // [3] TYPEDEF "t" -> 1
        push(&mut types, &[18, 8 << 24, 1]);
        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        push(
            &mut out,
            &[
                24,
                0,
                types.len() as u32,
                types.len() as u32,
                strings.len() as u32,
            ],
        );
        out.extend(types);
        out.extend(strings);
        out
    }

    #[test]
    fn struct_members_are_found_by_name() {
        let found = structs(&blob(), &["cgroup"]).unwrap();
        assert_eq!(found["cgroup"]["kn"], 256);
        assert_eq!(found["cgroup"]["level"], 216);
        assert!(structs(&blob()[..30], &["cgroup"]).is_err(), "truncated");
        assert!(structs(b"\x00\x01", &["cgroup"]).is_err(), "not BTF");
    }

    #[test]
    fn the_running_kernel_has_every_member_the_classifier_reads() {
        let Ok(btf) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            return; // A kernel without BTF: `netguard doctor` says so.
        };
        let layout = kernel_layout(&btf).unwrap();
        assert_eq!(layout.valid, 1);
        assert!(layout.cgroup_root > layout.cgroup_kn, "{layout:?}");
        assert_ne!(layout.kernfs_node_name, layout.kernfs_node_id);
        assert_eq!(
            layout.kernfs_iattrs_uid, 0,
            "ia_uid leads struct kernfs_iattrs"
        );
        assert_ne!(
            layout.net_cookie, 0,
            "net_cookie is not struct net's first member"
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            layout.compat_flag_offset, 16,
            "thread_info leads task_struct; its status follows flags and syscall_work"
        );
    }
}
