//! The bench's own lab: a sender's and a receiver's network namespace joined by a veth
//! (198.18.200.0/24, routed nowhere else; a second sender's namespace joins the receiver's
//! by another), the sender's cgroups under a parent the bench makes, and the filter of each
//! case (netguard's agent with a configuration of its own, or iptables + ipset in a sender's
//! namespace). Everything is removed on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub const SENDER_NS: &str = "ngbench-tx";
pub const RECEIVER_NS: &str = "ngbench-rx";
pub const SENDER_ADDR: &str = "198.18.200.1";
pub const RECEIVER_ADDR: &str = "198.18.200.2";
/// A second sender's namespace, with a veth of its own to the receiver's
/// (198.18.201.0/24, routed nowhere else): filters set up in one sender's namespace cost
/// the other's packets nothing.
pub const SECOND_SENDER_NS: &str = "ngbench-tx2";
/// The second sender's address and the receiver's on that veth.
pub const SECOND_LINK: [&str; 2] = ["198.18.201.1", "198.18.201.2"];
/// The sender runs on this CPU (and the kernel's send path, and the veth's receive path,
/// with it); the receiver on the last one. Pinning takes the scheduler's moves out of the
/// figures.
pub const SENDER_CPU: usize = 0;
const PIN_DIR: &str = "/sys/fs/bpf/ngbench";
const PARENT: &str = "ngbench";
/// A cgroup beside the parent: its traffic never meets netguard's programs.
const OUTSIDE: &str = "ngbench-outside";

/// Runs `program args` and fails unless it succeeds.
pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("starting {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn receiver_cpu() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get() - 1)
}

/// The cgroup2 mount (`/sys/fs/cgroup` on pure v2 hosts, `/sys/fs/cgroup/unified` on hybrid).
fn cgroup2_root() -> Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mountinfo")?;
    mounts
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .context("no cgroup2 mount")
}

/// The namespaces, the veth and the cgroup parent.
pub struct Lab {
    pub root: PathBuf,
    pub parent: PathBuf,
}

impl Lab {
    pub fn new() -> Result<Self> {
        let root = cgroup2_root()?;
        let lab = Self {
            parent: root.join(PARENT),
            root,
        };
        lab.remove();
        for ns in [SENDER_NS, SECOND_SENDER_NS, RECEIVER_NS] {
            sh("ip", &["netns", "add", ns])?;
            sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        for (sender, receiver_link, [sender_addr, receiver_addr]) in [
            (SENDER_NS, "eth0", [SENDER_ADDR, RECEIVER_ADDR]),
            (SECOND_SENDER_NS, "eth1", SECOND_LINK),
        ] {
            sh(
                "ip",
                &[
                    "-n",
                    sender,
                    "link",
                    "add",
                    "eth0",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    receiver_link,
                    "netns",
                    RECEIVER_NS,
                ],
            )?;
            for (ns, link, address) in [
                (sender, "eth0", sender_addr),
                (RECEIVER_NS, receiver_link, receiver_addr),
            ] {
                let address = format!("{address}/24");
                sh("ip", &["-n", ns, "addr", "add", &address, "dev", link])?;
                sh("ip", &["-n", ns, "link", "set", link, "up"])?;
            }
        }
        fs::create_dir_all(&lab.parent)?;
        Ok(lab)
    }

    /// The sender's cgroup `depth` levels below the cgroup2 root (made if missing).
    pub fn sender_cgroup(&self, depth: usize) -> Result<PathBuf> {
        let mut path = self.parent.clone();
        for level in 1..depth.saturating_sub(1) {
            path = path.join(format!("l{level}"));
        }
        let path = path.join("sender");
        fs::create_dir_all(&path)?;
        Ok(path)
    }

    /// `count` sibling cgroups of the sender (other containers), made if missing.
    pub fn others(&self, count: usize) -> Result<Vec<PathBuf>> {
        (0..count)
            .map(|i| {
                let path = self.parent.join(format!("other{i}"));
                fs::create_dir_all(&path)?;
                Ok(path)
            })
            .collect()
    }

    /// A sender's cgroup outside the parent netguard attaches at (made if missing).
    pub fn outside_cgroup(&self) -> Result<PathBuf> {
        let path = self.root.join(OUTSIDE);
        fs::create_dir_all(&path)?;
        Ok(path)
    }

    /// A command run in the sender's namespace and `cgroup`, on the sender's CPU.
    pub fn sender(&self, cgroup: &Path, program: &str, args: &[&str]) -> Command {
        let cpu = SENDER_CPU.to_string();
        let mut all = vec!["netns", "exec", SENDER_NS, "taskset", "-c", &cpu, program];
        all.extend_from_slice(args);
        self.in_cgroup(cgroup, "ip", &all)
    }

    /// A command run in `cgroup`, in the host's namespace.
    pub fn in_cgroup(&self, cgroup: &Path, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "echo $$ > \"$0/cgroup.procs\" && shift && exec \"$@\"",
        ]);
        command.arg(cgroup).arg("-").arg(program).args(args);
        command
    }

    /// A daemon in the receiver's namespace (killed on drop of the child).
    pub fn receiver(&self, program: &str, args: &[&str]) -> Result<Child> {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                RECEIVER_NS,
                "taskset",
                "-c",
                &receiver_cpu().to_string(),
            ])
            .arg(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {program} in {RECEIVER_NS}"))
    }

    /// Path of `cgroup` below the cgroup2 root (as iptables and netguard take it).
    pub fn relative(&self, cgroup: &Path) -> String {
        cgroup
            .strip_prefix(&self.root)
            .unwrap_or(cgroup)
            .to_string_lossy()
            .into_owned()
    }

    fn remove(&self) {
        for ns in [SENDER_NS, SECOND_SENDER_NS, RECEIVER_NS] {
            let _ = sh("ip", &["netns", "del", ns]);
        }
        remove_tree(&self.parent);
        remove_tree(&self.root.join(OUTSIDE));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes a cgroup tree, deepest first (its processes have exited).
fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// netguard's agent for one case: attached at the bench's parent cgroup, no Docker, no
/// HTTP, its own pin directory; unloaded when dropped.
pub struct Agent {
    child: Child,
    netguard: PathBuf,
}

impl Agent {
    /// The agent with `extra` configuration; `docker`: following Docker.
    pub fn start(netguard: &Path, lab: &Lab, docker: bool, extra: &str) -> Result<Self> {
        let config = format!(
            "pin_dir = {PIN_DIR:?}\ndocker = {docker}\nlisten = \"off\"\nattach_cgroups = [{:?}]\n{extra}",
            lab.parent.display().to_string()
        );
        let path = std::env::temp_dir().join("ngbench-agent.toml");
        fs::write(&path, config)?;
        let log = fs::File::create(std::env::temp_dir().join("ngbench-agent.log"))?;
        let child = Command::new(netguard)
            .args(["run", "--config"])
            .arg(&path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        let agent = Self {
            child,
            netguard: netguard.to_path_buf(),
        };
        // Everything attached and every policy written once it logs "netguard ready".
        let deadline = Instant::now() + Duration::from_secs(120);
        let log_path = std::env::temp_dir().join("ngbench-agent.log");
        while !fs::read_to_string(&log_path)?.contains("netguard ready") {
            if Instant::now() > deadline {
                bail!(
                    "the agent was not ready within 2 minutes: see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(&self.netguard)
            .args(["unload", "--pin-dir", PIN_DIR])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
