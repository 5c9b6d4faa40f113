//! The measures, each taken from the sender's cgroup and namespace: UDP 64-byte packets a
//! second and one TCP stream (iperf3), a small request/response (ping), and the kernel's own
//! count of the time netguard's programs run (bpf_stats).

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::lab::{Lab, RECEIVER_ADDR};

/// Seconds each throughput measure runs.
pub const SECONDS: &str = "4";

fn json_of(mut command: Command) -> Result<Value> {
    let output = command.output().context("running a measure")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let value: Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "{command:?}: {text} {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if let Some(error) = value.get("error") {
        bail!("{command:?}: {error}");
    }
    Ok(value)
}

/// UDP datagrams of 64 bytes sent as fast as the sender can: datagrams a second, and the
/// sender's CPU nanoseconds a datagram (its user and system time, which on this kind of
/// machine exclude the time the hypervisor steals: `CONFIG_PARAVIRT_TIME_ACCOUNTING`; the
/// veth's receive path runs in the sender's softirq and counts too).
pub fn udp(lab: &Lab, cgroup: &Path) -> Result<(f64, f64)> {
    let result = json_of(lab.sender(
        cgroup,
        "iperf3",
        &[
            "-c",
            RECEIVER_ADDR,
            "-u",
            "-l",
            "64",
            "-b",
            "0",
            "-t",
            SECONDS,
            "-J",
        ],
    ))?;
    let sum = &result["end"]["sum"];
    let packets = sum["packets"].as_f64().context("iperf3: no packet count")?;
    let seconds = sum["seconds"].as_f64().context("iperf3: no duration")?;
    let cpu_percent = result["end"]["cpu_utilization_percent"]["host_total"]
        .as_f64()
        .context("iperf3: no CPU utilization")?;
    Ok((
        packets / seconds,
        cpu_percent / 100.0 * seconds * 1e9 / packets,
    ))
}

/// One TCP stream, bits a second received.
pub fn tcp_bps(lab: &Lab, cgroup: &Path) -> Result<f64> {
    let result = json_of(lab.sender(
        cgroup,
        "iperf3",
        &["-c", RECEIVER_ADDR, "-t", SECONDS, "-J"],
    ))?;
    result["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3: no received rate")
}

/// Mean round trip of 400 small echo requests 2 ms apart, in microseconds.
pub fn rr_us(lab: &Lab, cgroup: &Path) -> Result<f64> {
    let output = lab
        .sender(
            cgroup,
            "ping",
            &["-c", "400", "-i", "0.002", "-q", RECEIVER_ADDR],
        )
        .output()
        .context("ping")?;
    let text = String::from_utf8_lossy(&output.stdout);
    // rtt min/avg/max/mdev = 0.031/0.045/0.120/0.010 ms
    let stats = text
        .lines()
        .find_map(|l| {
            l.split_once(" = ")
                .filter(|(k, _)| k.contains("min/avg"))?
                .1
                .split('/')
                .nth(1)
                .map(str::to_string)
        })
        .with_context(|| format!("ping printed no round trips: {text}"))?;
    Ok(stats.parse::<f64>()? * 1000.0)
}

/// The kernel's run time and run count of every loaded program named `name`.
pub fn program_stats(name: &str) -> Result<(f64, f64)> {
    let mut command = Command::new("bpftool");
    command.args(["prog", "show", "-j"]);
    let programs = json_of(command)?;
    let mut totals = (0.0, 0.0);
    for program in programs.as_array().context("bpftool: not a list")? {
        if program["name"].as_str() == Some(name) {
            totals.0 += program["run_time_ns"].as_f64().unwrap_or(0.0);
            totals.1 += program["run_cnt"].as_f64().unwrap_or(0.0);
        }
    }
    Ok(totals)
}

/// `ng_egress`'s nanoseconds a packet over a UDP run (bpf_stats on for it alone).
pub fn egress_ns_per_packet(lab: &Lab, cgroup: &Path) -> Result<f64> {
    super::lab::sh("sysctl", &["-qw", "kernel.bpf_stats_enabled=1"])?;
    let before = program_stats("ng_egress")?;
    let run = udp(lab, cgroup);
    let after = program_stats("ng_egress")?;
    super::lab::sh("sysctl", &["-qw", "kernel.bpf_stats_enabled=0"])?;
    run?;
    let count = after.1 - before.1;
    if count <= 0.0 {
        bail!("ng_egress did not run");
    }
    Ok((after.0 - before.0) / count)
}

/// An Ethernet frame carrying a UDP datagram of 64 bytes from the sender to the receiver (the
/// packet the UDP measure sends), for test runs.
fn udp_frame() -> Vec<u8> {
    let payload = 64usize;
    let total = 20 + 8 + payload;
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    let address = |text: &str| text.parse::<std::net::Ipv4Addr>().map(|a| a.octets());
    ip.extend_from_slice(&address(super::lab::SENDER_ADDR).expect("an address"));
    ip.extend_from_slice(&address(RECEIVER_ADDR).expect("an address"));
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&40000u16.to_be_bytes());
    frame.extend_from_slice(&5201u16.to_be_bytes());
    frame.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend(std::iter::repeat_n(0u8, payload));
    frame
}

/// Test runs of each batch; the figure is the fastest batch (a shared machine only ever
/// adds time: steal, interrupts).
pub const TEST_RUN_BATCHES: usize = 5;
const TEST_RUN_REPEAT: &str = "1000000";

/// `ng_egress`'s nanoseconds a packet by BPF_PROG_TEST_RUN (`bpftool prog run`, a million
/// runs a batch) on the UDP measure's packet, run from `cgroup` so that the packet is the
/// sender's: the program alone, without bpf_stats' clock reads or the rest of the stack.
pub fn egress_test_run_ns(lab: &Lab, cgroup: &Path) -> Result<f64> {
    let id = program_ids("ng_egress")?
        .into_iter()
        .next()
        .context("ng_egress is not loaded")?;
    let frame = std::env::temp_dir().join("ngbench-frame.bin");
    std::fs::write(&frame, udp_frame())?;
    let mut fastest = f64::MAX;
    for _ in 0..TEST_RUN_BATCHES {
        let output = lab
            .in_cgroup(
                cgroup,
                "bpftool",
                &[
                    "prog",
                    "run",
                    "id",
                    &id.to_string(),
                    "data_in",
                    &frame.to_string_lossy(),
                    "repeat",
                    TEST_RUN_REPEAT,
                ],
            )
            .output()
            .context("bpftool prog run")?;
        let text = String::from_utf8_lossy(&output.stdout);
        // "Return value: 1, duration (average): 42ns"
        let ns = text
            .split("duration (average):")
            .nth(1)
            .and_then(|rest| rest.trim().strip_suffix("ns"))
            .and_then(|ns| ns.trim().parse::<f64>().ok())
            .with_context(|| {
                format!(
                    "bpftool prog run printed no duration: {text} {}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })?;
        fastest = fastest.min(ns);
    }
    let _ = std::fs::remove_file(&frame);
    Ok(fastest)
}

/// The ids of every loaded program named `name`.
fn program_ids(name: &str) -> Result<Vec<u64>> {
    let mut command = Command::new("bpftool");
    command.args(["prog", "show", "-j"]);
    let programs = json_of(command)?;
    Ok(programs
        .as_array()
        .context("bpftool: not a list")?
        .iter()
        .filter(|p| p["name"].as_str() == Some(name))
        .filter_map(|p| p["id"].as_u64())
        .collect())
}
