//! What the agent needs from the host and its own process: capabilities, the host's cgroup
//! namespace, the Docker socket, the kernel. Checked before anything is attached (`run`)
//! and reported by `netguard doctor`. What the host's network says about containers is in
//! [`network`].

pub mod network;

use std::{
    fmt,
    fs::File,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::Path,
};

use thiserror::Error;

use crate::{config::ConfigError, sys};

/// Capabilities `netguard run` uses: SYS_ADMIN to load BPF programs and attach the
/// tracepoint (it stands for CAP_BPF and CAP_PERFMON, which Docker before 23 cannot grant),
/// enter containers' network namespaces and mount bpffs/tracefs; NET_ADMIN for cgroup and
/// TC attachment; SYS_PTRACE to open other processes' namespaces; DAC_READ_SEARCH to find
/// cgroups by id.
pub const REQUIRED_CAPABILITIES: [(u32, &str); 4] = [
    (21, "CAP_SYS_ADMIN"),
    (12, "CAP_NET_ADMIN"),
    (19, "CAP_SYS_PTRACE"),
    (2, "CAP_DAC_READ_SEARCH"),
];

/// The agent lacks privileges: one line naming what is missing and the fix. Exit 77.
#[derive(Debug, Error, PartialEq, Eq)]
pub struct PrivilegeError(pub String);

impl fmt::Display for PrivilegeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The effective capability set of this process.
pub fn effective_capabilities() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| std::io::Error::other("no CapEff line in /proc/self/status"))
}

/// Names of the required capabilities this process lacks.
pub fn missing_capabilities() -> Vec<&'static str> {
    let effective = effective_capabilities().unwrap_or(0);
    REQUIRED_CAPABILITIES
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// Refuses to start without the privileges the datapath needs.
pub fn check_privileges() -> Result<(), PrivilegeError> {
    let missing = missing_capabilities();
    if missing.is_empty() {
        return Ok(());
    }
    Err(PrivilegeError(format!(
        "netguard run lacks {}: run it as root (sudo netguard run), or in a container with \
         --cap-add SYS_ADMIN,NET_ADMIN,SYS_PTRACE,DAC_READ_SEARCH (or --privileged) \
         --pid host --network host",
        missing.join(", ")
    )))
}

/// Whether this process shares the cgroup namespace of pid 1 (the host's, when the agent
/// sees the host's processes); `None` when pid 1's cannot be read (some inits forbid it).
pub fn in_host_cgroup_namespace() -> Option<bool> {
    let inode = |path: &str| std::fs::metadata(path).map(|m| m.ino()).ok();
    Some(inode("/proc/self/ns/cgroup")? == inode("/proc/1/ns/cgroup")?)
}

/// In a container with a private cgroup namespace (Docker's default on cgroup v2 hosts),
/// `/proc/<pid>/cgroup` paths are relative to the container's own cgroup. With the host's
/// processes visible (`pid: host`), pid 1's namespace is the host's: join it, so that
/// container cgroups resolve. Must run before other threads start. Returns whether it moved.
pub fn join_host_cgroup_namespace() -> std::io::Result<bool> {
    if in_host_cgroup_namespace() != Some(false) {
        return Ok(false);
    }
    let namespace = File::open("/proc/1/ns/cgroup")?;
    sys::setns(namespace.as_fd(), libc::CLONE_NEWCGROUP)?;
    Ok(true)
}

/// The Docker socket accepts a connection, or one line naming it and the fix.
pub fn check_docker_socket(socket: &Path) -> Result<(), ConfigError> {
    std::os::unix::net::UnixStream::connect(socket)
        .map(drop)
        .map_err(|error| {
            ConfigError(format!(
                "Docker socket {}: {error}: start dockerd, mount the socket into the agent's \
                 container (-v /var/run/docker.sock:/var/run/docker.sock:ro), point \
                 --docker-socket at it, or pass --no-docker",
                socket.display()
            ))
        })
}

/// Tells systemd (`Type=notify`) that enforcement is in place, so that units ordered after
/// netguard (docker.service) start only then. Nothing to do outside systemd.
pub fn notify_ready() -> std::io::Result<()> {
    use std::os::{linux::net::SocketAddrExt as _, unix::net::SocketAddr};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let path = path.to_string_lossy().into_owned();
    let address = match path.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
        None => SocketAddr::from_pathname(&path)?,
    };
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    socket.send_to_addr(b"READY=1", &address)?;
    Ok(())
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `(major, minor)` of a kernel release such as `6.18.0-1-amd64`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.167+rpt-rpi-v8"), Some((5, 15)));
        assert_eq!(kernel_version("garbage"), None);
    }
}
