//! The deployment files validate with the tools users run them with.

use std::{path::PathBuf, process::Command};

fn deploy() -> PathBuf {
    netguard_tests::repository_root().join("deploy")
}

/// `docker-compose config` (Debian's docker-compose) on `file`: the resolved configuration.
fn compose_config(file: &str) -> String {
    let path = deploy().join(file);
    let output = Command::new("docker-compose")
        .arg("-f")
        .arg(&path)
        .arg("config")
        .current_dir(path.parent().unwrap())
        .output()
        .expect("docker-compose (apt-get install docker-compose; `cargo xtask test` does)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{file} does not validate: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_compose_stack_validates_and_guards_qbittorrent_behind_gluetun() {
    let config = compose_config("compose/docker-compose.yml");
    for expected in [
        "network_mode: service:gluetun",
        "vpn: required",
        "netguard.role: vpn-gateway",
        "pid: host",
        "SYS_ADMIN",
        "/var/run/docker.sock:/var/run/docker.sock:ro",
        "/sys/fs/bpf:/sys/fs/bpf",
    ] {
        assert!(
            config.contains(expected),
            "{expected} missing from\n{config}"
        );
    }
}

#[test]
fn the_swarm_stack_validates_and_runs_netguard_on_every_node() {
    let config = compose_config("swarm/stack.yml");
    assert!(config.contains("mode: global"), "{config}");
    assert!(config.contains("--pid host --network host"), "{config}");
}

#[test]
fn the_compose_agent_asks_for_a_token_prometheus_has_and_lists_no_vpn_endpoints() {
    let config = compose_config("compose/docker-compose.yml");
    assert!(
        config.contains("NETGUARD_API_TOKEN_FILE: /run/netguard/token"),
        "{config}"
    );
    assert!(config.contains("/run/netguard:rw") || config.contains("netguard-token:/run/netguard"));
    assert!(config.contains("/etc/prometheus/netguard:ro"), "{config}");
    assert!(
        !config.contains("netguard.endpoints"),
        "Gluetun picks its servers at run time: nothing to list"
    );
    let prometheus = std::fs::read_to_string(deploy().join("compose/prometheus.yml")).unwrap();
    assert!(
        prometheus.contains("credentials_file: /etc/prometheus/netguard/token"),
        "{prometheus}"
    );
}

#[test]
fn the_systemd_units_make_dockerd_wait_until_enforcement_is_complete() {
    let unit = std::fs::read_to_string(deploy().join("systemd/netguard.service")).unwrap();
    for line in [
        "Type=notify",
        "Before=docker.service",
        "ExecStart=/usr/local/bin/netguard run",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing from\n{unit}"
        );
    }
    let dropin =
        std::fs::read_to_string(deploy().join("systemd/docker.service.d/netguard.conf")).unwrap();
    for line in [
        "After=netguard.service",
        "Wants=netguard.service",
        "ExecStartPre=/usr/local/bin/netguard enforcing",
    ] {
        assert!(
            dropin.lines().any(|l| l == line),
            "{line} missing from\n{dropin}"
        );
    }
}
