//! Verdicts on crafted packets through BPF_PROG_TEST_RUN: the programs and maps are real
//! (loaded privately, attached nowhere); the packets are ones a socket would rarely send.

use std::net::{Ipv4Addr, Ipv6Addr};

use std::collections::BTreeSet;

use aya::programs::{TestRun, TestRunOptions};
use netguard::{
    kernel::Datapath,
    reconcile::{
        DesiredState, GatewayPlan, Policy,
        apply::{Applier, Prune},
    },
};
use netguard_common::{BlockReason, Counters};
use netguard_tests::{cgroups::ProcessInCgroup, require_root};

const INTERNAL_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
const EXTERNAL_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
const ENDPOINT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 4, 2);
const INTERNAL_V6: Ipv6Addr = Ipv6Addr::new(0xfd0e, 3, 0, 0, 0, 0, 0, 2);
const EXTERNAL_V6: Ipv6Addr = Ipv6Addr::new(0xfd0e, 2, 0, 0, 0, 0, 0, 2);
const ENDPOINT_V6: Ipv6Addr = Ipv6Addr::new(0xfd0e, 4, 0, 0, 0, 0, 0, 2);
const ENDPOINT_PORT: u16 = 51820;

const PASS: u32 = 1;
const DROP: u32 = 0;
const TC_NEXT: u32 = u32::MAX; // TC_ACT_UNSPEC (-1)
const TC_DROP: u32 = 2; // TC_ACT_SHOT

const UDP: u8 = 17;
const HOPOPTS: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DSTOPTS: u8 = 60;

/// A protected policy for this test process's own cgroup, in private maps, written by the
/// agent's own applier.
struct Verdicts {
    datapath: Datapath,
    applier: Applier,
    desired: DesiredState,
    cgroup: u64,
    in_cgroup: ProcessInCgroup,
}

impl Verdicts {
    fn new() -> Self {
        require_root();
        let in_cgroup = ProcessInCgroup::enter();
        let cgroup = in_cgroup.cgroup_id();
        let datapath = Datapath::load_unpinned().expect("load the programs");
        let applier = Applier::load(&datapath).unwrap();
        let mut desired = DesiredState {
            internal: ["198.18.3.0/24", "fd0e:3::/64"]
                .map(|cidr| cidr.parse().unwrap())
                .into(),
            ..DesiredState::default()
        };
        desired.gateways.insert(
            "vpn".into(),
            GatewayPlan {
                tunnel: None,
                endpoints: [
                    format!("{ENDPOINT_V4}:{ENDPOINT_PORT}/udp"),
                    format!("[{ENDPOINT_V6}]:{ENDPOINT_PORT}/udp"),
                ]
                .map(|e| e.parse().unwrap())
                .into(),
                up: false,
            },
        );
        desired.policies.insert(
            cgroup,
            Policy::Protected {
                gateway: Some("vpn".into()),
                allow: BTreeSet::new(),
            },
        );
        let mut verdicts = Self {
            datapath,
            applier,
            desired,
            cgroup,
            in_cgroup,
        };
        verdicts.apply();
        verdicts
    }

    /// Writes the desired state as the agent does.
    fn apply(&mut self) {
        let applied = self
            .applier
            .apply(&self.desired, &mut self.datapath, Prune::Yes, 1);
        assert!(applied.failures.is_empty(), "{:?}", applied.failures);
    }

    fn set_policy(&mut self, cgroup: u64, policy: Policy) {
        self.desired.policies.insert(cgroup, policy);
        self.apply();
    }

    /// Removes the policy entry of `cgroup` as the agent does when it is no longer wanted.
    fn remove_policy(&mut self, cgroup: u64) {
        self.desired.policies.remove(&cgroup);
        self.applier
            .retire_all_but(&self.desired.policies, &mut self.datapath)
            .unwrap();
    }

    /// The cgroup_skb egress verdict on an IP packet (given with its Ethernet header).
    fn egress(&mut self, frame: &[u8]) -> u32 {
        let program = self.datapath.egress_program().unwrap();
        let options = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        program
            .test_run(options)
            .expect("BPF_PROG_TEST_RUN")
            .return_value
    }

    /// The backstop verdict on a frame arriving on loopback (ifindex 1, what test runs use;
    /// a test run hands the program an Ethernet frame, so the device without a link header
    /// is tested in the lab: killswitch.rs).
    fn backstop(&mut self, frame: &[u8]) -> u32 {
        let program = self.datapath.backstop_program(true).unwrap();
        let options = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        program
            .test_run(options)
            .expect("BPF_PROG_TEST_RUN")
            .return_value
    }

    fn counters(&self) -> Counters {
        self.datapath
            .maps
            .counters(self.cgroup)
            .unwrap()
            .unwrap_or_default()
    }
}

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

fn udp(port: u16, payload_len: usize) -> Vec<u8> {
    let mut header = vec![0x9c, 0x40];
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    header.extend(std::iter::repeat_n(b'p', payload_len));
    header
}

/// An IPv4 packet; `options` must be a multiple of 4 bytes; `total_len` overrides the header.
fn ipv4(
    dst: Ipv4Addr,
    options: &[u8],
    fragment: u16,
    l4: &[u8],
    total_len: Option<u16>,
) -> Vec<u8> {
    let ihl = 5 + options.len() / 4;
    let len = total_len.unwrap_or((ihl * 4 + l4.len()) as u16);
    let mut packet = vec![0x40 | ihl as u8, 0];
    packet.extend_from_slice(&len.to_be_bytes());
    packet.extend_from_slice(&[0, 1]);
    packet.extend_from_slice(&fragment.to_be_bytes());
    packet.extend_from_slice(&[64, UDP, 0, 0, 198, 18, 1, 2]);
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(options);
    packet.extend_from_slice(l4);
    eth(0x0800, &packet)
}

/// An IPv6 packet whose first next-header is `next`; `rest` holds extension headers and L4.
fn ipv6(dst: Ipv6Addr, next: u8, rest: &[u8], payload_len: Option<u16>) -> Vec<u8> {
    let len = payload_len.unwrap_or(rest.len() as u16);
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&len.to_be_bytes());
    packet.extend_from_slice(&[next, 64]);
    packet.extend_from_slice(&Ipv6Addr::new(0xfd0e, 1, 0, 0, 0, 0, 0, 2).octets());
    packet.extend_from_slice(&dst.octets());
    packet.extend_from_slice(rest);
    eth(0x86dd, &packet)
}

/// An 8-byte options extension header (hop-by-hop or destination options).
fn options_header(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0] // PadN
}

fn routing_header(next: u8, segments_left: u8) -> Vec<u8> {
    let mut header = vec![next, 2, 0, segments_left, 0, 0, 0, 0];
    header.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets());
    header
}

fn fragment_header(next: u8, offset_units: u16, more: bool) -> Vec<u8> {
    let field = (offset_units << 3) | u16::from(more);
    let mut header = vec![next, 0];
    header.extend_from_slice(&field.to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 7]);
    header
}

#[test]
fn plain_packets_follow_the_policy() {
    let mut v = Verdicts::new();
    assert_eq!(
        v.egress(&ipv4(INTERNAL_V4, &[], 0, &udp(5300, 10), None)),
        PASS
    );
    assert_eq!(
        v.egress(&ipv4(EXTERNAL_V4, &[], 0, &udp(5300, 10), None)),
        DROP
    );
    assert_eq!(
        v.egress(&ipv4(ENDPOINT_V4, &[], 0, &udp(ENDPOINT_PORT, 10), None)),
        PASS
    );
    assert_eq!(
        v.egress(&ipv4(
            ENDPOINT_V4,
            &[],
            0,
            &udp(ENDPOINT_PORT + 1, 10),
            None
        )),
        DROP
    );
    assert_eq!(
        v.egress(&ipv6(INTERNAL_V6, UDP, &udp(5300, 10), None)),
        PASS
    );
    assert_eq!(
        v.egress(&ipv6(EXTERNAL_V6, UDP, &udp(5300, 10), None)),
        DROP
    );
    let c = v.counters();
    // The gateway's tunnel is down: that is the reason for the three external drops.
    assert_eq!(c.blocked_packets[BlockReason::TunnelDown as usize], 3);
    assert_eq!(c.tx_packets, 3);
    assert_eq!(c.tx_bytes, 2 * (20 + 18) + 40 + 18);
}

#[test]
fn ipv4_options_are_walked_and_source_routes_are_refused() {
    let mut v = Verdicts::new();
    let router_alert = [0x94, 0x04, 0, 0];
    let nop_then_end = [0x01, 0x01, 0x00, 0x00];
    for options in [&router_alert[..], &nop_then_end[..]] {
        assert_eq!(
            v.egress(&ipv4(INTERNAL_V4, options, 0, &udp(5300, 4), None)),
            PASS
        );
        assert_eq!(
            v.egress(&ipv4(EXTERNAL_V4, options, 0, &udp(5300, 4), None)),
            DROP
        );
    }
    // Loose and strict source routes: the header's destination is only the next hop.
    for kind in [0x83u8, 0x89] {
        let source_route = [0x01, kind, 7, 4, 198, 18, 2, 2];
        assert_eq!(
            v.egress(&ipv4(INTERNAL_V4, &source_route, 0, &udp(5300, 4), None)),
            DROP
        );
    }
    // An option whose length runs past the header.
    assert_eq!(
        v.egress(&ipv4(
            INTERNAL_V4,
            &[0x94, 0x09, 0, 0],
            0,
            &udp(5300, 4),
            None
        )),
        DROP
    );
    assert_eq!(
        v.counters().blocked_packets[BlockReason::Malformed as usize],
        3
    );
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let mut v = Verdicts::new();
    let mut chain = options_header(DSTOPTS);
    chain.extend(options_header(UDP));
    chain.extend(udp(ENDPOINT_PORT, 8));
    assert_eq!(
        v.egress(&ipv6(ENDPOINT_V6, HOPOPTS, &chain, None)),
        PASS,
        "endpoint port behind two headers"
    );
    let mut wrong_port = options_header(DSTOPTS);
    wrong_port.extend(options_header(UDP));
    wrong_port.extend(udp(ENDPOINT_PORT + 1, 8));
    assert_eq!(
        v.egress(&ipv6(ENDPOINT_V6, HOPOPTS, &wrong_port, None)),
        DROP
    );

    // A routing header with segments left sends the packet on elsewhere: refused even to an
    // internal next hop. With none left, the header's destination is final.
    let mut rerouted = routing_header(UDP, 1);
    rerouted.extend(udp(5300, 4));
    assert_eq!(v.egress(&ipv6(INTERNAL_V6, ROUTING, &rerouted, None)), DROP);
    let mut done = routing_header(UDP, 0);
    done.extend(udp(5300, 4));
    assert_eq!(v.egress(&ipv6(INTERNAL_V6, ROUTING, &done, None)), PASS);

    // More extension headers than the datapath walks: blocked, not guessed.
    let mut deep = Vec::new();
    for _ in 0..9 {
        deep.extend(options_header(DSTOPTS));
    }
    deep.extend(udp(5300, 4));
    assert_eq!(v.egress(&ipv6(INTERNAL_V6, DSTOPTS, &deep, None)), DROP);
    assert_eq!(
        v.counters().blocked_packets[BlockReason::Malformed as usize],
        2
    );
}

#[test]
fn fragments_without_ports_reach_internal_hosts_but_never_port_bound_endpoints() {
    let mut v = Verdicts::new();
    const MORE_FRAGMENTS: u16 = 0x2000;
    let first = udp(ENDPOINT_PORT, 16);
    assert_eq!(
        v.egress(&ipv4(ENDPOINT_V4, &[], MORE_FRAGMENTS, &first, None)),
        PASS
    );
    let later = [b'p'; 16];
    assert_eq!(v.egress(&ipv4(INTERNAL_V4, &[], 185, &later, None)), PASS);
    assert_eq!(
        v.egress(&ipv4(ENDPOINT_V4, &[], 185, &later, None)),
        DROP,
        "port unknowable"
    );
    assert_eq!(v.egress(&ipv4(EXTERNAL_V4, &[], 185, &later, None)), DROP);

    let mut first6 = fragment_header(UDP, 0, true);
    first6.extend(udp(ENDPOINT_PORT, 16));
    assert_eq!(v.egress(&ipv6(ENDPOINT_V6, FRAGMENT, &first6, None)), PASS);
    let mut later6 = fragment_header(UDP, 3, false);
    later6.extend_from_slice(&[b'p'; 16]);
    assert_eq!(v.egress(&ipv6(INTERNAL_V6, FRAGMENT, &later6, None)), PASS);
    assert_eq!(
        v.egress(&ipv6(ENDPOINT_V6, FRAGMENT, &later6, None)),
        DROP,
        "port unknowable"
    );
    // A later fragment's payload is not parsed as headers, whatever the next-header says.
    let mut later_dstopts = fragment_header(DSTOPTS, 3, false);
    later_dstopts.extend_from_slice(&[0xff; 16]);
    assert_eq!(
        v.egress(&ipv6(INTERNAL_V6, FRAGMENT, &later_dstopts, None)),
        PASS
    );
    assert_eq!(
        v.counters().blocked_packets[BlockReason::Malformed as usize],
        0
    );
}

#[test]
fn a_count_only_ancestor_cannot_loosen_a_protected_cgroup() {
    let mut v = Verdicts::new();
    let parent = v.in_cgroup.parent_id();
    v.set_policy(parent, Policy::CountOnly);
    assert_eq!(
        v.egress(&ipv4(EXTERNAL_V4, &[], 0, &udp(5300, 4), None)),
        DROP
    );
    assert_eq!(
        v.egress(&ipv4(INTERNAL_V4, &[], 0, &udp(5300, 4), None)),
        PASS
    );
    // Once the child is only counted too, the parent's entry decides: pass, counted there.
    let own = v.cgroup;
    v.set_policy(own, Policy::CountOnly);
    assert_eq!(
        v.egress(&ipv4(EXTERNAL_V4, &[], 0, &udp(5300, 4), None)),
        PASS
    );
    let parent_counters = v
        .datapath
        .maps
        .counters(parent)
        .unwrap()
        .unwrap_or_default();
    assert_eq!(parent_counters.tx_packets, 1);
}

/// The programs remember where a cgroup's policy entry is (the policy cache); every write of
/// the policy map must reach the next packet, whatever was remembered before it.
#[test]
fn every_policy_write_applies_from_the_next_packet_whatever_was_cached() {
    let mut v = Verdicts::new();
    let own = v.cgroup;
    let parent = v.in_cgroup.parent_id();
    let external = ipv4(EXTERNAL_V4, &[], 0, &udp(5300, 4), None);
    let endpoint = ipv4(ENDPOINT_V4, &[], 0, &udp(ENDPOINT_PORT, 4), None);
    let protected = |gateway: Option<&str>| Policy::Protected {
        gateway: gateway.map(Into::into),
        allow: BTreeSet::new(),
    };
    // No entry: not netguard's, and remembered as such over several packets.
    v.remove_policy(own);
    for _ in 0..3 {
        assert_eq!(v.egress(&external), PASS, "no policy");
    }
    // Protected: from the very next packet.
    v.set_policy(own, protected(Some("vpn")));
    assert_eq!(v.egress(&external), DROP, "protected after none");
    assert_eq!(v.egress(&endpoint), PASS, "its gateway's endpoint");
    // A protected ancestor now owns it: its policy (no gateway) applies, not the child's.
    v.set_policy(parent, protected(None));
    assert_eq!(v.egress(&endpoint), DROP, "the ancestor's policy");
    let parent_blocks = v
        .datapath
        .maps
        .counters(parent)
        .unwrap()
        .unwrap_or_default();
    assert_eq!(
        parent_blocks.blocked_packets[BlockReason::NotAllowed as usize],
        1
    );
    // The ancestor's entry goes: the child's own applies again.
    v.remove_policy(parent);
    assert_eq!(v.egress(&endpoint), PASS, "own policy again");
    // Counted only, then gone: passes; protected again: dropped.
    v.set_policy(own, Policy::CountOnly);
    assert_eq!(v.egress(&external), PASS, "counted only");
    v.set_policy(own, protected(Some("vpn")));
    assert_eq!(v.egress(&external), DROP, "protected after counted only");
}

#[test]
fn truncated_packets_are_dropped_as_malformed_and_counted() {
    let mut v = Verdicts::new();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "IPv4 total length beyond the packet",
            ipv4(INTERNAL_V4, &[], 0, &udp(5300, 4), Some(200)),
        ),
        (
            "IPv4 total length below the header",
            ipv4(INTERNAL_V4, &[], 0, &udp(5300, 4), Some(12)),
        ),
        ("IHL beyond the packet", {
            let mut frame = ipv4(INTERNAL_V4, &[], 0, &[], Some(20));
            frame[14] = 0x4f;
            frame
        }),
        (
            "UDP header cut short",
            ipv4(INTERNAL_V4, &[], 0, &[0x9c, 0x40, 0x14, 0xb4], None),
        ),
        ("TCP header cut short", {
            let mut frame = ipv4(INTERNAL_V4, &[], 0, &[0x9c, 0x40, 0, 80, 0, 0, 0, 1], None);
            frame[14 + 9] = 6;
            frame
        }),
        (
            "IPv6 payload length beyond the packet",
            ipv6(INTERNAL_V6, UDP, &udp(5300, 4), Some(400)),
        ),
        (
            "IPv6 extension header cut short",
            ipv6(INTERNAL_V6, HOPOPTS, &[UDP, 4, 1, 0], None),
        ),
        (
            "IPv6 UDP header cut short",
            ipv6(INTERNAL_V6, UDP, &[0x9c, 0x40], None),
        ),
        ("not IP at all", eth(0x0800, &[0x60; 40])),
    ];
    for (what, frame) in &cases {
        assert_eq!(v.egress(frame), DROP, "{what}");
    }
    let counters = v.counters();
    assert_eq!(
        counters.blocked_packets[BlockReason::Malformed as usize],
        cases.len() as u64
    );
    assert_eq!(counters.tx_packets, 0);

    // The same garbage from a cgroup that is only counted passes: never block the unprotected.
    let own = v.cgroup;
    v.set_policy(own, Policy::CountOnly);
    for (what, frame) in &cases {
        assert_eq!(v.egress(frame), PASS, "unprotected: {what}");
    }
}

#[test]
fn backstop_judges_frames_by_their_senders_policy_and_lets_kernel_tunnel_carriers_out() {
    let mut v = Verdicts::new();
    let arp = eth(
        0x0806,
        &[
            0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 198, 18, 1, 2, 0, 0, 0, 0, 0, 0, 198, 18, 1,
            1,
        ],
    );
    assert_eq!(
        v.backstop(&arp),
        TC_DROP,
        "a protected process's own ARP frame (AF_PACKET) can carry anything to any neighbour"
    );
    assert_eq!(
        v.backstop(&ipv4(INTERNAL_V4, &[], 0, &udp(5300, 4), None)),
        TC_NEXT
    );
    assert_eq!(
        v.backstop(&ipv4(EXTERNAL_V4, &[], 0, &udp(5300, 4), None)),
        TC_DROP
    );
    assert_eq!(
        v.backstop(&ipv6(EXTERNAL_V6, UDP, &udp(5300, 4), None)),
        TC_DROP
    );
    assert_eq!(
        v.backstop(&ipv4(ENDPOINT_V4, &[], 0, &udp(ENDPOINT_PORT, 4), None)),
        TC_NEXT,
        "a configured endpoint is an allowance of the protected sender"
    );
    let vlan = eth(0x8100, &[0, 5, 0x08, 0x00, 0x45, 0, 0, 20]);
    assert_eq!(
        v.backstop(&vlan),
        TC_DROP,
        "VLAN-tagged frames could hide anything"
    );
    let c = v.counters();
    assert_eq!(c.blocked_packets[BlockReason::TunnelDown as usize], 2);
    assert_eq!(c.blocked_packets[BlockReason::Malformed as usize], 1);
    assert_eq!(
        c.blocked_packets[BlockReason::NotAllowed as usize],
        1,
        "the ARP frame"
    );

    // Kernel WireGuard's encrypted packets keep the socket of the packet they carry: a
    // carrier of this namespace (a peer the agent read from the kernel) is let out, nothing
    // else to that address is.
    let server = Ipv4Addr::new(198, 18, 6, 7);
    let to_server = ipv4(server, &[], 0, &udp(51820, 4), None);
    assert_eq!(v.backstop(&to_server), TC_DROP, "not a carrier yet");
    let cookie = netguard::netns::current_cookie().unwrap();
    // Test runs arrive on loopback (index 1); the frames' source MAC is eth()'s.
    let loopback = netguard_common::IfaceKey {
        ifindex: 1,
        mac: [0x02, 0, 0, 0, 0, 1],
        _pad: [0; 2],
    };
    v.datapath
        .maps
        .write_guarded_iface(loopback, cookie, true)
        .unwrap();
    v.desired.carriers.insert(netguard::domain::carrier_key(
        cookie,
        (server, 51820).into(),
    ));
    v.apply();
    assert_eq!(v.backstop(&to_server), TC_NEXT, "the carrier passes");
    assert_eq!(
        v.backstop(&ipv4(server, &[], 0, &udp(51821, 4), None)),
        TC_DROP,
        "another port of the server"
    );
    let server6 = Ipv6Addr::new(0xfd0e, 6, 0, 0, 0, 0, 0, 7);
    v.desired.carriers.insert(netguard::domain::carrier_key(
        cookie,
        (server6, 51820).into(),
    ));
    v.apply();
    assert_eq!(
        v.backstop(&ipv6(server6, UDP, &udp(51820, 4), None)),
        TC_NEXT,
        "an IPv6 carrier"
    );
    let tcp = [&[0x9c, 0x40][..], &51820u16.to_be_bytes(), &[0; 16]].concat();
    assert_eq!(
        v.backstop(&ipv6(server6, 6, &tcp, None)),
        TC_DROP,
        "TCP to the carrier's port"
    );
    v.desired.carriers.clear();
    v.apply();
    assert_eq!(v.backstop(&to_server), TC_DROP, "carriers are removed");

    // An unprotected sender (a gateway, a neighbour) is never judged.
    let own = v.cgroup;
    v.set_policy(own, Policy::CountOnly);
    assert_eq!(
        v.backstop(&ipv4(EXTERNAL_V4, &[], 0, &udp(5300, 4), None)),
        TC_NEXT
    );
}

#[test]
fn removing_a_gateway_rewrites_its_references_before_the_slot_is_reused() {
    let mut v = Verdicts::new();
    let slot = v.applier.gateway_slot("vpn").unwrap();
    let container: netguard::domain::ContainerId = "c".repeat(64).parse().unwrap();
    let behind = Policy::Protected {
        gateway: Some("vpn".into()),
        allow: BTreeSet::new(),
    };
    v.desired.registrations.insert(container, behind);
    v.apply();
    assert_eq!(
        v.egress(&ipv4(ENDPOINT_V4, &[], 0, &udp(ENDPOINT_PORT, 4), None)),
        PASS
    );

    v.desired.gateways.clear();
    v.apply();
    v.desired.gateways.insert(
        "other".into(),
        GatewayPlan {
            tunnel: None,
            endpoints: ["198.18.6.6:1194/udp".parse().unwrap()].into(),
            up: false,
        },
    );
    v.apply();
    assert_eq!(
        v.applier.gateway_slot("other"),
        Some(slot),
        "the freed slot is reused"
    );
    // Neither the running cgroup nor the registration inherits the new gateway.
    let policies = v.datapath.maps.policies().unwrap();
    assert!(policies.iter().all(|(_, p)| p.gateway == 0), "{policies:?}");
    let registered = v.datapath.maps.registrations().unwrap();
    assert_eq!(registered[0].1.gateway, 0);
    let to_new_endpoint = ipv4(Ipv4Addr::new(198, 18, 6, 6), &[], 0, &udp(1194, 4), None);
    assert_eq!(v.egress(&to_new_endpoint), DROP);
    assert_eq!(
        v.egress(&ipv4(ENDPOINT_V4, &[], 0, &udp(ENDPOINT_PORT, 4), None)),
        DROP
    );
}

/// A protected cgroup's DNS leaves for nothing but netguard's resolver (which the socket
/// hooks steer it to): what reaches egress as DNS skipped them, whatever the resolver's
/// address, internal included; and nothing reaches Docker's embedded resolver, whatever
/// the port (dockerd listens on a random one and forwards with its own sockets).
#[test]
fn dns_that_skipped_the_steering_is_dropped_even_to_internal_resolvers() {
    let mut v = Verdicts::new();
    let mut tcp_to_53 = vec![0x9c, 0x40, 0, 53, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0, 0];
    tcp_to_53.extend_from_slice(&[0, 0, 0, 0]);
    let embedded = Ipv4Addr::new(127, 0, 0, 11);
    let frames = [
        ipv4(INTERNAL_V4, &[], 0, &udp(53, 10), None),
        ipv4(EXTERNAL_V4, &[], 0, &udp(53, 10), None),
        ipv6(INTERNAL_V6, UDP, &udp(53, 10), None),
        ipv4_with_protocol(INTERNAL_V4, 6, &tcp_to_53),
        ipv4(embedded, &[], 0, &udp(41_953, 10), None),
    ];
    for frame in &frames {
        assert_eq!(v.egress(frame), DROP);
    }
    assert_eq!(v.counters().blocked_packets[BlockReason::Dns as usize], 5);
    for frame in &frames {
        assert_eq!(v.backstop(frame), TC_DROP);
    }
    // The same internal resolver on another port is just an internal host.
    assert_eq!(
        v.egress(&ipv4(INTERNAL_V4, &[], 0, &udp(5300, 10), None)),
        PASS
    );
}

/// An IPv4 packet of protocol `proto` without options.
fn ipv4_with_protocol(dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut frame = ipv4(dst, &[], 0, l4, None);
    // Ethernet header (14) + protocol at offset 9 of the IP header.
    frame[14 + 9] = proto;
    frame
}
