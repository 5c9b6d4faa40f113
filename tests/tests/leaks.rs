//! The leaks a security review found, each closed and checked at the far end with a real
//! dockerd: labels from images, deep cgroups, a full policy map, long cgroup paths, what
//! counts as internal, other engines' containers, a half-attached start, the HTTP server.

use std::{fs, net::SocketAddr, path::Path};

use netguard::api::ContainerStatus;
use netguard_common::{BlockReason, CgroupPolicy, reserved_policy_key};
use netguard_tests::{
    TempDir,
    agent::{AS_NOBODY, PinDir, netguard_bin, pinned_maps},
    cgroups::TestCgroup,
    docker::DockerLab,
    http::{self, parse_exposition},
    lab::{INTERNET_V4, addr},
    probe::{EPERM, probe},
    sh, sh_quiet,
    sniffer::Sniffer,
    wait_for,
};

const PROTECTED: &str = "vpn=required";

fn containers(api: SocketAddr) -> Vec<ContainerStatus> {
    let (status, body) = http::get(api, "/api/v1/containers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn status_of(api: SocketAddr, id: &str) -> Option<ContainerStatus> {
    containers(api).into_iter().find(|c| c.id == id)
}

/// The value of metric `name` (summed over its series).
fn metric(api: SocketAddr, name: &str) -> f64 {
    let (status, body) = http::get(api, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse_exposition(&body)
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

/// A datagram from an unlabeled container that the internet host must see: everything the
/// test sent before it has arrived by then, if it was ever going to.
fn barrier(lab: &DockerLab, internet: &Sniffer, port: u16) {
    let control = lab.run_control(&["udp", &addr(INTERNET_V4), &port.to_string(), "1", "8"]);
    assert!(control.ok, "the unlabeled control: {control:?}");
    wait_for("the control datagram", || {
        internet.count(|a| a.dst_port == port) == 1
    });
}

/// A datagram to the internet host from a fresh unlabeled container under cgroup parent
/// `parent`, retried while the container is held until the agent classifies it.
fn unlabeled_under(lab: &DockerLab, parent: &str, port: u16) -> netguard_tests::probe::ProbeResult {
    lab.run_probe_with(
        &[],
        &["--cgroup-parent", parent, "-e", "NG_PROBE_RETRY_MS=10000"],
        None,
        &["udp", &addr(INTERNET_V4), &port.to_string(), "1", "8"],
    )
}

#[test]
fn labels_baked_into_an_image_never_loosen_protection() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let api = agent.http_address();
    let internet = Sniffer::start(&lab.lab.internet);
    let inet = addr(INTERNET_V4);

    // An image that opens everything, run with --label vpn=required.
    let open = lab.image_with_labels(&[("netguard.allow", "0.0.0.0/0,::/0")]);
    let from_image = lab.run_probe_with(
        &[PROTECTED],
        &[],
        Some(&open),
        &["udp", &inet, "7101", "3", "8"],
    );
    assert_eq!(
        (from_image.errno, from_image.done),
        (EPERM, 0),
        "{from_image:?}"
    );
    // The same allowance set on the container is the operator's: it counts (once inspected).
    let own = lab.run_probe_with(
        &[PROTECTED, "netguard.allow=198.18.2.0/24"],
        &["-e", "NG_PROBE_RETRY_MS=10000"],
        None,
        &["udp", &inet, "7102", "1", "8"],
    );
    assert!(own.ok, "the container's own allowance: {own:?}");

    // An image that makes itself the only gateway, with an endpoint of its choosing.
    let rogue = lab.image_with_labels(&[
        ("netguard.role", "vpn-gateway"),
        ("netguard.endpoints", "198.18.2.2:7103/udp"),
    ]);
    let rogue_id = lab.start_image(&[], &[], &rogue, &["sleep", "3600"]);
    wait_for("the agent to report the image's labels", || {
        status_of(api, &rogue_id).is_some_and(|c| {
            c.problems
                .iter()
                .any(|p| p.contains("comes from the image"))
                && c.running
        })
    });
    let rogue_status = status_of(api, &rogue_id).unwrap();
    assert!(!rogue_status.vpn_gateway, "{rogue_status:?}");
    let behind = lab.run_probe(&[PROTECTED], &["udp", &inet, "7103", "3", "8"]);
    assert_eq!((behind.errno, behind.done), (EPERM, 0), "{behind:?}");

    // vpn=required from an image protects: stricter is fine.
    let strict = lab.image_with_labels(&[("vpn", "required")]);
    let held = lab.run_probe_with(&[], &[], Some(&strict), &["udp", &inet, "7104", "3", "8"]);
    assert_eq!((held.errno, held.done), (EPERM, 0), "{held:?}");

    assert!(
        metric(api, "netguard_label_problems_total") >= 2.0,
        "the image's allow and the rogue's role and endpoints are counted"
    );
    barrier(&lab, &internet, 7105);
    assert_eq!(internet.count(|a| a.dst_port == 7102), 1);
    for port in [7101, 7103, 7104] {
        assert_eq!(
            internet.count(|a| a.dst_port == port),
            0,
            "port {port}: an image's label opened the container"
        );
    }
}

#[test]
fn a_container_seventeen_or_more_cgroup_levels_deep_is_enforced_and_shown_as_it_is() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let api = agent.http_address();
    let internet = Sniffer::start(&lab.lab.internet);
    let inet = addr(INTERNET_V4);
    // The lab's parent is level 1; 16 more components put the container at level 18.
    let deep: String = (0..16).map(|i| format!("/d{i}")).collect();
    let parent = format!("{}{deep}", lab.cgroup_parent());
    let in_deep = ["--cgroup-parent", &parent];

    let blocked = lab.run_probe_with(
        &[PROTECTED],
        &in_deep,
        None,
        &["udp", &inet, "7111", "3", "8"],
    );
    assert_eq!((blocked.errno, blocked.done), (EPERM, 0), "{blocked:?}");
    let long_lived = lab.start_with(&[PROTECTED], &in_deep, &["sleep", "3600"]);
    let depth = fs::read_to_string(format!("/proc/{}/cgroup", lab.pid(&long_lived))).unwrap();
    assert!(depth.matches('/').count() >= 18, "{depth}");
    wait_for("the deep container classified", || {
        status_of(api, &long_lived).is_some_and(|c| c.running && !c.cgroups.is_empty())
    });
    assert!(status_of(api, &long_lived).unwrap().protected);
    let tcp = lab.exec_probe(&long_lived, &["tcp", &inet, "7111", "10"]);
    assert_eq!(tcp.errno, EPERM, "{tcp:?}");
    // An unlabeled container as deep is counted, never blocked.
    let open = unlabeled_under(&lab, &parent, 7112);
    assert!(open.ok, "{open:?}");
    barrier(&lab, &internet, 7113);
    assert_eq!(internet.count(|a| a.dst_port == 7112), 1);
    assert_eq!(
        internet.count(|a| a.dst_port == 7111),
        0,
        "the deep container leaked"
    );
}

#[test]
fn a_cgroup_path_of_any_length_is_classified_while_the_agent_is_down() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let mut agent = lab.start_agent(&pin, "");
    let internet = Sniffer::start(&lab.lab.internet);
    let inet = addr(INTERNET_V4);
    agent.kill9();
    // Five components of 220 characters: a path of over 1,100 bytes.
    let long: String = (b'a'..b'f')
        .map(|c| format!("/{}", char::from(c).to_string().repeat(220)))
        .collect();
    let parent = format!("{}{long}", lab.cgroup_parent());
    assert!(parent.len() > 1100);
    let in_long = ["--cgroup-parent", parent.as_str()];
    // No agent: every new container is held until one classifies it, labelled or not.
    for (labels, port) in [(&[PROTECTED][..], "7121"), (&[][..], "7122")] {
        let held = lab.run_probe_with(labels, &in_long, None, &["udp", &inet, port, "3", "8"]);
        assert_eq!((held.errno, held.done), (EPERM, 0), "{labels:?}: {held:?}");
    }
    agent.restart();
    let counted = unlabeled_under(&lab, &parent, 7123);
    assert!(counted.ok, "classified once the agent is back: {counted:?}");
    barrier(&lab, &internet, 7124);
    assert_eq!(internet.count(|a| a.dst_port == 7123), 1);
    assert_eq!(
        internet.count(|a| a.dst_port == 7121 || a.dst_port == 7122),
        0,
        "a long-path container left while the agent was down"
    );
}

/// Count-only policy entries for real (empty) cgroups named `<prefix><n>` until the policy
/// map is full: what 65,536 containers would do. Returns their ids (the cgroups go with the
/// lab's parent).
fn fill_policy_map(
    lab: &mut DockerLab,
    maps: &mut netguard::kernel::Maps,
    prefix: &str,
) -> Vec<u64> {
    if !lab.parent.path.join("fill").exists() {
        lab.parent.child("fill");
    }
    let mut ids = Vec::new();
    for i in 0.. {
        let dir = lab.parent.path.join(format!("fill/{prefix}{i}"));
        fs::create_dir(&dir).unwrap();
        let id = TestCgroup::id(&dir);
        if maps.set_policy(id, CgroupPolicy::default()).is_err() {
            return ids;
        }
        ids.push(id);
    }
    unreachable!()
}

#[test]
fn a_full_policy_map_holds_new_containers_with_a_reserve_and_freezes_what_it_cannot_hold() {
    let mut lab = DockerLab::new();
    let pin = PinDir::new();
    let mut agent = lab.start_agent(&pin, "resync_secs = 1\n");
    let internet = Sniffer::start(&lab.lab.internet);
    let inet = addr(INTERNET_V4);
    let fillers = fill_policy_map(&mut lab, &mut pinned_maps(&pin), "f");
    assert!(fillers.len() > 60_000, "{} entries", fillers.len());

    // Full: the classifier gives up one of the reserved entries for the new container.
    let reserved = lab.start(&[PROTECTED], &[]);
    let blocked = lab.exec_probe(&reserved, &["udp", &inet, "7131", "3", "8"]);
    assert_eq!((blocked.errno, blocked.done), (EPERM, 0), "{blocked:?}");
    wait_for("the kernel's word that a reserve was used", || {
        agent.count("a reserve was used") >= 1
    });

    // No reserve left, and no agent to notice: the classifier can hold nothing.
    agent.kill9();
    let mut maps = pinned_maps(&pin);
    for i in 0..netguard_common::RESERVED_POLICY_KEYS {
        let _ = maps.remove_policy(reserved_policy_key(i));
    }
    let more = fill_policy_map(&mut lab, &mut maps, "g");
    assert!(!more.is_empty());
    let marker = TempDir::new("go");
    let mount = format!("{}:/m", marker.path.display());
    let script = format!(
        "while [ ! -f /m/go ]; do sleep 0.05; done; \
         while true; do ng-probe udp {inet} 7132 1 8; sleep 0.05; done"
    );
    let unheld = lab.start_with(&[PROTECTED], &["-v", &mount], &["sh", "-c", &script]);
    let cgroup = lab.cgroup_id(&unheld);
    assert!(
        !pinned_maps(&pin)
            .policies()
            .unwrap()
            .iter()
            .any(|(id, _)| *id == cgroup),
        "the full map took no entry for it"
    );

    // The agent cannot write its policy either: it freezes the container, and says so.
    agent.restart();
    let api = agent.http_address();
    wait_for(
        "the agent to freeze the container it cannot protect",
        || agent.count("its cgroup is frozen") >= 1,
    );
    let cgroup_dir = lab.cgroup_dir(&unheld);
    assert_eq!(
        fs::read_to_string(cgroup_dir.join("cgroup.freeze"))
            .unwrap()
            .trim(),
        "1"
    );
    let shown = status_of(api, &unheld).unwrap();
    assert!(!shown.protected, "shown UNPROTECTED: {shown:?}");
    assert!(
        shown.problems.iter().any(|p| p.contains("frozen")),
        "{shown:?}"
    );
    assert!(
        agent.count("no reserve is left") >= 1,
        "the kernel's log line"
    );
    fs::write(marker.path.join("go"), "").unwrap();

    // Room again: the policy is written, the container thawed, and what it sends refused.
    let mut maps = pinned_maps(&pin);
    for id in &fillers[..100] {
        maps.remove_policy(*id).unwrap();
    }
    wait_for("the container protected and thawed", || {
        pinned_maps(&pin)
            .counters(cgroup)
            .unwrap()
            .is_some_and(|c| c.refused_calls[BlockReason::NotAllowed as usize] >= 3)
    });
    assert!(status_of(api, &unheld).unwrap().protected);
    barrier(&lab, &internet, 7133);
    assert_eq!(
        internet.count(|a| a.dst_port == 7131 || a.dst_port == 7132),
        0,
        "a container leaked through a full map"
    );
}

/// A route in the root namespace for the test's lifetime.
struct RootRoute(Vec<String>);

impl RootRoute {
    fn add(args: &[&str]) -> Self {
        let mut command = vec!["ip", "route", "add"];
        command.extend_from_slice(args);
        sh(&command);
        Self(args.iter().map(|a| a.to_string()).collect())
    }
}

impl Drop for RootRoute {
    fn drop(&mut self) {
        let mut command = vec!["ip", "route", "del"];
        command.extend(self.0.iter().map(String::as_str));
        sh_quiet(&command);
    }
}

#[test]
fn only_subnets_the_host_reaches_directly_count_as_internal() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    // Declared subnets with a far end in the lab: a macvlan network's and a config-only one's.
    lab.internet_host_also_at("198.18.10.0/24", "198.18.10.2");
    lab.internet_host_also_at("198.18.11.0/24", "198.18.11.2");
    let parent = format!("parent={}", lab.host_link);
    lab.network(&["-d", "macvlan", "--subnet", "198.18.10.0/24", "-o", &parent]);
    lab.network(&["--config-only", "--subnet", "198.18.11.0/24"]);
    // Private subnets the host does not reach: on lo, and unreachable. Nothing sent there
    // leaves the machine either way.
    let _on_lo = RootRoute::add(&["10.250.77.0/24", "dev", "lo"]);
    let _unreachable = RootRoute::add(&["unreachable", "10.250.78.0/24"]);
    let agent = lab.start_agent(&pin, "");
    let internet = Sniffer::start(&lab.lab.internet);
    let _ = agent.http_address();

    for (destination, port) in [("198.18.10.2", "7141"), ("198.18.11.2", "7142")] {
        let blocked = lab.run_probe(&[PROTECTED], &["udp", destination, port, "3", "8"]);
        assert_eq!(
            (blocked.errno, blocked.done),
            (EPERM, 0),
            "{destination}: {blocked:?}"
        );
        // The far end is there: an unlabeled container reaches it.
        let open = lab.run_control(&["udp", destination, port, "1", "8"]);
        assert!(open.ok, "{destination}: {open:?}");
    }
    for destination in ["10.250.77.2", "10.250.78.2"] {
        let refused = lab.run_probe(&[PROTECTED], &["udp", destination, "7143", "1", "8"]);
        assert_eq!(
            refused.errno, EPERM,
            "{destination} is not internal: {refused:?}"
        );
    }
    // The bridge the containers are on is internal: the host has an address on it.
    let gateway = netguard_tests::docker::bridge_gateway();
    let bridge = lab.run_probe(&[PROTECTED], &["udp", &gateway, "7144", "1", "8"]);
    assert!(bridge.ok, "the bridge's own subnet: {bridge:?}");
    barrier(&lab, &internet, 7145);
    assert_eq!(
        internet.count(|a| a.dst_port == 7141),
        1,
        "only the control's"
    );
    assert_eq!(
        internet.count(|a| a.dst_port == 7142),
        1,
        "only the control's"
    );
}

#[test]
fn container_cgroups_no_docker_daemon_knows_stay_held_and_are_reported() {
    let mut lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "resync_secs = 1\n");
    let api = agent.http_address();
    let internet = Sniffer::start(&lab.lab.internet);
    // Another engine's container (a second daemon, containerd), made by root.
    let foreign = lab.parent.child(&"e".repeat(64));
    // One made by a user in a subtree delegated to it (rootless Docker): not held.
    let delegated = lab.parent.child("user.slice");
    sh(&["chown", "65534:65534", &delegated.to_string_lossy()]);
    let rootless = delegated.join(format!("docker-{}.scope", "f".repeat(64)));
    let mut mkdir: Vec<&str> = AS_NOBODY.to_vec();
    let rootless_text = rootless.to_string_lossy().to_string();
    mkdir.extend(["mkdir", &rootless_text]);
    sh(&mkdir);

    wait_for("both reported as unknown", || {
        let unknown: Vec<ContainerStatus> =
            containers(api).into_iter().filter(|c| c.unknown).collect();
        unknown.len() == 2
    });
    let unknown: Vec<ContainerStatus> = containers(api).into_iter().filter(|c| c.unknown).collect();
    let held = unknown.iter().find(|c| c.id == "e".repeat(64)).unwrap();
    assert!(held.problems[0].contains("held"), "{held:?}");
    let not_held = unknown.iter().find(|c| c.id == "f".repeat(64)).unwrap();
    assert!(not_held.problems[0].contains("uid 65534"), "{not_held:?}");
    assert_eq!(metric(api, "netguard_unknown_container_cgroups"), 2.0);

    // Many syncs later the held one is still held: a process in it reaches nothing outside.
    let syncs = agent.count("Docker: in sync");
    wait_for("three more full syncs", || {
        agent.count("Docker: in sync") >= syncs + 3
    });
    let sent = probe(
        &lab.lab.sibling,
        Some(&foreign),
        &["udp", &addr(INTERNET_V4), "7151", "3", "8"],
    );
    assert_eq!((sent.errno, sent.done), (EPERM, 0), "{sent:?}");
    barrier(&lab, &internet, 7152);
    assert_eq!(internet.count(|a| a.dst_port == 7151), 0);
    let _ = fs::remove_dir(&rootless);
}

#[test]
fn a_failed_start_leaves_nothing_half_attached_and_enforcing_says_whether_it_is() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let config_path = std::env::temp_dir().join(format!("ngt{}-failing.toml", lab.lab.tag));
    let config = format!(
        "pin_dir = {:?}\nattach_cgroups = [{:?}]\nlisten = \"off\"\n",
        pin.path.display().to_string(),
        lab.parent.path.display().to_string(),
    );
    fs::write(&config_path, &config).unwrap();
    // Something in the way of the last cgroup program's pin: the start fails after the
    // classifier and most programs were attached.
    let links = pin.path.join("links");
    let obstacle = links.join(format!(
        "cg{}_ng_setsockopt/in-the-way",
        TestCgroup::id(&lab.parent.path)
    ));
    let run = || {
        std::process::Command::new(netguard_bin())
            .args(["run", "--config"])
            .arg(&config_path)
            .output()
            .unwrap()
    };
    fs::create_dir_all(&obstacle).unwrap();
    let failed = run();
    assert!(!failed.status.success(), "{failed:?}");
    let left: Vec<String> = fs::read_dir(&links)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|name| !name.ends_with("_ng_setsockopt"))
        .collect();
    assert!(
        left.is_empty(),
        "rolled back, nothing half attached: {left:?}"
    );
    let enforcing = |pin: &Path| {
        std::process::Command::new(netguard_bin())
            .args(["enforcing", "--pin-dir"])
            .arg(pin)
            .output()
            .unwrap()
    };
    let not_yet = enforcing(&pin.path);
    assert!(!not_yet.status.success(), "dockerd would wait: {not_yet:?}");

    // Out of the way, the agent starts, and enforcing lets dockerd go.
    fs::remove_dir_all(links.join(format!(
        "cg{}_ng_setsockopt",
        TestCgroup::id(&lab.parent.path)
    )))
    .unwrap();
    let _agent = netguard_tests::agent::Agent::start_on_host(&config, config_path.clone());
    let ready = enforcing(&pin.path);
    assert!(ready.status.success(), "{ready:?}");
    assert!(String::from_utf8_lossy(&ready.stdout).contains("container classifier"));
}

#[test]
fn the_api_asks_for_its_token_and_caps_live_streams() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let token_dir = TempDir::new("token");
    let token_file = token_dir.path.join("token");
    let agent = lab.start_agent(
        &pin,
        &format!(
            "api_token_file = {:?}\nmax_flow_streams = 2\n",
            token_file.display().to_string()
        ),
    );
    let api = agent.http_address();
    let token = fs::read_to_string(&token_file).unwrap().trim().to_string();
    assert_eq!(token.len(), 64, "made at start: {token:?}");

    assert_eq!(
        http::get(api, "/healthz").0,
        200,
        "the liveness check needs no token"
    );
    for path in ["/metrics", "/api/v1/containers", "/api/v1/flows/stream"] {
        assert_eq!(http::get(api, path).0, 401, "{path} without the token");
        assert_eq!(
            http::get_with_token(api, path, "wrong").0,
            401,
            "{path} with a wrong token"
        );
    }
    assert_eq!(http::get_with_token(api, "/metrics", &token).0, 200);

    let first = http::open(api, "/api/v1/flows/stream", Some(&token));
    let second = http::open(api, "/api/v1/flows/stream", Some(&token));
    assert_eq!((first.0, second.0), (200, 200));
    let third = http::open(api, "/api/v1/flows/stream", Some(&token));
    assert_eq!(third.0, 503, "a third stream is refused");
    drop(first);
    wait_for("a slot to free once a client goes", || {
        http::open(api, "/api/v1/flows/stream", Some(&token)).0 == 200
    });
    // `netguard status` reads the same token file.
    let status = std::process::Command::new(netguard_bin())
        .args(["status", "--json", "--agent"])
        .arg(api.to_string())
        .arg("--api-token-file")
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
}

/// Loopback is internal only on the loopback device: a socket bound to eth0 sends
/// 127.0.0.1 out through the default route (to the bridge, and with Docker's
/// `route_localnet` to the host's own loopback services, netguard's resolver steering
/// included).
#[test]
fn loopback_destinations_are_internal_only_through_the_loopback_device() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let _agent = lab.start_agent(&pin, "");
    let protected = lab.start(&[PROTECTED], &[]);
    let control = lab.start(&[], &[]);
    let cgroup = lab.cgroup_id(&protected);
    wait_for("the containers classified", || {
        let policies = pinned_maps(&pin).policies().unwrap();
        [cgroup, lab.cgroup_id(&control)].iter().all(|c| {
            policies
                .iter()
                .any(|(id, p)| id == c && !p.is_unclassified())
        })
    });
    let to_loopback = ["udp", "127.0.0.1", "9999", "1", "8"];
    let through_eth0 = ["-e", "NG_PROBE_DEVICE=eth0"];
    let on_lo = netguard_tests::docker::exec_probe_with(&protected, &[], &to_loopback);
    assert!(on_lo.ok, "loopback through lo is internal: {on_lo:?}");
    let out = netguard_tests::docker::exec_probe_with(&protected, &through_eth0, &to_loopback);
    assert_eq!(out.errno, EPERM, "127.0.0.1 through eth0: {out:?}");
    let counters = pinned_maps(&pin)
        .counters(cgroup)
        .unwrap()
        .unwrap_or_default();
    assert_eq!(
        counters.blocked_packets[BlockReason::NotAllowed as usize],
        1
    );
    // The unprotected container is not netguard's to stop.
    let open = netguard_tests::docker::exec_probe_with(&control, &through_eth0, &to_loopback);
    assert!(open.ok, "{open:?}");
}
