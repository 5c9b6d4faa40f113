//! The user's interface: container labels, read strictly. What they mean for a container's
//! policy is decided in [`crate::reconcile`].

use std::{net::SocketAddr, time::Duration};

use ipnet::IpNet;

use crate::{
    config::{DEFAULT_GLUETUN, DEFAULT_HANDSHAKE_MAX_AGE, DEFAULT_TUNNELS},
    domain::{Endpoint, parse_cidr},
    tunnel::{Combine, HealthPolicy, Source},
};

pub const VPN: &str = "vpn";
pub const ROLE: &str = "netguard.role";
pub const GATEWAY: &str = "netguard.gateway";
pub const ALLOW: &str = "netguard.allow";
pub const TUNNEL: &str = "netguard.tunnel";
pub const ENDPOINTS: &str = "netguard.endpoints";
pub const HEALTH: &str = "netguard.health";
pub const HEALTH_COMBINE: &str = "netguard.health.combine";
pub const HEALTH_UP_AFTER: &str = "netguard.health.up-after";
pub const HEALTH_DOWN_AFTER: &str = "netguard.health.down-after";
pub const GLUETUN: &str = "netguard.gluetun";
pub const GLUETUN_API_KEY: &str = "netguard.gluetun.apikey";
pub const HANDSHAKE_MAX_AGE: &str = "netguard.handshake.max-age";
pub const PROBE: &str = "netguard.probe";
pub const HEAL: &str = "netguard.heal";
pub const DNS: &str = "netguard.dns";
/// Every `netguard.*` key netguard reads.
pub const KNOWN_NETGUARD_KEYS: [&str; 15] = [
    ROLE,
    GATEWAY,
    ALLOW,
    TUNNEL,
    ENDPOINTS,
    HEALTH,
    HEALTH_COMBINE,
    HEALTH_UP_AFTER,
    HEALTH_DOWN_AFTER,
    GLUETUN,
    GLUETUN_API_KEY,
    HANDSHAKE_MAX_AGE,
    PROBE,
    HEAL,
    DNS,
];

/// Whether the agent restarts a container stranded in a restarted gateway's old network
/// namespace (`netguard.heal`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Heal {
    /// As the configuration says (`heal_stranded`, default off).
    #[default]
    Default,
    /// `restart`: yes.
    Restart,
    /// `off`: never, whatever the configuration says.
    Off,
}

/// What a container's labels ask for, read strictly: a malformed value never loosens
/// protection; it is reported in `problems`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerLabels {
    pub protected: bool,
    pub is_gateway: bool,
    pub gateway: Option<String>,
    pub allow: Vec<IpNet>,
    pub tunnel_interfaces: Vec<String>,
    pub endpoints: Vec<Endpoint>,
    /// Tunnel health for a gateway; `None` when no `netguard.health*` label says otherwise.
    pub health: Option<HealthPolicy>,
    pub heal: Heal,
    /// `netguard.dns`: the resolver netguard forwards external names to (on a gateway: its
    /// containers' resolver, seen from its namespace; on a protected container: the one the
    /// operator allows it, which overrides its gateway's).
    pub dns: Option<SocketAddr>,
    /// One line per malformed or unknown label, naming the key and the value.
    pub problems: Vec<String>,
}

/// Whether `key` can loosen what a container may reach (or name what it may use): such a
/// label counts only when set on the container itself, never when it comes with the image.
pub fn loosens(key: &str) -> bool {
    key.starts_with("netguard.") && key != "netguard.test"
}

/// Where a container's label values come from, for [`ContainerLabels::parse_container`].
#[derive(Clone, Copy)]
pub enum ImageLabels<'a> {
    /// The image's labels, as `docker image inspect` shows them.
    Known(&'a std::collections::HashMap<String, String>),
    /// Not known yet (a create event): every loosening label is set aside until they are.
    Unknown,
}

impl ImageLabels<'_> {
    /// Whether the container's `key=value` may be the image's (always, while the image's
    /// labels are not known): then it is not the container's own to trust.
    pub fn may_have_given(&self, key: &str, value: &str) -> bool {
        match self {
            ImageLabels::Known(image) => image.get(key).map(String::as_str) == Some(value),
            ImageLabels::Unknown => true,
        }
    }
}

impl ContainerLabels {
    /// A container's labels, with those it got from its image told apart: Docker copies an
    /// image's labels into the container's, so an image could otherwise open its own
    /// container (`netguard.allow=0.0.0.0/0`) or pose as a gateway. A loosening label whose
    /// value is the image's is ignored and reported; `vpn=required` from an image still
    /// protects (stricter is fine).
    pub fn parse_container<'a>(
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        image: ImageLabels<'_>,
    ) -> Self {
        let mut from_image = Vec::new();
        let own: Vec<(&str, &str)> = labels
            .into_iter()
            .filter(|(key, value)| {
                let inherited = loosens(key) && image.may_have_given(key, value);
                if inherited && matches!(image, ImageLabels::Known(_)) {
                    from_image.push(format!(
                        "label {key}={value:?} comes from the image: ignored (set it on the \
                         container, with docker run --label or Compose labels:, to use it)"
                    ));
                }
                !inherited
            })
            .collect();
        let mut parsed = Self::parse(own);
        parsed.problems.extend(from_image);
        parsed
    }

    pub fn parse<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut parsed = Self::default();
        let all: Vec<(&str, &str)> = labels.into_iter().collect();
        for &(key, value) in &all {
            match key {
                VPN => {
                    parsed.protected = true;
                    if value != "required" {
                        parsed.problems.push(format!(
                            "label vpn={value:?} is not \"required\": protecting anyway (remove \
                             the label to leave the container unprotected)"
                        ));
                    }
                }
                ROLE => {
                    if value == "vpn-gateway" {
                        parsed.is_gateway = true;
                    } else {
                        parsed.problems.push(format!(
                            "label {ROLE}={value:?} is unknown: the only role is \"vpn-gateway\""
                        ));
                    }
                }
                GATEWAY => parsed.gateway = Some(value.to_string()).filter(|v| !v.is_empty()),
                ALLOW => {
                    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                        match parse_cidr(item) {
                            Some(cidr) => parsed.allow.push(cidr),
                            None => parsed.problems.push(format!(
                                "label {ALLOW}: {item:?} is not a CIDR (e.g. 192.168.1.0/24): \
                                 ignored, the container stays protected without it"
                            )),
                        }
                    }
                }
                TUNNEL => {
                    parsed.tunnel_interfaces = value
                        .split(',')
                        .map(str::trim)
                        .filter(|i| !i.is_empty())
                        .map(String::from)
                        .collect();
                }
                ENDPOINTS => {
                    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                        match item.parse::<Endpoint>() {
                            Ok(endpoint) => parsed.endpoints.push(endpoint),
                            Err(error) => {
                                parsed.problems.push(format!("label {ENDPOINTS}: {error}"))
                            }
                        }
                    }
                }
                HEAL => match value {
                    "restart" => parsed.heal = Heal::Restart,
                    "off" => parsed.heal = Heal::Off,
                    other => parsed.problems.push(format!(
                        "label {HEAL}={other:?} is unknown: write restart (the agent restarts \
                         it when its gateway's restart strands it) or off"
                    )),
                },
                DNS => match parse_resolver(value) {
                    Some(resolver) => parsed.dns = Some(resolver),
                    None => parsed.problems.push(format!(
                        "label {DNS}={value:?} is not an address or address:port (e.g. \
                         10.64.0.1 or 10.64.0.1:53), or is Docker's own resolver: ignored, the \
                         gateway's resolver is used"
                    )),
                },
                HEALTH | HEALTH_COMBINE | HEALTH_UP_AFTER | HEALTH_DOWN_AFTER | GLUETUN
                | GLUETUN_API_KEY | HANDSHAKE_MAX_AGE | PROBE => {}
                other if loosens(other) => {
                    parsed.problems.push(format!(
                        "unknown label {other:?}: known netguard labels are {}",
                        KNOWN_NETGUARD_KEYS.join(", ")
                    ));
                }
                _ => {}
            }
        }
        parsed.health = health_policy(&all, &mut parsed.problems);
        if parsed.tunnel_interfaces.is_empty() {
            parsed.tunnel_interfaces = DEFAULT_TUNNELS.iter().map(|s| s.to_string()).collect();
        }
        parsed
    }
}

/// A resolver's address: `ip`, `ip:port` or `[ipv6]:port`; the port defaults to 53.
/// Docker's embedded resolver is never one: it forwards with dockerd's sockets, outside the
/// tunnel.
pub fn parse_resolver(value: &str) -> Option<SocketAddr> {
    let value = value.trim();
    value
        .parse::<SocketAddr>()
        .ok()
        .or_else(|| {
            value
                .parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, netguard_common::DNS_PORT))
        })
        .filter(|resolver| {
            resolver.ip() != std::net::IpAddr::from(netguard_common::DOCKER_RESOLVER_V4)
        })
}

/// The health policy the labels ask for; every malformed value reads as down.
fn health_policy(labels: &[(&str, &str)], problems: &mut Vec<String>) -> Option<HealthPolicy> {
    let get = |key: &str| labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    if !labels
        .iter()
        .any(|(k, _)| k.starts_with(HEALTH) || [GLUETUN, HANDSHAKE_MAX_AGE, PROBE].contains(k))
    {
        return None;
    }
    let mut policy = HealthPolicy::default();
    let gluetun: SocketAddr = match get(GLUETUN).unwrap_or(DEFAULT_GLUETUN).parse() {
        Ok(address) => address,
        Err(_) => {
            problems.push(format!(
                "label {GLUETUN}: {:?} is not ip:port",
                get(GLUETUN).unwrap_or_default()
            ));
            DEFAULT_GLUETUN.parse().expect("valid default")
        }
    };
    let max_age = match get(HANDSHAKE_MAX_AGE).map(str::parse::<u64>) {
        None => DEFAULT_HANDSHAKE_MAX_AGE,
        Some(Ok(seconds)) => Duration::from_secs(seconds),
        Some(Err(_)) => {
            problems.push(format!(
                "label {HANDSHAKE_MAX_AGE}: not a number of seconds: using 0 (always stale)"
            ));
            Duration::ZERO
        }
    };
    if let Some(list) = get(HEALTH) {
        policy.sources = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| match name {
                "interface" => Source::Interface,
                "docker" => Source::DockerHealth,
                "gluetun" => Source::Gluetun {
                    address: gluetun,
                    api_key: get(GLUETUN_API_KEY).map(String::from),
                },
                "handshake" => Source::Handshake { max_age },
                "probe" => match get(PROBE).and_then(|p| p.parse().ok()) {
                    Some(target) => Source::Probe { target },
                    None => {
                        problems.push(format!("label {HEALTH}: probe needs {PROBE}=ip:port"));
                        Source::Misconfigured(format!("{PROBE} missing or invalid"))
                    }
                },
                other => {
                    problems.push(format!(
                        "label {HEALTH}: unknown source {other:?} (known: interface, docker, gluetun, \
                         handshake, probe): it counts as down"
                    ));
                    Source::Misconfigured(format!("unknown source {other:?}"))
                }
            })
            .collect();
    }
    match get(HEALTH_COMBINE) {
        None | Some("all") => {}
        Some("any") => policy.combine = Combine::Any,
        Some(other) => problems.push(format!(
            "label {HEALTH_COMBINE}: {other:?} is not all or any: using all"
        )),
    }
    for (key, slot) in [
        (HEALTH_UP_AFTER, &mut policy.up_after),
        (HEALTH_DOWN_AFTER, &mut policy.down_after),
    ] {
        if let Some(value) = get(key) {
            match value.parse::<u32>() {
                Ok(n) if n >= 1 => *slot = n,
                _ => problems.push(format!(
                    "label {key}: {value:?} is not a count of at least 1"
                )),
            }
        }
    }
    Some(policy)
}

#[cfg(test)]
mod tests;
