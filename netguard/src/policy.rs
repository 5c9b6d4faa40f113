//! The policy API: what the agent (and later the Docker watcher and tunnel health) calls to
//! change what the kernel enforces. Every write is ordered so that a half-applied change is
//! stricter than either end state, never looser.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use netguard_common::{
    CONTAINER_ID_LEN, CgroupPolicy, ContainerKey, Counters, EndpointKey, FAMILY_V4, FAMILY_V6,
    GATEWAY_NAME_LEN, GatewayState, MAX_GATEWAYS, POLICY_PROTECTED, SCOPE_BITS, SCOPE_GLOBAL,
    ScopedV4, ScopedV6, TUNNEL_UP,
};
use thiserror::Error;

use crate::{cgroup::CgroupId, maps::Maps};

/// Destinations every protected container may reach: loopback, link-local, local multicast
/// (ARP/NDP/IGMP need them) and limited broadcast.
pub const BUILTIN_INTERNAL_CIDRS: [&str; 7] = [
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/24",
    "255.255.255.255/32",
    "::1/128",
    "fe80::/10",
    "ff02::/16",
];

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

    fn key(&self) -> ContainerKey {
        let mut key = ContainerKey {
            id: [0; CONTAINER_ID_LEN],
        };
        key.id.copy_from_slice(self.0.as_bytes());
        key
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GatewayId(pub u32);

/// Transport protocol of a VPN endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    const fn number(self) -> u8 {
        match self {
            Transport::Tcp => 6,
            Transport::Udp => 17,
        }
    }
}

/// A VPN server a gateway's containers may reach even while the tunnel is down, so the
/// tunnel can come back: `ip:port/proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

/// The tunnel interface of a gateway, located in its network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelInterface {
    pub ifindex: u32,
    pub netns_cookie: u64,
}

/// What a gateway lets its containers reach besides internal networks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewaySpec {
    pub tunnel: Option<TunnelInterface>,
    pub endpoints: Vec<Endpoint>,
}

impl Maps {
    /// Protects `cgroup` (and every descendant without its own entry): egress only to
    /// internal destinations, `allow`, and the gateway's endpoints and live tunnel.
    pub fn protect(
        &mut self,
        cgroup: CgroupId,
        gateway: Option<GatewayId>,
        allow: &[IpNet],
    ) -> Result<()> {
        let policy = CgroupPolicy {
            flags: POLICY_PROTECTED,
            gateway: gateway.map_or(0, |id| id.0),
        };
        // The entry goes in first: until the allowances follow, the cgroup is only stricter.
        self.policy
            .insert(cgroup, policy, 0)
            .with_context(|| format!("writing the policy of cgroup {cgroup}"))?;
        self.set_scope_cidrs(cgroup, allow)
    }

    /// Counts `cgroup`'s traffic without restricting it.
    pub fn count_only(&mut self, cgroup: CgroupId) -> Result<()> {
        // Allowances go first (stricter while protected), then the entry flips to count-only.
        self.set_scope_cidrs(cgroup, &[])?;
        self.policy
            .insert(cgroup, CgroupPolicy::default(), 0)
            .with_context(|| format!("writing the policy of cgroup {cgroup}"))
    }

    /// Stops protecting and counting `cgroup`; its counters are kept.
    pub fn unprotect(&mut self, cgroup: CgroupId) -> Result<()> {
        remove_if_present(self.policy.remove(&cgroup))?;
        self.set_scope_cidrs(cgroup, &[])
    }

    /// Forgets `cgroup` entirely: policy, allowances and counters (its cgroup is gone).
    pub fn forget(&mut self, cgroup: CgroupId) -> Result<()> {
        self.unprotect(cgroup)?;
        remove_if_present(self.counters.remove(&cgroup))
    }

    /// Registers a container before its cgroup exists: the cgroup_mkdir classifier gives its
    /// cgroup `policy` (a protected or count-only one) the moment it is created.
    pub fn register_container(&mut self, id: &ContainerId, policy: CgroupPolicy) -> Result<()> {
        Ok(self.containers.insert(id.key(), policy, 0)?)
    }

    pub fn unregister_container(&mut self, id: &ContainerId) -> Result<()> {
        remove_if_present(self.containers.remove(&id.key()))
    }

    /// Every registered container.
    pub fn registered_containers(&self) -> Result<Vec<(ContainerId, CgroupPolicy)>> {
        let mut found = Vec::new();
        for entry in self.containers.iter() {
            let (key, policy) = entry?;
            if let Ok(id) = ContainerId::try_from(&key.id[..]) {
                found.push((id, policy));
            }
        }
        Ok(found)
    }

    /// Every cgroup with a policy entry.
    pub fn policies(&self) -> Result<Vec<(CgroupId, CgroupPolicy)>> {
        Ok(self.policy.iter().collect::<Result<_, _>>()?)
    }

    /// Replaces the internal destinations shared by every protected cgroup.
    pub fn set_internal_cidrs(&mut self, cidrs: &[IpNet]) -> Result<()> {
        self.set_scope_cidrs(SCOPE_GLOBAL, cidrs)
    }

    /// The internal destinations of `scope` (global or one cgroup's `allow`).
    pub fn scope_cidrs(&self, scope: u64) -> Result<Vec<IpNet>> {
        let want = scope.to_be_bytes();
        let mut cidrs = Vec::new();
        for key in self.internal_v4.keys() {
            let key = key?;
            let data = key.data();
            if data.scope == want {
                let prefix = (key.prefix_len() - SCOPE_BITS) as u8;
                cidrs.push(IpNet::new(IpAddr::from(data.addr), prefix)?);
            }
        }
        for key in self.internal_v6.keys() {
            let key = key?;
            let data = key.data();
            if data.scope == want {
                let prefix = (key.prefix_len() - SCOPE_BITS) as u8;
                cidrs.push(IpNet::new(IpAddr::from(data.addr), prefix)?);
            }
        }
        Ok(cidrs)
    }

    /// Removes the CIDRs no longer wanted, then adds the new ones: idempotent, and in between
    /// the allowed set is the intersection of the old and new sets, never more than either.
    fn set_scope_cidrs(&mut self, scope: u64, cidrs: &[IpNet]) -> Result<()> {
        let wanted: HashSet<IpNet> = cidrs.iter().map(IpNet::trunc).collect();
        let present: HashSet<IpNet> = self.scope_cidrs(scope)?.into_iter().collect();
        for cidr in present.difference(&wanted) {
            self.write_cidr(scope, cidr, false)
                .with_context(|| format!("removing internal CIDR {cidr}"))?;
        }
        for cidr in wanted.difference(&present) {
            self.write_cidr(scope, cidr, true)
                .with_context(|| format!("adding internal CIDR {cidr}"))?;
        }
        Ok(())
    }

    fn write_cidr(&mut self, scope: u64, cidr: &IpNet, add: bool) -> Result<()> {
        let scope = scope.to_be_bytes();
        let prefix = SCOPE_BITS + u32::from(cidr.prefix_len());
        match cidr.network() {
            IpAddr::V4(addr) => {
                let key = Key::new(
                    prefix,
                    ScopedV4 {
                        scope,
                        addr: addr.octets(),
                    },
                );
                if add {
                    self.internal_v4.insert(&key, 1, 0)?;
                } else {
                    remove_if_present(self.internal_v4.remove(&key))?;
                }
            }
            IpAddr::V6(addr) => {
                let key = Key::new(
                    prefix,
                    ScopedV6 {
                        scope,
                        addr: addr.octets(),
                    },
                );
                if add {
                    self.internal_v6.insert(&key, 1, 0)?;
                } else {
                    remove_if_present(self.internal_v6.remove(&key))?;
                }
            }
        }
        Ok(())
    }

    /// Every gateway slot in use, with its name.
    pub fn gateways(&self) -> Result<Vec<(GatewayId, String, GatewayState)>> {
        let mut found = Vec::new();
        for slot in 1..MAX_GATEWAYS {
            let state = self.gateways.get(&slot, 0)?;
            if state.in_use != 0 {
                found.push((GatewayId(slot), gateway_name(&state), state));
            }
        }
        Ok(found)
    }

    /// Creates or updates the gateway `name`. Its tunnel state is kept, unless the tunnel
    /// interface moved (or the gateway is new): then it is down until set up.
    pub fn set_gateway(&mut self, name: &str, spec: &GatewaySpec) -> Result<GatewayId> {
        if name.is_empty() || name.len() > GATEWAY_NAME_LEN {
            bail!("gateway name {name:?} must be 1 to {GATEWAY_NAME_LEN} bytes long: shorten it");
        }
        let existing = self.gateways()?;
        let (id, mut state) = match existing.iter().find(|(_, n, _)| n == name) {
            Some((id, _, state)) => (*id, *state),
            None => {
                let used: HashSet<u32> = existing.iter().map(|(id, _, _)| id.0).collect();
                let slot = (1..MAX_GATEWAYS)
                    .find(|slot| !used.contains(slot))
                    .with_context(|| {
                        format!("all {} gateway slots are in use", MAX_GATEWAYS - 1)
                    })?;
                let mut state = GatewayState {
                    in_use: 1,
                    ..GatewayState::default()
                };
                state.name[..name.len()].copy_from_slice(name.as_bytes());
                (GatewayId(slot), state)
            }
        };
        let wanted: HashSet<EndpointKey> =
            spec.endpoints.iter().map(|e| endpoint_key(id, e)).collect();
        let present: HashSet<EndpointKey> = self
            .endpoints
            .keys()
            .filter_map(Result::ok)
            .filter(|key| key.gateway == id.0)
            .collect();
        // Old endpoints go first: in between, only endpoints in both sets are allowed.
        for key in present.difference(&wanted) {
            remove_if_present(self.endpoints.remove(key))?;
        }
        for key in wanted.difference(&present) {
            self.endpoints.insert(key, 1, 0)?;
        }
        let tunnel = spec.tunnel.map_or((0, 0), |t| (t.ifindex, t.netns_cookie));
        if tunnel != (state.tunnel_ifindex, state.tunnel_netns_cookie) {
            // A moved tunnel is down until someone who knows says it is up.
            state.tunnel_up = 0;
            (state.tunnel_ifindex, state.tunnel_netns_cookie) = tunnel;
        }
        self.gateways.set(id.0, state, 0)?;
        Ok(id)
    }

    /// Frees the gateway slot `id`. Every policy and registration pointing at it is first
    /// rewritten to no gateway (stricter), so a slot reused later never hands another
    /// gateway's allowances to them.
    pub fn remove_gateway(&mut self, id: GatewayId) -> Result<()> {
        for (cgroup, mut policy) in self.policies()? {
            if policy.gateway == id.0 {
                policy.gateway = 0;
                self.policy.insert(cgroup, policy, 0)?;
            }
        }
        let registered: Vec<(ContainerKey, CgroupPolicy)> =
            self.containers.iter().filter_map(Result::ok).collect();
        for (key, mut policy) in registered {
            if policy.gateway == id.0 {
                policy.gateway = 0;
                self.containers.insert(key, policy, 0)?;
            }
        }
        self.gateways.set(id.0, GatewayState::default(), 0)?;
        let keys: Vec<EndpointKey> = self
            .endpoints
            .keys()
            .filter_map(Result::ok)
            .filter(|key| key.gateway == id.0)
            .collect();
        for key in keys {
            remove_if_present(self.endpoints.remove(&key))?;
        }
        Ok(())
    }

    /// Sets the tunnel state of `id` for every container behind it, in one map write.
    pub fn set_tunnel_state(&mut self, id: GatewayId, up: bool) -> Result<()> {
        let mut state = self.gateways.get(&id.0, 0)?;
        if state.in_use == 0 {
            bail!("gateway slot {} is not in use", id.0);
        }
        let wanted = if up { TUNNEL_UP } else { 0 };
        if state.tunnel_up != wanted {
            state.transitions += 1;
            state.last_change_secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
        }
        state.tunnel_up = wanted;
        self.gateways.set(id.0, state, 0)?;
        Ok(())
    }

    /// The counters of `cgroup`, summed over CPUs, if it has any.
    pub fn counters(&self, cgroup: CgroupId) -> Result<Option<Counters>> {
        match self.counters.get(&cgroup, 0) {
            Ok(per_cpu) => {
                let mut total = Counters::default();
                for counters in per_cpu.iter() {
                    total.accumulate(counters);
                }
                Ok(Some(total))
            }
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Interfaces with a backstop entry and the cgroup whose policy each one applies.
    pub fn backstops(&self) -> Result<Vec<(u32, CgroupId)>> {
        Ok(self.backstop.iter().collect::<Result<_, _>>()?)
    }

    /// Registers `ifindex` for `cgroup` without attaching anything (verdict tests run the
    /// backstop program on crafted frames through BPF_PROG_TEST_RUN).
    pub fn set_backstop_for_test(&mut self, ifindex: u32, cgroup: CgroupId) -> Result<()> {
        self.set_backstop(ifindex, cgroup)
    }

    /// See [`Maps::set_backstop_for_test`].
    pub fn remove_backstop_for_test(&mut self, ifindex: u32) -> Result<()> {
        self.remove_backstop(ifindex)
    }

    pub(crate) fn set_backstop(&mut self, ifindex: u32, cgroup: CgroupId) -> Result<()> {
        Ok(self.backstop.insert(ifindex, cgroup, 0)?)
    }

    pub(crate) fn remove_backstop(&mut self, ifindex: u32) -> Result<()> {
        remove_if_present(self.backstop.remove(&ifindex))
    }
}

fn gateway_name(state: &GatewayState) -> String {
    let end = state
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(state.name.len());
    String::from_utf8_lossy(&state.name[..end]).into_owned()
}

fn endpoint_key(gateway: GatewayId, endpoint: &Endpoint) -> EndpointKey {
    let mut key = EndpointKey {
        gateway: gateway.0,
        port: endpoint.addr.port(),
        proto: endpoint.transport.number(),
        ..EndpointKey::default()
    };
    match endpoint.addr.ip() {
        IpAddr::V4(ip) => {
            key.family = FAMILY_V4;
            key.addr[..4].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            key.family = FAMILY_V6;
            key.addr = ip.octets();
        }
    }
    key
}

fn remove_if_present(result: Result<(), aya::maps::MapError>) -> Result<()> {
    use aya::maps::MapError;
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        // Some map types report a missing key as the syscall's ENOENT.
        Err(MapError::SyscallError(error))
            if error.io_error.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        Err(error) => Err(error.into()),
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
    fn builtin_internal_cidrs_parse() {
        for cidr in BUILTIN_INTERNAL_CIDRS {
            cidr.parse::<IpNet>().unwrap();
        }
    }
}
