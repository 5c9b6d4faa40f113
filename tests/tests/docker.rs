//! Label-driven protection with a real dockerd: what containers can reach, from their first
//! packet, whatever the agent is doing.

use netguard_tests::{
    agent::{PinDir, pinned_maps},
    docker::DockerLab,
    lab::{INTERNET_V4, LAN_V4, addr},
    probe::EPERM,
    sniffer::Sniffer,
    wait_for,
};

const PROTECTED: &str = "vpn=required";

#[test]
fn labeled_container_reaches_internal_hosts_only_and_unlabeled_reaches_both() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let (internet, lan) = (
        Sniffer::start(&lab.lab.internet),
        Sniffer::start(&lab.lab.lan),
    );

    let blocked = lab.run_probe(
        &[PROTECTED],
        &["udp", &addr(INTERNET_V4), "7001", "3", "20"],
    );
    assert_eq!((blocked.errno, blocked.done), (EPERM, 0), "{blocked:?}");
    let tcp = lab.run_probe(&[PROTECTED], &["tcp", &addr(INTERNET_V4), "7001", "10"]);
    assert_eq!(tcp.errno, EPERM, "{tcp:?}");
    let internal = lab.run_probe(&[PROTECTED], &["udp", &addr(LAN_V4), "7001", "3", "20"]);
    assert!(internal.ok, "{internal:?}");

    let open = lab.run_control(&["udp", &addr(INTERNET_V4), "7002", "3", "20"]);
    assert!(open.ok, "{open:?}");
    let open_lan = lab.run_control(&["udp", &addr(LAN_V4), "7002", "3", "20"]);
    assert!(open_lan.ok, "{open_lan:?}");

    wait_for("the unlabeled container's datagrams", || {
        internet.count(|a| a.dst_port == 7002) == 3
    });
    wait_for("both containers' LAN datagrams", || {
        lan.count(|a| a.dst_port == 7001) == 3 && lan.count(|a| a.dst_port == 7002) == 3
    });
    assert_eq!(
        internet.count(|a| a.dst_port == 7001),
        0,
        "the labeled container reached the internet"
    );
    // The kernel classified each container at its creation and said so in the agent's log.
    let long_lived = lab.start(&[PROTECTED], &[]);
    let classified = format!("of container {}: protected", &long_lived[..12]);
    wait_for("the kernel's classifier line in the agent's log", || {
        agent.count(&classified) == 1
    });
}

#[test]
fn fifty_fresh_labeled_containers_never_leak_their_first_packets() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let _agent = lab.start_agent(&pin, "");
    let internet = Sniffer::start(&lab.lab.internet);
    let protected_sink = netguard_tests::sniffer::TcpSink::start(&lab.lab.internet, 7003);
    let control_sink = netguard_tests::sniffer::TcpSink::start(&lab.lab.internet, 7004);
    let inet = addr(INTERNET_V4);
    let leak = format!("ng-probe dns {inet} udp; ng-probe tcp {inet} 7003 10");
    let control = format!("ng-probe udp {inet} 7004 1 8; ng-probe tcp {inet} 7004 10");
    for round in 0..50 {
        let reports = lab.run_script(&[PROTECTED], &[], &leak);
        assert_eq!(reports.len(), 2, "round {round}");
        assert!(
            reports.iter().all(|r| r.errno == EPERM),
            "round {round}: {reports:?}"
        );
        let reports = lab.run_script(&[], &["NG_PROBE_RETRY_MS=10000"], &control);
        assert!(
            reports.iter().all(|r| r.ok),
            "round {round}: the unlabeled control: {reports:?}"
        );
    }
    wait_for("all 50 control datagrams and connections", || {
        internet.count(|a| a.dst_port == 7004 && a.proto == 17) == 50
            && control_sink
                .connections
                .load(std::sync::atomic::Ordering::Relaxed)
                == 50
    });
    assert_eq!(
        internet.count(|a| a.dst_port == 53 || a.dst_port == 7003),
        0,
        "a first packet leaked"
    );
    assert_eq!(
        protected_sink
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn containers_running_before_the_agent_starts_are_protected() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let internet = Sniffer::start(&lab.lab.internet);
    let early = lab.start(&[PROTECTED], &[]);
    let _agent = lab.start_agent(&pin, "");
    let policy = pinned_maps(&pin).policies().unwrap();
    let cgroup = lab.cgroup_id(&early);
    assert!(
        policy
            .iter()
            .any(|(id, p)| *id == cgroup && p.is_protected() && !p.is_unclassified()),
        "the early container's cgroup {cgroup} is protected: {policy:?}"
    );
    let blocked = lab.exec_probe(&early, &["udp", &addr(INTERNET_V4), "7005", "3", "8"]);
    assert_eq!(blocked.errno, EPERM, "{blocked:?}");
    let ok = lab.exec_probe(&early, &["udp", &addr(LAN_V4), "7005", "1", "8"]);
    assert!(ok.ok, "{ok:?}");
    let control = lab.run_control(&["udp", &addr(INTERNET_V4), "7006", "1", "8"]);
    assert!(control.ok);
    wait_for("the control datagram", || {
        internet.count(|a| a.dst_port == 7006) == 1
    });
    assert_eq!(internet.count(|a| a.dst_port == 7005), 0);
}

#[test]
fn a_labeled_container_started_while_the_agent_is_down_is_protected_from_its_first_packet() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let mut agent = lab.start_agent(&pin, "");
    let internet = Sniffer::start(&lab.lab.internet);
    agent.kill9();

    let container = lab.start(&[PROTECTED], &[]);
    let udp = lab.exec_probe(&container, &["udp", &addr(INTERNET_V4), "7007", "3", "8"]);
    let tcp = lab.exec_probe(&container, &["tcp", &addr(INTERNET_V4), "7007", "10"]);
    assert_eq!((udp.errno, tcp.errno), (EPERM, EPERM), "{udp:?} {tcp:?}");
    let cgroup = lab.cgroup_id(&container);
    let before = pinned_maps(&pin).policies().unwrap();
    assert!(
        before
            .iter()
            .any(|(id, p)| *id == cgroup && p.is_unclassified()),
        "held as unclassified while the agent is away: {before:?}"
    );
    let counters = pinned_maps(&pin)
        .counters(cgroup)
        .unwrap()
        .unwrap_or_default();
    assert_eq!(
        counters.refused_calls[netguard_common::BlockReason::Unclassified as usize],
        4
    );

    agent.restart();
    // The classifier's decision, taken while the agent was away, reaches its log through the
    // pinned kernel log.
    let held = format!("of container {}: held (unclassified)", &container[..12]);
    wait_for("the kernel's classifier line in the agent's log", || {
        agent.count(&held) == 1
    });
    let after = pinned_maps(&pin).policies().unwrap();
    assert!(
        after
            .iter()
            .any(|(id, p)| *id == cgroup && p.is_protected() && !p.is_unclassified()),
        "classified as protected once the agent is back: {after:?}"
    );
    let control = lab.run_control(&["udp", &addr(INTERNET_V4), "7008", "1", "8"]);
    assert!(control.ok);
    wait_for("the control datagram", || {
        internet.count(|a| a.dst_port == 7008) == 1
    });
    assert_eq!(
        internet.count(|a| a.dst_port == 7007),
        0,
        "the unclassified container leaked"
    );
}

#[test]
fn containers_sharing_a_gateway_netns_use_its_tunnel_and_nothing_else() {
    use netguard_tests::{
        lab::TUNNEL_CLIENT_V4,
        wireguard::{Tunnel, ip_in},
    };
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let _agent = lab.start_agent(&pin, "");
    let internet = Sniffer::start(&lab.lab.internet);
    let wg = format!("wg{}g", lab.lab.tag);
    let gateway = lab.start(
        &[
            // No endpoints: the gateway's own traffic is never judged by its neighbours'.
            "netguard.role=vpn-gateway",
            &format!("netguard.tunnel={wg}"),
        ],
        &[],
    );
    let netns = netguard::netns::of_process(lab.pid(&gateway));
    let _tunnel = Tunnel::from_netns(&netns, Some(&lab.cgroup_dir(&gateway)), &wg, &lab.lab);
    ip_in(&netns, &["route", "add", "198.18.2.0/24", "dev", &wg]);
    let tunnel_up = |up: u32| netguard_tests::agent::some_tunnel_is(&pin, up);
    wait_for("the agent to see the gateway's tunnel up", || tunnel_up(1));

    let shared = format!("container:{gateway}");
    let first = lab.start(&[PROTECTED], &["--network", &shared]);
    let second = lab.start(&[PROTECTED], &["--network", &shared]);
    let (first_cgroup, second_cgroup) = (lab.cgroup_id(&first), lab.cgroup_id(&second));
    // At create only the labels are known; the gateway comes with the start reconcile.
    wait_for("both containers classified behind the gateway", || {
        let policies = pinned_maps(&pin).policies().unwrap();
        [first_cgroup, second_cgroup].iter().all(|cg| {
            policies
                .iter()
                .any(|(id, p)| id == cg && p.gateway != 0 && !p.is_unclassified())
        })
    });
    let through = lab.exec_probe(&first, &["udp", &addr(INTERNET_V4), "7010", "3", "8"]);
    assert!(through.ok, "through the tunnel: {through:?}");
    let through = lab.exec_probe(&second, &["udp", &addr(INTERNET_V4), "7011", "5", "8"]);
    assert!(through.ok, "through the tunnel: {through:?}");
    wait_for("the tunnelled datagrams", || {
        internet.count(|a| a.dst_port == 7010 && a.src == TUNNEL_CLIENT_V4) == 3
            && internet.count(|a| a.dst_port == 7011 && a.src == TUNNEL_CLIENT_V4) == 5
    });
    // Two containers in one network namespace, counted apart: 8 + 8 + 20 bytes each.
    let counters = |cgroup| {
        pinned_maps(&pin)
            .counters(cgroup)
            .unwrap()
            .unwrap_or_default()
    };
    assert_eq!(
        (
            counters(first_cgroup).tx_packets,
            counters(first_cgroup).tx_bytes
        ),
        (3, 3 * 36)
    );
    assert_eq!(
        (
            counters(second_cgroup).tx_packets,
            counters(second_cgroup).tx_bytes
        ),
        (5, 5 * 36)
    );

    // A raw frame from the shared namespace meets the backstop inside it, judged by its
    // sender; the namespace's guard names the protected cgroup that judges what the kernel
    // sends there on nobody's behalf.
    let cookie = netguard::netns::cookie_and_interfaces(&netns).unwrap().0;
    let socketless = || {
        pinned_maps(&pin)
            .guards()
            .unwrap()
            .into_iter()
            .find(|(c, _)| *c == cookie)
            .map(|(_, guard)| guard.socketless_cgroup)
    };
    wait_for("the gateway's namespace guarded", || {
        socketless().is_some_and(|owner| [first_cgroup, second_cgroup].contains(&owner))
    });
    let raw = lab.raw_frame_to_internet(&first, &gateway);
    assert!(raw.frame_taken(), "{raw:?}");
    wait_for("the backstop drop", || {
        counters(first_cgroup).blocked_packets[netguard_common::BlockReason::NotAllowed as usize]
            == 1
    });

    // An unlabeled neighbour in the same namespace is nobody's to block: its raw frame
    // arrives.
    let neighbour = lab.start(&[], &["--network", &shared]);
    wait_for("the neighbour classified", || {
        pinned_maps(&pin)
            .policies()
            .unwrap()
            .iter()
            .any(|(id, p)| *id == lab.cgroup_id(&neighbour) && !p.is_unclassified())
    });
    let raw = lab.raw_frame_to_internet(&neighbour, &gateway);
    assert!(raw.ok, "{raw:?}");
    wait_for("the neighbour's raw frame", || {
        internet.with_payload(b"netguard raw frame") == 1
    });

    // The guard's judge goes: the other protected container judges from then on.
    let owner = socketless().unwrap();
    let (gone, stays, stays_id) = if owner == first_cgroup {
        (&first, second_cgroup, &second)
    } else {
        (&second, first_cgroup, &first)
    };
    netguard_tests::sh(&["docker", "rm", "-f", gone]);
    wait_for("the guard to name the remaining container", || {
        socketless() == Some(stays)
    });
    let before = counters(stays).blocked_packets.iter().sum::<u64>();
    let raw = lab.raw_frame_to_internet(stays_id, &gateway);
    assert!(raw.frame_taken(), "{raw:?}");
    wait_for("the backstop drop for the remaining container", || {
        counters(stays).blocked_packets.iter().sum::<u64>() == before + 1
    });

    // Gluetun's own firewall failing: the tunnel goes down and eth0 becomes the route.
    ip_in(&netns, &["link", "set", &wg, "down"]);
    netguard_tests::docker::route_around_tunnel(&netns);
    wait_for("the agent to see the tunnel down", || tunnel_up(0));
    let udp = lab.exec_probe(stays_id, &["udp", &addr(INTERNET_V4), "7012", "3", "8"]);
    let tcp = lab.exec_probe(stays_id, &["tcp", &addr(INTERNET_V4), "7012", "10"]);
    assert_eq!((udp.errno, tcp.errno), (EPERM, EPERM), "{udp:?} {tcp:?}");
    // The unlabeled neighbour is not held back by its protected neighbours' killswitch.
    let open = lab.exec_probe(&neighbour, &["udp", &addr(INTERNET_V4), "7013", "1", "8"]);
    assert!(open.ok, "{open:?}");
    wait_for("the neighbour's datagram around the tunnel", || {
        internet.count(|a| a.dst_port == 7013) == 1
    });
    assert_eq!(
        internet.count(|a| a.dst_port == 7012),
        0,
        "something got out around the tunnel"
    );
    assert_eq!(
        internet.with_payload(b"netguard raw frame"),
        1,
        "only the neighbour's raw frame arrived"
    );
    let refused = counters(stays).refused_calls[netguard_common::BlockReason::TunnelDown as usize];
    assert_eq!(
        refused, 4,
        "3 datagrams and 1 connect() refused because the tunnel is down"
    );
}

#[test]
fn dockerd_restarting_under_a_running_agent_leaves_consistent_state() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let internet = Sniffer::start(&lab.lab.internet);
    let container = lab.start(&[PROTECTED], &["--restart", "always"]);
    let old_cgroup = lab.cgroup_id(&container);
    let syncs = agent.count("Docker: in sync");

    let log = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dockerd-restarted.log");
    netguard_tests::docker::restart_dockerd(&log);
    wait_for("the container to be running again", || {
        let out = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", &container])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    });
    wait_for("the agent to reconnect and resync", || {
        agent.count("Docker: in sync") > syncs
    });
    let new_cgroup = lab.cgroup_id(&container);
    assert_ne!(
        old_cgroup, new_cgroup,
        "a restarted container has a new cgroup"
    );
    wait_for(
        "the new cgroup classified as protected and the old one gone",
        || {
            let policies = pinned_maps(&pin).policies().unwrap();
            policies
                .iter()
                .any(|(id, p)| *id == new_cgroup && p.is_protected() && !p.is_unclassified())
                && !policies.iter().any(|(id, _)| *id == old_cgroup)
        },
    );
    let blocked = lab.exec_probe(&container, &["udp", &addr(INTERNET_V4), "7020", "3", "8"]);
    assert_eq!(blocked.errno, EPERM, "{blocked:?}");
    let control = lab.run_control(&["udp", &addr(INTERNET_V4), "7021", "1", "8"]);
    assert!(control.ok, "{control:?}");
    wait_for("the control datagram", || {
        internet.count(|a| a.dst_port == 7021) == 1
    });
    assert_eq!(internet.count(|a| a.dst_port == 7020), 0);
}

#[test]
fn a_malformed_label_is_reported_and_the_container_stays_protected() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let internet = Sniffer::start(&lab.lab.internet);
    // A typo'd CIDR and a typo'd key: both reported, neither loosens anything.
    let container = lab.start(
        &[
            PROTECTED,
            "netguard.allow=198.18.2.0/33",
            "netguard.alow=198.18.2.0/24",
        ],
        &["--name", &format!("ngt{}-typo", lab.lab.tag)],
    );
    let name = format!("ngt{}-typo", lab.lab.tag);
    wait_for(
        "both problems reported, naming the container and the value",
        || {
            agent
                .log_lines(&name)
                .iter()
                .any(|l| l.contains("198.18.2.0/33"))
                && agent
                    .log_lines(&name)
                    .iter()
                    .any(|l| l.contains("netguard.alow") && l.contains("netguard.allow"))
        },
    );
    let blocked = lab.exec_probe(&container, &["udp", &addr(INTERNET_V4), "7030", "2", "8"]);
    assert_eq!(blocked.errno, EPERM, "{blocked:?}");
    let control = lab.run_control(&["udp", &addr(INTERNET_V4), "7031", "1", "8"]);
    assert!(control.ok);
    wait_for("the control datagram", || {
        internet.count(|a| a.dst_port == 7031) == 1
    });
    assert_eq!(internet.count(|a| a.dst_port == 7030), 0);
}

#[test]
fn restarts_crash_loops_and_renames_keep_protection_and_destroy_leaves_nothing() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let _agent = lab.start_agent(&pin, "");
    let internet = Sniffer::start(&lab.lab.internet);
    let baseline_policies = pinned_maps(&pin).policies().unwrap().len();

    // A crash loop whose every run first sends to the internet: new cgroup each time.
    let inet = addr(INTERNET_V4);
    let looping = {
        let mut command = std::process::Command::new("docker");
        command.args([
            "run",
            "-d",
            "--restart",
            "always",
            "--label",
            "netguard.test=1",
            "--label",
            &format!("ngt.lab={}", lab.lab.tag),
        ]);
        command.args([
            "--cgroup-parent",
            &format!(
                "/{}",
                lab.parent.path.file_name().unwrap().to_string_lossy()
            ),
        ]);
        command.args([
            "--label",
            PROTECTED,
            "netguard-test/probe:latest",
            "sh",
            "-c",
            &format!("ng-probe udp {inet} 7040 1 8; exit 1"),
        ]);
        let out = command.output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    wait_for("three restarts", || {
        let out = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.RestartCount}}", &looping])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .is_ok_and(|n| n >= 3)
    });
    // docker restart and docker rename of a long-running one.
    let steady = lab.start(&[PROTECTED], &[]);
    netguard_tests::sh(&["docker", "restart", "-t", "0", &steady]);
    netguard_tests::sh(&[
        "docker",
        "rename",
        &steady,
        &format!("ngt{}-renamed", lab.lab.tag),
    ]);
    let blocked = lab.exec_probe(&steady, &["udp", &inet, "7041", "2", "8"]);
    assert_eq!(blocked.errno, EPERM, "{blocked:?}");
    let control = lab.run_control(&["udp", &inet, "7042", "1", "8"]);
    assert!(control.ok);
    wait_for("the control datagram", || {
        internet.count(|a| a.dst_port == 7042) == 1
    });
    assert_eq!(
        internet.count(|a| a.dst_port == 7040 || a.dst_port == 7041),
        0,
        "a restart leaked"
    );

    netguard_tests::sh(&["docker", "rm", "-f", &looping, &steady]);
    // 1,000 create/destroy cycles: registrations come and go, nothing accumulates.
    let script = format!(
        "seq 1000 | xargs -P 8 -I{{}} sh -c 'id=$(docker create --label netguard.test=1 --label ngt.lab={} --label vpn=required netguard-test/probe:latest true) && docker rm $id >/dev/null'",
        lab.lab.tag
    );
    netguard_tests::sh(&["sh", "-c", &script]);
    wait_for("every registration and policy entry gone", || {
        let maps = pinned_maps(&pin);
        maps.registrations().unwrap().is_empty()
            && maps.policies().unwrap().len() == baseline_policies
    });
}

#[test]
fn a_network_created_under_a_running_agent_becomes_internal() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let _agent = lab.start_agent(&pin, "");
    let network = format!("ngt{}-net", lab.lab.tag);
    let subnet = "172.31.213.0/24";
    netguard_tests::sh(&[
        "docker",
        "network",
        "create",
        "--label",
        "netguard.test=1",
        "--subnet",
        subnet,
        &network,
    ]);
    let _remove = NetworkGuard {
        network: network.clone(),
        lab: lab.lab.tag.clone(),
    };
    wait_for("the new network's subnet to be internal", || {
        pinned_maps(&pin)
            .cidrs()
            .unwrap()
            .contains(&(0, subnet.parse().unwrap()))
    });
    let peer = lab.start_with(
        &[],
        &["--network", &network],
        &["ng-probe", "udp-recv", "6000", "4"],
    );
    let peer_ip = netguard_tests::sh(&[
        "docker",
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        &peer,
    ]);
    let peer_cgroup = lab.cgroup_id(&peer);
    let protected = lab.start(&[PROTECTED], &["--network", &network]);
    let sent = lab.exec_probe(&protected, &["udp", peer_ip.trim(), "6000", "4", "100"]);
    assert!(
        sent.ok,
        "to a peer on the protected container's own network: {sent:?}"
    );
    let exit = netguard_tests::sh(&["docker", "wait", &peer]);
    assert_eq!(exit.trim(), "0", "the peer received all four datagrams");
    // The unprotected peer is counted too: 4 datagrams, 128-byte IP packets.
    let counters = pinned_maps(&pin)
        .counters(peer_cgroup)
        .unwrap()
        .unwrap_or_default();
    assert_eq!(
        (counters.rx_packets, counters.rx_bytes),
        (4, 4 * 128),
        "{counters:?}"
    );
    let blocked = lab.exec_probe(&protected, &["udp", &addr(INTERNET_V4), "7050", "1", "8"]);
    assert_eq!(blocked.errno, EPERM, "{blocked:?}");
}

/// Removes a test network on drop, after the lab's containers attached to it.
struct NetworkGuard {
    network: String,
    lab: String,
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let filter = format!("label=ngt.lab={}", self.lab);
        let script = format!(
            "docker ps -aq --filter {filter} | xargs -r docker rm -f >/dev/null; docker network rm {}",
            self.network
        );
        netguard_tests::sh_quiet(&["sh", "-c", &script]);
    }
}
