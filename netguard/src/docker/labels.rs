//! The user's interface: container labels.

use ipnet::IpNet;

use crate::{config::parse_cidr, policy::Endpoint};

pub const VPN: &str = "vpn";
pub const ROLE: &str = "netguard.role";
pub const GATEWAY: &str = "netguard.gateway";
pub const ALLOW: &str = "netguard.allow";
pub const TUNNEL: &str = "netguard.tunnel";
pub const ENDPOINTS: &str = "netguard.endpoints";
/// Every `netguard.*` key netguard reads.
pub const KNOWN_NETGUARD_KEYS: [&str; 5] = [ROLE, GATEWAY, ALLOW, TUNNEL, ENDPOINTS];

/// Default tunnel interfaces looked for in a gateway's namespace, in order.
pub const DEFAULT_TUNNELS: [&str; 2] = ["wg0", "tun0"];

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
    /// One line per malformed or unknown label, naming the key and the value.
    pub problems: Vec<String>,
}

impl ContainerLabels {
    pub fn parse<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut parsed = Self::default();
        for (key, value) in labels {
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
                other if other.starts_with("netguard.") && other != "netguard.test" => {
                    parsed.problems.push(format!(
                        "unknown label {other:?}: known netguard labels are {}",
                        KNOWN_NETGUARD_KEYS.join(", ")
                    ));
                }
                _ => {}
            }
        }
        if parsed.tunnel_interfaces.is_empty() {
            parsed.tunnel_interfaces = DEFAULT_TUNNELS.iter().map(|s| s.to_string()).collect();
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vpn_required_protects() {
        let labels = ContainerLabels::parse([
            ("vpn", "required"),
            ("netguard.allow", "10.0.0.0/8, 192.168.1.5"),
        ]);
        assert!(labels.protected);
        assert_eq!(
            labels.allow,
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.168.1.5/32".parse().unwrap()
            ]
        );
        assert!(labels.problems.is_empty());
    }

    #[test]
    fn malformed_values_are_reported_and_read_strictly() {
        let labels =
            ContainerLabels::parse([("vpn", "yes"), ("netguard.allow", "10.0.0.0/8,10.1.0.0/33")]);
        assert!(labels.protected, "an unexpected vpn value still protects");
        assert_eq!(
            labels.allow,
            vec!["10.0.0.0/8".parse().unwrap()],
            "the bad CIDR is dropped"
        );
        assert_eq!(labels.problems.len(), 2);
        assert!(labels.problems[1].contains("10.1.0.0/33"));
    }

    #[test]
    fn unknown_netguard_keys_are_named_with_the_known_ones() {
        let labels = ContainerLabels::parse([("vpn", "required"), ("netguard.alow", "10.0.0.0/8")]);
        assert!(labels.protected && labels.allow.is_empty());
        assert!(labels.problems[0].contains("netguard.alow") && labels.problems[0].contains(ALLOW));
    }

    #[test]
    fn gateway_labels() {
        let labels = ContainerLabels::parse([
            ("netguard.role", "vpn-gateway"),
            ("netguard.endpoints", "203.0.113.7:51820/udp"),
        ]);
        assert!(labels.is_gateway && !labels.protected);
        assert_eq!(labels.endpoints.len(), 1);
        assert_eq!(labels.tunnel_interfaces, vec!["wg0", "tun0"]);
    }
}
