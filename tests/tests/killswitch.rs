//! The killswitch guarantee, checked from the outside: what arrives at the far end and what
//! the sender's syscalls returned, with the real agent enforcing in the kernel.

mod common;

use std::net::IpAddr;

use common::{Gateway, Options, Setup};
use netguard_common::BlockReason;
use netguard_tests::{
    lab::{
        CLIENT_V4, CLIENT_V6, INTERNET_V4, INTERNET_V6, LAN_V4, LAN_V6, SIBLING_V4, VPN_V4, addr,
    },
    probe::{EPERM, probe},
    sniffer::{Sniffer, TcpSink},
    wait_for,
};

const SINK_PORT: u16 = 8080;

#[test]
fn protected_cgroup_reaches_internal_host_but_not_the_internet() {
    let s = Setup::new(Options::default());
    let (internet, lan) = (Sniffer::start(&s.lab.internet), Sniffer::start(&s.lab.lan));
    let internet_sink = TcpSink::start(&s.lab.internet, SINK_PORT);
    let lan_sink = TcpSink::start(&s.lab.lan, SINK_PORT);
    let client = |args: &[&str]| probe(&s.lab.client, Some(&s.protected), args);

    for (lan_ip, internet_ip, client_ip) in [
        (addr(LAN_V4), addr(INTERNET_V4), addr(CLIENT_V4)),
        (addr(LAN_V6), addr(INTERNET_V6), addr(CLIENT_V6)),
    ] {
        let tcp = client(&["tcp", &lan_ip, "8080", "100"]);
        assert!(tcp.ok, "TCP to the internal host {lan_ip}: {tcp:?}");
        let udp = client(&["udp", &lan_ip, "7000", "3", "50"]);
        assert!(udp.ok, "UDP to the internal host {lan_ip}: {udp:?}");
        wait_for("UDP at the internal host", || {
            lan.count(|a| a.src.to_string() == client_ip && a.dst_port == 7000) == 3
        });

        let tcp = client(&["tcp", &internet_ip, "8080", "100"]);
        assert_eq!(
            tcp.errno, EPERM,
            "connect() to the internet host {internet_ip}: {tcp:?}"
        );
        assert!(
            tcp.elapsed_us < 1_000_000,
            "connect() must fail at once: {tcp:?}"
        );
        let udp = client(&["udp", &internet_ip, "7000", "3", "50"]);
        assert_eq!(
            (udp.errno, udp.done),
            (EPERM, 0),
            "sendto() to {internet_ip}: {udp:?}"
        );
    }
    s.barrier(&internet, INTERNET_V4);
    s.barrier(&internet, INTERNET_V6);
    assert_eq!(
        internet.from(CLIENT_V4) + internet.from(CLIENT_V6),
        0,
        "packets reached the internet host"
    );
    assert_eq!(
        internet_sink
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    wait_for("the internal host to read both TCP payloads", || {
        lan_sink.bytes() == 200
    });
    assert_eq!(
        s.refused(BlockReason::NotAllowed),
        8,
        "two connect() and 2 x 3 sendto() refused"
    );
}

/// DNS from a protected cgroup goes to netguard's resolver in its namespace or nowhere: a
/// cgroup of the configuration has none, so its queries are refused at once (EPERM), to
/// the LAN's resolver as to the internet's (a LAN resolver forwards in the clear).
#[test]
fn dns_without_a_resolver_is_refused_to_internal_and_external_resolvers_alike() {
    let s = Setup::new(Options::default());
    let (internet, lan) = (Sniffer::start(&s.lab.internet), Sniffer::start(&s.lab.lan));
    let _lan_dns_tcp = TcpSink::start(&s.lab.lan, 53);
    let client = |args: &[&str]| probe(&s.lab.client, Some(&s.protected), args);

    for transport in ["udp", "tcp"] {
        for resolver in [
            LAN_V4.into(),
            LAN_V6.into(),
            INTERNET_V4.into(),
            INTERNET_V6.into(),
        ] {
            let resolver: IpAddr = resolver;
            let query = client(&["dns", &addr(resolver), transport]);
            assert_eq!(
                query.errno, EPERM,
                "DNS/{transport} to {resolver}: {query:?}"
            );
        }
    }
    // The LAN resolver on another port is just an internal host.
    let other_port = client(&["udp", &addr(LAN_V4), "5300", "1", "8"]);
    assert!(other_port.ok, "{other_port:?}");
    wait_for("the datagram to the LAN host's other port", || {
        lan.count(|a| a.dst_port == 5300) == 1
    });
    s.barrier(&lan, LAN_V4);
    s.barrier(&internet, INTERNET_V4);
    s.barrier(&internet, INTERNET_V6);
    assert_eq!(
        lan.count(|a| a.dst_port == 53),
        0,
        "a query reached the LAN resolver"
    );
    assert_eq!(
        internet.count(|a| a.dst_port == 53),
        0,
        "a query reached the external resolver"
    );
    assert_eq!(s.refused(BlockReason::Dns), 8, "2 transports x 4 resolvers");
}

#[test]
fn icmp_echo_to_the_internet_is_blocked() {
    let s = Setup::new(Options::default());
    let (internet, lan) = (Sniffer::start(&s.lab.internet), Sniffer::start(&s.lab.lan));
    let client = |args: &[&str]| probe(&s.lab.client, Some(&s.protected), args);

    assert!(client(&["ping", &addr(LAN_V4)]).ok);
    assert!(client(&["ping", &addr(LAN_V6)]).ok);
    wait_for("echo requests at the internal host", || {
        lan.count(|a| a.proto == 1) == 1
            && lan.count(|a| a.proto == 58 && a.payload.first() == Some(&128)) == 1
    });
    let v4 = client(&["ping", &addr(INTERNET_V4)]);
    let v6 = client(&["ping", &addr(INTERNET_V6)]);
    assert_eq!((v4.errno, v6.errno), (EPERM, EPERM), "{v4:?} {v6:?}");
    s.barrier(&internet, INTERNET_V4);
    s.barrier(&internet, INTERNET_V6);
    let echo_request = |a: &netguard_tests::sniffer::Arrival| {
        (a.proto == 1 && a.payload.first() == Some(&8))
            || (a.proto == 58 && a.payload.first() == Some(&128))
    };
    assert_eq!(internet.count(echo_request), 0, "an echo request got out");
    assert_eq!(
        s.blocked(BlockReason::NotAllowed),
        2,
        "both echo requests dropped at egress"
    );
}

#[test]
fn vpn_endpoint_is_reachable_but_not_on_another_port_or_protocol() {
    let s = Setup::new(Options {
        gateway: Some(Gateway {
            endpoints: vec![format!("{VPN_V4}:51820/udp")],
            ..Gateway::default()
        }),
        backstop: false,
    });
    let vpn = Sniffer::start(&s.lab.vpn);
    let _tcp = TcpSink::start(&s.lab.vpn, 51820);
    let client = |args: &[&str]| probe(&s.lab.client, Some(&s.protected), args);

    let endpoint = client(&["udp", &addr(VPN_V4), "51820", "2", "32"]);
    assert!(
        endpoint.ok,
        "UDP to the VPN endpoint while the tunnel is down: {endpoint:?}"
    );
    let other_port = client(&["udp", &addr(VPN_V4), "51821", "2", "32"]);
    assert_eq!(other_port.errno, EPERM, "{other_port:?}");
    let other_proto = client(&["tcp", &addr(VPN_V4), "51820", "10"]);
    assert_eq!(other_proto.errno, EPERM, "{other_proto:?}");
    wait_for("the endpoint datagrams", || {
        vpn.count(|a| a.src == IpAddr::V4(CLIENT_V4) && a.dst_port == 51820) == 2
    });
    s.barrier(&vpn, VPN_V4);
    assert_eq!(
        vpn.count(|a| a.src == IpAddr::V4(CLIENT_V4) && a.dst_port != 51820),
        0
    );
    assert_eq!(
        vpn.count(|a| a.src == IpAddr::V4(CLIENT_V4) && a.proto == 6),
        0
    );
    // Two datagrams to the wrong port, one connect() with the wrong protocol; the gateway's
    // tunnel is down, so that is the reason recorded.
    assert_eq!(s.refused(BlockReason::TunnelDown), 3);
}

#[test]
fn raw_af_packet_frame_to_the_internet_never_arrives() {
    let s = Setup::new(Options {
        backstop: true,
        ..Options::default()
    });
    let internet = Sniffer::start(&s.lab.internet);
    let marker = b"netguard raw frame";

    // Control: the same hand-built frame from the unprotected sibling gets through, so the
    // frame itself is good and would be delivered.
    let control = s.raw_frame_to_internet(true);
    assert!(control.ok, "{control:?}");
    wait_for("the sibling's raw frame", || {
        internet.with_payload(marker) == 1
    });

    let sent = s.raw_frame_to_internet(false);
    assert!(
        sent.frame_taken(),
        "the backstop drops it in the sender's namespace (sendto says ENOBUFS): {sent:?}"
    );
    wait_for("the backstop to count the frame", || {
        s.blocked(BlockReason::NotAllowed) == 1
    });
    s.barrier(&internet, INTERNET_V4);
    assert_eq!(
        internet.from(CLIENT_V4),
        0,
        "the protected namespace's raw frame arrived"
    );
    assert_eq!(
        internet.with_payload(marker),
        1,
        "only the sibling's frame arrived"
    );

    // Internal traffic still flows through the backstop.
    let lan = probe(
        &s.lab.client,
        Some(&s.protected),
        &["udp", &addr(LAN_V4), "7000", "1", "8"],
    );
    assert!(lan.ok, "{lan:?}");
}

/// Every way AF_PACKET sends: SOCK_RAW and SOCK_DGRAM, through a TX ring, and with
/// PACKET_QDISC_BYPASS (which skips TC, so it is refused to protected cgroups).
#[test]
fn af_packet_frames_in_every_mode_never_arrive() {
    let s = Setup::new(Options {
        backstop: true,
        ..Options::default()
    });
    let internet = Sniffer::start(&s.lab.internet);
    let on_the_wire: [(u16, &[&str]); 4] = [
        (7781, &[]),
        (7782, &["dgram"]),
        (7783, &["ring"]),
        (7784, &["dgram", "ring"]),
    ];
    let bypassing: [(u16, &[&str]); 3] = [
        (7785, &["bypass"]),
        (7786, &["bypass", "ring"]),
        (7787, &["dgram", "bypass", "ring"]),
    ];
    // Controls: from the unprotected sibling every mode delivers.
    for (port, modes) in on_the_wire.iter().chain(&bypassing) {
        let control = s.raw_frame(true, *port, modes);
        assert!(control.ok, "{modes:?}: {control:?}");
    }
    wait_for("the sibling's frame in every mode", || {
        (7781..=7787).all(|port| internet.count(|a| a.dst_port == port) == 1)
    });

    for (port, modes) in on_the_wire {
        let sent = s.raw_frame(false, port, modes);
        assert!(
            sent.frame_taken(),
            "{modes:?}: taken, then dropped: {sent:?}"
        );
    }
    for (port, modes) in bypassing {
        let refused = s.raw_frame(false, port, modes);
        assert_eq!(refused.errno, EPERM, "{modes:?}: {refused:?}");
    }
    wait_for("the backstop to count the four frames", || {
        s.blocked(BlockReason::NotAllowed) == 4
    });
    assert_eq!(
        s.refused(BlockReason::NotAllowed),
        3,
        "three bypass options refused"
    );

    // The old way to a packet socket, AF_INET with SOCK_PACKET: the same backstop.
    assert!(s.raw_frame(true, 7789, &["legacy"]).ok);
    let legacy = s.raw_frame(false, 7789, &["legacy"]);
    assert!(legacy.frame_taken(), "{legacy:?}");
    s.wait_counters("the legacy frame dropped", |c| {
        c.blocked_packets[BlockReason::NotAllowed as usize] == 5
    });

    // The same option set through the 32-bit ABI, which cgroup setsockopt programs never
    // see: the sibling's frame arrives; the protected process is killed before it returns.
    let control = s.raw_frame(true, 7788, &["bypass32"]);
    assert!(control.ok, "{control:?}");
    let (netns, cgroup) = (&s.lab.client, &s.protected);
    let mac = s.lab.router.mac(netguard_tests::lab::CLIENT_HOST_SIDE);
    let (src, inet) = (addr(CLIENT_V4), addr(INTERNET_V4));
    let args = ["raw-frame", "eth0", &mac, &src, &inet, "7788", "bypass32"];
    let killed = netguard_tests::probe::probe_or_signal(netns, Some(cgroup), &args);
    assert_eq!(
        killed.err(),
        Some(libc::SIGKILL),
        "killed by the raw-socket guard"
    );
    // Any option through ia32 socketcall, whose arguments could change under the check.
    assert!(s.raw_frame(true, 7790, &["mux32"]).ok);
    let args = ["raw-frame", "eth0", &mac, &src, &inet, "7790", "mux32"];
    let killed = netguard_tests::probe::probe_or_signal(netns, Some(cgroup), &args);
    assert_eq!(killed.err(), Some(libc::SIGKILL), "killed at socketcall");
    // AF_XDP sends past TC too: its UMEM registration is refused to protected cgroups.
    let xdp = probe(&s.lab.client, Some(&s.protected), &["xdp-umem"]);
    assert_eq!(xdp.errno, EPERM, "{xdp:?}");
    let open_xdp = probe(&s.lab.sibling, Some(&s.sibling), &["xdp-umem"]);
    assert!(open_xdp.ok, "{open_xdp:?}");

    s.barrier(&internet, INTERNET_V4);
    for port in 7781..=7790 {
        assert_eq!(
            internet.count(|a| a.dst_port == port),
            1,
            "port {port}: only the sibling's frame arrived"
        );
    }
    assert_eq!(internet.from(CLIENT_V4), 0);
}

/// A protected process can make the kernel send for it: a datagram with a forged source to
/// one of its own addresses draws an ICMP error to that source, from no socket of its own.
/// The backstop judges such frames by the policy of the namespace's protected cgroup.
#[test]
fn what_the_kernel_sends_on_a_protected_namespaces_behalf_is_judged_by_its_policy() {
    let s = Setup::new(Options {
        backstop: true,
        ..Options::default()
    });
    let internet = Sniffer::start(&s.lab.internet);
    let icmp_from = |src: IpAddr| internet.count(|a| a.proto == 1 && a.src == src);
    // Control: in the unguarded sibling namespace the kernel's ICMP error reaches the forged
    // source, so the trick works.
    let control = probe(
        &s.lab.sibling,
        Some(&s.sibling),
        &["spoof-udp", &addr(INTERNET_V4), &addr(SIBLING_V4), "9999"],
    );
    assert!(control.ok, "{control:?}");
    wait_for("the sibling kernel's ICMP error", || {
        icmp_from(IpAddr::V4(SIBLING_V4)) == 1
    });

    let sent = probe(
        &s.lab.client,
        Some(&s.protected),
        &["spoof-udp", &addr(INTERNET_V4), &addr(CLIENT_V4), "9999"],
    );
    assert!(sent.ok, "{sent:?}");
    s.wait_counters("the backstop to drop the kernel's ICMP error", |c| {
        c.blocked_packets[BlockReason::NotAllowed as usize] == 1
    });
    s.barrier(&internet, INTERNET_V4);
    assert_eq!(
        icmp_from(IpAddr::V4(CLIENT_V4)),
        0,
        "the kernel answered the forged source from the protected namespace"
    );
}

/// A device without a link-layer header (tun, WireGuard, ppp) is a way out too: the
/// backstop is on it, judging packets by their sender like on Ethernet.
#[test]
fn frames_into_a_tun_device_of_a_protected_namespace_are_judged_by_their_sender() {
    let lab = netguard_tests::lab::Lab::new();
    // The far end: a program reading the device, as a VPN client reads its tun.
    let tun = netguard_tests::sniffer::TunSink::start(&lab.client, "ngtun");
    let s = Setup::start(
        lab,
        Options {
            backstop: true,
            ..Options::default()
        },
    );
    let frame = |cgroup: &std::path::Path, port: &str| {
        let (src, inet) = (addr(CLIENT_V4), addr(INTERNET_V4));
        let args = [
            "raw-frame",
            &tun.name,
            "00:00:00:00:00:00",
            &src,
            &inet,
            port,
            "dgram",
        ];
        probe(&s.lab.client, Some(cgroup), &args)
    };
    // An unprotected process of the same namespace: its packet reaches the reader.
    assert!(frame(&s.sibling, "7791").ok);
    wait_for("the unprotected packet at the tun reader", || {
        tun.count(7791) == 1
    });
    let sent = frame(&s.protected, "7792");
    assert!(sent.frame_taken(), "{sent:?}");
    s.wait_counters("the backstop on the tun device to count it", |c| {
        c.blocked_packets[BlockReason::NotAllowed as usize] == 1
    });
    assert!(frame(&s.sibling, "7793").ok);
    wait_for("the second unprotected packet", || tun.count(7793) == 1);
    assert_eq!(tun.count(7792), 0, "the protected packet went into the tun");
}

#[test]
fn unprotected_sibling_cgroup_and_host_processes_are_never_affected() {
    let s = Setup::new(Options {
        backstop: true,
        ..Options::default()
    });
    let internet = Sniffer::start(&s.lab.internet);
    let sink = TcpSink::start(&s.lab.internet, SINK_PORT);
    // The sibling cgroup sits under the same attach cgroup as the protected one; the
    // "host" process is outside it altogether.
    for cgroup in [Some(s.sibling.as_path()), None] {
        let tcp = probe(
            &s.lab.sibling,
            cgroup,
            &["tcp", &addr(INTERNET_V4), "8080", "10"],
        );
        assert!(tcp.ok, "{tcp:?}");
        let udp = probe(
            &s.lab.sibling,
            cgroup,
            &["udp", &addr(INTERNET_V6), "7000", "1", "8"],
        );
        assert!(udp.ok, "{udp:?}");
        let ping = probe(&s.lab.sibling, cgroup, &["ping", &addr(INTERNET_V4)]);
        assert!(ping.ok, "{ping:?}");
    }
    wait_for("the sibling's traffic at the internet host", || {
        sink.bytes() == 20
            && internet.count(|a| a.dst_port == 7000) == 2
            && internet.count(|a| a.proto == 1 && a.payload.first() == Some(&8)) == 2
    });
    // A descendant of the protected cgroup is protected too.
    let mut cgroups_child = s.protected.join("worker");
    std::fs::create_dir(&cgroups_child).unwrap();
    let child = probe(
        &s.lab.client,
        Some(&cgroups_child),
        &["udp", &addr(INTERNET_V4), "7000", "1", "8"],
    );
    assert_eq!(child.errno, EPERM, "{child:?}");
    std::fs::remove_dir(&cgroups_child).unwrap();
    cgroups_child.clear();
}

#[test]
fn receive_counters_are_exact() {
    let s = Setup::new(Options::default());
    let mut receiver = netguard_tests::probe::LiveProbe::start(
        &s.lab.client,
        Some(&s.protected),
        &["udp-recv", "6000", "10"],
    );
    assert_eq!(receiver.line(), "ready");
    // From the LAN host (no cgroup of ours): 10 datagrams of 100 bytes, 128-byte IP packets.
    let sent = probe(
        &s.lab.lan,
        None,
        &["udp", &addr(CLIENT_V4), "6000", "10", "100"],
    );
    assert!(sent.ok, "{sent:?}");
    let received = receiver.finish();
    assert_eq!((received.ok, received.done), (true, 10), "{received:?}");
    let counters = s.counters();
    assert_eq!(counters.rx_packets, 10);
    assert_eq!(counters.rx_bytes, 10 * 128);
}

#[test]
fn blocked_flows_are_reported_and_a_flood_is_rate_limited() {
    let s = Setup::new(Options::default());
    let reported = format!(
        "blocked {INTERNET_V4}:7000/udp cgroup={} reason=not_allowed hook=sendmsg",
        s.protected_id()
    );
    let flood = probe(
        &s.lab.client,
        Some(&s.protected),
        &["udp", &addr(INTERNET_V4), "7000", "2000", "8"],
    );
    assert_eq!((flood.errno, flood.done), (EPERM, 0), "{flood:?}");
    assert_eq!(s.refused(BlockReason::NotAllowed), 2000);
    // Every refusal is either reported to the agent or counted as suppressed.
    wait_for("every refusal reported or counted as suppressed", || {
        s.agent.count(&reported) as u64 + s.counters().events_suppressed == 2000
    });
    let logged = s.agent.count(&reported) as u64;
    let budget = netguard_common::EVENTS_PER_SECOND * (flood.elapsed_us / 1_000_000 + 2);
    assert!(
        (1..=budget).contains(&logged),
        "{logged} events for a flood lasting {}us",
        flood.elapsed_us
    );
}
