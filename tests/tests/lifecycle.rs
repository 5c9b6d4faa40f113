//! Fail closed across the agent's life: exit, SIGKILL, restart, unload.

mod common;

use common::{Options, Setup};
use netguard_common::BlockReason;
use netguard_tests::{
    lab::{CLIENT_V4, INTERNET_V4, LAN_V4, addr},
    probe::{EPERM, probe},
    sniffer::Sniffer,
};

/// Links each start reports: nine cgroup programs, the raw-socket guard and the backstop on
/// the client namespace's one interface (no classifier without Docker).
const PER_START: usize = 11;

fn blocked_to_internet(s: &Setup) {
    let result = probe(
        &s.lab.client,
        Some(&s.protected),
        &["udp", &addr(INTERNET_V4), "7000", "1", "8"],
    );
    assert_eq!(result.errno, EPERM, "{result:?}");
}

#[test]
fn enforcement_outlives_the_agent_and_a_restart_adopts_it_without_gap_or_double_count() {
    let mut s = Setup::new(Options {
        backstop: true,
        ..Options::default()
    });
    let internet = Sniffer::start(&s.lab.internet);
    blocked_to_internet(&s);

    s.agent.terminate();
    blocked_to_internet(&s);
    s.agent.restart();

    s.agent.kill9();
    blocked_to_internet(&s);
    let sent = s.raw_frame_to_internet(false);
    assert!(sent.frame_taken(), "{sent:?}");
    s.wait_counters("the backstop drop while the agent is dead", |c| {
        c.blocked_packets[BlockReason::NotAllowed as usize] == 1
    });
    let before_restart = s.counters();

    // Keep sending while the agent restarts: every datagram must be refused.
    let sender = std::thread::scope(|scope| {
        let (client, protected) = (&s.lab.client, &s.protected);
        let handle = scope.spawn(move || {
            probe(
                client,
                Some(protected),
                &["udp", &addr(INTERNET_V4), "7001", "3000", "8"],
            )
        });
        s.agent.restart();
        handle.join().unwrap()
    });
    assert_eq!(
        (sender.errno, sender.done),
        (EPERM, 0),
        "a datagram got through during restart: {sender:?}"
    );

    let restarted = s.agent.log_lines("outcome=");
    assert_eq!(
        restarted.len(),
        3 * PER_START,
        "seven cgroup programs, the raw-socket guard and one backstop per start: {restarted:#?}"
    );
    let last_run = &restarted[2 * PER_START..];
    assert!(
        last_run.iter().all(|line| line.contains("outcome=Adopted")),
        "the restarted agent must adopt the pinned programs, not attach new ones: {last_run:#?}"
    );

    // Counters continue (no reset) and count once (no second program attached).
    let after_restart = s.counters();
    let refused = BlockReason::NotAllowed as usize;
    assert!(after_restart.refused_calls[refused] >= before_restart.refused_calls[refused] + 3000);
    assert_eq!(
        after_restart.blocked_packets,
        before_restart.blocked_packets
    );
    let allowed = probe(
        &s.lab.client,
        Some(&s.protected),
        &["udp", &addr(LAN_V4), "7000", "10", "100"],
    );
    assert!(allowed.ok, "{allowed:?}");
    let counted = s.counters();
    assert_eq!(counted.tx_packets - after_restart.tx_packets, 10);
    assert_eq!(counted.tx_bytes - after_restart.tx_bytes, 10 * 128);

    s.barrier(&internet, INTERNET_V4);
    assert_eq!(
        internet.from(CLIENT_V4),
        0,
        "a packet reached the internet host"
    );
}

#[test]
fn unload_removes_every_program_and_map() {
    let mut s = Setup::new(Options {
        backstop: true,
        ..Options::default()
    });
    blocked_to_internet(&s);
    s.agent.terminate();
    let output = std::process::Command::new(netguard_tests::agent::netguard_bin())
        .args(["unload", "--pin-dir"])
        .arg(&s.pin.path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(!s.pin.path.exists(), "the pin directory is gone");
    // Protection is off: the same datagram now leaves.
    let internet = Sniffer::start(&s.lab.internet);
    let result = probe(
        &s.lab.client,
        Some(&s.protected),
        &["udp", &addr(INTERNET_V4), "7000", "1", "8"],
    );
    assert!(result.ok, "{result:?}");
    netguard_tests::wait_for("the datagram at the internet host", || {
        internet.from(CLIENT_V4) == 1
    });
}

#[test]
fn bad_configuration_exits_64_with_one_line_naming_the_value() {
    netguard_tests::require_root();
    let dir = netguard_tests::TempDir::new("config");
    let root = netguard::cgroup::cgroup2_root()
        .unwrap()
        .display()
        .to_string();
    let protect_root = format!("[[protect]]\ncgroup = {root:?}\n");
    let cases = [
        (
            "internal_cidrs = [\"192.168.1.0/33\"]\n",
            "\"192.168.1.0/33\"",
        ),
        (
            "[[gateways]]\nname = \"vpn\"\nendpoints = [\"203.0.113.7:51820\"]\n",
            "\"203.0.113.7:51820\"",
        ),
        (
            "attach_cgroups = [\"ngt-no-such-parent\"]\n[[protect]]\ncgroup = \"/\"\n",
            "ngt-no-such-parent",
        ),
        (protect_root.as_str(), "cgroup2 root"),
        ("[[protect]]\ncgroup = \"/etc\"\n", "/etc"),
        ("listen = \"127.0.0.1\"\n", "\"127.0.0.1\""),
    ];
    for (text, named) in cases {
        let path = dir.path.join("netguard.toml");
        std::fs::write(
            &path,
            format!("pin_dir = \"/sys/fs/bpf/ngt-never-created\"\n{text}"),
        )
        .unwrap();
        let output = std::process::Command::new(netguard_tests::agent::netguard_bin())
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {text:?}: {stderr}");
        assert!(lines[0].contains(named), "{named} named in {stderr}");
        assert!(
            !std::path::Path::new("/sys/fs/bpf/ngt-never-created").exists(),
            "nothing was loaded"
        );
        assert_eq!(output.status.code(), Some(64), "{stderr}");
    }
}

/// Runs `netguard run` with `config` and `env` (through `wrapper` if given); returns the
/// exit code and stderr.
fn run_agent(wrapper: &[&str], config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = netguard_tests::TempDir::new("config");
    let path = dir.path.join("netguard.toml");
    std::fs::write(&path, config).unwrap();
    let output = netguard_tests::agent::netguard_through(wrapper)
        .args(["run", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn environment_typos_and_missing_privileges_are_one_line_errors() {
    netguard_tests::require_root();
    let config = "pin_dir = \"/sys/fs/bpf/ngt-never-created\"\ndocker = false\n";
    let (code, stderr) = run_agent(
        &[],
        config,
        &[("NETGUARD_INTERNAL_CIDRS", "10.0.0.0/8,10.1.0.0/33")],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("\"10.1.0.0/33\"") && stderr.contains("e.g."),
        "{stderr}"
    );

    let (code, stderr) = run_agent(&[], config, &[("NETGUARD_LISTEN", "localhost:http")]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("\"localhost:http\""), "{stderr}");

    // An unprivileged user: refused before anything is loaded, naming what is missing.
    let (code, stderr) = run_agent(&netguard_tests::agent::AS_NOBODY, config, &[]);
    assert_eq!(code, Some(77), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("CAP_SYS_ADMIN") && stderr.contains("sudo") && stderr.contains("--cap-add"),
        "{stderr}"
    );
}

/// Docker unreachable at start-up (dockerd late at boot, the socket not mounted): one line
/// names the socket and the fix, and the agent enforces all the same: exiting before
/// attaching would leave containers Docker starts meanwhile unguarded.
#[test]
fn an_unreachable_docker_socket_is_named_and_enforcement_starts_anyway() {
    netguard_tests::require_root();
    let mut parent = netguard_tests::cgroups::TestCgroup::new_parent();
    let protected = parent.child("protected");
    let pin = netguard_tests::agent::PinDir::new();
    let config = format!(
        "pin_dir = {:?}\nattach_cgroups = [{:?}]\ndocker_socket = \"/run/ngt-no-such-docker.sock\"\n\
         [[protect]]\ncgroup = {:?}\n",
        pin.path.display().to_string(),
        parent.path.display().to_string(),
        protected.display().to_string(),
    );
    let agent = netguard_tests::agent::Agent::start_on_host_until(
        &config,
        std::env::temp_dir().join(format!("ngt{}-nodocker.toml", netguard_tests::unique_tag())),
        "netguard ready",
    );
    netguard_tests::wait_for("the Docker socket error", || {
        agent.count("/run/ngt-no-such-docker.sock") > 0
    });
    let errors = agent.log_lines("/run/ngt-no-such-docker.sock");
    assert!(
        errors[0].contains("ERROR")
            && errors[0].contains("--no-docker")
            && errors[0].contains("held"),
        "{errors:?}"
    );
    let policies = netguard_tests::agent::pinned_maps(&pin).policies().unwrap();
    let id = netguard_tests::cgroups::TestCgroup::id(&protected);
    assert!(
        policies
            .iter()
            .any(|(cgroup, p)| *cgroup == id && p.is_protected()),
        "enforcing without Docker: {policies:?}"
    );
    let (status, body) = netguard_tests::http::get(agent.http_address(), "/readyz");
    assert_eq!(status, 503, "not ready until Docker answers: {body}");
    assert!(body.contains("\"docker\":\"connecting\""), "{body}");
}
