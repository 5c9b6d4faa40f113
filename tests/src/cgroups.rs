//! Cgroups under a test-owned parent.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::{unique_tag, wait_for};

/// A cgroup the test created; removed (after killing what runs in it) on drop.
pub struct TestCgroup {
    pub path: PathBuf,
    children: Vec<PathBuf>,
}

impl TestCgroup {
    /// A new parent cgroup directly under the cgroup2 root, named `ngt<tag>`.
    pub fn new_parent() -> Self {
        let root = netguard::cgroup::cgroup2_root().expect("cgroup2 mounted");
        let path = root.join(format!("ngt{}", unique_tag()));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self {
            path,
            children: Vec::new(),
        }
    }

    /// A child cgroup (removed with the parent).
    pub fn child(&mut self, name: &str) -> PathBuf {
        let path = self.path.join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        self.children.push(path.clone());
        path
    }

    /// The cgroup id (inode) of `path`.
    pub fn id(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(path).expect("cgroup exists").ino()
    }
}

/// Kills everything in the cgroup and below (`cgroup.kill` covers the subtree), thaws it
/// (a frozen process cannot die), then removes the tree, deepest first.
fn kill_and_remove(path: &Path) {
    if !path.exists() {
        return;
    }
    let _ = fs::write(path.join("cgroup.freeze"), "0");
    let _ = fs::write(path.join("cgroup.kill"), "1");
    remove_tree(path);
}

fn remove_tree(path: &Path) {
    if let Ok(entries) = fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    wait_for(&format!("{} to empty", path.display()), || {
        fs::read_to_string(path.join("cgroup.procs")).map_or(true, |p| p.trim().is_empty())
    });
    let _ = fs::remove_dir(path);
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for child in self.children.iter().rev() {
            kill_and_remove(child);
        }
        kill_and_remove(&self.path);
    }
}

/// Moves this whole test process into a test cgroup (`ngt<tag>/member`) for the guard's
/// lifetime: verdict tests need `bpf_skb_cgroup_id` of their crafted packets to name a cgroup
/// they own, and an ancestor of it that is theirs too.
pub struct ProcessInCgroup {
    original: PathBuf,
    member: PathBuf,
    cgroup: TestCgroup,
}

impl ProcessInCgroup {
    pub fn enter() -> Self {
        let root = netguard::cgroup::cgroup2_root().expect("cgroup2 mounted");
        let own = fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
        let relative = own
            .lines()
            .find_map(|line| line.strip_prefix("0::"))
            .expect("a cgroup v2 line in /proc/self/cgroup");
        let original = root.join(relative.trim_start_matches('/'));
        let mut cgroup = TestCgroup::new_parent();
        let member = cgroup.child("member");
        fs::write(member.join("cgroup.procs"), std::process::id().to_string())
            .expect("moving the test process into its cgroup");
        Self {
            original,
            member,
            cgroup,
        }
    }

    /// The cgroup the process is in.
    pub fn cgroup_id(&self) -> u64 {
        TestCgroup::id(&self.member)
    }

    /// Its parent, also the test's.
    pub fn parent_id(&self) -> u64 {
        TestCgroup::id(&self.cgroup.path)
    }
}

impl Drop for ProcessInCgroup {
    fn drop(&mut self) {
        // Back out before the cgroup fixture kills what is left inside.
        fs::write(
            self.original.join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .expect("moving the test process back to its cgroup");
    }
}
