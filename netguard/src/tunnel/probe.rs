//! Gathering tunnel evidence from a gateway's network namespace and filesystem: its tunnel
//! interface, Gluetun's control server, WireGuard's handshake, a TCP probe. Blocking; the
//! watcher runs each round off its event loop.

use std::{
    collections::BTreeSet,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::{
    Evidence, HealthPolicy, Source,
    gluetun::{self, Credentials},
    wireguard::{self, Device},
};
use crate::{
    config::{HEALTH_CHECK_TIMEOUT, gluetun::Method},
    domain::{ContainerId, TunnelInterface},
    netns,
};

/// A tunnel interface found in a gateway's namespace, and its name.
pub type FoundTunnel = Option<(TunnelInterface, String)>;

/// One gateway's health round.
pub struct HealthJob {
    pub id: ContainerId,
    pub pid: u32,
    /// Tunnel interface names to look for, in order.
    pub names: Vec<String>,
    pub policy: HealthPolicy,
    pub docker_healthy: Option<bool>,
    /// The configured credentials for its Gluetun control server.
    pub gluetun_auth: GluetunCredentials,
}

/// A gateway's configured Gluetun credentials: an entry of its own wins over its
/// `netguard.gluetun.apikey` label, which wins over the default for every gateway.
#[derive(Clone, Debug, Default)]
pub struct GluetunCredentials {
    pub own: Option<Method>,
    pub default: Option<Method>,
}

/// What a round found.
pub struct HealthRound {
    pub id: ContainerId,
    pub tunnel: FoundTunnel,
    /// Where the tunnel's encrypted packets go, if it is kernel WireGuard; `None` when the
    /// kernel could not be asked this round (what was known stands).
    pub carriers: Option<BTreeSet<SocketAddr>>,
    pub evidence: Vec<(&'static str, Evidence)>,
}

impl HealthJob {
    pub fn run(self) -> HealthRound {
        let tunnel = find_tunnel(self.pid, &self.names);
        let device = match &tunnel {
            Some((t, _)) => kernel_device(self.pid, t.ifindex),
            None => Ok(None),
        };
        let carriers = match &device {
            Ok(device) => Some(device.iter().flat_map(Device::endpoints).collect()),
            Err(()) => None,
        };
        let interface = tunnel.as_ref().map(|(_, name)| name.as_str());
        let evidence = probe_sources(&self, interface, device.ok().flatten().as_ref());
        HealthRound {
            id: self.id,
            tunnel,
            carriers,
            evidence,
        }
    }
}

/// Tunnel `ifindex` in the network namespace of `pid`, if it is kernel WireGuard: its peers
/// (where its encrypted packets go; a userspace tunnel sends from its own socket, which
/// needs nothing) and their handshakes. `Err` when the kernel could not be asked.
fn kernel_device(pid: u32, ifindex: u32) -> Result<Option<Device>, ()> {
    if !wireguard::available() {
        return Ok(None);
    }
    match netns::run_in(&netns::of_process(pid), || wireguard::device(ifindex)) {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(error)) | Err(error) => {
            tracing::warn!(
                pid,
                ifindex,
                "reading the kernel WireGuard device: {error:#} (its peers stay as they were)"
            );
            Err(())
        }
    }
}

/// The first of `names` present in the network namespace of `pid`.
pub fn find_tunnel(pid: u32, names: &[String]) -> FoundTunnel {
    netns::run_in(&netns::of_process(pid), || {
        let cookie = netns::current_cookie().ok()?;
        names.iter().find_map(|name| {
            let ifindex = netns::ifindex(name).ok()?;
            Some((
                TunnelInterface {
                    ifindex,
                    netns_cookie: cookie,
                },
                name.clone(),
            ))
        })
    })
    .ok()
    .flatten()
}

/// Gathers evidence from every source of `policy`; Docker's health status comes from the
/// watcher, which learns it from events.
fn probe_sources(
    job: &HealthJob,
    interface: Option<&str>,
    kernel: Option<&Device>,
) -> Vec<(&'static str, Evidence)> {
    let netns_path = netns::of_process(job.pid);
    let (pid, docker_healthy) = (job.pid, job.docker_healthy);
    job.policy
        .sources
        .iter()
        .map(|source| {
            let evidence = match source {
                Source::DockerHealth => match docker_healthy {
                    Some(true) => Evidence::Up,
                    Some(false) => Evidence::Down("unhealthy".into()),
                    None => Evidence::Down("no health status yet".into()),
                },
                Source::Interface => in_netns(&netns_path, || match interface {
                    None => Ok(Evidence::Down("no tunnel interface".into())),
                    Some(name) => Ok(match netns::interface_up(name) {
                        Ok(true) => Evidence::Up,
                        Ok(false) => Evidence::Down(format!("{name} is down")),
                        Err(error) => Evidence::Down(format!("{name}: {error}")),
                    }),
                }),
                Source::Gluetun { address, api_key } => {
                    let auth = &job.gluetun_auth;
                    let credentials = match (&auth.own, api_key, &auth.default) {
                        (Some(method), ..) => Credentials::Configured(method.clone()),
                        (None, Some(key), _) => Credentials::Label(key.clone()),
                        (None, None, Some(method)) => Credentials::Configured(method.clone()),
                        (None, None, None) => Credentials::None,
                    };
                    in_netns(&netns_path, || gluetun::status(*address, &credentials))
                }
                Source::Handshake { max_age } => match (interface, kernel) {
                    (None, _) => Evidence::Down("no tunnel interface".into()),
                    // Kernel WireGuard: its generic-netlink answer has the handshakes.
                    (Some(_), Some(device)) => fresh(device.latest_handshake(), *max_age),
                    (Some(name), None) => handshake_evidence(pid, name, *max_age),
                },
                Source::Misconfigured(what) => Evidence::Down(what.clone()),
                Source::Probe { target } => in_netns(&netns_path, || {
                    TcpStream::connect_timeout(target, HEALTH_CHECK_TIMEOUT)
                        .map(|_| Evidence::Up)
                        .or_else(|error| Ok(Evidence::Down(format!("connect {target}: {error}"))))
                }),
            };
            (source.name(), evidence)
        })
        .collect()
}

fn in_netns(netns_path: &Path, check: impl FnOnce() -> io::Result<Evidence> + Send) -> Evidence {
    match netns::run_in(netns_path, check) {
        Ok(Ok(evidence)) => evidence,
        Ok(Err(error)) | Err(error) => Evidence::Down(error.to_string()),
    }
}

/// The latest handshake of `interface`, from the userspace WireGuard UAPI socket (inside the
/// gateway's filesystem, or the host's for a daemon run beside it).
fn handshake_evidence(pid: u32, interface: &str, max_age: Duration) -> Evidence {
    let candidates = [
        PathBuf::from(format!(
            "/proc/{pid}/root/var/run/wireguard/{interface}.sock"
        )),
        PathBuf::from(format!("/var/run/wireguard/{interface}.sock")),
    ];
    let Some(socket) = candidates.iter().find(|p| p.exists()) else {
        return Evidence::Down(format!("no WireGuard control socket for {interface}"));
    };
    match latest_handshake(socket) {
        Ok(latest) => fresh(latest, max_age),
        Err(error) => Evidence::Down(format!("asking {}: {error}", socket.display())),
    }
}

/// Up when the latest handshake is at most `max_age` old.
fn fresh(latest: Option<SystemTime>, max_age: Duration) -> Evidence {
    match latest.map(|at| SystemTime::now().duration_since(at)) {
        None => Evidence::Down("no handshake yet".into()),
        Some(Ok(age)) if age > max_age => {
            Evidence::Down(format!("handshake {}s old", age.as_secs()))
        }
        Some(_) => Evidence::Up,
    }
}

fn latest_handshake(socket: &Path) -> io::Result<Option<SystemTime>> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(HEALTH_CHECK_TIMEOUT))?;
    stream.write_all(b"get=1\n\n")?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.ends_with(b"\n\n") {
            break;
        }
    }
    Ok(latest_handshake_in(&String::from_utf8_lossy(&reply)))
}

/// The newest `last_handshake_time_sec` of a UAPI `get=1` reply; `None` if no peer has one.
fn latest_handshake_in(reply: &str) -> Option<SystemTime> {
    let latest = reply
        .lines()
        .filter_map(|l| l.strip_prefix("last_handshake_time_sec="))
        .filter_map(|s| s.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    (latest > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(latest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_handshake_of_any_peer_counts() {
        let reply = "private_key=00\npublic_key=aa\nlast_handshake_time_sec=0\n\
                     public_key=bb\nlast_handshake_time_sec=1700000000\nerrno=0\n\n";
        assert_eq!(
            latest_handshake_in(reply),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(latest_handshake_in("last_handshake_time_sec=0\n"), None);
        assert_eq!(latest_handshake_in("errno=0\n"), None);
    }

    /// Kernel WireGuard (Gluetun's choice where the host has it) has no control socket: the
    /// handshake comes from its generic-netlink answer. (This kernel has no WireGuard
    /// module: the answer's parsing is tested on recorded messages in `wireguard::tests`.)
    #[test]
    fn a_kernel_tunnels_handshake_comes_from_its_device_not_a_socket() {
        let job = HealthJob {
            id: "a".repeat(64).parse().unwrap(),
            pid: std::process::id(),
            names: vec!["ngtwgk".into()],
            policy: HealthPolicy {
                sources: vec![Source::Handshake {
                    max_age: Duration::from_secs(180),
                }],
                ..HealthPolicy::default()
            },
            docker_healthy: None,
            gluetun_auth: GluetunCredentials::default(),
        };
        let peer = |ago: u64| wireguard::Peer {
            last_handshake: Some(SystemTime::now() - Duration::from_secs(ago)),
            ..wireguard::Peer::default()
        };
        let device = |peers| Device {
            peers,
            ..Device::default()
        };
        let evidence =
            |kernel: Option<&Device>| probe_sources(&job, Some("ngtwgk"), kernel)[0].1.clone();
        assert_eq!(evidence(Some(&device(vec![peer(5)]))), Evidence::Up);
        assert_eq!(
            evidence(Some(&device(vec![peer(600)]))),
            Evidence::Down("handshake 600s old".into())
        );
        assert_eq!(
            evidence(Some(&device(vec![wireguard::Peer::default()]))),
            Evidence::Down("no handshake yet".into())
        );
        assert_eq!(
            evidence(None),
            Evidence::Down("no WireGuard control socket for ngtwgk".into()),
            "userspace: the socket, which is not there"
        );
    }
}
