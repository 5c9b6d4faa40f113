//! The deployment files validate with the tools users run them with.

use std::{path::PathBuf, process::Command};

fn deploy() -> PathBuf {
    netguard_tests::repository_root().join("deploy")
}

/// `docker-compose config` (Debian's docker-compose) on `file`: the resolved configuration,
/// in a copy of `deploy/` with the `.env` the README has users make (`.env.example` and a
/// key), so a user's own `.env` in the checkout is neither read nor touched.
fn compose_config(file: &str) -> String {
    let output = compose_config_with_key(file, "k3y");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{file} does not validate: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn compose_config_with_key(file: &str, key: &str) -> std::process::Output {
    let copy = netguard_tests::TempDir::new("deploy");
    netguard_tests::sh(&[
        "cp",
        "-r",
        &deploy().to_string_lossy(),
        &copy.path.to_string_lossy(),
    ]);
    let path = copy.path.join("deploy").join(file);
    let dir = path.parent().unwrap();
    if let Ok(example) = std::fs::read_to_string(dir.join(".env.example")) {
        let line = format!("NETGUARD_GLUETUN_API_KEY={key}\n");
        let env = example.replace("NETGUARD_GLUETUN_API_KEY=\n", &line);
        std::fs::write(dir.join(".env"), env).unwrap();
    }
    Command::new("docker-compose")
        .arg("-f")
        .arg(&path)
        .arg("config")
        .current_dir(dir)
        .env_remove("NETGUARD_GLUETUN_API_KEY")
        .output()
        .expect("docker-compose (apt-get install docker-compose; `cargo xtask test` does)")
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
        "/sys/fs/bpf:/sys/fs/bpf",
    ] {
        assert!(
            config.contains(expected),
            "{expected} missing from\n{config}"
        );
    }
}

#[test]
fn the_compose_stack_works_with_todays_gluetun_and_heals_qbittorrent() {
    let config = compose_config("compose/docker-compose.yml");
    for expected in [
        // A major version, not latest.
        "image: qmcgaw/gluetun:v3",
        // netguard's role: exactly GET /v1/vpn/status, with the key from .env.
        r#"routes = ["GET /v1/vpn/status"]"#,
        "HTTP_CONTROL_SERVER_AUTH_CONFIG_FILEPATH: /tmp/netguard-role.toml",
        "NETGUARD_GLUETUN_API_KEY: k3y",
        "netguard.heal: restart",
        // Restarting containers needs more than reading Docker's API.
        "/var/run/docker.sock:/var/run/docker.sock:rw",
    ] {
        assert!(
            config.contains(expected),
            "{expected} missing from\n{config}"
        );
    }
    // Without a key, Compose says what to do.
    let output = compose_config_with_key("compose/docker-compose.yml", "");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && said.contains("genkey"),
        "{said}"
    );
    let example = std::fs::read_to_string(deploy().join("compose/.env.example")).unwrap();
    assert!(example.contains("genkey") && example.contains("NETGUARD_GLUETUN_API_KEY="));
    let readme =
        std::fs::read_to_string(netguard_tests::repository_root().join("README.md")).unwrap();
    assert!(
        readme.contains("genkey"),
        "the README's quick start makes the key"
    );
}

#[test]
fn the_swarm_stack_validates_and_runs_netguard_on_every_node() {
    let config = compose_config("swarm/stack.yml");
    assert!(config.contains("mode: global"), "{config}");
    assert!(config.contains("--pid host --network host"), "{config}");
    assert!(config.contains("NETGUARD_GLUETUN_API_KEY_FILE=/etc/netguard/gluetun-apikey"));
    assert!(config.contains("gluetun_netguard_apikey") && config.contains("qmcgaw/gluetun:v3"));
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

#[test]
fn the_dashboard_imports_anywhere_and_says_what_each_panel_shows() {
    let path = deploy().join("grafana/dashboards/netguard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for name in ["datasource", "instance", "job", "container"] {
        assert!(
            variables.contains(&name),
            "no ${name} variable: {variables:?}"
        );
    }
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: a fixed data source"
        );
        assert!(
            panel["description"].as_str().is_some_and(|d| d.len() > 20),
            "{title}: no description"
        );
        assert!(
            panel["fieldConfig"]["defaults"]["unit"].as_str().is_some(),
            "{title}: no unit"
        );
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            // Every series of every expression on the chosen agents (Swarm: one per node).
            let series = expr.matches("netguard_").count();
            let scoped = expr
                .matches(r#"instance=~"$instance", job=~"$job""#)
                .count();
            assert_eq!(series, scoped, "{title}: {expr}");
        }
    }
    assert!(
        panels
            .iter()
            .any(|p| p["targets"][0]["expr"].as_str().is_some_and(|e| e
                .contains("netguard_container_transmit_path_bytes_total")
                && e.contains("path"))),
        "a panel for what went through the VPN"
    );
}
