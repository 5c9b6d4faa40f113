//! DNS that cannot leak, with a real dockerd (20.10 here: its embedded resolver forwards from
//! the container's namespace with dockerd's own sockets). What arrives at the lab's resolvers
//! and what the container's stub resolver got back, with the agent up and killed.

use std::net::SocketAddr;

use netguard_tests::{
    agent::{PinDir, pinned_maps},
    docker::DockerLab,
    http::{self, parse_exposition},
    lab::{INTERNET_V4, LAN_V4, Netns, TUNNEL_PROVIDER_V4, addr},
    observe::Observer,
    probe::{LiveProbe, ProbeResult},
    sh,
    sniffer::Sniffer,
    wait_for,
};

const PROTECTED: &str = "vpn=required";
/// What the lab's resolvers answer for every name.
const INTERNET_ANSWER: &str = "203.0.113.9";
const LAN_ANSWER: &str = "203.0.113.10";
const VPN_ANSWER: &str = "203.0.113.53";
/// netguard's answer to a name it may not forward (REFUSED).
const REFUSED: &str = "rcode 5";

/// `docker run` arguments as the helpers take them.
fn args(v: &[String; 4]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A lab resolver on `address` in `netns`, answering every A query with `answer`.
fn resolver(netns: &Netns, address: impl Into<std::net::IpAddr>, answer: &str) -> LiveProbe {
    let mut server = LiveProbe::start(netns, None, &["dns-serve", &addr(address), answer]);
    assert_eq!(server.line(), "ready");
    server
}

/// Waits until netguard's resolver listens for `container` (the kernel steers its DNS there).
fn wait_resolver(lab: &DockerLab, pin: &PinDir, container: &str) {
    let cgroup = lab.cgroup_id(container);
    wait_for("netguard's resolver for the container", || {
        pinned_maps(pin)
            .dns_resolvers()
            .unwrap()
            .iter()
            .any(|(c, steer)| *c == cgroup && steer.port_v4 != 0)
    });
}

/// A lookup of `name` from inside `container`, through its /etc/resolv.conf (or `server`),
/// over a connected UDP socket as glibc makes it.
fn lookup(lab: &DockerLab, container: &str, name: &str, server: Option<&str>) -> ProbeResult {
    lookup_over(lab, container, name, server, "connected")
}

/// The same over `transport`: `unconnected` (`sendto`/`recvfrom`, the answer must come from
/// the address asked, as musl checks) or `tcp`.
fn lookup_over(
    lab: &DockerLab,
    container: &str,
    name: &str,
    server: Option<&str>,
    transport: &str,
) -> ProbeResult {
    lab.exec_probe(
        container,
        &["dns-lookup", name, server.unwrap_or("-"), transport],
    )
}

/// The container's `netguard_container_dns_queries_total` by outcome.
fn dns_metric(agent: SocketAddr, container: &str, outcome: &str) -> f64 {
    let (status, body) = http::get(agent, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse_exposition(&body)
        .into_iter()
        .find(|s| {
            s.name == "netguard_container_dns_queries_total"
                && s.label("container_id") == Some(&container[..12])
                && s.label("outcome") == Some(outcome)
        })
        .map_or(0.0, |s| s.value)
}

#[test]
fn protected_dns_reaches_neither_the_lan_nor_the_upstream_of_dockers_resolver_agent_up_or_down() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let mut agent = lab.start_agent(&pin, "");
    let (internet, lan) = (
        Sniffer::start(&lab.lab.internet),
        Sniffer::start(&lab.lab.lan),
    );
    let _internet_dns = resolver(&lab.lab.internet, INTERNET_V4, INTERNET_ANSWER);
    let _lan_dns = resolver(&lab.lab.lan, LAN_V4, LAN_ANSWER);
    let network = lab.network(&[]);
    let on =
        |dns: std::net::Ipv4Addr| ["--network", &network, "--dns", &addr(dns)].map(String::from);
    let (to_internet, to_lan) = (on(INTERNET_V4), on(LAN_V4));

    // Unlabeled containers show the way a query takes: through Docker's embedded resolver
    // (127.0.0.11 in resolv.conf) to the resolver given with --dns, which answers.
    let control = lab.start(&[], &args(&to_internet));
    let control_lan = lab.start(&[], &args(&to_lan));
    wait_for("the unlabeled containers' lookups", || {
        lookup(&lab, &control, "control-inet.test", None).answer == INTERNET_ANSWER
            && lookup(&lab, &control_lan, "control-lan.test", None).answer == LAN_ANSWER
    });
    assert!(internet.with_payload(b"control-inet") >= 1);
    assert!(lan.with_payload(b"control-lan") >= 1);

    let first = lab.start(&[PROTECTED], &args(&to_internet));
    let second = lab.start(&[PROTECTED], &args(&to_lan));
    wait_resolver(&lab, &pin, &first);
    wait_resolver(&lab, &pin, &second);
    for (container, tag) in [(&first, "first"), (&second, "second")] {
        // Through 127.0.0.11: netguard answers; no gateway, so external names are refused.
        let through_docker = lookup(&lab, container, &format!("{tag}-leak.test"), None);
        assert_eq!(through_docker.answer, REFUSED, "{through_docker:?}");
        assert!(through_docker.elapsed_us < 1_000_000, "{through_docker:?}");
        // Straight to the LAN's resolver and to the internet's: netguard answers too.
        for server in [LAN_V4, INTERNET_V4] {
            let direct = lookup(
                &lab,
                container,
                &format!("{tag}-direct.test"),
                Some(&addr(server)),
            );
            assert_eq!(direct.answer, REFUSED, "to {server}: {direct:?}");
        }
        // As musl asks (sendto, and the answer must come from 127.0.0.11:53 or the LAN
        // resolver), and over TCP.
        let musl = lookup_over(
            &lab,
            container,
            &format!("{tag}-musl.test"),
            None,
            "unconnected",
        );
        assert_eq!(musl.answer, REFUSED, "{musl:?}");
        let lan = addr(LAN_V4);
        let musl = lookup_over(
            &lab,
            container,
            &format!("{tag}-musl.test"),
            Some(&lan),
            "unconnected",
        );
        assert_eq!(musl.answer, REFUSED, "{musl:?}");
        let tcp = lookup_over(
            &lab,
            container,
            &format!("{tag}-tcp.test"),
            Some(&lan),
            "tcp",
        );
        assert_eq!(tcp.answer, REFUSED, "{tcp:?}");
    }

    // With the agent killed, the queries go nowhere (its resolvers are gone) and still
    // never reach a resolver; a container started meanwhile is refused at once.
    agent.kill9();
    for container in [&first, &second] {
        let down = lookup(&lab, container, "agent-down.test", None);
        assert!(!down.ok && down.answer.is_empty(), "{down:?}");
        for server in [LAN_V4, INTERNET_V4] {
            let direct = lookup(
                &lab,
                container,
                "agent-down-direct.test",
                Some(&addr(server)),
            );
            assert!(direct.answer.is_empty() && !direct.ok, "{direct:?}");
        }
    }
    let started_while_down = lab.start(&[PROTECTED], &args(&to_lan));
    let refused = lookup(&lab, &started_while_down, "new-while-down.test", None);
    assert_eq!(refused.errno, libc::EPERM, "{refused:?}");
    let refused = lookup(
        &lab,
        &started_while_down,
        "new-while-down.test",
        Some(&addr(LAN_V4)),
    );
    assert_eq!(refused.errno, libc::EPERM, "{refused:?}");

    // The unlabeled containers still resolve, and the lab's resolvers heard nothing else.
    assert_eq!(
        lookup(&lab, &control, "control-again.test", None).answer,
        INTERNET_ANSWER
    );
    for leak in [
        &b"first-"[..],
        b"second-",
        b"agent-down",
        b"new-while-down",
        b"example",
    ] {
        assert_eq!(
            internet.with_payload(leak),
            0,
            "{}",
            String::from_utf8_lossy(leak)
        );
        assert_eq!(
            lan.with_payload(leak),
            0,
            "{}",
            String::from_utf8_lossy(leak)
        );
    }
    assert_eq!(
        lan.count(|a| a.dst_port == 53),
        lan.with_payload(b"control-lan"),
        "only the unlabeled container's queries reached the LAN resolver"
    );
}

#[test]
fn a_protected_container_resolves_its_peers_by_name_and_only_those_without_a_gateway() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let api = agent.http_address();
    let internet = Sniffer::start(&lab.lab.internet);
    let network = lab.network(&[]);
    let peer_name = format!("ngt{}-peer", lab.lab.tag);
    let peer = lab.start(
        &[],
        &[
            "--network",
            &network,
            "--name",
            &peer_name,
            "--network-alias",
            "web",
        ],
    );
    let peer_ip = sh(&[
        "docker",
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &peer,
    ])
    .trim()
    .to_string();
    let protected = lab.start(
        &[PROTECTED],
        &["--network", &network, "--dns", &addr(INTERNET_V4)],
    );
    wait_resolver(&lab, &pin, &protected);
    let observer = Observer::start(api);

    for name in [peer_name.as_str(), "web", &peer[..12]] {
        let found = lookup(&lab, &protected, name, None);
        assert_eq!(found.answer, peer_ip, "{name}: {found:?}");
    }
    let musl = lookup_over(&lab, &protected, "web", None, "unconnected");
    assert_eq!(musl.answer, peer_ip, "{musl:?}");
    let outside = lookup(&lab, &protected, "example.test", None);
    assert_eq!(outside.answer, REFUSED, "{outside:?}");
    assert!(outside.elapsed_us < 1_000_000, "{outside:?}");
    wait_for("observe to print the refused query", || {
        observer.line_with("example.test").is_some()
    });
    let (_, line) = observer.line_with("example.test").unwrap();
    assert!(
        line.contains(&protected[..12]) && line.contains("no_gateway"),
        "{line}"
    );
    assert_eq!(dns_metric(api, &protected, "answered"), 4.0);
    assert_eq!(dns_metric(api, &protected, "refused"), 1.0);
    assert_eq!(dns_metric(api, &protected, "forwarded"), 0.0);

    // A protected neighbour in the same namespace resolves the same names through its own
    // resolver, and may not use the first one's (its port is in /proc/net/udp).
    let neighbour = lab.start(
        &[PROTECTED],
        &["--network", &format!("container:{protected}")],
    );
    wait_resolver(&lab, &pin, &neighbour);
    let found = lookup(&lab, &neighbour, "web", None);
    assert_eq!(found.answer, peer_ip, "{found:?}");
    let port_of = |container: &str| {
        let cgroup = lab.cgroup_id(container);
        let resolvers = pinned_maps(&pin).dns_resolvers().unwrap();
        let (_, steer) = resolvers.iter().find(|(c, _)| *c == cgroup).unwrap();
        steer.port_v4.to_string()
    };
    let (theirs, own) = (port_of(&protected), port_of(&neighbour));
    let refused = lab.exec_probe(&neighbour, &["udp", "127.0.0.1", &theirs, "1", "8"]);
    assert_eq!(refused.errno, libc::EPERM, "{refused:?}");
    let allowed = lab.exec_probe(&neighbour, &["udp", "127.0.0.1", &own, "1", "8"]);
    assert!(allowed.ok, "{allowed:?}");
    assert_eq!(
        dns_metric(api, &protected, "answered"),
        4.0,
        "nothing counted as the first's"
    );
    assert_eq!(internet.count(|a| a.dst_port == 53), 0);
}

#[test]
fn behind_a_gateway_external_names_resolve_through_the_tunnel_and_fail_fast_when_it_is_down() {
    use netguard_tests::{
        lab::TUNNEL_CLIENT_V4,
        wireguard::{Tunnel, ip_in},
    };
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let api = agent.http_address();
    let internet = Sniffer::start(&lab.lab.internet);
    let wg = format!("wg{}g", lab.lab.tag);
    let gateway_name = format!("ngt{}-gw", lab.lab.tag);
    let gateway = lab.start(
        &[
            "netguard.role=vpn-gateway",
            &format!("netguard.tunnel={wg}"),
            // The VPN provider's resolver, reached through the tunnel.
            &format!("netguard.dns={TUNNEL_PROVIDER_V4}"),
        ],
        &["--name", &gateway_name],
    );
    let netns = netguard::netns::of_process(lab.pid(&gateway));
    let _tunnel = Tunnel::from_netns(&netns, Some(&lab.cgroup_dir(&gateway)), &wg, &lab.lab);
    let mut vpn_dns = resolver(&lab.lab.vpn, TUNNEL_PROVIDER_V4, VPN_ANSWER);
    let tunnel_up = |up: u32| netguard_tests::agent::some_tunnel_is(&pin, up);
    wait_for("the agent to see the gateway's tunnel up", || tunnel_up(1));

    let shared = lab.start(
        &[PROTECTED],
        &["--network", &format!("container:{gateway}")],
    );
    let network = lab.network(&[]);
    let own = lab.start(
        &[PROTECTED, &format!("netguard.gateway={gateway_name}")],
        &["--network", &network],
    );
    for container in [&shared, &own] {
        wait_resolver(&lab, &pin, container);
        let found = lookup(&lab, container, "vpn-side.test", None);
        assert_eq!(found.answer, VPN_ANSWER, "{found:?}");
        assert_eq!(vpn_dns.line(), "query vpn-side.test");
        // A query straight to the internet's resolver is steered the same way.
        let direct = lookup(&lab, container, "vpn-direct.test", Some(&addr(INTERNET_V4)));
        assert_eq!(direct.answer, VPN_ANSWER, "{direct:?}");
        assert_eq!(vpn_dns.line(), "query vpn-direct.test");
        // Over TCP, forwarded over TCP through the tunnel.
        let tcp = lookup_over(&lab, container, "vpn-tcp.test", None, "tcp");
        assert_eq!(tcp.answer, VPN_ANSWER, "{tcp:?}");
        assert_eq!(vpn_dns.line(), "query vpn-tcp.test");
        assert_eq!(dns_metric(api, container, "forwarded"), 3.0);
    }

    // The tunnel goes down and eth0 becomes the way out: external names fail at once.
    ip_in(&netns, &["link", "set", &wg, "down"]);
    netguard_tests::docker::route_around_tunnel(&netns);
    wait_for("the agent to see the tunnel down", || tunnel_up(0));
    for container in [&shared, &own] {
        let down = lookup(&lab, container, "tunnel-down.test", None);
        assert_eq!(down.answer, REFUSED, "{down:?}");
        assert!(
            down.elapsed_us < 1_000_000,
            "the lookup must fail within a second: {down:?}"
        );
    }
    assert_eq!(internet.count(|a| a.dst_port == 53), 0);
    assert_eq!(internet.with_payload(b"tunnel-down"), 0);
    assert_eq!(
        internet.count(|a| a.src == TUNNEL_CLIENT_V4),
        0,
        "the lab's resolver is on the VPN side: nothing went to the internet host"
    );
}
