//! cgroup v2: finding the unified hierarchy and naming cgroups by id.

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo): mount one, e.g. \
         `mount -t cgroup2 none /sys/fs/cgroup`"
    )]
    NoCgroup2,
    #[error("cgroup {path} is not usable: {source}: create it or fix the path")]
    Unusable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not inside the cgroup2 hierarchy mounted at {root}: pass a path under it")]
    NotCgroup2 { path: PathBuf, root: PathBuf },
}

/// A cgroup v2 id: the inode number of its directory, as `bpf_skb_cgroup_id` reports it.
pub type CgroupId = u64;

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on pure v2 hosts, `/sys/fs/cgroup/unified`
/// on hybrid ones. Read from mountinfo rather than assumed.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").map_err(|_| CgroupError::NoCgroup2)?;
    mountinfo
        .lines()
        .filter_map(|line| {
            // "... mount_point options - fstype source super_options"
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
        })
        .min_by_key(|path| path.components().count())
        .ok_or(CgroupError::NoCgroup2)
}

fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\134", "\\")
}

/// A cgroup given by path: absolute under the cgroup2 mount, or relative to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub path: PathBuf,
    pub id: CgroupId,
}

impl Cgroup {
    pub fn resolve(root: &Path, path: &Path) -> Result<Self, CgroupError> {
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            root.join(path)
        };
        if !path.starts_with(root) {
            return Err(CgroupError::NotCgroup2 {
                path,
                root: root.to_path_buf(),
            });
        }
        let metadata = fs::metadata(path.join("cgroup.procs")).and_then(|_| fs::metadata(&path));
        match metadata {
            Ok(metadata) => Ok(Self {
                id: metadata.ino(),
                path,
            }),
            Err(source) => Err(CgroupError::Unusable { path, source }),
        }
    }
}
