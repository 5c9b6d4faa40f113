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
