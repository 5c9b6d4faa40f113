//! Real Docker in the lab: containers from a locally built image (`FROM scratch`: busybox
//! and the static ng-probe), under a cgroup parent the test owns, on the default bridge.
//! The root namespace reaches the lab's internet and LAN hosts only through the test's own
//! veth to the router; everything else in the test ranges stays unreachable.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
};

use crate::{
    TempDir,
    agent::{Agent, PinDir},
    cgroups::TestCgroup,
    lab::{Lab, Netns},
    probe::ProbeResult,
    sh, sh_quiet,
};

/// Label on every test container, image and network (what cleanup looks for).
pub const TEST_LABEL: &str = "netguard.test=1";
pub const IMAGE: &str = "netguard-test/probe:latest";
/// Root namespace end of the host link to the router.
pub const HOST_LINK_V4: &str = "198.18.7.1";
pub const ROUTER_LINK_V4: &str = "198.18.7.2";
/// Subnets the root namespace routes into the lab: the internet host's and the LAN's.
/// and the VPN provider's (for tunnels from containers).
const ROUTED: [&str; 3] = ["198.18.2.0/24", "198.18.3.0/24", "198.18.4.0/24"];

pub struct DockerLab {
    pub lab: Lab,
    /// The cgroup every test container is created under (`--cgroup-parent`).
    pub parent: TestCgroup,
    /// The root namespace's veth to the router.
    pub host_link: String,
    /// Images and networks this lab made (removed on drop).
    images: Mutex<Vec<String>>,
    networks: Mutex<Vec<String>>,
}

/// Whether a Docker daemon answers.
fn dockerd_answers() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

impl DockerLab {
    /// The agent on the host, attached at the lab's container parent, following Docker,
    /// with the lab's LAN as an internal network and `extra` TOML; started and in sync.
    pub fn start_agent(&self, pin: &PinDir, extra: &str) -> Agent {
        let config = format!(
            "pin_dir = {:?}\nattach_cgroups = [{:?}]\ninternal_cidrs = [\"198.18.3.0/24\"]\n{extra}",
            pin.path.display().to_string(),
            self.parent.path.display().to_string(),
        );
        let path = std::env::temp_dir().join(format!("ngt{}-agent.toml", self.lab.tag));
        Agent::start_on_host(&config, path)
    }

    pub fn new() -> Self {
        assert!(
            dockerd_answers(),
            "no Docker daemon answers: run the tests through `cargo xtask test`, which starts one"
        );
        build_image();
        let lab = Lab::new();
        let host_link = format!("ngt{}h", lab.tag);
        sh(&[
            "ip",
            "link",
            "add",
            &host_link,
            "type",
            "veth",
            "peer",
            "name",
            "to-host",
            "netns",
            &lab.router.name,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_LINK_V4}/24"),
            "dev",
            &host_link,
        ]);
        sh(&["ip", "link", "set", &host_link, "up"]);
        lab.router.ip(&[
            "addr",
            "add",
            &format!("{ROUTER_LINK_V4}/24"),
            "dev",
            "to-host",
        ]);
        lab.router.ip(&["link", "set", "to-host", "up"]);
        for subnet in ROUTED {
            route_through(subnet, &host_link);
        }
        Self {
            lab,
            parent: TestCgroup::new_parent(),
            host_link,
            images: Mutex::new(Vec::new()),
            networks: Mutex::new(Vec::new()),
        }
    }

    /// An image built from the probe image with `labels` baked in (as an image publisher
    /// could ship it); removed with the lab.
    pub fn image_with_labels(&self, labels: &[(&str, &str)]) -> String {
        let mut images = self.images.lock().unwrap();
        let tag = format!(
            "netguard-test/labelled:ngt{}-{}",
            self.lab.tag,
            images.len()
        );
        let dir = TempDir::new("labelled-image");
        let mut dockerfile = format!("FROM {IMAGE}\n");
        for (key, value) in labels {
            dockerfile += &format!("LABEL {key}={value:?}\n");
        }
        std::fs::write(dir.path.join("Dockerfile"), dockerfile).unwrap();
        sh(&[
            "docker",
            "build",
            "-q",
            "-t",
            &tag,
            &dir.path.to_string_lossy(),
        ]);
        images.push(tag.clone());
        tag
    }

    /// `docker network create <args> <name>`, labelled as the lab's; removed with the lab.
    pub fn network(&self, args: &[&str]) -> String {
        let mut networks = self.networks.lock().unwrap();
        let name = format!("ngt{}n{}", self.lab.tag, networks.len());
        let mut command = vec!["docker", "network", "create", "--label", TEST_LABEL];
        command.extend_from_slice(args);
        command.push(&name);
        sh(&command);
        networks.push(name.clone());
        name
    }

    /// Makes `address` (in a subnet of its own, `subnet`) one more address of the internet
    /// host, routed to it from the root namespace through the test's veth only.
    pub fn internet_host_also_at(&self, subnet: &str, address: &str) {
        self.lab
            .internet
            .ip(&["addr", "add", &format!("{address}/32"), "dev", "eth0"]);
        self.lab
            .router
            .ip(&["route", "add", subnet, "via", crate::lab::INTERNET_V4_TEXT]);
        route_through(subnet, &self.host_link);
    }

    /// `docker run --rm` a probe in a fresh container from `image` (the probe image if
    /// `None`), with extra `docker run` arguments; its report.
    pub fn run_probe_with(
        &self,
        labels: &[&str],
        extra: &[&str],
        image: Option<&str>,
        probe_args: &[&str],
    ) -> ProbeResult {
        let mut command = Command::new("docker");
        command
            .args(["run", "--rm"])
            .args(self.run_args(labels))
            .args(extra)
            .arg(image.unwrap_or(IMAGE))
            .arg("ng-probe")
            .args(probe_args);
        parse_report(command.output().expect("docker run"))
    }

    /// `--cgroup-parent` value: the parent's path below the cgroup2 root.
    pub fn cgroup_parent(&self) -> String {
        format!(
            "/{}",
            self.parent.path.file_name().unwrap().to_string_lossy()
        )
    }

    fn run_args(&self, labels: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = ["--label", TEST_LABEL, "--label"]
            .map(String::from)
            .to_vec();
        args.push(format!("ngt.lab={}", self.lab.tag));
        args.extend(["--cgroup-parent".into(), self.cgroup_parent()]);
        for label in labels {
            args.extend(["--label".into(), label.to_string()]);
        }
        args
    }

    /// `docker run` a probe to completion in a fresh container; its report.
    pub fn run_probe(&self, labels: &[&str], probe_args: &[&str]) -> ProbeResult {
        self.run_probe_with(labels, &[], None, probe_args)
    }

    /// `docker run` a shell script (of ng-probe calls) in a fresh container; every report.
    pub fn run_script(&self, labels: &[&str], env: &[&str], script: &str) -> Vec<ProbeResult> {
        let mut command = Command::new("docker");
        command.args(["run", "--rm"]).args(self.run_args(labels));
        for var in env {
            command.args(["-e", var]);
        }
        command.args([IMAGE, "sh", "-c", script]);
        let output = command.output().expect("docker run");
        let stdout = String::from_utf8_lossy(&output.stdout);
        stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout:?}")))
            .collect()
    }

    /// An unlabeled control container running a probe: it may be held (EPERM) only until the
    /// agent has classified it, so the probe retries for that long.
    pub fn run_control(&self, probe_args: &[&str]) -> ProbeResult {
        let mut command = Command::new("docker");
        command
            .args(["run", "--rm", "-e", "NG_PROBE_RETRY_MS=10000"])
            .args(self.run_args(&[]))
            .arg(IMAGE)
            .arg("ng-probe")
            .args(probe_args);
        parse_report(command.output().expect("docker run"))
    }

    /// A long-running container (`sleep`); returns its id.
    pub fn start(&self, labels: &[&str], extra: &[&str]) -> String {
        self.start_with(labels, extra, &["sleep", "3600"])
    }

    /// A detached container running `command`; returns its id.
    pub fn start_with(&self, labels: &[&str], extra: &[&str], command_line: &[&str]) -> String {
        self.start_image(labels, extra, IMAGE, command_line)
    }

    /// A detached container of `image` running `command`; returns its id.
    pub fn start_image(
        &self,
        labels: &[&str],
        extra: &[&str],
        image: &str,
        command_line: &[&str],
    ) -> String {
        let mut command = Command::new("docker");
        command
            .args(["run", "-d"])
            .args(self.run_args(labels))
            .args(extra)
            .arg(image)
            .args(command_line);
        let output = command.output().expect("docker run -d");
        assert!(
            output.status.success(),
            "docker run -d: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// `docker exec` the probe in a running container.
    pub fn exec_probe(&self, container: &str, probe_args: &[&str]) -> ProbeResult {
        exec_probe_with(container, &[], probe_args)
    }

    /// The container's IPv4 address on the default bridge.
    pub fn ip(&self, container: &str) -> String {
        docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", container])
            .trim()
            .to_string()
    }

    /// A hand-built IPv4/UDP frame from `container` to the internet host through AF_PACKET,
    /// addressed to docker0, with the source address of `source` (the container whose
    /// network namespace it uses).
    pub fn raw_frame_to_internet(&self, container: &str, source: &str) -> ProbeResult {
        let docker0 = std::fs::read_to_string("/sys/class/net/docker0/address").expect("docker0");
        let args = [
            "raw-frame",
            "eth0",
            docker0.trim(),
            &self.ip(source),
            crate::lab::INTERNET_V4_TEXT,
            "7777",
        ];
        self.exec_probe(container, &args)
    }

    /// The host pid of a running container's first process.
    pub fn pid(&self, container: &str) -> u32 {
        docker(&["inspect", "-f", "{{.State.Pid}}", container])
            .trim()
            .parse()
            .unwrap()
    }

    /// The cgroup v2 id of a running container.
    pub fn cgroup_id(&self, container: &str) -> u64 {
        TestCgroup::id(&self.cgroup_dir(container))
    }

    /// The cgroup v2 directory of a running container.
    pub fn cgroup_dir(&self, container: &str) -> PathBuf {
        // Parsed here rather than by netguard's own code: the expectation stays independent.
        let pid = self.pid(container);
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let relative = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let root = netguard::cgroup::cgroup2_root().unwrap();
        root.join(relative.trim_start_matches('/'))
    }

    pub fn router(&self) -> &Netns {
        &self.lab.router
    }
}

impl Default for DockerLab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DockerLab {
    fn drop(&mut self) {
        let filter = format!("label=ngt.lab={}", self.lab.tag);
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let mut command = Command::new("docker");
                command.args(["rm", "-f"]).args(&ids);
                let _ = command.output();
            }
        }
        // Docker made the parent in every cgroup v1 hierarchy too.
        let name = self.parent.path.file_name().unwrap().to_owned();
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for entry in entries.flatten() {
                let dir = entry.path().join(&name);
                if dir.is_dir() && dir != self.parent.path {
                    remove_cgroup_tree(&dir);
                }
            }
        }
        for network in self.networks.lock().unwrap().iter() {
            sh_quiet(&["docker", "network", "rm", network]);
        }
        for image in self.images.lock().unwrap().iter() {
            sh_quiet(&["docker", "rmi", "-f", image]);
        }
        sh_quiet(&["ip", "link", "del", &self.host_link]);
    }
}

/// Routes `subnet` from the root namespace to the router, through the test's own veth.
fn route_through(subnet: &str, host_link: &str) {
    sh(&[
        "ip",
        "route",
        "add",
        subnet,
        "via",
        ROUTER_LINK_V4,
        "dev",
        host_link,
    ]);
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn docker(args: &[&str]) -> String {
    let mut full = vec!["docker"];
    full.extend_from_slice(args);
    sh(&full)
}

/// `docker exec <exec_args> container ng-probe <probe_args>`: its report.
pub fn exec_probe_with(container: &str, exec_args: &[&str], probe_args: &[&str]) -> ProbeResult {
    let output = Command::new("docker")
        .arg("exec")
        .args(exec_args)
        .args([container, "ng-probe"])
        .args(probe_args)
        .output()
        .expect("docker exec");
    parse_report(output)
}

fn parse_report(output: std::process::Output) -> ProbeResult {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "probe in a container: {e}: stdout {stdout:?} stderr {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The static probe built by `cargo xtask test`.
pub(crate) fn static_probe() -> PathBuf {
    let path = std::env::var_os("NG_PROBE_STATIC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/static/x86_64-unknown-linux-gnu/release/ng-probe")
        });
    assert!(
        path.exists(),
        "{} missing: run through `cargo xtask test`",
        path.display()
    );
    path
}

/// Builds the test image once per test process: busybox (Debian's busybox-static) and the
/// static probe, `FROM scratch` (no registry is reachable).
pub(crate) fn build_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = TempDir::new("image");
        std::fs::copy("/bin/busybox", dir.path.join("busybox")).expect("busybox-static installed");
        std::fs::copy(static_probe(), dir.path.join("ng-probe")).unwrap();
        std::fs::write(
            dir.path.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY ng-probe /bin/ng-probe\n\
             RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nLABEL netguard.test=1\n",
        )
        .unwrap();
        sh(&[
            "docker",
            "build",
            "-q",
            "-t",
            IMAGE,
            &dir.path.to_string_lossy(),
        ]);
    });
}

/// Restarts the Docker daemon: through systemd where it manages docker, else by SIGTERM and
/// starting `dockerd` again in a session of its own (it is the machine's daemon, not the
/// test's: it must outlive the test). Returns once the new daemon answers.
pub fn restart_dockerd(log: &Path) {
    let systemd = Command::new("systemctl")
        .args(["is-active", "--quiet", "docker"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if systemd {
        sh(&["systemctl", "restart", "docker"]);
    } else {
        let pids = live_processes("dockerd");
        assert_eq!(pids.len(), 1, "exactly one dockerd runs: {pids:?}");
        let pid = pids[0];
        sh(&["kill", "-TERM", &pid.to_string()]);
        // A dockerd started by `cargo xtask test` is that process's child and stays a
        // zombie until it exits: exited is not the same as gone from /proc.
        crate::wait_for("the old dockerd to exit", || {
            !live_processes("dockerd").contains(&pid)
        });
        // Through a shell that exits at once: dockerd is the machine's, not our child.
        let script = format!("setsid dockerd > '{}' 2>&1 < /dev/null &", log.display());
        sh(&["sh", "-c", &script]);
    }
    crate::wait_for("dockerd to answer again", dockerd_answers);
}

/// Pids of the processes named `name` that have not exited (zombies excluded).
fn live_processes(name: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // /proc/<pid>/stat: "pid (comm) state ..."; comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let state = stat[close + 1..].split_whitespace().next();
        if &stat[open + 1..close] == name && state != Some("Z") && state != Some("X") {
            pids.push(pid);
        }
    }
    pids
}

/// docker0's IPv4 address: the default bridge's gateway.
pub fn bridge_gateway() -> String {
    let out = sh(&["ip", "-4", "-br", "addr", "show", "docker0"]);
    let cidr = out
        .split_whitespace()
        .nth(2)
        .expect("docker0 has an IPv4 address");
    cidr.split('/').next().unwrap().to_string()
}

/// Gluetun's own firewall failing: in the gateway namespace at `netns`, the internet host's
/// subnet is routed through eth0 (the bridge) instead of the tunnel.
pub fn route_around_tunnel(netns: &Path) {
    crate::wireguard::ip_in(
        netns,
        &[
            "route",
            "replace",
            "198.18.2.0/24",
            "via",
            &bridge_gateway(),
            "dev",
            "eth0",
        ],
    );
}
