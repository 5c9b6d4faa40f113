//! The things netguard talks about, in the user's words: containers, cgroups, gateways, VPN
//! endpoints, blocked flows. Plain data; no I/O.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use anyhow::{Result, bail};
use ipnet::IpNet;
use netguard_common::{
    BlockReason, BlockedFlow, CONTAINER_ID_LEN, CarrierKey, ContainerKey, EndpointKey, FAMILY_V4,
    FAMILY_V6, Hook,
};
use thiserror::Error;

/// An interface's MAC address.
pub type Mac = [u8; 6];

/// The "MAC address" netguard gives an interface without a link-layer header (tun,
/// WireGuard, ppp): no Ethernet device has it.
pub const NO_LINK_HEADER: Mac = [0; 6];

/// A container's place on one Docker network: what Docker's embedded resolver answers for
/// it there, to the containers on the same network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkPlace {
    /// The network's name.
    pub network: String,
    /// The names Docker resolves to it there besides its own: aliases (a Compose service's
    /// name, the short id) and DNS names.
    pub names: Vec<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// A cgroup v2 id: the inode number of its directory, as `bpf_skb_cgroup_id` reports it.
pub type CgroupId = u64;

/// A Docker container id: 64 lowercase hex characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 12-character form Docker shows.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }

    /// The key the kernel's container registrations use.
    pub fn key(&self) -> ContainerKey {
        let mut key = ContainerKey {
            id: [0; CONTAINER_ID_LEN],
        };
        key.id.copy_from_slice(self.0.as_bytes());
        key
    }

    /// Whether `reference` names this container by id: the whole id or a prefix of it.
    pub fn matches_prefix(&self, reference: &str) -> bool {
        !reference.is_empty() && self.0.starts_with(reference)
    }
}

impl TryFrom<&[u8]> for ContainerId {
    type Error = anyhow::Error;

    fn try_from(bytes: &[u8]) -> Result<Self> {
        let valid = bytes.len() == CONTAINER_ID_LEN
            && bytes
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        if !valid {
            bail!(
                "{:?} is not a 64-character container id",
                String::from_utf8_lossy(bytes)
            );
        }
        Ok(Self(String::from_utf8_lossy(bytes).into_owned()))
    }
}

impl FromStr for ContainerId {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::try_from(text.as_bytes())
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A gateway's slot in the datapath (1..MAX_GATEWAYS).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GatewayId(pub u32);

/// Transport protocol of a VPN endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Transport::Tcp => 6,
            Transport::Udp => 17,
        }
    }
}

/// A VPN server a gateway's containers may reach even while the tunnel is down, so the
/// tunnel can come back: `ip:port/proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub transport: Transport,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "invalid VPN endpoint {value:?}: {why}; write ip:port/proto, e.g. 203.0.113.7:51820/udp or \
     [2001:db8::7]:1194/tcp"
)]
pub struct EndpointParseError {
    value: String,
    why: &'static str,
}

impl FromStr for Endpoint {
    type Err = EndpointParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let error = |why| EndpointParseError {
            value: value.to_string(),
            why,
        };
        let (addr, proto) = value.rsplit_once('/').ok_or_else(|| error("no /proto"))?;
        let transport = match proto.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            _ => return Err(error("proto must be udp or tcp")),
        };
        let addr: SocketAddr = addr.parse().map_err(|_| error("not an ip:port"))?;
        if addr.port() == 0 {
            return Err(error("port 0"));
        }
        Ok(Self { addr, transport })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        };
        write!(f, "{}/{proto}", self.addr)
    }
}

impl Endpoint {
    /// The kernel's key for this endpoint of gateway `slot`.
    pub fn key(&self, slot: GatewayId) -> EndpointKey {
        let (family, addr) = kernel_address(self.addr.ip());
        EndpointKey {
            gateway: slot.0,
            port: self.addr.port(),
            proto: self.transport.number(),
            family,
            addr,
        }
    }
}

/// The kernel's key for the carrier `to` (a kernel tunnel's peer) of namespace `netns_cookie`.
pub fn carrier_key(netns_cookie: u64, to: SocketAddr) -> CarrierKey {
    let (family, addr) = kernel_address(to.ip());
    CarrierKey {
        netns_cookie,
        port: to.port(),
        family,
        addr,
        _pad: [0; 5],
    }
}

/// An address as the kernel's keys hold it: family, and IPv4 in the first four bytes.
fn kernel_address(ip: IpAddr) -> (u8, [u8; 16]) {
    let mut addr = [0; 16];
    match ip {
        IpAddr::V4(ip) => {
            addr[..4].copy_from_slice(&ip.octets());
            (FAMILY_V4, addr)
        }
        IpAddr::V6(ip) => (FAMILY_V6, ip.octets()),
    }
}

/// The tunnel interface of a gateway, located in its network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TunnelInterface {
    pub ifindex: u32,
    pub netns_cookie: u64,
}

/// A CIDR, or a bare address as a single-host CIDR.
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// A blocked flow the kernel reported, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockedFlowEvent {
    pub cgroup_id: CgroupId,
    pub destination: Option<IpAddr>,
    pub port: u16,
    pub proto: u8,
    pub reason: Option<BlockReason>,
    pub hook: Option<Hook>,
    pub bytes: u32,
    /// When the kernel blocked it: `CLOCK_BOOTTIME` nanoseconds.
    pub at_boot_ns: u64,
}

impl From<&BlockedFlow> for BlockedFlowEvent {
    fn from(raw: &BlockedFlow) -> Self {
        let destination = match raw.family {
            FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(
                raw.addr[0],
                raw.addr[1],
                raw.addr[2],
                raw.addr[3],
            ))),
            FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(raw.addr))),
            _ => None,
        };
        Self {
            cgroup_id: raw.cgroup_id,
            destination,
            port: raw.port,
            proto: raw.proto,
            reason: BlockReason::from_raw(raw.reason),
            hook: Hook::from_raw(raw.hook),
            bytes: raw.bytes,
            at_boot_ns: raw.at_boot_ns,
        }
    }
}

impl BlockedFlowEvent {
    /// `ip:port/proto`, `[ip]:port/proto` for IPv6.
    pub fn destination_text(&self) -> String {
        let proto = match self.proto {
            1 | 58 => "icmp".to_string(),
            6 => "tcp".to_string(),
            17 => "udp".to_string(),
            other => other.to_string(),
        };
        match self.destination {
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{}/{proto}", self.port),
            Some(ip) => format!("{ip}:{}/{proto}", self.port),
            None => "unparseable packet".to_string(),
        }
    }

    pub fn reason_text(&self) -> &'static str {
        self.reason.map_or("unknown", BlockReason::as_str)
    }

    pub fn hook_text(&self) -> &'static str {
        self.hook.map_or("unknown", Hook::as_str)
    }
}

impl fmt::Display for BlockedFlowEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cgroup={} reason={} hook={}",
            self.destination_text(),
            self.cgroup_id,
            self.reason_text(),
            self.hook_text()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_parses_v4_and_v6() {
        let v4: Endpoint = "203.0.113.7:51820/udp".parse().unwrap();
        assert_eq!(v4.addr, "203.0.113.7:51820".parse().unwrap());
        assert_eq!(v4.transport, Transport::Udp);
        let v6: Endpoint = "[2001:db8::7]:1194/TCP".parse().unwrap();
        assert_eq!(v6.transport, Transport::Tcp);
        assert_eq!(v6.to_string(), "[2001:db8::7]:1194/tcp");
        let key = v4.key(GatewayId(3));
        assert_eq!(
            (key.gateway, key.port, key.proto, key.family),
            (3, 51820, 17, FAMILY_V4)
        );
        assert_eq!(key.addr[..4], [203, 0, 113, 7]);
    }

    #[test]
    fn endpoint_errors_name_the_value_and_the_fix() {
        for bad in [
            "203.0.113.7:51820",
            "203.0.113.7/udp",
            "203.0.113.7:0/udp",
            "x:1/icmp",
        ] {
            let error = bad.parse::<Endpoint>().unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
            assert!(error.contains("ip:port/proto"), "{error}");
        }
    }

    #[test]
    fn container_ids_are_64_lowercase_hex() {
        let id: ContainerId = "ab".repeat(32).parse().unwrap();
        assert_eq!(id.short(), "abababababab");
        assert!(id.matches_prefix("abab") && !id.matches_prefix("") && !id.matches_prefix("b"));
        assert!("AB".repeat(32).parse::<ContainerId>().is_err());
        assert!("ab".repeat(31).parse::<ContainerId>().is_err());
    }

    #[test]
    fn bare_addresses_are_single_host_cidrs() {
        assert_eq!(parse_cidr("10.0.0.1"), Some("10.0.0.1/32".parse().unwrap()));
        assert_eq!(parse_cidr("fd00::/8"), Some("fd00::/8".parse().unwrap()));
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
    }
}
