//! `netguard doctor` on the real host, with a running agent and real containers.

use netguard_tests::{
    agent::{AS_NOBODY, PinDir, netguard_through},
    docker::DockerLab,
    wait_for,
};

fn doctor(args: &[&str], wrapper: &[&str]) -> (Option<i32>, String) {
    let output = netguard_through(wrapper)
        .arg("doctor")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn row<'a>(table: &'a str, check: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(check))
        .unwrap_or_else(|| panic!("no {check} row in\n{table}"))
}

#[test]
fn doctor_passes_on_this_host_and_names_protected_containers_that_keep_net_raw() {
    let lab = DockerLab::new();
    let pin = PinDir::new();
    let agent = lab.start_agent(&pin, "");
    let api = agent.http_address().to_string();
    let keeps = lab.start(&["vpn=required"], &[]);
    let drops = lab.start(&["vpn=required"], &["--cap-drop", "NET_RAW"]);
    let name = |id: &str| {
        netguard_tests::sh(&["docker", "inspect", "-f", "{{.Name}}", id])
            .trim()
            .trim_start_matches('/')
            .to_string()
    };
    let (keeps, drops) = (name(&keeps), name(&drops));
    let pin_dir = pin.path.to_string_lossy().into_owned();
    wait_for("the agent to protect both containers", || {
        agent.count("classified") >= 2
    });

    let (code, table) = doctor(&["--pin-dir", &pin_dir, "--agent", &api], &[]);
    assert_eq!(code, Some(0), "{table}");
    for check in [
        "kernel",
        "BTF",
        "cgroup v2",
        "bpffs",
        "capabilities",
        "Docker socket",
        "cgroup driver",
        "pinned datapath",
        "agent",
    ] {
        assert!(row(&table, check).contains(" pass "), "{check}:\n{table}");
    }
    let raw = row(&table, "CAP_NET_RAW");
    assert!(
        raw.contains("WARN") && raw.contains(&keeps) && !raw.contains(&drops),
        "{table}"
    );
    assert!(table.contains("cap_drop: [NET_RAW]"), "the remedy: {table}");

    let (code, table) = doctor(
        &[
            "--pin-dir",
            &pin_dir,
            "--agent",
            &api,
            "--docker-socket",
            "/run/ngt-no-such-docker.sock",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{table}");
    assert!(row(&table, "Docker socket").contains("FAIL"), "{table}");
    assert!(table.contains("start dockerd"), "{table}");

    let (code, table) = doctor(&["--pin-dir", &pin_dir, "--agent", &api], &AS_NOBODY);
    assert_eq!(code, Some(1), "{table}");
    let capabilities = row(&table, "capabilities");
    assert!(
        capabilities.contains("FAIL") && capabilities.contains("CAP_SYS_ADMIN"),
        "{table}"
    );
}
