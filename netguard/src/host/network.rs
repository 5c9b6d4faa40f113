//! What the host's network says: the veths of a container's namespace, and the subnets the
//! host reaches directly.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::{Context as _, Result};
use ipnet::IpNet;

use crate::netns;

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
    let Ok(name) = netns::interface_name(host) else {
        return false;
    };
    fs::read_to_string(format!("/sys/class/net/{name}/iflink"))
        .ok()
        .and_then(|l| l.trim().parse::<u32>().ok())
        == Some(container)
}

/// The host's directly connected private subnets (RFC 1918, ULA), from the kernel's routes.
pub fn connected_private_subnets() -> Result<Vec<IpNet>> {
    let mut subnets = Vec::new();
    if let Ok(text) = fs::read_to_string("/proc/net/route") {
        subnets.extend(private_v4_routes(&text));
    }
    if let Ok(text) = fs::read_to_string("/proc/net/ipv6_route") {
        subnets.extend(private_v6_routes(&text));
    }
    subnets.sort();
    subnets.dedup();
    Ok(subnets)
}

/// `/proc/net/route`: Iface Destination Gateway Flags RefCnt Use Metric Mask ...
fn private_v4_routes(text: &str) -> Vec<IpNet> {
    let mut subnets = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[2] != "00000000" || f[1] == "00000000" {
            continue;
        }
        let (Ok(dest), Ok(mask)) = (u32::from_str_radix(f[1], 16), u32::from_str_radix(f[7], 16))
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
    subnets
}

/// `/proc/net/ipv6_route`: dest prefix src srcprefix nexthop metric refcnt use flags dev
fn private_v6_routes(text: &str) -> Vec<IpNet> {
    let mut subnets = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[4] != "0".repeat(32) {
            continue;
        }
        let (Ok(dest), Ok(prefix)) = (u128::from_str_radix(f[0], 16), u8::from_str_radix(f[1], 16))
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
    subnets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_subnets_are_private_only() {
        for net in connected_private_subnets().unwrap() {
            match net.addr() {
                IpAddr::V4(a) => assert!(a.is_private(), "{net}"),
                IpAddr::V6(a) => assert_eq!(a.segments()[0] & 0xfe00, 0xfc00, "{net}"),
            }
        }
    }

    #[test]
    fn routes_through_a_gateway_and_public_subnets_are_left_out() {
        let v4 = "Iface Destination Gateway Flags RefCnt Use Metric Mask\n\
                  eth0 00000000 0102A8C0 0003 0 0 0 00000000\n\
                  eth0 0002A8C0 00000000 0001 0 0 0 00FFFFFF\n\
                  eth1 00000A0A 00000000 0001 0 0 0 0000FFFF\n\
                  eth2 007100CB 00000000 0001 0 0 0 00FFFFFF\n\
                  eth0 0000A8C0 0102A8C0 0003 0 0 0 0000FFFF\n";
        assert_eq!(
            private_v4_routes(v4),
            vec![
                "192.168.2.0/24".parse::<IpNet>().unwrap(),
                "10.10.0.0/16".parse().unwrap()
            ]
        );
        let zero = "0".repeat(32);
        let v6 = format!(
            "fd000000000000000000000000000000 40 {zero} 00 {zero} 100 1 0 1 eth0\n\
             20010db8000000000000000000000000 40 {zero} 00 {zero} 100 1 0 1 eth0\n\
             fd010000000000000000000000000000 40 {zero} 00 fe800000000000000000000000000001 \
             100 1 0 3 eth0\n"
        );
        assert_eq!(
            private_v6_routes(&v6),
            vec!["fd00::/64".parse::<IpNet>().unwrap()]
        );
    }
}
