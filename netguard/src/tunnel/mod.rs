//! Tunnel health: whether a gateway's VPN is really up, from the evidence it offers.
//!
//! Each source gives evidence: up, or down with a reason. Unknown or unreachable evidence
//! is down (fail closed). Sources combine with `all` (default) or `any`; hysteresis needs
//! `down_after` bad rounds to go down (default 1: at once) and `up_after` good rounds to
//! come back (default 2), so a flapping source cannot flap the killswitch open. The
//! transitions themselves are counted where they take effect: in the gateway's kernel slot.

pub mod gluetun;
pub mod probe;
pub mod wireguard;

use std::{net::SocketAddr, time::Duration};

use crate::config::{DEFAULT_DOWN_AFTER, DEFAULT_UP_AFTER};

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
            down_after: DEFAULT_DOWN_AFTER,
            up_after: DEFAULT_UP_AFTER,
        }
    }
}

impl HealthPolicy {
    /// The policy of a gateway without `netguard.health*` labels: its interface, and also
    /// Docker's health status when the container has a HEALTHCHECK (Gluetun has one).
    pub fn default_for(has_healthcheck: bool) -> Self {
        let mut policy = Self::default();
        if has_healthcheck {
            policy.sources.push(Source::DockerHealth);
        }
        policy
    }

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelHealth {
    pub up: bool,
    streak: u32,
    pub last_reason: String,
}

impl Default for TunnelHealth {
    fn default() -> Self {
        Self {
            up: false,
            streak: 0,
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
        true
    }
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
        let mut changes = 0;
        assert!(
            !health.observe(&policy, Ok(())),
            "one good round is not enough"
        );
        for (verdict, changed) in [
            (Ok(()), true),
            (Err("gone".to_string()), true),
            (Ok(()), false),
            (Err("flap".to_string()), false),
            (Ok(()), false),
            (Ok(()), true),
        ] {
            let reported = health.observe(&policy, verdict);
            assert_eq!(reported, changed, "{health:?}");
            changes += usize::from(reported);
        }
        assert!(health.up && health.last_reason == "flap");
        assert_eq!(changes, 3);
    }

    #[test]
    fn a_healthcheck_adds_docker_health_to_the_default_sources() {
        assert_eq!(
            HealthPolicy::default_for(false).sources,
            vec![Source::Interface]
        );
        assert_eq!(
            HealthPolicy::default_for(true).sources,
            vec![Source::Interface, Source::DockerHealth]
        );
    }
}
