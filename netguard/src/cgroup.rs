//! cgroup v2: finding the unified hierarchy, naming cgroups by id and by path, and finding a
//! container's cgroup from its process.

use std::{
    fs,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use thiserror::Error;

pub use crate::domain::CgroupId;
use crate::sys;

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

    /// Its path below the hierarchy's root, as `/a/b` (the root itself is `/`).
    pub fn relative(&self, root: &Path) -> String {
        relative_name(root, &self.path)
    }
}

fn relative_name(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .map_or_else(|_| path.to_path_buf(), |p| Path::new("/").join(p))
        .display()
        .to_string()
}

/// The cgroup v2 hierarchy, open, to ask about cgroups by id (cgroup ids are kernfs file
/// handles, so no walk of the tree is needed).
pub struct Hierarchy {
    root: PathBuf,
    dir: fs::File,
}

impl Hierarchy {
    pub fn open(root: &Path) -> Result<Self> {
        let dir = fs::File::open(root).with_context(|| format!("opening {}", root.display()))?;
        Ok(Self {
            root: root.to_path_buf(),
            dir,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the cgroup `id` still exists.
    pub fn exists(&self, id: CgroupId) -> Result<bool> {
        Ok(sys::open_cgroup_by_id(self.dir.as_fd(), id)
            .with_context(|| format!("asking whether cgroup {id} exists"))?
            .is_some())
    }

    /// Cgroups named like containers (`<64 hex>`, `docker-<64 hex>.scope`), found by walking
    /// the tree; at most `limit` directories are visited (a user's delegated subtree may be
    /// huge), so the answer may be partial, which [`Found::complete`] says.
    pub fn container_like(&self, limit: usize) -> Found {
        let mut found = Found {
            cgroups: Vec::new(),
            complete: true,
        };
        let mut pending = vec![self.root.clone()];
        let mut visited = 0;
        while let Some(dir) = pending.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                visited += 1;
                if visited > limit {
                    found.complete = false;
                    return found;
                }
                let path = entry.path();
                if let Some(container) = container_of_path(&entry.file_name().to_string_lossy())
                    && let Ok(metadata) = entry.metadata()
                {
                    found.cgroups.push(ContainerLike {
                        id: metadata.ino(),
                        path: relative_name(&self.root, &path),
                        owner: metadata.uid(),
                        container,
                    });
                }
                pending.push(path);
            }
        }
        found
    }

    /// Freezes (or thaws) cgroup `id` and everything below it through cgroup v2's freezer:
    /// its processes stop, so they send nothing. `Ok(false)` if the cgroup is gone.
    pub fn freeze(&self, id: CgroupId, frozen: bool) -> Result<bool> {
        let Some(name) = self.name_of(id)? else {
            return Ok(false);
        };
        let file = self
            .root
            .join(name.trim_start_matches('/'))
            .join("cgroup.freeze");
        fs::write(&file, if frozen { "1" } else { "0" })
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(true)
    }

    /// The path of cgroup `id` below the root (`/docker/<id>`), if it still exists.
    pub fn name_of(&self, id: CgroupId) -> Result<Option<String>> {
        let Some(fd) = sys::open_cgroup_by_id(self.dir.as_fd(), id)? else {
            return Ok(None);
        };
        Ok(Some(relative_name(&self.root, &sys::path_of(fd)?)))
    }
}

/// What [`Hierarchy::container_like`] found.
#[derive(Debug, Default)]
pub struct Found {
    pub cgroups: Vec<ContainerLike>,
    /// Whether the whole tree was walked.
    pub complete: bool,
}

/// A cgroup named like a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLike {
    pub id: CgroupId,
    /// Below the root (`/docker/<id>`).
    pub path: String,
    /// The user that created it (root for container engines that run as root).
    pub owner: u32,
    pub container: crate::domain::ContainerId,
}

/// The id of the cgroup v2 process `pid` is in now; `None` once it is gone.
pub fn cgroup_of_process(root: &Path, pid: u32) -> Option<CgroupId> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let relative = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    let path = root.join(relative.trim_start_matches('/'));
    fs::metadata(path).ok().map(|m| m.ino())
}

/// The cgroup v2 a process is in, from `/proc/<pid>/cgroup` (`0::<path>`), which names it
/// the same way whatever the driver (cgroupfs or systemd) and parent.
/// When the container's init moved into a child cgroup of its own (systemd or Docker inside
/// the container), the container's cgroup is the ancestor named after `container`.
pub fn process_cgroup(root: &Path, pid: u32, container: &str) -> Result<Cgroup> {
    let file = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
    let relative = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .with_context(|| format!("{file} has no cgroup v2 line"))?;
    let chosen = container_cgroup(relative, container);
    let path = root.join(chosen.strip_prefix("/").unwrap_or(&chosen));
    Ok(Cgroup::resolve(root, &path)?)
}

/// The container's own cgroup within a process's cgroup path: the deepest component named
/// `<id>` or `docker-<id>.scope`, else the whole path.
fn container_cgroup(relative: &str, container: &str) -> PathBuf {
    let mut path = PathBuf::from("/");
    let mut named = None;
    for component in Path::new(relative).components().skip(1) {
        path.push(component);
        let name = component.as_os_str().to_string_lossy();
        if name == container || name == format!("docker-{container}.scope") {
            named = Some(path.clone());
        }
    }
    named.unwrap_or(path)
}

/// The container id a cgroup path names, if its last component is `<id>` or
/// `docker-<id>.scope` (cgroupfs and systemd drivers).
pub fn container_of_path(path: &str) -> Option<crate::domain::ContainerId> {
    let last = path.rsplit('/').next()?;
    let id = last
        .strip_prefix("docker-")
        .and_then(|rest| rest.strip_suffix(".scope"))
        .unwrap_or(last);
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_finds_container_names_at_any_depth_within_its_limit() {
        let root = std::env::temp_dir().join(format!("ng-walk-{}", std::process::id()));
        let (a, b) = ("ab".repeat(32), "cd".repeat(32));
        let deep = root.join("x/y/z").join(format!("docker-{b}.scope"));
        fs::create_dir_all(&deep).unwrap();
        fs::create_dir_all(root.join("docker").join(&a)).unwrap();
        fs::create_dir_all(root.join("docker/not-a-container")).unwrap();
        fs::write(root.join("docker").join("c".repeat(64)), "a file").unwrap();
        let hierarchy = Hierarchy::open(&root).unwrap();

        let found = hierarchy.container_like(100);
        let mut paths: Vec<String> = found.cgroups.iter().map(|c| c.path.clone()).collect();
        paths.sort();
        assert_eq!(
            paths,
            [format!("/docker/{a}"), format!("/x/y/z/docker-{b}.scope")]
        );
        assert!(found.complete);
        let own_uid = fs::metadata(&root).unwrap().uid();
        assert!(found.cgroups.iter().all(|c| c.owner == own_uid));
        let id_of_a = fs::metadata(root.join("docker").join(&a)).unwrap().ino();
        assert!(
            found
                .cgroups
                .iter()
                .any(|c| c.id == id_of_a && c.container.to_string() == a)
        );

        let partial = hierarchy.container_like(3);
        assert!(!partial.complete);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_container_cgroup_is_the_one_named_after_it() {
        let id = "ab".repeat(32);
        let cases = [
            (format!("/docker/{id}"), format!("/docker/{id}")),
            (format!("/docker/{id}/init"), format!("/docker/{id}")),
            (
                format!("/system.slice/docker-{id}.scope"),
                format!("/system.slice/docker-{id}.scope"),
            ),
            (
                format!("/my.slice/docker-{id}.scope/init.scope"),
                format!("/my.slice/docker-{id}.scope"),
            ),
            ("/elsewhere/x".to_string(), "/elsewhere/x".to_string()),
        ];
        for (from, want) in cases {
            assert_eq!(container_cgroup(&from, &id), PathBuf::from(want), "{from}");
        }
    }

    #[test]
    fn container_ids_are_read_from_both_drivers_names() {
        let id = "cd".repeat(32);
        for path in [
            format!("/docker/{id}"),
            format!("/system.slice/docker-{id}.scope"),
        ] {
            assert_eq!(container_of_path(&path).unwrap().as_str(), id, "{path}");
        }
        assert!(container_of_path("/system.slice/cron.service").is_none());
        assert!(container_of_path(&format!("/docker/{id}/init")).is_none());
    }
}
