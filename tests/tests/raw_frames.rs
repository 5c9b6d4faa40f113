//! Frames that bypass the socket hooks (AF_PACKET raw and dgram, TX rings, qdisc bypass)
//! from protected containers wherever their traffic leaves: the default bridge, the host's
//! network (`--network host`) and macvlan. Checked at the far end, with unprotected
//! containers in the same place as controls.

use netguard_common::BlockReason;
use netguard_tests::{
    agent::{PinDir, pinned_maps},
    docker::{DockerLab, HOST_LINK_V4, ROUTER_LINK_V4},
    lab::{INTERNET_V4, addr},
    probe::{EPERM, ProbeResult},
    sniffer::Sniffer,
    wait_for,
};

const PROTECTED: &str = "vpn=required";
const MARKER: &[u8] = b"netguard raw frame";

/// Modes the kernel sends (the backstop drops them) and modes that would skip TC (refused).
const ON_THE_WIRE: [&[&str]; 4] = [&[], &["dgram"], &["ring"], &["dgram", "ring"]];
const BYPASSING: [&[&str]; 2] = [&["bypass"], &["ring", "bypass"]];

/// Waits until `container`'s cgroup is classified (not merely held) and, if it is
/// protected, its network namespace is guarded (the backstop on every interface).
fn wait_ready(lab: &DockerLab, pin: &PinDir, container: &str, protected: bool) {
    let cgroup = lab.cgroup_id(container);
    let netns = netguard::netns::of_process(lab.pid(container));
    let cookie = netguard::netns::cookie_and_interfaces(&netns).unwrap().0;
    wait_for("the container classified and its namespace guarded", || {
        let maps = pinned_maps(pin);
        let classified =
            maps.policies().unwrap().iter().any(|(id, p)| {
                *id == cgroup && !p.is_unclassified() && p.is_protected() == protected
            });
        let guarded = maps.guards().unwrap().iter().any(|(c, _)| *c == cookie);
        classified && (guarded || !protected)
    });
}

/// Where a container's frames leave, and what a frame to the internet host looks like there.
struct Placement {
    docker_args: Vec<String>,
    interface: String,
    next_hop_mac: String,
    /// The container's source address, if fixed (else its own address is looked up).
    source: Option<String>,
}

impl Placement {
    fn frame(&self, lab: &DockerLab, container: &str, port: u16, modes: &[&str]) -> ProbeResult {
        let source = self
            .source
            .clone()
            .unwrap_or_else(|| container_ip(container));
        let port = port.to_string();
        let inet = addr(INTERNET_V4);
        let mut args = vec![
            "raw-frame",
            &self.interface,
            &self.next_hop_mac,
            &source,
            &inet,
            &port,
        ];
        args.extend(modes);
        lab.exec_probe(container, &args)
    }
}

/// The container's address on whichever network it is on.
fn container_ip(container: &str) -> String {
    netguard_tests::sh(&[
        "docker",
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        container,
    ])
    .trim()
    .to_string()
}

#[test]
fn raw_frames_from_a_protected_container_never_arrive() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let _agent = lab.start_agent(&pin, "");
    let internet = Sniffer::start(&lab.lab.internet);

    let open = lab.start(&[], &[]);
    wait_ready(&lab, &pin, &open, false);
    let sent = lab.raw_frame_to_internet(&open, &open);
    assert!(sent.ok, "{sent:?}");
    wait_for("the unlabeled container's raw frame", || {
        internet.with_payload(MARKER) == 1
    });

    let protected = lab.start(&[PROTECTED], &[]);
    wait_ready(&lab, &pin, &protected, true);
    let cgroup = lab.cgroup_id(&protected);
    let sent = lab.raw_frame_to_internet(&protected, &protected);
    assert!(
        sent.frame_taken(),
        "the backstop drops it in the container's namespace: {sent:?}"
    );
    wait_for("the backstop drop", || {
        pinned_maps(&pin)
            .counters(cgroup)
            .unwrap()
            .is_some_and(|c| c.blocked_packets[BlockReason::NotAllowed as usize] == 1)
    });
    // A later frame from the unlabeled container overtakes nothing: the protected one is gone.
    let again = lab.raw_frame_to_internet(&open, &open);
    assert!(again.ok);
    wait_for("the second unlabeled frame", || {
        internet.with_payload(MARKER) == 2
    });
    assert_eq!(
        internet.with_payload(MARKER),
        2,
        "the protected container's raw frame arrived"
    );
}

#[test]
fn af_packet_frames_from_protected_bridge_host_and_macvlan_containers_never_arrive() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    // On the host's network the backstop goes on the lab's link only: a test never touches
    // the machine's own interfaces.
    let _agent = lab.start_agent(
        &pin,
        &format!("backstop_host_interfaces = [{:?}]\n", lab.host_link),
    );
    let internet = Sniffer::start(&lab.lab.internet);
    let docker0 = std::fs::read_to_string("/sys/class/net/docker0/address").unwrap();
    let router = lab.router().mac("to-host");
    let macvlan = lab.network(&[
        "-d",
        "macvlan",
        "--subnet",
        "198.18.7.0/24",
        "--ip-range",
        "198.18.7.128/25",
        "--gateway",
        ROUTER_LINK_V4,
        "-o",
        &format!("parent={}", lab.host_link),
    ]);
    let placements = [
        (
            "bridge",
            Placement {
                docker_args: Vec::new(),
                interface: "eth0".into(),
                next_hop_mac: docker0.trim().into(),
                source: None,
            },
        ),
        (
            "host network",
            Placement {
                docker_args: vec!["--network".into(), "host".into()],
                interface: lab.host_link.clone(),
                next_hop_mac: router.clone(),
                source: Some(HOST_LINK_V4.into()),
            },
        ),
        (
            "macvlan",
            Placement {
                docker_args: vec!["--network".into(), macvlan.clone()],
                interface: "eth0".into(),
                next_hop_mac: router.clone(),
                source: None,
            },
        ),
    ];
    let mut port = 7200;
    let mut expected_arrivals = 0;
    for (name, placement) in &placements {
        let args: Vec<&str> = placement.docker_args.iter().map(String::as_str).collect();
        // The control, unprotected in the same place: every mode arrives, bypass included.
        let open = lab.start(&[], &args);
        wait_ready(&lab, &pin, &open, false);
        for modes in ON_THE_WIRE.iter().chain(&BYPASSING) {
            port += 1;
            let sent = placement.frame(&lab, &open, port, modes);
            assert!(sent.ok, "{name} control {modes:?}: {sent:?}");
            expected_arrivals += 1;
        }
        wait_for(&format!("the {name} control's frames"), || {
            internet.with_payload(MARKER) == expected_arrivals
        });

        let protected = lab.start(&[PROTECTED], &args);
        wait_ready(&lab, &pin, &protected, true);
        let cgroup = lab.cgroup_id(&protected);
        for modes in ON_THE_WIRE {
            port += 1;
            let sent = placement.frame(&lab, &protected, port, modes);
            assert!(
                sent.frame_taken(),
                "{name} {modes:?}: taken, then dropped: {sent:?}"
            );
        }
        for modes in BYPASSING {
            port += 1;
            let refused = placement.frame(&lab, &protected, port, modes);
            assert_eq!(refused.errno, EPERM, "{name} {modes:?}: {refused:?}");
        }
        wait_for(&format!("the backstop to drop the {name} frames"), || {
            pinned_maps(&pin)
                .counters(cgroup)
                .unwrap()
                .is_some_and(|c| {
                    c.blocked_packets[BlockReason::NotAllowed as usize] == ON_THE_WIRE.len() as u64
                        && c.refused_calls[BlockReason::NotAllowed as usize]
                            == BYPASSING.len() as u64
                })
        });
        netguard_tests::sh(&["docker", "rm", "-f", &open, &protected]);
    }
    // A last control frame overtakes nothing: every protected frame is gone for good.
    let last = lab.start(&[], &[]);
    wait_ready(&lab, &pin, &last, false);
    assert!(placements[0].1.frame(&lab, &last, 7299, &[]).ok);
    wait_for("the last control frame", || {
        internet.count(|a| a.dst_port == 7299) == 1
    });
    assert_eq!(
        internet.with_payload(MARKER),
        expected_arrivals + 1,
        "only the controls' frames arrived"
    );
}

/// `ng-probe raw-frame` from a container's own address to the internet host, as a shell
/// command (the address is read inside the container).
fn raw_frame_script(port: u16, modes: &str) -> String {
    let docker0 = std::fs::read_to_string("/sys/class/net/docker0/address").unwrap();
    format!(
        "ng-probe raw-frame eth0 {} \
         $(ip -4 addr show eth0 | awk '/inet /{{split($2, a, \"/\"); print a[1]}}') {} {port} \
         {modes}",
        docker0.trim(),
        addr(INTERNET_V4)
    )
}

#[test]
fn a_raw_frame_from_a_containers_first_instant_waits_for_the_backstop_and_never_arrives() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let internet = Sniffer::start(&lab.lab.internet);
    // The socket is opened at once, before the agent can have guarded the namespace.
    let rounds = 20;
    for round in 0..rounds {
        let reports = lab.run_script(&[PROTECTED], &[], &raw_frame_script(7301, ""));
        assert!(
            reports[0].frame_taken(),
            "round {round}: continued, then dropped: {:?}",
            reports[0]
        );
    }
    let held = agent.count("raw-socket hold over, continued");
    eprintln!(
        "first-instant raw sockets: {held} of {rounds} stopped until the backstop was in place"
    );
    assert!(
        held >= 1,
        "the hold never happened: the test proves nothing"
    );
    let control = lab.run_control(&["udp", &addr(INTERNET_V4), "7302", "1", "8"]);
    assert!(control.ok);
    wait_for("the control datagram", || {
        internet.count(|a| a.dst_port == 7302) == 1
    });
    assert_eq!(
        internet.count(|a| a.dst_port == 7301),
        0,
        "a first-instant raw frame arrived"
    );
}

#[test]
fn a_raw_socket_opened_while_the_agent_is_down_waits_for_the_agent() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let mut agent = lab.start_agent(&pin, "");
    let internet = Sniffer::start(&lab.lab.internet);
    agent.kill9();
    // AF_PACKET, and the old AF_INET SOCK_PACKET.
    let containers: Vec<String> = [(7311, ""), (7313, "legacy")]
        .iter()
        .map(|(port, modes)| {
            let script = raw_frame_script(*port, modes);
            lab.start_with(&[PROTECTED], &[], &["sh", "-c", &script])
        })
        .collect();
    for container in &containers {
        let pid = lab.pid(container);
        wait_for("the probe stopped by the raw-socket guard", || {
            stopped_in_tree(pid)
        });
    }
    agent.restart();
    wait_for("the agent to continue both", || {
        agent.count("raw-socket hold over, continued") >= 2
    });
    for container in &containers {
        wait_for("the container to finish", || {
            netguard_tests::sh(&["docker", "inspect", "-f", "{{.State.Running}}", container]).trim()
                == "false"
        });
    }
    let control = lab.run_control(&["udp", &addr(INTERNET_V4), "7312", "1", "8"]);
    assert!(control.ok);
    wait_for("the control datagram", || {
        internet.count(|a| a.dst_port == 7312) == 1
    });
    assert_eq!(
        internet.count(|a| a.dst_port == 7311),
        0,
        "the raw frame arrived"
    );
}

/// Whether process `pid` or one of its children is stopped (state `T`).
fn stopped_in_tree(pid: u32) -> bool {
    let state = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let close = stat.rfind(')')?;
                stat[close + 1..]
                    .split_whitespace()
                    .next()
                    .map(str::to_string)
            })
    };
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid.to_string())
        .chain(children.split_whitespace().map(str::to_string))
        .any(|p| state(&p).as_deref() == Some("T"))
}
