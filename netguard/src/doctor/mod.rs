//! `netguard doctor`: can this host run netguard, and is it running well? Each check says
//! pass, warn or fail, what it found, and for anything short of pass what to do.

mod agent;

use std::{collections::HashMap, fmt, path::Path, time::Duration};

use bollard::{
    API_DEFAULT_VERSION, Docker,
    query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder},
};

use crate::{
    cgroup::cgroup2_root,
    client::AgentClient,
    host,
    kernel::{
        Maps,
        pins::{BPFFS_MAGIC, is_fs},
    },
    labels,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Pass,
    Warn,
    Fail,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "pass",
            Outcome::Warn => "WARN",
            Outcome::Fail => "FAIL",
        })
    }
}

#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub found: String,
    /// What to do; empty when it passed.
    pub remedy: String,
}

fn pass(name: &'static str, found: impl Into<String>) -> Check {
    Check {
        name,
        outcome: Outcome::Pass,
        found: found.into(),
        remedy: String::new(),
    }
}

fn short_of(
    outcome: Outcome,
    name: &'static str,
    found: impl Into<String>,
    remedy: impl Into<String>,
) -> Check {
    Check {
        name,
        outcome,
        found: found.into(),
        remedy: remedy.into(),
    }
}

/// What to look at.
pub struct DoctorOptions<'a> {
    pub pin_dir: &'a Path,
    pub docker_socket: &'a Path,
    pub agent: Option<AgentClient>,
}

/// Oldest kernel with everything netguard uses (ring buffer, cgroup sock_addr hooks,
/// bpf_get_netns_cookie in them, tc BPF): 5.15, the oldest long-term kernel that has all.
const MIN_KERNEL: (u32, u32) = (5, 15);
/// TCX (the backstop's preferred attachment) came with 6.6.
const TCX_KERNEL: (u32, u32) = (6, 6);

/// Runs every check.
pub async fn examine(options: DoctorOptions<'_>) -> Vec<Check> {
    let mut checks = vec![
        kernel(),
        btf(),
        cgroup_v2(),
        cgroup_namespace(),
        bpffs(),
        capabilities(),
    ];
    checks.extend(docker(options.docker_socket).await);
    checks.push(pinned(options.pin_dir));
    if let Some(agent) = options.agent {
        checks.push(agent::answers(&agent).await);
        checks.extend(agent::gluetun_credentials(&agent).await);
    }
    checks
}

fn kernel() -> Check {
    let release = host::kernel_release();
    match host::kernel_version(&release) {
        Some(v) if v >= TCX_KERNEL => pass("kernel", release),
        Some(v) if v >= MIN_KERNEL => short_of(
            Outcome::Warn,
            "kernel",
            format!("{release}: no TCX, the backstop uses tc clsact"),
            "a 6.6 or newer kernel orders the backstop first among TC programs",
        ),
        _ => short_of(
            Outcome::Fail,
            "kernel",
            release,
            "netguard needs Linux 5.15 or newer with BPF: upgrade the kernel",
        ),
    }
}

fn btf() -> Check {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        pass("BTF", "/sys/kernel/btf/vmlinux")
    } else {
        short_of(
            Outcome::Fail,
            "BTF",
            "/sys/kernel/btf/vmlinux missing",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels are)",
        )
    }
}

fn cgroup_v2() -> Check {
    match cgroup2_root() {
        Ok(root) => {
            let layout = if root == Path::new("/sys/fs/cgroup") {
                "pure v2"
            } else {
                "hybrid: v1 controllers beside it"
            };
            pass("cgroup v2", format!("{} ({layout})", root.display()))
        }
        Err(error) => short_of(Outcome::Fail, "cgroup v2", "not mounted", error.to_string()),
    }
}

fn cgroup_namespace() -> Check {
    match host::in_host_cgroup_namespace() {
        Some(true) => pass("cgroup namespace", "pid 1's"),
        None => pass(
            "cgroup namespace",
            "pid 1's is not readable: assumed the same",
        ),
        Some(false) => short_of(
            Outcome::Warn,
            "cgroup namespace",
            "private",
            "netguard run joins pid 1's; run its container with --pid host (and --cgroupns host)",
        ),
    }
}

fn bpffs() -> Check {
    let path = Path::new("/sys/fs/bpf");
    match is_fs(path, BPFFS_MAGIC) {
        Ok(true) => pass("bpffs", path.display().to_string()),
        _ => short_of(
            Outcome::Warn,
            "bpffs",
            format!("not mounted at {}", path.display()),
            "netguard run mounts it; in a container, bind-mount the host's /sys/fs/bpf \
             (mounted on the host: mount -t bpf bpf /sys/fs/bpf) or enforcement dies with the \
             container",
        ),
    }
}

fn capabilities() -> Check {
    let missing = host::missing_capabilities();
    if missing.is_empty() {
        pass("capabilities", "all netguard run needs")
    } else {
        short_of(
            Outcome::Fail,
            "capabilities",
            format!("missing {}", missing.join(", ")),
            "run as root (sudo), or give its container --cap-add SYS_ADMIN,NET_ADMIN,SYS_PTRACE,\
             DAC_READ_SEARCH (or --privileged)",
        )
    }
}

async fn docker(socket: &Path) -> Vec<Check> {
    let remedy = "start dockerd, mount the socket (-v /var/run/docker.sock:/var/run/docker.sock:ro) \
                  or pass --docker-socket; without Docker, run with --no-docker";
    let connected = async {
        let docker = Docker::connect_with_unix(&socket.to_string_lossy(), 10, API_DEFAULT_VERSION)?
            .negotiate_version()
            .await?;
        let info = docker.info().await?;
        Ok::<_, bollard::errors::Error>((docker, info))
    };
    let (docker, info) = match tokio::time::timeout(Duration::from_secs(10), connected).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(error)) => {
            return vec![short_of(
                Outcome::Fail,
                "Docker socket",
                format!("{}: {error}", socket.display()),
                remedy,
            )];
        }
        Err(_) => {
            return vec![short_of(
                Outcome::Fail,
                "Docker socket",
                format!("{}: no answer in 10 s", socket.display()),
                remedy,
            )];
        }
    };
    let mut checks = vec![pass(
        "Docker socket",
        format!(
            "{} (Docker {})",
            socket.display(),
            info.server_version.as_deref().unwrap_or("?")
        ),
    )];
    let driver = info
        .cgroup_driver
        .map(|d| d.to_string())
        .unwrap_or_else(|| "?".into());
    let version = info
        .cgroup_version
        .map(|v| v.to_string())
        .unwrap_or_else(|| "?".into());
    checks.push(pass(
        "cgroup driver",
        format!("{driver} (cgroup v{version} for containers)"),
    ));
    checks.push(raw_sockets(&docker).await);
    checks
}

/// Protected containers that keep CAP_NET_RAW (Docker grants it by default): their raw
/// frames meet only the backstop on their veth.
async fn raw_sockets(docker: &Docker) -> Check {
    const NAME: &str = "CAP_NET_RAW";
    let filters = HashMap::from([("label", vec![format!("{}=required", labels::VPN)])]);
    let listed = match docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
    {
        Ok(listed) => listed,
        Err(error) => {
            return short_of(
                Outcome::Warn,
                NAME,
                format!("listing containers: {error}"),
                "",
            );
        }
    };
    let mut keeping = Vec::new();
    for container in &listed {
        let Some(id) = container.id.as_deref() else {
            continue;
        };
        let Ok(info) = docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        else {
            continue;
        };
        let host = info.host_config.unwrap_or_default();
        let dropped = host.cap_drop.unwrap_or_default().iter().any(|c| {
            matches!(
                c.to_ascii_uppercase().trim_start_matches("CAP_"),
                "NET_RAW" | "ALL"
            )
        });
        if host.privileged.unwrap_or(false) || !dropped {
            keeping.push(
                info.name
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
            );
        }
    }
    if keeping.is_empty() {
        pass(
            NAME,
            format!("{} protected containers, none keeps it", listed.len()),
        )
    } else {
        keeping.sort();
        short_of(
            Outcome::Warn,
            NAME,
            format!("kept by protected {}", keeping.join(", ")),
            "their raw frames are stopped only by the backstop on their veth: add \
             `cap_drop: [NET_RAW]` (docker run --cap-drop NET_RAW)",
        )
    }
}

fn pinned(pin_dir: &Path) -> Check {
    const NAME: &str = "pinned datapath";
    if !pin_dir.exists() {
        return short_of(
            Outcome::Warn,
            NAME,
            format!("nothing at {}", pin_dir.display()),
            "not loaded: `netguard run` loads it (nothing is protected until then)",
        );
    }
    let opened = Maps::open_pinned(pin_dir).and_then(|maps| maps.policies());
    match opened {
        Ok(policies) => {
            let protected = policies.iter().filter(|(_, p)| p.is_protected()).count();
            let links = std::fs::read_dir(pin_dir.join("links"))
                .map(|d| d.count())
                .unwrap_or(0);
            let found = format!(
                "{}: {links} links, {protected} protected cgroups of {}",
                pin_dir.display(),
                policies.len()
            );
            if links == 0 {
                short_of(
                    Outcome::Fail,
                    NAME,
                    found,
                    "maps without programs enforce nothing: start `netguard run`",
                )
            } else {
                pass(NAME, found)
            }
        }
        Err(error) => short_of(
            Outcome::Fail,
            NAME,
            format!("{}: {error:#}", pin_dir.display()),
            "stop the agent, `netguard unload`, start it again",
        ),
    }
}

/// The table `netguard doctor` prints.
pub fn table(checks: &[Check]) -> String {
    let mut out = format!("{:<18} {:<6} {}\n", "CHECK", "RESULT", "FOUND");
    for check in checks {
        out.push_str(&format!(
            "{:<18} {:<6} {}\n",
            check.name, check.outcome, check.found
        ));
        if !check.remedy.is_empty() {
            out.push_str(&format!("{:<18} {:<6} -> {}\n", "", "", check.remedy));
        }
    }
    out
}
