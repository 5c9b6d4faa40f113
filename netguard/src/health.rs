//! Tunnel health: whether a gateway's VPN is really up, from the evidence it offers.
//!
//! Each source gives evidence: up, or down with a reason. Unknown or unreachable evidence
//! is down (fail closed). Sources combine with `all` (default) or `any`; hysteresis needs
//! `down_after` bad rounds to go down (default 1: at once) and `up_after` good rounds to
//! come back (default 2), so a flapping source cannot flap the killswitch open.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use crate::netns;

/// How long one source may take before it counts as unreachable.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(800);
/// Default bound on the WireGuard handshake age.
pub const DEFAULT_HANDSHAKE_MAX_AGE: Duration = Duration::from_secs(180);
/// Gluetun's control server, inside its network namespace.
pub const DEFAULT_GLUETUN: &str = "127.0.0.1:8000";

/// One piece of evidence about a tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evidence {
    Up,
    Down(String),
}

/// Where evidence comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The tunnel interface is present, up and running in the gateway's namespace.
    Interface,
    /// The gateway container's Docker health status is `healthy`.
    DockerHealth,
    /// Gluetun's control server says `{"status":"running"}`.
    Gluetun {
        address: SocketAddr,
        api_key: Option<String>,
    },
    /// The WireGuard interface's latest handshake is recent enough.
    Handshake { max_age: Duration },
    /// A TCP connection to `target` (through the tunnel) succeeds.
    Probe { target: SocketAddr },
    /// A source named in a label that netguard does not know: always down (fail closed).
    Misconfigured(String),
}

impl Source {
    pub fn name(&self) -> &'static str {
        match self {
            Source::Interface => "interface",
            Source::DockerHealth => "docker",
            Source::Gluetun { .. } => "gluetun",
            Source::Handshake { .. } => "handshake",
            Source::Probe { .. } => "probe",
            Source::Misconfigured(_) => "misconfigured",
        }
    }
}

/// How evidence combines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    All,
    Any,
}

/// A gateway's health configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    pub sources: Vec<Source>,
    pub combine: Combine,
    pub down_after: u32,
    pub up_after: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            sources: vec![Source::Interface],
            combine: Combine::All,
            down_after: 1,
            up_after: 2,
        }
    }
}

impl HealthPolicy {
    /// Combines one round of evidence into a verdict (`Err` names why it is down).
    pub fn verdict(&self, evidence: &[(&'static str, Evidence)]) -> Result<(), String> {
        let down: Vec<String> = evidence
            .iter()
            .filter_map(|(name, e)| match e {
                Evidence::Down(why) => Some(format!("{name}: {why}")),
                Evidence::Up => None,
            })
            .collect();
        let up = evidence.len() - down.len();
        let healthy = match self.combine {
            Combine::All => !evidence.is_empty() && down.is_empty(),
            Combine::Any => up > 0,
        };
        if healthy {
            Ok(())
        } else if down.is_empty() {
            Err("no health source configured".into())
        } else {
            Err(down.join("; "))
        }
    }
}

/// A gateway's tunnel state with hysteresis; starts down.
#[derive(Clone, Debug)]
pub struct TunnelHealth {
    pub up: bool,
    streak: u32,
    pub transitions: u64,
    pub last_change: SystemTime,
    pub last_reason: String,
}

impl Default for TunnelHealth {
    fn default() -> Self {
        Self {
            up: false,
            streak: 0,
            transitions: 0,
            last_change: SystemTime::now(),
            last_reason: "not checked yet".into(),
        }
    }
}

impl TunnelHealth {
    /// Records one round's verdict; returns true when the state changed.
    pub fn observe(&mut self, policy: &HealthPolicy, verdict: Result<(), String>) -> bool {
        let healthy = verdict.is_ok();
        if let Err(reason) = verdict {
            self.last_reason = reason;
        }
        if healthy == self.up {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if healthy {
            policy.up_after
        } else {
            policy.down_after
        };
        if self.streak < needed.max(1) {
            return false;
        }
        self.up = healthy;
        self.streak = 0;
        self.transitions += 1;
        self.last_change = SystemTime::now();
        true
    }
}

/// Gathers evidence from the sources that look at the gateway's namespace (everything but
/// Docker health, which the watcher knows from events). Blocking; run off the event loop.
pub fn probe_sources(
    policy: &HealthPolicy,
    pid: u32,
    interface: Option<&str>,
    docker_healthy: Option<bool>,
) -> Vec<(&'static str, Evidence)> {
    let netns_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
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
                    TcpStream::connect_timeout(target, CHECK_TIMEOUT)
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
    let mut stream = TcpStream::connect_timeout(&address, CHECK_TIMEOUT)?;
    stream.set_read_timeout(Some(CHECK_TIMEOUT))?;
    stream.set_write_timeout(Some(CHECK_TIMEOUT))?;
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
    stream.set_read_timeout(Some(CHECK_TIMEOUT))?;
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
    let text = String::from_utf8_lossy(&reply);
    let latest = text
        .lines()
        .filter_map(|l| l.strip_prefix("last_handshake_time_sec="))
        .filter_map(|s| s.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    Ok((latest > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(latest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_needs_every_source_and_any_needs_one() {
        let all = HealthPolicy::default();
        let any = HealthPolicy {
            combine: Combine::Any,
            ..HealthPolicy::default()
        };
        let mixed = [("a", Evidence::Up), ("b", Evidence::Down("x".into()))];
        assert!(all.verdict(&mixed).unwrap_err().contains("b: x"));
        assert!(any.verdict(&mixed).is_ok());
        assert!(all.verdict(&[]).is_err(), "no evidence is no health");
    }

    #[test]
    fn hysteresis_goes_down_at_once_and_up_after_two_good_rounds() {
        let policy = HealthPolicy::default();
        let mut health = TunnelHealth::default();
        assert!(
            !health.observe(&policy, Ok(())),
            "one good round is not enough"
        );
        assert!(health.observe(&policy, Ok(())));
        assert!(health.up);
        assert!(health.observe(&policy, Err("gone".into())), "down at once");
        assert!(!health.up && health.last_reason == "gone");
        assert!(!health.observe(&policy, Ok(())));
        assert!(
            !health.observe(&policy, Err("flap".into())),
            "a flap resets the streak"
        );
        assert!(!health.observe(&policy, Ok(())));
        assert!(health.observe(&policy, Ok(())));
        assert_eq!(health.transitions, 3);
    }
}
