//! The parser on crafted bytes, on the host: the same code the kernel programs run.

extern crate std;

use std::vec::Vec;

use super::*;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const HOPOPTS: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DSTOPTS: u8 = 60;
const AH: u8 = 51;

fn udp(port: u16, payload: usize) -> Vec<u8> {
    let mut h = std::vec![0u8; 8 + payload];
    h[0..2].copy_from_slice(&40000u16.to_be_bytes());
    h[2..4].copy_from_slice(&port.to_be_bytes());
    h
}

fn tcp(port: u16) -> Vec<u8> {
    let mut h = std::vec![0u8; 20];
    h[2..4].copy_from_slice(&port.to_be_bytes());
    h
}

/// An IPv4 packet to `dst` with `options` (padded by the caller) and `proto` payload.
fn ipv4(dst: [u8; 4], options: &[u8], proto: u8, fragment: u16, rest: &[u8]) -> Vec<u8> {
    let ihl = 20 + options.len();
    let mut p = std::vec![0u8; ihl];
    p[0] = 0x40 | (ihl / 4) as u8;
    p[2..4].copy_from_slice(&((ihl + rest.len()) as u16).to_be_bytes());
    p[6..8].copy_from_slice(&fragment.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&[198, 18, 1, 2]);
    p[16..20].copy_from_slice(&dst);
    p[20..].copy_from_slice(options);
    p.extend_from_slice(rest);
    p
}

fn ipv6(dst: [u8; 16], next: u8, rest: &[u8]) -> Vec<u8> {
    let mut p = std::vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(rest.len() as u16).to_be_bytes());
    p[6] = next;
    p[7] = 64;
    p[24..40].copy_from_slice(&dst);
    p.extend_from_slice(rest);
    p
}

/// An 8-byte extension header (hop-by-hop, destination options or routing).
fn ext(next: u8, segments_left: u8) -> Vec<u8> {
    std::vec![next, 0, 0, segments_left, 0, 0, 0, 0]
}

fn fragment(next: u8, offset_units: u16) -> Vec<u8> {
    let mut h = std::vec![next, 0, 0, 0, 0, 0, 0, 1];
    h[2..4].copy_from_slice(&(offset_units << 3).to_be_bytes());
    h
}

fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[1] = 0x0e;
    a[15] = last;
    a
}

fn parse4(p: &[u8]) -> Result<Flow, Malformed> {
    parse_ip(p, 0, ETH_P_IP)
}

fn parse6(p: &[u8]) -> Result<Flow, Malformed> {
    parse_ip(p, 0, ETH_P_IPV6)
}

#[test]
fn ipv4_udp_and_tcp_give_destination_and_port() {
    let flow = parse4(&ipv4([198, 18, 2, 2], &[], UDP, 0, &udp(53, 12))).unwrap();
    assert_eq!(
        (flow.family, flow.proto, flow.port, flow.port_known),
        (FAMILY_V4, UDP, 53, true)
    );
    assert_eq!(flow.addr[..4], [198, 18, 2, 2]);
    assert_eq!(flow.addr[4..], [0; 12]);
    let flow = parse4(&ipv4([10, 0, 0, 1], &[], TCP, 0, &tcp(443))).unwrap();
    assert_eq!((flow.proto, flow.port), (TCP, 443));
}

#[test]
fn an_offset_skips_the_ethernet_header() {
    let mut frame = std::vec![0u8; 14];
    frame.extend(ipv4([198, 18, 2, 2], &[], UDP, 0, &udp(7, 0)));
    let flow = parse_ip(&frame[..], 14, ETH_P_IP).unwrap();
    assert_eq!(flow.port, 7);
}

#[test]
fn protocols_without_ports_have_no_port() {
    let flow = parse4(&ipv4(
        [198, 18, 2, 2],
        &[],
        ICMP,
        0,
        &[8, 0, 0, 0, 0, 0, 0, 0],
    ))
    .unwrap();
    assert!(!flow.port_known);
}

#[test]
fn ipv4_options_are_walked_and_source_routes_refused() {
    let dst = [198, 18, 2, 2];
    // NOOPs and an END: fine.
    assert!(parse4(&ipv4(dst, &[1, 1, 1, 0], UDP, 0, &udp(9, 0))).is_ok());
    // A timestamp-like option of length 4.
    assert!(parse4(&ipv4(dst, &[0x44, 4, 5, 0], UDP, 0, &udp(9, 0))).is_ok());
    // Loose and strict source routes.
    for kind in [0x83, 0x89] {
        let options = [kind, 7, 4, 198, 18, 4, 2, 0];
        assert_eq!(
            parse4(&ipv4(dst, &options, UDP, 0, &udp(9, 0))),
            Err(Malformed)
        );
    }
    // An option that runs past the header, and one with a length below 2.
    assert_eq!(
        parse4(&ipv4(dst, &[0x44, 12, 0, 0], UDP, 0, &udp(9, 0))),
        Err(Malformed)
    );
    assert_eq!(
        parse4(&ipv4(dst, &[0x44, 1, 0, 0], UDP, 0, &udp(9, 0))),
        Err(Malformed)
    );
}

#[test]
fn ipv4_lengths_must_agree_with_the_buffer() {
    let mut p = ipv4([198, 18, 2, 2], &[], UDP, 0, &udp(9, 4));
    // Total length past the buffer.
    p[2..4].copy_from_slice(&200u16.to_be_bytes());
    assert_eq!(parse4(&p), Err(Malformed));
    // Total length below the header length.
    p[2..4].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(parse4(&p), Err(Malformed));
    // IHL below 5 words, and a wrong version nibble.
    let mut p = ipv4([198, 18, 2, 2], &[], UDP, 0, &udp(9, 4));
    p[0] = 0x44;
    assert_eq!(parse4(&p), Err(Malformed));
    p[0] = 0x65;
    assert_eq!(parse4(&p), Err(Malformed));
}

#[test]
fn truncated_headers_are_malformed() {
    let whole = ipv4([198, 18, 2, 2], &[], TCP, 0, &tcp(80));
    for cut in 0..whole.len() {
        assert_eq!(parse4(&whole[..cut]), Err(Malformed), "cut at {cut}");
    }
    let whole = ipv6(v6(2), UDP, &udp(53, 0));
    for cut in 0..whole.len() {
        assert_eq!(parse6(&whole[..cut]), Err(Malformed), "cut at {cut}");
    }
}

#[test]
fn fragments_carry_a_port_only_in_the_first_one() {
    // More-fragments set, offset 0: the first fragment, port known.
    let first = ipv4([198, 18, 2, 2], &[], UDP, 0x2000, &udp(53, 8));
    assert!(parse4(&first).unwrap().port_known);
    // A later fragment: no port.
    let later = ipv4([198, 18, 2, 2], &[], UDP, 3, &[0; 16]);
    let flow = parse4(&later).unwrap();
    assert!(!flow.port_known && flow.port == 0);
    // A first fragment too small to hold the transport header (RFC 1858).
    let tiny = ipv4([198, 18, 2, 2], &[], TCP, 0x2000, &[0; 8]);
    assert_eq!(parse4(&tiny), Err(Malformed));
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let mut rest = ext(DSTOPTS, 0);
    rest.extend(ext(UDP, 0));
    rest.extend(udp(53, 0));
    let flow = parse6(&ipv6(v6(2), HOPOPTS, &rest)).unwrap();
    assert_eq!((flow.family, flow.proto, flow.port), (FAMILY_V6, UDP, 53));
    assert_eq!(flow.addr, v6(2));

    // A routing header that is done (segments left 0) is fine; one that is not is refused.
    let mut done = ext(UDP, 0);
    done.extend(udp(9, 0));
    assert!(parse6(&ipv6(v6(2), ROUTING, &done)).is_ok());
    let mut pending = ext(UDP, 1);
    pending.extend(udp(9, 0));
    assert_eq!(parse6(&ipv6(v6(2), ROUTING, &pending)), Err(Malformed));

    // AH: length in 4-byte units, plus 2.
    let mut ah = std::vec![UDP, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    ah.extend(udp(500, 0));
    assert_eq!(parse6(&ipv6(v6(2), AH, &ah)).unwrap().port, 500);
}

#[test]
fn ipv6_fragments_and_too_many_headers() {
    let mut first = fragment(UDP, 0);
    first.extend(udp(53, 0));
    assert_eq!(parse6(&ipv6(v6(2), FRAGMENT, &first)).unwrap().port, 53);
    let mut later = fragment(UDP, 10);
    later.extend([0u8; 16]);
    let flow = parse6(&ipv6(v6(2), FRAGMENT, &later)).unwrap();
    assert!(!flow.port_known && flow.proto == UDP);

    // Nine hop-by-hop headers: more than are walked, blocked rather than guessed.
    let mut rest = Vec::new();
    for _ in 0..9 {
        rest.extend(ext(HOPOPTS, 0));
    }
    rest.extend(udp(53, 0));
    assert_eq!(parse6(&ipv6(v6(2), HOPOPTS, &rest)), Err(Malformed));
}

#[test]
fn the_payload_length_must_fit_the_buffer() {
    let mut p = ipv6(v6(2), UDP, &udp(53, 0));
    p[4..6].copy_from_slice(&100u16.to_be_bytes());
    assert_eq!(parse6(&p), Err(Malformed));
    p[4..6].copy_from_slice(&9u16.to_be_bytes());
    assert_eq!(
        parse6(&p),
        Err(Malformed),
        "one byte more than the buffer holds"
    );
    p[4..6].copy_from_slice(&8u16.to_be_bytes());
    assert_eq!(parse6(&p).unwrap().port, 53);
}

#[test]
fn big_tcp_ipv4_super_packets_with_total_length_zero_are_parsed() {
    let mut p = ipv4([198, 18, 2, 2], &[], TCP, 0, &tcp(443));
    p.resize(0x1_0000 + 100, 0);
    p[2..4].copy_from_slice(&0u16.to_be_bytes());
    assert_eq!(parse4(&p).unwrap().port, 443);
}

#[test]
fn other_ethertypes_and_offsets_past_the_end_are_malformed() {
    let p = ipv4([198, 18, 2, 2], &[], UDP, 0, &udp(9, 0));
    assert_eq!(parse_ip(&p[..], 0, ETH_P_ARP), Err(Malformed));
    assert_eq!(parse_ip(&p[..], usize::MAX - 3, ETH_P_IP), Err(Malformed));
    assert_eq!(parse_ip(&p[..], p.len() + 1, ETH_P_IPV6), Err(Malformed));
}
