//! The packet parser on arbitrary bytes: it must never panic or read out of bounds, and what
//! it accepts must be consistent with the bytes it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netguard_common::{
    FAMILY_V4, FAMILY_V6,
    parse::{ETH_P_IP, ETH_P_IPV6, parse_ip},
};

const PORT_PROTOCOLS: [u8; 4] = [6, 17, 132, 136];

fuzz_target!(|input: &[u8]| {
    // The first byte picks the family and whether an Ethernet header comes first.
    let Some((&selector, packet)) = input.split_first() else {
        return;
    };
    let ethertype = if selector & 1 == 0 { ETH_P_IP } else { ETH_P_IPV6 };
    let offset = if selector & 2 == 0 { 0 } else { 14 };
    let Ok(flow) = parse_ip(packet, offset, ethertype) else {
        return;
    };
    assert_eq!(parse_ip(packet, offset, ethertype), Ok(flow), "deterministic");
    if flow.port_known {
        assert!(PORT_PROTOCOLS.contains(&flow.proto), "{flow:?}");
    } else {
        assert_eq!(flow.port, 0, "{flow:?}");
    }
    if ethertype == ETH_P_IP {
        assert_eq!(flow.family, FAMILY_V4);
        assert_eq!(&flow.addr[..4], &packet[offset + 16..offset + 20]);
        assert_eq!(flow.addr[4..], [0; 12]);
        let ihl = usize::from(packet[offset] & 0x0f) * 4;
        assert!(ihl >= 20 && offset + ihl <= packet.len(), "{flow:?}");
    } else {
        assert_eq!(flow.family, FAMILY_V6);
        assert_eq!(&flow.addr[..], &packet[offset + 24..offset + 40]);
    }
});
