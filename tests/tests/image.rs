//! The shipped container image: built from the repository's Dockerfile, run privileged under
//! the real dockerd as users run it, protecting a labelled container.

use std::process::Command;

use netguard_tests::{
    agent::PinDir,
    docker::{DockerLab, TEST_LABEL},
    lab::{INTERNET_V4, LAN_V4, addr},
    probe::EPERM,
    sh,
    sniffer::Sniffer,
    wait_for,
};

const AGENT_IMAGE: &str = "netguard-test/agent:latest";

/// `docker logs` of a container, stdout and stderr.
fn logs(container: &str) -> String {
    let output = Command::new("docker")
        .args(["logs", container])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_image_run_privileged_protects_a_labeled_container() {
    let binary = netguard_tests::repository_root().join("target/dist/netguard-amd64");
    assert!(
        binary.exists(),
        "{} is missing: `cargo xtask test` builds it (cargo xtask dist)",
        binary.display()
    );
    sh(&[
        "docker",
        "build",
        "-q",
        "--label",
        TEST_LABEL,
        "-t",
        AGENT_IMAGE,
        &netguard_tests::repository_root().to_string_lossy(),
    ]);
    let lab = DockerLab::new();
    let pin = PinDir::new();
    // The pins must live in the host's bpffs, not one mounted inside the container, or
    // enforcement would die with the container.
    if sh(&["stat", "-f", "-c", "%T", "/sys/fs/bpf"]).trim() != "bpf_fs" {
        sh(&["mount", "-t", "bpf", "bpf", "/sys/fs/bpf"]);
    }
    std::fs::create_dir_all(&pin.path).unwrap();
    let name = format!("ngt{}-agent", lab.lab.tag);
    let parent = lab.parent.path.to_string_lossy().into_owned();
    let pin_dir = pin.path.to_string_lossy().into_owned();
    // As deploy/compose runs it: the capabilities it needs (not --privileged: that asks for
    // every capability, and this machine's bounding set lacks CAP_SYS_RESOURCE, so runc
    // refuses it), the host's pid, network and cgroup namespaces.
    sh(&[
        "docker",
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        TEST_LABEL,
        "--label",
        &format!("ngt.lab={}", lab.lab.tag),
        "--cap-add",
        "SYS_ADMIN",
        "--cap-add",
        "NET_ADMIN",
        "--cap-add",
        "SYS_PTRACE",
        "--cap-add",
        "DAC_READ_SEARCH",
        "--security-opt",
        "apparmor=unconfined",
        "--pid",
        "host",
        "--network",
        "host",
        "--cgroupns",
        "host",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup",
        "-v",
        "/sys/fs/bpf:/sys/fs/bpf",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock:ro",
        AGENT_IMAGE,
        "run",
        "--pin-dir",
        &pin_dir,
        "--attach-cgroup",
        &parent,
        "--internal-cidr",
        "198.18.3.0/24",
        "--listen",
        "127.0.0.1:0",
    ]);
    wait_for(
        "the agent in its container to be in sync with Docker",
        || {
            let log = logs(&name);
            assert!(
                !log.contains("netguard: "),
                "the agent's container failed: {log}"
            );
            log.contains("Docker: in sync")
        },
    );

    let (internet, lan) = (
        Sniffer::start(&lab.lab.internet),
        Sniffer::start(&lab.lab.lan),
    );
    let blocked = lab.run_probe(
        &["vpn=required"],
        &["udp", &addr(INTERNET_V4), "7501", "3", "20"],
    );
    assert_eq!(blocked.errno, EPERM, "{blocked:?}");
    let internal = lab.run_probe(
        &["vpn=required"],
        &["udp", &addr(LAN_V4), "7501", "2", "20"],
    );
    assert!(internal.ok, "{internal:?}");
    let open = lab.run_control(&["udp", &addr(INTERNET_V4), "7502", "1", "20"]);
    assert!(open.ok, "{open:?}");
    wait_for("the control datagram and the internal ones", || {
        internet.count(|a| a.dst_port == 7502) == 1 && lan.count(|a| a.dst_port == 7501) == 2
    });

    // The agent's container gone: what it pinned in the host's bpffs keeps enforcing.
    let running = lab.start(&["vpn=required"], &[]);
    wait_for("the agent to classify the long-running container", || {
        logs(&name).contains(&running[..12])
    });
    sh(&["docker", "rm", "-f", &name]);
    let after = lab.exec_probe(&running, &["udp", &addr(INTERNET_V4), "7503", "2", "20"]);
    assert_eq!(after.errno, EPERM, "{after:?}");
    assert_eq!(
        internet.count(|a| a.dst_port == 7501 || a.dst_port == 7503),
        0,
        "a protected container reached the internet"
    );
}
