//! What the host's network says: the subnets it reaches directly.
//!
//! A subnet counts when the kernel has a unicast route to it on a real interface without a
//! gateway (`/proc/net/route`, `/proc/net/ipv6_route`): not an unreachable, blackhole or
//! prohibit route, not one on loopback.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Result;
use ipnet::IpNet;

/// `RTF_GATEWAY`: the route goes through a router.
const RTF_GATEWAY: u32 = 0x0002;
/// `RTF_REJECT`: an unreachable, blackhole or prohibit route.
const RTF_REJECT: u32 = 0x0200;

/// Every subnet the host reaches directly, of any range.
pub fn direct_subnets() -> Result<Vec<IpNet>> {
    let mut subnets = Vec::new();
    if let Ok(text) = fs::read_to_string("/proc/net/route") {
        subnets.extend(direct_v4_routes(&text));
    }
    if let Ok(text) = fs::read_to_string("/proc/net/ipv6_route") {
        subnets.extend(direct_v6_routes(&text));
    }
    subnets.sort();
    subnets.dedup();
    Ok(subnets)
}

/// The host's directly reached private subnets (RFC 1918, ULA): its LANs.
pub fn connected_private_subnets() -> Result<Vec<IpNet>> {
    Ok(private(&direct_subnets()?).collect())
}

/// The private ones (RFC 1918, ULA) of `subnets`.
pub fn private(subnets: &[IpNet]) -> impl Iterator<Item = IpNet> + '_ {
    subnets.iter().copied().filter(|net| match net.addr() {
        IpAddr::V4(addr) => addr.is_private(),
        IpAddr::V6(addr) => (addr.segments()[0] & 0xfe00) == 0xfc00,
    })
}

/// `/proc/net/route`: Iface Destination Gateway Flags RefCnt Use Metric Mask ...
fn direct_v4_routes(text: &str) -> Vec<IpNet> {
    let mut subnets = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[0] == "lo" || f[0] == "*" || f[1] == "00000000" {
            continue;
        }
        let (Ok(dest), Ok(gateway), Ok(flags), Ok(mask)) = (
            u32::from_str_radix(f[1], 16),
            u32::from_str_radix(f[2], 16),
            u32::from_str_radix(f[3], 16),
            u32::from_str_radix(f[7], 16),
        ) else {
            continue;
        };
        if gateway != 0 || flags & (RTF_GATEWAY | RTF_REJECT) != 0 {
            continue;
        }
        let addr = Ipv4Addr::from(u32::from_be(dest));
        let prefix = u32::from_be(mask).count_ones() as u8;
        if let Ok(net) = IpNet::new(IpAddr::V4(addr), prefix) {
            subnets.push(net);
        }
    }
    subnets
}

/// `/proc/net/ipv6_route`: dest prefix src srcprefix nexthop metric refcnt use flags dev
fn direct_v6_routes(text: &str) -> Vec<IpNet> {
    let mut subnets = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[4] != "0".repeat(32) || f[9] == "lo" {
            continue;
        }
        let (Ok(dest), Ok(prefix), Ok(flags)) = (
            u128::from_str_radix(f[0], 16),
            u8::from_str_radix(f[1], 16),
            u32::from_str_radix(f[8], 16),
        ) else {
            continue;
        };
        let addr = Ipv6Addr::from(dest);
        // Link-local and multicast are built in; the default route is not a subnet.
        let special = addr.segments()[0] & 0xffc0 == 0xfe80 || addr.segments()[0] >> 8 == 0xff;
        if prefix == 0 || special || flags & (RTF_GATEWAY | RTF_REJECT) != 0 {
            continue;
        }
        if let Ok(net) = IpNet::new(IpAddr::V6(addr), prefix) {
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
    fn only_unicast_routes_on_a_real_interface_without_a_gateway_count() {
        let v4 = "Iface Destination Gateway Flags RefCnt Use Metric Mask\n\
                  eth0 00000000 0102A8C0 0003 0 0 0 00000000\n\
                  eth0 0002A8C0 00000000 0001 0 0 0 00FFFFFF\n\
                  eth1 00000A0A 00000000 0001 0 0 0 0000FFFF\n\
                  br0 007100CB 00000000 0001 0 0 0 00FFFFFF\n\
                  eth0 0000A8C0 0102A8C0 0003 0 0 0 0000FFFF\n\
                  * 0000630A 00000000 0201 0 0 0 0000FFFF\n\
                  lo 0000640A 00000000 0001 0 0 0 0000FFFF\n";
        assert_eq!(
            direct_v4_routes(v4),
            vec![
                "192.168.2.0/24".parse::<IpNet>().unwrap(),
                "10.10.0.0/16".parse().unwrap(),
                "203.0.113.0/24".parse().unwrap(),
            ],
            "not through a gateway, not unreachable (flag 0x200, no device), not on lo"
        );
        let zero = "0".repeat(32);
        let v6 = format!(
            "fd000000000000000000000000000000 40 {zero} 00 {zero} 100 1 0 00000001 eth0\n\
             20010db8000000000000000000000000 40 {zero} 00 {zero} 100 1 0 00000001 eth0\n\
             fd010000000000000000000000000000 40 {zero} 00 fe800000000000000000000000000001 \
             100 1 0 00000003 eth0\n\
             fd0e0000000000000000000000000000 10 {zero} 00 {zero} 400 1 0 00200200 lo\n\
             fd0f0000000000000000000000000000 10 {zero} 00 {zero} 400 1 0 00000200 eth0\n\
             fe800000000000000000000000000000 40 {zero} 00 {zero} 100 1 0 00000001 eth0\n"
        );
        assert_eq!(
            direct_v6_routes(&v6),
            vec![
                "fd00::/64".parse::<IpNet>().unwrap(),
                "2001:db8::/64".parse().unwrap()
            ]
        );
    }
}
