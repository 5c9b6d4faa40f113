//! The tunnel allowance, over a real WireGuard tunnel (wireguard-go) to a VPN provider
//! namespace that routes to the internet host.

mod common;

use std::net::IpAddr;

use common::{Gateway, Options, Setup};
use netguard_common::BlockReason;
use netguard_tests::{
    agent::pinned_maps,
    lab::{CLIENT_V6, INTERNET_V4, INTERNET_V6, LAN_V4, Lab, TUNNEL_CLIENT_V4, VPN_V4, addr},
    probe::{EPERM, LiveProbe, probe},
    sniffer::{Sniffer, TcpSink},
    wait_for,
    wireguard::{ENDPOINT_PORT, Tunnel},
};

/// A lab whose client reaches the internet host (IPv4) through WireGuard, protected with the
/// tunnel as its gateway's allowance and the raw-socket backstop on.
fn tunnel_setup() -> (Setup, Tunnel) {
    let lab = Lab::new();
    let tunnel = Tunnel::up(&lab);
    lab.client
        .ip(&["route", "add", "198.18.2.0/24", "dev", &tunnel.client_if]);
    let options = Options {
        gateway: Some(Gateway {
            tunnel_interface: Some(tunnel.client_if.clone()),
            endpoints: vec![format!("{VPN_V4}:{ENDPOINT_PORT}/udp")],
            tunnel_up: true,
        }),
        backstop: true,
    };
    (Setup::start(lab, options), tunnel)
}

fn gateway_id(s: &Setup) -> netguard::domain::GatewayId {
    let gateways = pinned_maps(&s.pin).gateways().unwrap();
    assert_eq!(gateways.len(), 1, "{gateways:?}");
    gateways[0].0
}

#[test]
fn ipv6_to_the_internet_is_blocked_while_ipv4_goes_through_the_tunnel() {
    let (s, tunnel) = tunnel_setup();
    let internet = Sniffer::start(&s.lab.internet);
    let sink = TcpSink::start(&s.lab.internet, 8080);

    let v4 = probe(
        &s.lab.client,
        Some(&s.protected),
        &["tcp", &addr(INTERNET_V4), "8080", "100"],
    );
    assert!(v4.ok, "IPv4 through the tunnel: {v4:?}");
    wait_for("the tunnelled bytes", || sink.bytes() == 100);
    assert!(
        internet.from(TUNNEL_CLIENT_V4) > 0,
        "arrived from the tunnel address"
    );
    assert!(tunnel.handshake_done());

    let v6 = probe(
        &s.lab.client,
        Some(&s.protected),
        &["udp", &addr(INTERNET_V6), "7000", "3", "20"],
    );
    assert_eq!(
        v6.errno, EPERM,
        "IPv6 leaves through eth0, not the tunnel: {v6:?}"
    );
    s.barrier(&internet, INTERNET_V6);
    assert_eq!(
        internet.from(CLIENT_V6),
        0,
        "IPv6 reached the internet host"
    );
    assert_eq!(s.blocked(BlockReason::NotAllowed), 3);
}

#[test]
fn tunnel_down_cuts_an_established_flow_and_up_resumes_it() {
    let (s, _tunnel) = tunnel_setup();
    let sink = TcpSink::start(&s.lab.internet, 8080);
    let gateway = gateway_id(&s);

    let mut flow = LiveProbe::start(
        &s.lab.client,
        Some(&s.protected),
        &["stream", &addr(INTERNET_V4), "8080"],
    );
    assert_eq!(flow.line(), "connected");
    flow.send("send 1000");
    assert_eq!(flow.line(), "sent 1000");
    wait_for("the first 1000 bytes through the tunnel", || {
        sink.bytes() == 1000
    });

    pinned_maps(&s.pin)
        .set_tunnel_state(gateway, false)
        .unwrap();
    flow.send("send 1000");
    assert_eq!(flow.line(), "sent 2000", "the write is buffered by TCP");
    // The segment and its first retransmission are dropped in the kernel...
    s.wait_counters("two tunnel_down drops", |c| {
        c.blocked_packets[BlockReason::TunnelDown as usize] >= 2
    });
    // ...so the far end never got them.
    assert_eq!(
        sink.bytes(),
        1000,
        "a segment crossed the tunnel while it was down"
    );
    // New connections through the tunnel are refused at once while it is down.
    let fresh = probe(
        &s.lab.client,
        Some(&s.protected),
        &["tcp", &addr(INTERNET_V4), "8080", "1"],
    );
    assert_eq!(fresh.errno, EPERM, "{fresh:?}");
    assert_eq!(s.refused(BlockReason::TunnelDown), 1);
    // Internal destinations stay reachable.
    assert!(
        probe(
            &s.lab.client,
            Some(&s.protected),
            &["udp", &addr(LAN_V4), "7000", "1", "8"]
        )
        .ok
    );

    pinned_maps(&s.pin).set_tunnel_state(gateway, true).unwrap();
    wait_for(
        "TCP's retransmission to get through once the tunnel is up",
        || sink.bytes() == 2000,
    );
}

#[test]
fn a_route_around_the_tunnel_is_blocked_and_counted_exactly() {
    // Gluetun's own firewall failing: the tunnel is up, but the internet is routed via eth0.
    let (s, _tunnel) = tunnel_setup();
    let internet = Sniffer::start(&s.lab.internet);
    s.lab
        .client
        .ip(&["route", "replace", "198.18.2.0/24", "via", "198.18.1.1"]);
    let before = s.counters();

    // 20 datagrams of 100 bytes: 20 + 8 + 100 = 128 bytes of IP packet each.
    let leak = probe(
        &s.lab.client,
        Some(&s.protected),
        &["udp", &addr(INTERNET_V4), "7000", "20", "100"],
    );
    assert_eq!((leak.errno, leak.done), (EPERM, 0), "{leak:?}");
    let allowed = probe(
        &s.lab.client,
        Some(&s.protected),
        &["udp", &addr(LAN_V4), "7000", "20", "100"],
    );
    assert!(allowed.ok, "{allowed:?}");

    let after = s.counters();
    let slot = BlockReason::NotAllowed as usize;
    assert_eq!(
        after.blocked_packets[slot] - before.blocked_packets[slot],
        20
    );
    assert_eq!(
        after.blocked_bytes[slot] - before.blocked_bytes[slot],
        20 * 128
    );
    assert_eq!(after.tx_packets - before.tx_packets, 20);
    assert_eq!(after.tx_bytes - before.tx_bytes, 20 * 128);
    s.barrier(&internet, INTERNET_V4);
    assert_eq!(
        internet.count(|a| a.dst_port == 7000 && a.src != IpAddr::from([198, 18, 5, 2])),
        0
    );
}
