//! What the host says about a running container: its cgroup, its veths, the host's subnets.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;

use crate::cgroup::{Cgroup, CgroupId};

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

/// Host-side interface indexes of the veths in the network namespace of `pid`: each
/// interface whose `iflink` differs from its own index has its peer there. Read through the
/// container's own `/sys` (mounted in its namespace by the runtime).
pub fn host_side_veths(pid: u32) -> Result<Vec<u32>> {
    let net = PathBuf::from(format!("/proc/{pid}/root/sys/class/net"));
    let mut peers = Vec::new();
    for entry in fs::read_dir(&net).with_context(|| format!("listing {}", net.display()))? {
        let dir = entry?.path();
        let read = |name: &str| -> Option<u32> {
            fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok()
        };
        if let (Some(index), Some(link)) = (read("ifindex"), read("iflink"))
            && index != link
            && link != 0
            && peer_points_back(link, index)
        {
            peers.push(link);
        }
    }
    Ok(peers)
}

/// The container's /sys is its own to forge (or a bind mount of the host's): accept a peer
/// only if the host's own view agrees that interface `host` is linked to `container`.
fn peer_points_back(host: u32, container: u32) -> bool {
    let Ok(name) = crate::netns::interface_name(host) else {
        return false;
    };
    fs::read_to_string(format!("/sys/class/net/{name}/iflink"))
        .ok()
        .and_then(|l| l.trim().parse::<u32>().ok())
        == Some(container)
}

/// Whether an interface with this index exists in the agent's network namespace.
pub fn interface_exists(ifindex: u32) -> bool {
    crate::netns::interface_name(ifindex).is_ok()
}

/// The network namespace file of `pid`.
pub fn netns_of(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// The host's directly connected private subnets (RFC 1918, ULA), from the kernel's routes.
pub fn connected_private_subnets() -> Result<Vec<IpNet>> {
    let mut subnets = Vec::new();
    // /proc/net/route: Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    if let Ok(text) = fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[2] != "00000000" || f[1] == "00000000" {
                continue;
            }
            let (Ok(dest), Ok(mask)) =
                (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
            else {
                continue;
            };
            let addr = Ipv4Addr::from(u32::from_be(dest));
            let prefix = u32::from_be(mask).count_ones() as u8;
            if addr.is_private()
                && let Ok(net) = IpNet::new(IpAddr::V4(addr), prefix)
            {
                subnets.push(net);
            }
        }
    }
    // /proc/net/ipv6_route: dest prefix src srcprefix nexthop metric refcnt use flags dev
    if let Ok(text) = fs::read_to_string("/proc/net/ipv6_route") {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[4] != "0".repeat(32) {
                continue;
            }
            let (Ok(dest), Ok(prefix)) =
                (u128::from_str_radix(f[0], 16), u8::from_str_radix(f[1], 16))
            else {
                continue;
            };
            let addr = Ipv6Addr::from(dest);
            let unique_local = (addr.segments()[0] & 0xfe00) == 0xfc00;
            if unique_local
                && prefix > 0
                && let Ok(net) = IpNet::new(IpAddr::V6(addr), prefix)
            {
                subnets.push(net);
            }
        }
    }
    subnets.sort();
    subnets.dedup();
    Ok(subnets)
}

/// Whether the cgroup `id` still exists, asked of the kernel by handle (cgroup ids are
/// kernfs file handles), so that entries of removed cgroups can be dropped.
pub fn cgroup_exists(root: &Path, id: CgroupId) -> Result<bool> {
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        id: u64,
    }
    const FILEID_KERNFS: i32 = 0xfe;
    let mount = fs::File::open(root).with_context(|| format!("opening {}", root.display()))?;
    let mut handle = Handle {
        bytes: 8,
        kind: FILEID_KERNFS,
        id,
    };
    // SAFETY: a valid handle struct and directory descriptor; the result is closed at once.
    let fd = unsafe {
        libc::open_by_handle_at(
            std::os::fd::AsRawFd::as_raw_fd(&mount),
            (&mut handle as *mut Handle).cast(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd >= 0 {
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
        return Ok(true);
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ESTALE) | Some(libc::ENOENT) => Ok(false),
        _ => bail!(
            "asking whether cgroup {id} exists: {}",
            std::io::Error::last_os_error()
        ),
    }
}

#[cfg(test)]
mod tests {
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
            assert_eq!(
                super::container_cgroup(&from, &id),
                std::path::PathBuf::from(want),
                "{from}"
            );
        }
    }

    #[test]
    fn connected_subnets_are_private_only() {
        for net in super::connected_private_subnets().unwrap() {
            match net.addr() {
                std::net::IpAddr::V4(a) => assert!(a.is_private(), "{net}"),
                std::net::IpAddr::V6(a) => assert_eq!(a.segments()[0] & 0xfe00, 0xfc00, "{net}"),
            }
        }
    }
}
