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

use super::{Evidence, HealthPolicy, Source, wireguard};
use crate::{
    config::HEALTH_CHECK_TIMEOUT,
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
        let carriers = match &tunnel {
            Some((t, _)) => kernel_carriers(self.pid, t.ifindex),
            None => Some(BTreeSet::new()),
        };
        let interface = tunnel.as_ref().map(|(_, name)| name.as_str());
        let evidence = probe_sources(&self.policy, self.pid, interface, self.docker_healthy);
        HealthRound {
            id: self.id,
            tunnel,
            carriers,
            evidence,
        }
    }
}

/// The peers of tunnel `ifindex` in the network namespace of `pid`, if it is kernel
/// WireGuard (a userspace tunnel sends from its own socket, which needs nothing); `None`
/// when the kernel could not be asked.
fn kernel_carriers(pid: u32, ifindex: u32) -> Option<BTreeSet<SocketAddr>> {
    if !wireguard::available() {
        return Some(BTreeSet::new());
    }
    let device = netns::run_in(&netns::of_process(pid), || wireguard::device(ifindex));
    match device {
        Ok(Ok(Some(device))) => Some(device.endpoints().collect()),
        Ok(Ok(None)) => Some(BTreeSet::new()),
        Ok(Err(error)) | Err(error) => {
            tracing::warn!(
                pid,
                ifindex,
                "reading the kernel WireGuard device: {error:#} (its peers stay as they were)"
            );
            None
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
pub fn probe_sources(
    policy: &HealthPolicy,
    pid: u32,
    interface: Option<&str>,
    docker_healthy: Option<bool>,
) -> Vec<(&'static str, Evidence)> {
    let netns_path = netns::of_process(pid);
    policy
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
                    in_netns(&netns_path, || gluetun_status(*address, api_key.as_deref()))
                }
                Source::Handshake { max_age } => match interface {
                    None => Evidence::Down("no tunnel interface".into()),
                    Some(name) => handshake_evidence(pid, name, *max_age),
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

/// `GET /v1/vpn/status` (Gluetun ≥ 3.40), else `/v1/openvpn/status` (older): running is up.
fn gluetun_status(address: SocketAddr, api_key: Option<&str>) -> io::Result<Evidence> {
    let mut last = Evidence::Down("no answer".into());
    for path in ["/v1/vpn/status", "/v1/openvpn/status"] {
        let (status, body) = match http_get(address, path, api_key) {
            Ok(answer) => answer,
            Err(error) => return Ok(Evidence::Down(format!("control server {address}: {error}"))),
        };
        if status == 404 {
            last = Evidence::Down(format!("{path}: 404"));
            continue;
        }
        if status != 200 {
            return Ok(Evidence::Down(format!("{path}: HTTP {status}")));
        }
        let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        return Ok(if compact.contains("\"status\":\"running\"") {
            Evidence::Up
        } else {
            Evidence::Down(format!("{path}: {}", body.trim()))
        });
    }
    Ok(last)
}

/// A minimal HTTP/1.1 GET with `Connection: close` (the control server is local and simple).
fn http_get(address: SocketAddr, path: &str, api_key: Option<&str>) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, HEALTH_CHECK_TIMEOUT)?;
    stream.set_read_timeout(Some(HEALTH_CHECK_TIMEOUT))?;
    stream.set_write_timeout(Some(HEALTH_CHECK_TIMEOUT))?;
    let key = api_key
        .map(|k| format!("X-API-Key: {k}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\n{key}Connection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an HTTP response"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
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
        Ok(None) => Evidence::Down("no handshake yet".into()),
        Ok(Some(at)) => match SystemTime::now().duration_since(at) {
            Ok(age) if age > max_age => Evidence::Down(format!("handshake {}s old", age.as_secs())),
            _ => Evidence::Up,
        },
        Err(error) => Evidence::Down(format!("asking {}: {error}", socket.display())),
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
}
